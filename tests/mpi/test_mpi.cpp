// Data-parallel DFT under MPI, run by ctest as `mpirun -np 2 test_mpi CASE WORKDIR`:
//   collectives  the MPI communicator: rank-ordered all-reduce bit for bit against the sum computed
//                here, rounds, all-gather, broadcast, agree;
//   equality     P = 2 against P = 1 (each rank also runs the single-process reference itself) on
//                the categorical policy and the tiny LM, DFT and DFT2: ≤ 1e-12 relative, replicas
//                identical, bitwise reproducible;
//   bad_input    a bad input on rank 1 only: the same named error on both ranks, no hang, nothing
//                changed, training goes on as if the step had not been tried; a model seeded per
//                rank: check_replicas names rank 1 on both ranks;
//   accumulate   k ∈ {1, 2, 4} micro-batches per rank at P = 2 against the single big batch at P = 1
//                (SGD, double): ≤ 1e-15 relative, replicas identical;
//   reshard      P = 2 → save → load at P = 1 → save → load at P = 2 equals an uninterrupted run;
//   chaos_run / chaos_verify   driven by chaos_test.cmake and scripts/chaos.sh: a run that resumes from
//                the last committed checkpoint, saves after every step, and (when told to) SIGKILLs
//                a random rank at a random time — in a step, a save or the load; at the end the
//                committed set equals the uninterrupted run bit for bit;
//   kill_run / kill_verify   driven by kill_test.cmake: rank 1 SIGKILLs itself mid-run; then the last
//                committed checkpoint loads and equals the uninterrupted run at its step.
#include "support/testing.hpp"
#include "distributed/accumulate.hpp"
#include "distributed/scenario.hpp"

#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/mpi.hpp>
#include <dftune/distributed/replica_check.hpp>
#include <dftune/io/sharded_checkpoint.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>
#include <unistd.h>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

using namespace dftune;
using distributed::MpiCommunicator;

