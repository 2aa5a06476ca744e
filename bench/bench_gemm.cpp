// GF/s of each GEMM library the fused linear head can use (gemm.hpp's policies: Eigen, OpenBLAS,
// BLIS, oneDNN, whichever this binary was built with), side by side in one process, on the GEMM
// tasks the head runs for one chunk of rows at the four shapes of bench/RESULTS_fused_linear.md
// (vocab-major W, the plan's chunk_rows, vocab_tile and dim_tile), on 1 and 2 threads: each call
// single-threaded, the tasks of a phase spread over the threads as the head does
//   Z[:, tile]      = Hc W[tile]ᵀ                 (chunk × vocab_tile × d)
//   dHc[:, c0:c0+m] = Σ_tiles G[:, tile] W[tile, c0:c0+m]   (chunk × dim_tile × vocab_tile, accumulated)
//   dW[tile]       += G[:, tile]ᵀ Hc               (vocab_tile × d × chunk)
// over the first `tiles` vocabulary tiles (the tasks are the same shape for every tile). Rounds
// alternate the libraries; each figure is the median round. GF/s are per core: the work over the
// process's CPU time (on a machine shared with other jobs, wall time measures the other jobs too),
// so the figures on 2 threads say how well each thread runs, not the speed-up. Also measures the
// clock the same way (a chain of dependent adds, one per cycle, over CPU time) for the peak:
// FMA units × lanes × 2 flops × clock.
//   cmake --build build --target bench_gemm && OMP_WAIT_POLICY=passive build/bench/bench_gemm [rounds] [tiles]
#include <dftune/logprob/linear/gemm.hpp>
#include <dftune/logprob/linear/linear.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

namespace lin = dftune::logprob::linear;
namespace gm = dftune::logprob::linear::gemm;

namespace {

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double measure_ghz(long iters = 400'000'000) {
  const double t0 = cpu_seconds();
  long x = 0;
  for (long i = 0; i < iters; ++i) asm volatile("add $1, %0" : "+r"(x));  // one dependent add per cycle
  const double s = cpu_seconds() - t0;
  return static_cast<double>(iters) / s / 1e9;
}

struct Shape {
  std::size_t d, V, N;
};

struct Bufs {
  std::vector<float> H, W, Z, dH, dW;
};

template <class Gemm>
double run_chunk(const Bufs& b, Bufs& out, std::size_t d, std::size_t Vs, std::size_t k, std::size_t Vt, std::size_t Dt, int threads) {
  const std::size_t vt_count = Vs / Vt, dt_count = (d + Dt - 1) / Dt;
  const float* Hc = b.H.data();
  const float* W = b.W.data();
  float* Z = out.Z.data();
  const double t0 = cpu_seconds();
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (std::size_t t = 0; t < vt_count; ++t)
      Gemm::template run<true, false>(k, Vt, d, Hc, d, W + t * Vt * d, d, Z + t * Vt, Vs, false);
#pragma omp for schedule(dynamic, 1)
    for (std::size_t task = 0; task < dt_count + vt_count; ++task) {
      if (task < dt_count) {
        const std::size_t c0 = task * Dt, m = std::min(Dt, d - c0);
        for (std::size_t vt = 0; vt < vt_count; ++vt)
          Gemm::template run<true, true>(k, m, Vt, Z + vt * Vt, Vs, W + vt * Vt * d + c0, d, out.dH.data() + c0, d, vt > 0);
      } else {
        const std::size_t v0 = (task - dt_count) * Vt;
        Gemm::template run<false, true>(Vt, d, k, Z + v0, Vs, Hc, d, out.dW.data() + v0 * d, d, true);
      }
    }
  }
  return cpu_seconds() - t0;
}

