// Sharded checkpoints of data-parallel runs (io/sharded_checkpoint.hpp), over a world of threads:
// re-sharding between world sizes resumes bit for bit, the manifest commits a set (a failed save
// leaves the previous set committed, stale files of an unfinished save are ignored and removed),
// and a damaged set is the same named error on every rank with nothing changed. The same round
// trip runs under mpirun in tests/mpi/.
#include "support/testing.hpp"
#include "distributed/scenario.hpp"
#include "distributed/thread_world.hpp"

#include <dftune/io/checkpoint.hpp>
#include <dftune/io/sharded_checkpoint.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

using namespace dftune;
namespace fs = std::filesystem;
using World = test::ThreadWorld;
using test::error_of;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("dftune_test_sharded_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  return d;
}

struct Fixture {
  CategoricalPolicy<double> init = [] {
    CategoricalPolicy<double> p(6, 6);
    std::mt19937_64 rng(3);
    std::normal_distribution<double> z(0, 0.5);
    for (double& x : p.parameters()) x = z(rng);
    return p;
  }();
  scenario::Problem problem = [this] {
    CategoricalPolicy<double> ref = init;
    return scenario::make_problem(ref, 30, 2, 4);
  }();
  static constexpr std::size_t B = 8;
};

// A rank's whole state, to compare bit for bit.
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

template <class Comm>
using Trainer = scenario::Trainer<CategoricalPolicy<double>, Comm>;

// Runs body(trainer) on every rank of a world of P (P = 1: the Single communicator); returns each
// rank's final state.
std::vector<State> on_world(std::size_t P, const Fixture& f, const std::function<void(Trainer<World::Comm>&)>& body,
                            const std::function<void(Trainer<distributed::Single>&)>& body1 = {}) {
  std::vector<State> out(P);
  if (P == 1) {
    Trainer<distributed::Single> t(f.problem, f.init, Variant::dft, f.B, {});
    body1(t);
    out[0] = state_of(t);
  } else {
    World w(P);
    w.run([&](World::Comm& c) {
      Trainer<World::Comm> t(f.problem, f.init, Variant::dft, f.B, c);
      body(t);
      out[c.rank()] = state_of(t);
    });
  }
  return out;
}

}  // namespace

TEST_CASE("P → save → load at P = 1 → save → load at P → the uninterrupted run, bit for bit") {
  const Fixture f;
  for (std::size_t P : {2, 3}) {
    CAPTURE(P);
    const fs::path a = fresh_dir("a"), b = fresh_dir("b");
    const auto straight = on_world(P, f, [](auto& t) { t.train(10); });
    const auto saved = on_world(P, f, [&](auto& t) {
      t.train(4);
      io::save_sharded(a, t.opt);
    });
    State at_one;
    on_world(1, f, {}, [&](auto& t) {
      io::load_sharded(a, t.opt);  // P shards → one
      at_one = state_of(t);
      io::save_sharded(b, t.opt);
    });
    CHECK(at_one.steps == 4);
    for (std::size_t r = 0; r < P; ++r) {  // every u_i of every shard, now on the one rank
      CHECK(scenario::bit_equal(at_one.params, saved[r].params));
      const distributed::Shard s{.rank = r, .size = P};
      for (std::size_t k = 0; k < saved[r].seen.size(); ++k) {
        const auto id = static_cast<std::size_t>(s.global_id(k));
        CHECK(at_one.seen[id] == saved[r].seen[k]);
        CHECK(std::bit_cast<std::uint64_t>(at_one.log_u[id]) == std::bit_cast<std::uint64_t>(saved[r].log_u[k]));
      }
    }
    const auto resumed = on_world(P, f, [&](auto& t) {
      io::load_sharded(b, t.opt);  // one shard → P
      t.train(6);
    });
    for (std::size_t r = 0; r < P; ++r) CHECK(resumed[r] == straight[r]);
    // and at another world size the run goes on too (numerically the same run: ≤ 1e-12)
    const auto other = on_world(P == 2 ? 3 : 2, f, [&](auto& t) {
      io::load_sharded(a, t.opt);
      t.train(6);
    });
    CHECK(scenario::rel_diff(other[0].params, straight[0].params) <= 1e-12);
    fs::remove_all(a);
    fs::remove_all(b);
  }
}

TEST_CASE("the manifest commits a set: a failed save leaves the previous set; stale files are ignored, then removed") {
  const Fixture f;
  const fs::path d = fresh_dir("commit");
  const auto after2 = on_world(2, f, [&](auto& t) {
    t.train(2);
    io::save_sharded(d, t.opt);
  });
  CHECK(fs::exists(d / "manifest.ckpt"));
  CHECK(fs::exists(d / "g1-optimizer.ckpt"));
  CHECK(fs::exists(d / "g1-shard-1-of-2.ckpt"));
  // An obstacle where rank 1's next shard goes: its write fails, so does the save, on both ranks.
  fs::create_directories(d / "g2-shard-1-of-2.ckpt" / "x");
  std::vector<std::string> errors(2);
  on_world(2, f, [&](auto& t) {
    t.train(4);
    errors[t.opt.communicator().rank()] = error_of([&] { io::save_sharded(d, t.opt); });
  });
  CHECK(errors[0] == errors[1]);
  CHECK(errors[0] == "rank 1 of 2: checkpoint " + (d / "g2-shard-1-of-2.ckpt").string() + ": path: got \"" +
                         (d / "g2-shard-1-of-2.ckpt").string() +
                         "\", expected a location the temporary file can be renamed to (Is a directory)");
  const auto loaded = on_world(2, f, [&](auto& t) { io::load_sharded(d, t.opt); });
  CHECK(loaded == after2);  // generation 1 is still the committed set
  // Stale files of a save that never committed (a crash): ignored by load, removed by the next save.
  fs::remove_all(d / "g2-shard-1-of-2.ckpt");
  std::ofstream(d / "g7-shard-0-of-2.ckpt") << "half a file";
  const auto again = on_world(2, f, [&](auto& t) { io::load_sharded(d, t.opt); });
  CHECK(again == after2);
  const auto after5 = on_world(2, f, [&](auto& t) {
    io::load_sharded(d, t.opt);
    t.train(3);
    io::save_sharded(d, t.opt);
  });
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(d)) names.insert(e.path().filename().string());
  CHECK(names == std::set<std::string>{"manifest.ckpt", "g8-optimizer.ckpt", "g8-shard-0-of-2.ckpt", "g8-shard-1-of-2.ckpt"});
  const auto last = on_world(2, f, [&](auto& t) { io::load_sharded(d, t.opt); });
  CHECK(last == after5);
  fs::remove_all(d);
}