namespace {

int failures = 0;
std::size_t my_rank = 0;

void expect(bool ok, const char* what, int line) {
  if (ok) return;
  ++failures;
  std::fprintf(stderr, "rank %zu: test_mpi.cpp:%d: FAILED: %s\n", my_rank, line, what);
}
#define EXPECT(cond) expect((cond), #cond, __LINE__)

using test::error_of;

// Every rank's string equals rank 0's.
bool same_everywhere(MpiCommunicator& c, const std::string& s) {
  bool same = true;
  for (std::size_t r = 0; r < c.size(); ++r) same = distributed::broadcast_string(c, s, r) == s && same;
  return same;
}

bool replicas_identical(MpiCommunicator& c, std::span<const double> x) {
  const auto h = distributed::all_gather_values(c, scenario::hash(x));
  for (auto v : h)
    if (v != h[0]) return false;
  return true;
}

// ---- collectives ----------------------------------------------------------------------------
template <class T>
std::vector<T> values(std::size_t rank, std::size_t n) {
  std::mt19937_64 rng(1000 * rank + n);
  std::normal_distribution<double> z(0, 1);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(z(rng) * std::exp(4 * z(rng)));  // wide dynamic range: order matters
  return v;
}

template <class T>
void all_reduce_case(MpiCommunicator& world, distributed::MpiOptions o, std::size_t n) {
  MpiCommunicator c(world.handle(), o);
  std::vector<T> x = values<T>(c.rank(), n);
  c.all_reduce_sum(std::span<T>(x));
  std::vector<T> want = values<T>(0, n);
  for (std::size_t r = 1; r < c.size(); ++r) {
    const std::vector<T> y = values<T>(r, n);
    for (std::size_t k = 0; k < n; ++k) want[k] = want[k] + y[k];
  }
  if (o.reduction == distributed::MpiReduction::rank_ordered) {
    EXPECT(std::equal(x.begin(), x.end(), want.begin(), want.end(),
                      [](T a, T b) { return std::bit_cast<std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>(a) ==
                                            std::bit_cast<std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>(b); }));
  } else {
    for (std::size_t k = 0; k < n; ++k) EXPECT(std::fabs(x[k] - want[k]) <= 1e-6 * (std::fabs(want[k]) + 1));
  }
  const std::vector<double> xd(x.begin(), x.end());
  EXPECT(replicas_identical(c, xd));
}

void collectives(MpiCommunicator& world) {
  for (std::size_t n : {0, 1, 2, 3, 5, 1000, 4097})
    for (std::size_t round : {std::size_t{1} << 27, std::size_t{3}}) {
      all_reduce_case<double>(world, {.max_elements_per_round = round}, n);
      all_reduce_case<float>(world, {.max_elements_per_round = round}, n);
      all_reduce_case<double>(world, {.reduction = distributed::MpiReduction::native, .max_elements_per_round = round}, n);
    }
  const auto ranks = distributed::all_gather_values(world, static_cast<std::uint32_t>(7 * world.rank() + 1));
  EXPECT(ranks.size() == 2 && ranks[0] == 1 && ranks[1] == 8);
  EXPECT(distributed::broadcast_string(world, world.rank() == 1 ? "from rank 1" : "", 1) == "from rank 1");
  world.barrier();
  const std::string e = error_of([&] {
    distributed::agree(world, [&] {
      if (world.rank() == 1) dftune::detail::fail("x", 3, "something else");
    });
  });
  EXPECT(e == "rank 1 of 2: x: got 3, expected something else");
  EXPECT(error_of([&] { MpiCommunicator(world.handle(), {.max_elements_per_round = 0}); }) ==
         "max_elements_per_round: got 0, expected a count in [1, INT_MAX / 2]");
}

// ---- equality -------------------------------------------------------------------------------
tiny_lm::Config lm_config() { return {.vocab = 8, .max_len = 8, .d_model = 16, .n_heads = 2, .n_layers = 1, .d_ff = 32}; }

// SGD (with momentum) shows the step itself: the update of the global batch, whatever the order of
// the sum. AdamW adds its own amplification: its update lr·m̂/(√v̂ + ε) has slope up to lr/ε = 5·10⁶
// in g near g = 0, so the last bit of a coordinate whose per-example terms cancel moves θ by up to
// ~10⁻¹¹ relative per step — the same under any change of summation order (docs/distributed.md).
template <class M, class Rule>
double equality_case(MpiCommunicator& world, const char* name, const M& init, Variant v, Rule rule, double bound) {
  M ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 32, 2, 3);
  const std::size_t B = 8, steps = 12;
  const scenario::Outcome one = scenario::run(problem, init, v, B, steps, distributed::Single{}, rule);
  const scenario::Outcome dp = scenario::run(problem, init, v, B, steps, world, rule);
  const scenario::Outcome again = scenario::run(problem, init, v, B, steps, world, rule);
  const scenario::Outcome native = scenario::run(
      problem, init, v, B, steps, MpiCommunicator(world.handle(), {.reduction = distributed::MpiReduction::native}), rule);
  const double d = scenario::rel_diff(dp.params, one.params), dn = scenario::rel_diff(native.params, one.params);
  if (world.rank() == 0)
    std::printf("equality %-17s %-4s %-5s P=2 vs P=1 after %zu steps: max|dθ|/max|θ| = %.1e (rank-ordered), %.1e "
                "(MPI_Allreduce); bound %.0e\n",
                name, v == Variant::dft ? "DFT" : "DFT2", std::is_same_v<Rule, Sgd<double>> ? "SGD" : "AdamW", steps, d, dn, bound);
  EXPECT(d <= bound);
  EXPECT(dn <= bound);
  EXPECT(scenario::bit_equal(dp.params, again.params));  // bitwise at a fixed world size
  EXPECT(replicas_identical(world, dp.params));
  EXPECT(replicas_identical(world, native.params));
  EXPECT(std::fabs(dp.loss - one.loss) <= bound * std::max(1.0, std::fabs(one.loss)));
  std::map<std::int64_t, double> u1(one.u.begin(), one.u.end());
  std::size_t mine = 0;
  for (const auto& [id, u] : dp.u) {
    EXPECT(static_cast<std::size_t>(id) % 2 == world.rank());
    EXPECT(u1.count(id) == 1 && std::fabs(u - u1[id]) <= bound * std::max(1.0, std::fabs(u1[id])));
    ++mine;
  }
  const auto counts = distributed::all_gather_values(world, static_cast<std::uint64_t>(mine));
  EXPECT(counts[0] + counts[1] == u1.size());  // every u_i of the P = 1 run, on exactly one rank
  return std::max(d, dn);
}