struct Lib {
  const char* name;
  double (*run)(const Bufs&, Bufs&, std::size_t, std::size_t, std::size_t, std::size_t, std::size_t, int);
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const std::size_t tiles = argc > 2 ? static_cast<std::size_t>(std::atoi(argv[2])) : 8;
  std::vector<Lib> libs{{"Eigen", &run_chunk<gm::EigenGemm>}};
#if defined(DFTUNE_LINEAR_GEMM_CBLAS)
  libs.push_back({"OpenBLAS", &run_chunk<gm::CblasGemm>});
#endif
#if defined(DFTUNE_LINEAR_GEMM_BLIS)
  libs.push_back({"BLIS", &run_chunk<gm::BlisGemm>});
#endif
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
  libs.push_back({"oneDNN", &run_chunk<gm::DnnlGemm>});
#endif
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  const char* isa = std::getenv("DNNL_MAX_CPU_ISA");
#if defined(__AVX512F__)
  const char* build = "-march with AVX-512";
#elif defined(__AVX2__)
  const char* build = "-march with AVX2";
#else
  const char* build = "x86-64 baseline (SSE2)";
#endif
  const double ghz0 = measure_ghz();
  std::printf("# build: %s; OPENBLAS_CORETYPE=%s DNNL_MAX_CPU_ISA=%s OMP_WAIT_POLICY=%s; clock %.2f GHz (dependent adds per CPU second)\n", build,
              coretype ? coretype : "(unset)", isa ? isa : "(unset)", std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "(unset)",
              ghz0);
  const Shape shapes[] = {{512, 32000, 1024}, {512, 128256, 1024}, {2048, 32000, 1024}, {512, 128256, 4096}};
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 1);
  std::printf("| d | V | N | chunk × vocab_tile × dim_tile | threads | GHz |");
  for (const Lib& l : libs) std::printf(" %s GF/s per core |", l.name);
  std::printf("\n|---|---|---|---|---|---|");
  for (std::size_t i = 0; i < libs.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const Shape& sh : shapes) {
    const std::vector<float> hidden(sh.N * sh.d);  // the plan reads N from it
    for (int threads : {1, 2}) {
      const std::vector<std::int64_t> off{0, static_cast<std::int64_t>(sh.N)};
      const std::vector<std::int32_t> tg(sh.N, 0);
      const std::vector<float> w(sh.N, 1.0f);
      lin::LinearLogits<float> in{.hidden = hidden, .proj = {}, .bias = {}, .dim = sh.d, .vocab = sh.V, .layout = lin::Layout::vocab_major,
                                  .targets = tg, .weights = w, .offsets = off};
      const lin::Plan plan = lin::make_plan(in, lin::Options{.threads = static_cast<std::size_t>(threads)});
      const std::size_t k = plan.chunk_rows, Vt = plan.vocab_tile, Dt = plan.dim_tile, Vs = std::min(sh.V / Vt, tiles) * Vt;
      Bufs b, out;
      b.H.resize(k * sh.d);
      b.W.resize(Vs * sh.d);
      for (float& x : b.H) x = nd(rng);
      for (float& x : b.W) x = 0.05f * nd(rng);
      out.Z.assign(k * Vs, 0.0f);
      out.dH.assign(k * sh.d, 0.0f);
      out.dW.assign(Vs * sh.d, 0.0f);
      std::vector<std::vector<double>> t(libs.size());
      std::vector<double> ghz;  // the core's clock, measured in every round
      for (int r = -1; r < rounds; ++r) {  // round -1 warms up (oneDNN's JIT, page faults)
        if (r >= 0) ghz.push_back(measure_ghz(100'000'000));
        for (std::size_t l = 0; l < libs.size(); ++l) {
          const double s = libs[l].run(b, out, sh.d, Vs, k, Vt, Dt, threads);
          if (r >= 0) t[l].push_back(s);
        }
      }
      std::sort(ghz.begin(), ghz.end());
      const double flops = 3.0 * 2.0 * static_cast<double>(k) * static_cast<double>(Vs) * static_cast<double>(sh.d);
      std::printf("| %zu | %zu | %zu | %zu × %zu × %zu | %d | %.2f |", sh.d, sh.V, sh.N, k, Vt, Dt, threads, ghz[ghz.size() / 2]);
      for (auto& v : t) {
        std::sort(v.begin(), v.end());
        std::printf(" %.1f |", flops / v[v.size() / 2] / 1e9);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  std::printf("# clock at the end %.2f GHz\n", measure_ghz());
}