TEST_CASE("a damaged or mismatched set: the same named error on every rank, nothing loaded anywhere") {
  const Fixture f;
  const fs::path d = fresh_dir("damaged");
  on_world(2, f, [&](auto& t) {
    t.train(3);
    io::save_sharded(d, t.opt);
  });
  auto attempt = [&](std::size_t P) {
    std::vector<std::string> errors(P);
    on_world(P, f, [&](auto& t) {
      t.train(1);
      const State before = state_of(t);
      errors[t.opt.communicator().rank()] = error_of([&] { io::load_sharded(d, t.opt); });
      CHECK(state_of(t) == before);
    });
    for (const auto& e : errors) CHECK(e == errors[0]);
    return errors[0];
  };
  const fs::path shard1 = d / "g1-shard-1-of-2.ckpt";
  {  // a valid shard of another run in its place: refused by the manifest's entry
    const fs::path other = fresh_dir("other");
    on_world(2, f, [&](auto& t) {
      t.train(2);
      io::save_sharded(other, t.opt);
    });
    const fs::path kept = d / "kept";
    fs::copy_file(shard1, kept);
    fs::copy_file(other / "g1-shard-1-of-2.ckpt", shard1, fs::copy_options::overwrite_existing);
    const std::string e = attempt(2);
    CHECK(e.starts_with("rank 1 of 2: checkpoint " + shard1.string() + ": checksum: got "));
    CHECK(e.ends_with(", the manifest's (the set is damaged or mixed with another)"));
    fs::rename(kept, shard1);
    fs::remove_all(other);
  }
  {  // one flipped byte in rank 1's shard
    std::fstream io(shard1, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(40);
    io.put('\x7f');
  }
  const std::string e = attempt(2);
  CHECK(e.starts_with("rank 1 of 2: checkpoint " + shard1.string() + ": checksum: got 0x"));
  CHECK(e.ends_with(", the FNV-1a-64 of the contents (the file is corrupted)"));
  // At P = 3, gcd(2, 3) = 1: every rank reads both old shards, and all three fail.
  CHECK(attempt(3).starts_with("rank 0 of 3 (and 2 more): checkpoint " + shard1.string() + ": checksum: got "));
  fs::remove(shard1);
  CHECK(attempt(2).starts_with("rank 1 of 2: checkpoint " + shard1.string() + ": path: got "));
  fs::remove(d / "manifest.ckpt");
  CHECK(attempt(2).starts_with("rank 0 of 2: checkpoint " + (d / "manifest.ckpt").string() + ": path: got "));
  fs::remove_all(d);
  // Another configuration: N differs.
  const fs::path d2 = fresh_dir("config");
  on_world(2, f, [&](auto& t) { io::save_sharded(d2, t.opt); });
  World w(2);
  std::vector<std::string> errors(2);
  w.run([&](World::Comm& c) {
    CategoricalPolicy<double> model = f.init;
    Estimator<double> est(31, scenario::options(Variant::dft), distributed::shard_of(c));
    DftOptimizer opt(model, est, scenario::options(Variant::dft), AdamW<double>{}, scenario::schedule(), {}, c);
    errors[c.rank()] = error_of([&] { io::load_sharded(d2, opt); });
  });
  CHECK(errors[0] == errors[1]);
  CHECK(errors[0] == "rank 0 of 2 (and 1 more): checkpoint " + (d2 / "manifest.ckpt").string() +
                         ": num_examples: got 30 in the file, expected 31, the value of the object being loaded into "
                         "(a checkpoint restores state, not configuration)");
  fs::remove_all(d2);
}

TEST_CASE("a single-file checkpoint refuses a sharded estimator and points to the sharded one") {
  Estimator<double> est(10, {}, distributed::Shard{.rank = 1, .size = 2});
  CHECK(error_of([&] { (void)io::encode(est); }) ==
        "estimator: got an estimator sharded as rank 1 of 2 (ids with id mod 2 = 1), expected an unsharded one (save and "
        "load a data-parallel run with io::save_sharded / io::load_sharded, io/sharded_checkpoint.hpp)");
  Estimator<double> whole(10, {});
  const auto bytes = io::encode(whole);
  CHECK(error_of([&] { io::decode(bytes, est); }).starts_with("checkpoint: estimator: got an estimator sharded as rank 1 of 2"));
}