void equality(MpiCommunicator& world) {
  CategoricalPolicy<double> policy(6, 6);
  std::mt19937_64 rng(1);
  std::normal_distribution<double> z(0, 0.5);
  for (double& x : policy.parameters()) x = z(rng);
  const TinyLm<double> lm(lm_config(), 5);
  const Sgd<double> sgd({.momentum = 0.9});
  double worst_sgd = 0, worst_adam = 0;
  for (Variant v : {Variant::dft, Variant::dft2}) {
    worst_sgd = std::max(worst_sgd, equality_case(world, "CategoricalPolicy", policy, v, sgd, 1e-12));
    worst_sgd = std::max(worst_sgd, equality_case(world, "TinyLm", lm, v, sgd, 1e-12));
    worst_adam = std::max(worst_adam, equality_case(world, "CategoricalPolicy", policy, v, AdamW<double>{}, 1e-12));
    worst_adam = std::max(worst_adam, equality_case(world, "TinyLm", lm, v, AdamW<double>{}, 1e-8));
  }
  if (world.rank() == 0) std::printf("equality: worst relative difference SGD %.1e, AdamW %.1e\n", worst_sgd, worst_adam);
}

// ---- gradient accumulation ------------------------------------------------------------------
void accumulate(MpiCommunicator& world) {
  const TinyLm<double> lm(lm_config(), 5);
  TinyLm<double> ref = lm;
  const scenario::Problem problem = scenario::make_problem(ref, 30, 2, 3);  // 30 mod 8: a short last batch
  const Sgd<double> sgd({.momentum = 0.9});
  for (Variant v : {Variant::dft, Variant::dft2}) {
    const auto big = scenario::run_accumulated(problem, lm, v, 8, 6, 0, distributed::Single{}, sgd);
    for (std::size_t k : {1, 2, 4}) {
      const auto acc = scenario::run_accumulated(problem, lm, v, 8, 6, k, world, sgd);
      const double d = scenario::rel_diff(acc.params, big.params);
      if (world.rank() == 0)
        std::printf("accumulate TinyLm %-4s P=2 k=%zu vs the big batch at P=1 after 6 steps: max|dθ|/max|θ| = %.1e\n",
                    v == Variant::dft ? "DFT" : "DFT2", k, d);
      EXPECT(d <= 1e-15);
      EXPECT(std::fabs(acc.loss - big.loss) <= 1e-14 * std::fabs(big.loss));
      EXPECT(replicas_identical(world, acc.params));
    }
  }
  // Ranks that disagree on k: the same named error on both, nothing written.
  scenario::Trainer<TinyLm<double>, MpiCommunicator, Sgd<double>> t(problem, lm, Variant::dft, 8, world);
  const auto parts = scenario::split(problem, t.batches.local_batch(0), world.rank() == 1 ? 3 : 2);
  std::vector<DftBatch<double>> views;
  for (const auto& b : parts) views.push_back(b.view());
  const std::vector<double> p0 = t.params();
  const std::string e = error_of([&] { t.opt.step(std::span<const DftBatch<double>>(views)); });
  EXPECT(e == "micro-batch count: got 3 on rank 1, expected 2 as on rank 0 (every rank of a step must agree)");
  EXPECT(same_everywhere(world, e));
  EXPECT(scenario::bit_equal(t.params(), p0) && t.opt.steps() == 0);
}

