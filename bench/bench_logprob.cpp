// Timings for the token log-prob reductions (generic oracle vs CPU fast path), a STREAM-like triad
// for the machine's memory bandwidth, and dft_step beside the reductions of the same batch.
// scripts/bench_cpu.sh runs this with PyTorch's numbers and prints the ratios; the names of the
// benchmarks are parsed there: <kind>/<path>/<type>/<op>/V:<V>/N:<N>/threads:<t>.
#include "bench_env.hpp"

#include <dftune/logprob/cpu/fast.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/logprob.hpp>
#include <dftune/objective/dft.hpp>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <omp.h>
#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

using dftune::token_t;
using dftune::logprob::compute_t;
using dftune::logprob::TokenLogits;
using dftune::logprob::cpu::bf16;
namespace cpu = dftune::logprob::cpu;
namespace generic = dftune::logprob::generic;

namespace {

// Tokens per sequence in the reduction benchmarks; every row is weighted (the worst case).
constexpr std::size_t kSeqLen = 64;

// Big buffers on transparent huge pages: this VM takes ~15 µs per 4 KiB page fault, so first-
// touching a 4 GiB batch page by page would take longer than benchmarking it.
template <class T>
class HugeBuffer {
 public:
  explicit HugeBuffer(std::size_t n) : n_(n), bytes_(std::max<std::size_t>(n * sizeof(T), 1)) {
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    madvise(p, bytes_, MADV_HUGEPAGE);
    p_ = static_cast<T*>(p);
  }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  ~HugeBuffer() { munmap(p_, bytes_); }
  T* data() { return p_; }
  std::span<T> span() { return {p_, n_}; }
  std::span<const T> span() const { return {p_, n_}; }
  T& operator[](std::size_t i) { return p_[i]; }

 private:
  T* p_ = nullptr;
  std::size_t n_, bytes_;
};

template <class T>
struct Batch {
  using C = compute_t<T>;
  std::size_t V = 0, N = 0;
  HugeBuffer<T> logits;
  std::vector<token_t> targets;
  std::vector<std::int64_t> offsets;
  std::vector<C> seq, d_seq, lse, token;
  std::vector<std::byte> workspace;

  Batch(std::size_t v, std::size_t n, std::size_t seq_len = kSeqLen) : V(v), N(n), logits(v * n) {
    // A cheap, deterministic spread of logits in [-8, 8); filling GBs with a PRNG would take longer
    // than the benchmarks.
    const auto total = static_cast<std::ptrdiff_t>(v * n);
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t i = 0; i < total; ++i) {
      const auto h = static_cast<std::uint32_t>(i) * 2654435761u;
      logits[static_cast<std::size_t>(i)] = static_cast<T>(static_cast<float>(h >> 8) * (16.0f / 16777216.0f) - 8.0f);
    }
    for (std::size_t r = 0; r < n; ++r) targets.push_back(static_cast<token_t>((r * 7919) % v));
    for (std::size_t o = 0; o < n; o += seq_len) offsets.push_back(static_cast<std::int64_t>(o));
    offsets.push_back(static_cast<std::int64_t>(n));
    seq.resize(offsets.size() - 1);
    d_seq.assign(seq.size(), C(0.5));
    lse.resize(n);
    token.resize(n);
    workspace.resize(cpu::workspace_size(view()));
  }
  TokenLogits<T> view() const { return {.logits = logits.span(), .vocab = V, .targets = targets, .weights = {}, .offsets = offsets}; }
};

// One batch alive at a time: the largest is 4 GiB.
template <class T>
Batch<T>& batch(std::size_t V, std::size_t N) {
  static std::shared_ptr<void> holder;
  static std::string key;
  const std::string want = std::string(typeid(T).name()) + "/" + std::to_string(V) + "/" + std::to_string(N);
  if (key != want) {
    holder.reset();
    holder = std::make_shared<Batch<T>>(V, N);
    key = want;
  }
  return *static_cast<Batch<T>*>(holder.get());
}

enum class Op { forward, backward, fused };
enum class Path { generic, fast };

template <class T>
void run_op(Batch<T>& b, Path path, Op op) {
  using C = compute_t<T>;
  const auto in = b.view();
  const std::span<T> grad = b.logits.span();  // in place
  if (op != Op::backward) {
    if (path == Path::fast)
      cpu::forward(in, std::span<C>(b.seq), {}, std::span<C>(b.lse), std::span<std::byte>(b.workspace));
    else
      generic::forward(in, std::span<C>(b.seq), {}, std::span<C>(b.lse));
  }
  if (op != Op::forward) {
    if (path == Path::fast)
      cpu::backward(in, std::span<const C>(b.d_seq), grad, std::span<const C>(b.lse));
    else
      generic::backward(in, std::span<const C>(b.d_seq), grad, std::span<const C>(b.lse));
  }
}