// ---- bad input on one rank ------------------------------------------------------------------
void bad_input(MpiCommunicator& world) {
  const TinyLm<double> init(lm_config(), 7);
  TinyLm<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 24, 2, 9);
  const std::size_t B = 6;
  const scenario::Outcome clean = scenario::run(problem, init, Variant::dft, B, 6, world);
  struct Case {
    std::string name;
    std::function<void(scenario::Batch&)> spoil;  // rank 1 only
    std::string error;
  };
  const std::vector<Case> cases{
      {"an id of rank 0", [](scenario::Batch& b) { b.ids[0] = 0; },
       "rank 1 of 2: ids[0]: got 0, expected an id this estimator's shard owns, rank 1 of 2 (ids with id mod 2 = 1) (a rank "
       "samples only its own examples; this id belongs to rank 0)"},
      {"a NaN log π_ref", [](scenario::Batch& b) { b.ref[1] = std::nan(""); },
       "rank 1 of 2: ref_neg_logp[1]: got nan, expected a finite number"},
      {"an id out of range", [](scenario::Batch& b) { b.ids[0] = 1001; },
       "rank 1 of 2: ids[0]: got 1001, expected an example id in [0, num_examples = 24)"},
      {"a batch of the wrong size", [](scenario::Batch& b) { b.ref.pop_back(); },
       "rank 1 of 2: ref_neg_logp: got size "},
  };
  for (const Case& c : cases) {
    scenario::Trainer<TinyLm<double>, MpiCommunicator> t(problem, init, Variant::dft, B, world);
    t.train(3);
    const std::vector<double> p0 = t.params();
    const std::vector<double> u0(t.est.raw_log_u().begin(), t.est.raw_log_u().end());
    scenario::Batch bad = t.next_batch();
    if (world.rank() == 1) c.spoil(bad);
    const std::string e = error_of([&] { t.opt.step(bad.view()); });
    if (world.rank() == 0) std::printf("bad_input %-26s -> every rank: %s\n", c.name.c_str(), e.c_str());
    EXPECT(e.starts_with(c.error));
    EXPECT(same_everywhere(world, e));
    EXPECT(scenario::bit_equal(t.params(), p0));
    EXPECT(scenario::bit_equal(t.est.raw_log_u(), u0));
    EXPECT(t.opt.steps() == 3);
    t.train(3);
    EXPECT(scenario::bit_equal(t.params(), clean.params));
  }
  // Replicas: the same model on both ranks passes; a model seeded per rank is refused on both.
  scenario::Trainer<TinyLm<double>, MpiCommunicator> same(problem, init, Variant::dft, B, world);
  EXPECT(error_of([&] { distributed::check_replicas(same.opt); }) == test::no_error);
  scenario::Trainer<TinyLm<double>, MpiCommunicator> seeded(problem, TinyLm<double>(lm_config(), 7 + world.rank()), Variant::dft, B,
                                                           world);
  const std::string e = error_of([&] { distributed::check_replicas(seeded.opt); });
  if (world.rank() == 0) std::printf("bad_input %-26s -> every rank: %s\n", "a model seed per rank", e.c_str());
  EXPECT(e.starts_with("replicas: got parameters, rule state or options that differ from rank 0's on rank 1 of 2, expected"));
  EXPECT(same_everywhere(world, e));
}

// ---- checkpoints: re-sharding and a killed rank --------------------------------------------
using Lm = TinyLm<double>;

struct State {
  std::size_t steps = 0;
  std::vector<double> params, log_u;
  std::vector<unsigned char> seen;
  bool operator==(const State& o) const {
    return steps == o.steps && scenario::bit_equal(params, o.params) && scenario::bit_equal(log_u, o.log_u) && seen == o.seen;
  }
};

template <class T>
State state_of(T& t) {
  return {t.opt.steps(), t.params(), {t.est.raw_log_u().begin(), t.est.raw_log_u().end()},
          {t.est.raw_seen().begin(), t.est.raw_seen().end()}};
}

struct Setup {
  Lm init{lm_config(), 21};
  scenario::Problem problem = [this] {
    Lm ref = init;
    return scenario::make_problem(ref, 30, 2, 22);
  }();
  static constexpr std::size_t B = 8;
  template <class Comm>
  std::unique_ptr<scenario::Trainer<Lm, Comm>> trainer(Comm c) const {
    return std::make_unique<scenario::Trainer<Lm, Comm>>(problem, init, Variant::dft, B, c);
  }
};

// Runs f on rank 0 alone (a world of one inside the job); an error there is every rank's error.
void on_rank0(MpiCommunicator& world, const std::function<void()>& f) {
  distributed::agree(world, [&] {
    if (world.rank() == 0) f();
  });
}

void fresh(MpiCommunicator& world, const std::filesystem::path& dir) {
  on_rank0(world, [&] {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  });
}

void reshard(MpiCommunicator& world, const std::filesystem::path& work) {
  const Setup s;
  const auto a = work / "p2", b = work / "p1";
  fresh(world, a);
  fresh(world, b);
  auto straight = s.trainer(world);
  straight->train(10);
  {
    auto t = s.trainer(world);
    t->train(4);
    io::save_sharded(a, t->opt);  // P = 2
  }
  on_rank0(world, [&] {  // P = 1: load both shards, save one
    auto t = s.trainer(distributed::Single{});
    io::load_sharded(a, t->opt);
    EXPECT(t->opt.steps() == 4);
    io::save_sharded(b, t->opt);
  });
  for (const auto& dir : {b, a}) {  // P = 2 again, from the P = 1 set and from the original one
    auto t = s.trainer(world);
    io::load_sharded(dir, t->opt);
    t->train(6);
    EXPECT(state_of(*t) == state_of(*straight));
    if (world.rank() == 0)
      std::printf("reshard: P=2 -> save%s -> load at P=2 -> 6 more steps %s the uninterrupted run\n",
                  dir == b ? " -> load at P=1 -> save" : "", state_of(*t) == state_of(*straight) ? "equals, bit for bit," : "DIFFERS from");
  }
}

// Checkpoints after steps 2, 4, 6; rank 1 SIGKILLs itself during step 7. mpirun must end the job.
void kill_run(MpiCommunicator& world, const std::filesystem::path& dir) {
  const Setup s;
  fresh(world, dir);
  auto t = s.trainer(world);
  for (std::size_t step = 1; step <= 10; ++step) {
    if (step == 7 && world.rank() == 1) {
      std::printf("kill_run: rank 1 raises SIGKILL in step 7 (last committed checkpoint: step 6)\n");
      std::fflush(stdout);
      std::raise(SIGKILL);
    }
    t->train(1);
    if (step % 2 == 0) io::save_sharded(dir, t->opt);
  }
  std::printf("kill_run: rank %zu finished, which it must not\n", world.rank());
  ++failures;
}

// The set kill_run left: it is the step-6 state of an uninterrupted run, at P = 2 and at P = 1.
void kill_verify(MpiCommunicator& world, const std::filesystem::path& dir) {
  const Setup s;
  auto straight = s.trainer(world);
  straight->train(6);
  const State at6 = state_of(*straight);
  straight->train(4);
  auto t = s.trainer(world);
  io::load_sharded(dir, t->opt);
  EXPECT(state_of(*t) == at6);
  t->train(4);
  EXPECT(state_of(*t) == state_of(*straight));
  on_rank0(world, [&] {
    auto one = s.trainer(distributed::Single{});
    io::load_sharded(dir, one->opt);
    EXPECT(one->opt.steps() == 6);
    EXPECT(scenario::bit_equal(one->params(), at6.params));
  });
  if (world.rank() == 0)
    std::printf("kill_verify: the committed set holds step %zu and resumes to the uninterrupted run%s\n", t->opt.steps() - 4,
                failures == 0 ? ", bit for bit" : " — NOT equal");
}

// ---- chaos: random SIGKILLs, automatic restarts ----------------------------------------------
std::atomic<int> chaos_phase{0};  // what the main thread is doing: 0 loading, 1 a step, 2 a save, 3 done
std::atomic<std::size_t> chaos_step{0};

// Rank `victim` (drawn from (attempt)) starts a thread that SIGKILLs the process after a random
// delay in [0, max_ms) ms, printing where the main thread was; the other rank is ended by mpirun.
void chaos_killer(std::size_t rank, std::uint64_t attempt, unsigned max_ms) {
  std::mt19937_64 rng(0x9e3779b97f4a7c15ull * (attempt + 1));
  const std::size_t victim = rng() % 2;
  const auto delay = std::chrono::microseconds(rng() % (1000ull * max_ms));
  if (rank != victim) return;
  std::thread([attempt, rank, delay] {
    std::this_thread::sleep_for(delay);
    static const char* phases[] = {"the load", "a step", "a save", "the end"};
    char line[160];
    const int n = std::snprintf(line, sizeof line, "chaos: attempt %llu: SIGKILL rank %zu after %.1f ms, during %s (step %zu)\n",
                                static_cast<unsigned long long>(attempt), rank, delay.count() / 1000.0, phases[chaos_phase.load()],
                                chaos_step.load());
    if (n > 0) (void)!::write(2, line, static_cast<std::size_t>(n));
    std::raise(SIGKILL);
  }).detach();
}