// Bytes that must cross the memory bus: the forward reads the logits once, the in-place backward
// reads and writes them once; everything else is O(N).
double must_move(Op op, std::size_t elems, std::size_t elem_bytes) {
  const double passes = op == Op::forward ? 1 : op == Op::backward ? 2 : 3;
  return passes * static_cast<double>(elems) * static_cast<double>(elem_bytes);
}

template <class T>
void bm_logprob(benchmark::State& state, Path path, Op op, std::size_t V, std::size_t N, int threads) {
  omp_set_num_threads(threads);
  auto& b = batch<T>(V, N);
  if (op == Op::backward) run_op(b, path, Op::forward);  // row_lse for the backward
  for (auto _ : state) {
    run_op(b, path, op);
    benchmark::DoNotOptimize(b.seq.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(must_move(op, V * N, sizeof(T)) * static_cast<double>(state.iterations())));
}

// STREAM triad a = b + s·c over 3 × 512 MiB; bytes counted as STREAM does (24 per element, no
// write-allocate). OpenMP static schedule; the arrays are allocated once and touched by the
// threads that use them.
constexpr std::ptrdiff_t kTriadN = std::ptrdiff_t{1} << 26;
struct Triad {
  HugeBuffer<double> a{kTriadN}, b{kTriadN}, c{kTriadN};
  Triad() {
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t i = 0; i < kTriadN; ++i) a[i] = 0, b[i] = 1, c[i] = 2;
  }
};
Triad& triad() {
  static Triad t;
  return t;
}

void bm_triad(benchmark::State& state, int threads) {
  omp_set_num_threads(threads);
  double* a = triad().a.data();
  const double* b = triad().b.data();
  const double* c = triad().c.data();
  const double s = 3;
  for (auto _ : state) {
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t i = 0; i < kTriadN; ++i) a[i] = b[i] + s * c[i];
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(24.0 * static_cast<double>(kTriadN) * static_cast<double>(state.iterations())));
}