constexpr std::size_t chaos_steps_default = 40;

// Resume from dir's committed set (if any), train to `steps` saving after every step.
void chaos_run(MpiCommunicator& world, const std::filesystem::path& dir, std::uint64_t attempt, bool kill, unsigned max_ms,
               std::size_t steps) {
  const Setup s;
  if (kill) chaos_killer(world.rank(), attempt, max_ms);
  auto t = s.trainer(world);
  int fresh_start = 0;
  on_rank0(world, [&] {
    std::filesystem::create_directories(dir);
    fresh_start = std::filesystem::exists(dir / "manifest.ckpt") ? 0 : 1;
  });
  distributed::broadcast_values(world, std::span<int>(&fresh_start, 1), 0);
  if (!fresh_start) io::load_sharded(dir, t->opt);
  const std::size_t from = t->opt.steps();
  while (t->opt.steps() < steps) {
    chaos_step = t->opt.steps();
    chaos_phase = 1;
    t->train(1);
    chaos_phase = 2;
    io::save_sharded(dir, t->opt);
  }
  chaos_phase = 3;
  world.barrier();
  if (world.rank() == 0)
    std::printf("chaos: attempt %llu ran steps %zu..%zu and ended normally\n", static_cast<unsigned long long>(attempt), from,
                t->opt.steps());
}

void chaos_verify(MpiCommunicator& world, const std::filesystem::path& dir, std::size_t steps) {
  const Setup s;
  auto straight = s.trainer(world);
  straight->train(steps);
  auto t = s.trainer(world);
  io::load_sharded(dir, t->opt);
  const bool same = state_of(*t) == state_of(*straight);
  EXPECT(t->opt.steps() == steps);
  EXPECT(same);
  if (world.rank() == 0)
    std::printf("chaos_verify: the committed set holds step %zu and %s the uninterrupted run of %zu steps\n", t->opt.steps(),
                same ? "equals, bit for bit," : "DIFFERS from", steps);
}

}  // namespace

int main(int argc, char** argv) {
  distributed::MpiSession session(argc, argv);
  MpiCommunicator world;
  my_rank = world.rank();
  const std::string name = argc > 1 ? argv[1] : "";
  const std::filesystem::path work = argc > 2 ? argv[2] : "test_mpi_work";
  if (world.size() != 2) {
    std::fprintf(stderr, "test_mpi: run me as mpirun -np 2 test_mpi CASE WORKDIR (got %zu ranks)\n", world.size());
    return 2;
  }
  try {
    if (name == "collectives") collectives(world);
    else if (name == "equality") equality(world);
    else if (name == "bad_input") bad_input(world);
    else if (name == "accumulate") accumulate(world);
    else if (name == "reshard") reshard(world, work);
    else if (name == "kill_run") kill_run(world, work);
    else if (name == "chaos_run" || name == "chaos_verify") {
      // chaos_run WORK ATTEMPT KILL(0|1) MAX_MS STEPS; chaos_verify WORK STEPS
      auto arg = [&](int i, unsigned long long fallback) { return argc > i ? std::stoull(argv[i]) : fallback; };
      if (name == "chaos_run")
        chaos_run(world, work, arg(3, 0), arg(4, 1) != 0, static_cast<unsigned>(arg(5, 300)), arg(6, chaos_steps_default));
      else chaos_verify(world, work, arg(3, chaos_steps_default));
    }
    else if (name == "kill_verify") kill_verify(world, work);
    else {
      std::fprintf(stderr, "test_mpi: unknown case '%s'\n", name.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    ++failures;
    std::fprintf(stderr, "rank %zu: test_mpi %s: uncaught: %s\n", my_rank, name.c_str(), e.what());
  }
  const auto all = distributed::all_gather_values(world, failures);
  const int total = all[0] + all[1];
  if (world.rank() == 0) std::printf("test_mpi %s: %s (%d failed checks)\n", name.c_str(), total == 0 ? "PASS" : "FAIL", total);
  return total == 0 ? 0 : 1;
}