// Read-only bandwidth (a sum over b and c, Eigen-vectorised per 32 KiB chunk): the forward only reads.
void bm_read(benchmark::State& state, int threads) {
  omp_set_num_threads(threads);
  constexpr std::ptrdiff_t chunk = 4096;
  const double* b = triad().b.data();  // b and c are adjacent mappings only by chance: sum each
  const double* c = triad().c.data();
  for (auto _ : state) {
    double sum = 0;
    DFTUNE_OMP(parallel for schedule(static) reduction(+ : sum))
    for (std::ptrdiff_t k = 0; k < 2 * kTriadN / chunk; ++k) {
      const double* p = k < kTriadN / chunk ? b + k * chunk : c + (k - kTriadN / chunk) * chunk;
      sum += Eigen::Map<const Eigen::ArrayXd>(p, chunk).sum();
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(16.0 * static_cast<double>(kTriadN) * static_cast<double>(state.iterations())));
}

// dft_step on B examples × m negatives, and the fused reduction of that batch's B·(1+m) sequences
// of `len` tokens at vocabulary V: the objective must be negligible beside it.
struct DftBatch {
  std::vector<std::int64_t> ids, pos_len, neg_len;
  std::vector<float> pos, neg, ref;
  dftune::Estimator<float> est;
  dftune::DftOptions opt{.tau = 1.0, .gamma = 0.85};
  std::size_t m;
  DftBatch(std::size_t B, std::size_t m_, std::size_t len) : est(1 << 16, {}), m(m_) {
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<float> lp(-60.f, -5.f);
    for (std::size_t i = 0; i < B; ++i) {
      ids.push_back(static_cast<std::int64_t>(i * 97));
      pos.push_back(lp(rng));
      pos_len.push_back(static_cast<std::int64_t>(len));
      for (std::size_t j = 0; j < m; ++j) {
        neg.push_back(lp(rng));
        ref.push_back(lp(rng));
        neg_len.push_back(static_cast<std::int64_t>(len));
      }
    }
  }
  dftune::SequenceScores<float> view() const {
    return {.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .pos_len = pos_len, .neg_len = neg_len, .num_negatives = m};
  }
};

void bm_dft_step(benchmark::State& state, std::size_t B, std::size_t m, std::size_t len) {
  DftBatch d(B, m, len);
  for (auto _ : state) {
    auto r = dftune::dft_step(d.view(), d.est, d.opt);
    benchmark::DoNotOptimize(r.loss);
  }
}

void bm_dft_reduction(benchmark::State& state, std::size_t B, std::size_t m, std::size_t len, std::size_t V, int threads) {
  omp_set_num_threads(threads);
  const std::size_t N = B * (1 + m) * len;
  Batch<float> b(V, N, len);
  for (auto _ : state) {
    run_op(b, Path::fast, Op::fused);
    benchmark::ClobberMemory();
  }
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const int max_threads = env_int("DFTUNE_BENCH_THREADS", omp_get_num_procs());
  const bool quick = env_int("DFTUNE_BENCH_QUICK", 0) != 0;
  std::vector<int> thread_counts{1};
  if (max_threads > 1) thread_counts.push_back(max_threads);
  // Other jobs may share the machine: each figure is the minimum of `reps` repetitions (noise only
  // ever adds time), taken by bench/report.py.
  const int reps = env_int("DFTUNE_BENCH_REPS", quick ? 2 : 3);
  auto reg = [quick, reps](const std::string& name, auto fn) {
    return benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(quick ? 0.05 : 0.2)->Repetitions(reps);
  };
  for (int t : thread_counts) {
    reg("bw/triad/threads:" + std::to_string(t), [t](benchmark::State& s) { bm_triad(s, t); });
    reg("bw/read/threads:" + std::to_string(t), [t](benchmark::State& s) { bm_read(s, t); });
  }

  const std::vector<std::size_t> vocabs = quick ? std::vector<std::size_t>{32000} : std::vector<std::size_t>{32000, 128256, 256000};
  const std::vector<std::size_t> rows = quick ? std::vector<std::size_t>{512} : std::vector<std::size_t>{512, 4096};
  const std::pair<Op, const char*> ops[] = {{Op::forward, "forward"}, {Op::backward, "backward"}, {Op::fused, "fused"}};
  auto add = [&]<class T>(const char* type, std::size_t V, std::size_t N, bool with_generic) {
    for (auto [op, op_name] : ops) {
      const std::string shape = std::string("/") + op_name + "/V:" + std::to_string(V) + "/N:" + std::to_string(N);
      for (int t : thread_counts)
        reg(std::string("logprob/fast/") + type + shape + "/threads:" + std::to_string(t),
            [=](benchmark::State& s) { bm_logprob<T>(s, Path::fast, op, V, N, t); });
      // The generic path is serial.
      if (with_generic)
        benchmark::RegisterBenchmark((std::string("logprob/generic/") + type + shape + "/threads:1").c_str(),
                                     [=](benchmark::State& s) { bm_logprob<T>(s, Path::generic, op, V, N, 1); })
            ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
    }
  };
  // Compute ceilings: one core on a batch that stays in L2 (V = 32000, N = 4: 0.25-1 MiB).
  auto ceiling = [&]<class T>(const char* type) {
    for (auto [op, op_name] : ops)
      reg(std::string("ceiling/fast/") + type + "/" + op_name + "/V:32000/N:4/threads:1",
          [op](benchmark::State& s) { bm_logprob<T>(s, Path::fast, op, 32000, 4, 1); });
  };
  ceiling.template operator()<float>("float");
  ceiling.template operator()<bf16>("bf16");
  ceiling.template operator()<double>("double");

  for (std::size_t V : vocabs)
    for (std::size_t N : rows) {
      add.template operator()<float>("float", V, N, N == 512);  // the oracle at N = 4096 takes ~1 min per op
      add.template operator()<bf16>("bf16", V, N, false);
      if (static_cast<double>(V) * static_cast<double>(N) * 8 <= 4.5e9) add.template operator()<double>("double", V, N, false);
    }

  // dft_step vs the reductions of the same batch (B = 64, 16 tokens per sequence, V = 32000).
  for (std::size_t m : {2u, 4u, 8u, 16u}) {
    reg("dft/step/B:64/m:" + std::to_string(m), [m](benchmark::State& s) { bm_dft_step(s, 64, m, 16); })->Unit(benchmark::kMicrosecond);
    reg("dft/reduction/B:64/m:" + std::to_string(m) + "/threads:" + std::to_string(max_threads),
        [m, max_threads](benchmark::State& s) { bm_dft_reduction(s, 64, m, 16, 32000, max_threads); });
  }

  benchmark::Initialize(&argc, argv);
  // The environment the figures were measured in, in the JSON's "context" (bench_env.hpp).
  benchmark::AddCustomContext("env", bench_env::env_json("none (reductions; no GEMM)"));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
