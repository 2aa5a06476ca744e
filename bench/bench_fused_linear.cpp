// The fused linear + log-prob head (logprob/linear/) beside its parts and the path it replaces, for
// one method and one shape per process, so that the peak extra memory it reports is that method's
// alone: VmHWM after resetting it (/proc/self/clear_refs) minus the resident set before the first
// call, i.e. measured, workspace, outputs (dH, dW) and any logits included. The first call is that
// measurement (and the warm-up); the time is the minimum over the calls that follow.
// scripts/bench_fused_linear.sh runs it beside PyTorch (bench/torch_fused_linear.py) and prints the
// table. Built once per GEMM library: bench_fused_linear (Eigen), _openblas, _blis, _onednn.
//
//   bench_fused_linear --method M --d D --V V --N N [--masked F] [--threads T] [--min-time S] [--reps R]
//                      [--outputs token,lse,entropy] [--zloss Z]
// methods:
//   fused_fwd     linear::forward (scores only)
//   fused_fb      linear::forward_backward: one pass, the gradient from the forward's logits (SFT, or
//                 the Model concept's accumulate_gradients, where d_seq is known beforehand)
//   fused_2p      linear::forward, then linear::backward, which recomputes the logits (DFT: d_seq
//                 depends on every score of the batch)
//   gemms         the three bare GEMMs of the same library at full size, threaded by the library:
//                 Z = H Wᵀ, dH = Z W, dW = Zᵀ H (the floor any head pays)
//   materialised  Z = H Wᵀ, logprob::forward and backward (in place) on Z, dH = G W, dW += Gᵀ H
//   cce_fwd       a prototype of Cut Cross-Entropy's forward, for the choice of scheme: the same
//                 GEMM tasks, but each tile's logits stay in a per-thread buffer (L2) and are reduced
//                 at once to a log-sum-exp partial, merged per row in tile order; no chunk of full
//                 rows is ever written (scores only, like fused_fwd)
// --outputs asks the fused methods for those per-token outputs (linear::TokenOutputs; fused_2p's
// forward asks for row_lse anyway) and --zloss Z for a z-loss gradient (grads.z_loss, fused_fb and
// fused_2p): what each costs beside the default call (docs/fused_linear.md, "Per-token outputs").
// Rows: sequences of 64 tokens whose first `masked` share has weight 0 (prompts); W [V, d]; no bias.
#include "bench_env.hpp"

#include <dftune/logprob/linear/linear.hpp>
#include <dftune/logprob/cpu/fast.hpp>
#include <dftune/logprob/logprob.hpp>

#include <Eigen/Core>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace linear = dftune::logprob::linear;
namespace logprob = dftune::logprob;
using dftune::token_t;

namespace {

constexpr std::size_t kSeqLen = 64;

long status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return std::stol(line.substr(n + 1));
  return -1;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// A cheap deterministic spread in [-1, 1): filling GBs with a PRNG would take longer than the runs.
void fill(std::vector<float>& x, std::uint32_t salt, float scale) {
  const auto n = static_cast<std::ptrdiff_t>(x.size());
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const auto h = (static_cast<std::uint32_t>(i) ^ salt) * 2654435761u;
    x[static_cast<std::size_t>(i)] = scale * (static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<RowMat>;
using CMap = Eigen::Map<const RowMat>;

// C (+)= op(A) op(B) at full size, threaded the library's own way (outside any parallel region).
// A: [m, k] (or [k, m] when ta), B: [k, n] (or [n, k] when tb), row-major.
void library_gemm(bool ta, bool tb, std::size_t m, std::size_t n, std::size_t k, const float* a, const float* b, float* c,
                  bool accumulate, int threads) {
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
  (void)threads;  // oneDNN takes OpenMP's threads at the top level
  dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', static_cast<dnnl_dim_t>(m), static_cast<dnnl_dim_t>(n), static_cast<dnnl_dim_t>(k), 1.0f, a,
             static_cast<dnnl_dim_t>(ta ? m : k), b, static_cast<dnnl_dim_t>(tb ? k : n), accumulate ? 1.0f : 0.0f, c,
             static_cast<dnnl_dim_t>(n));
#elif defined(DFTUNE_LINEAR_GEMM_CBLAS)
  (void)threads;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, a, static_cast<int>(ta ? m : k), b, static_cast<int>(tb ? k : n), accumulate ? 1.0f : 0.0f, c,
              static_cast<int>(n));
#elif defined(DFTUNE_LINEAR_GEMM_BLIS)
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(threads, &rntm);
  float one = 1, beta = accumulate ? 1.0f : 0.0f;
  const auto lda = static_cast<inc_t>(ta ? m : k), ldb = static_cast<inc_t>(tb ? k : n);
  bli_sgemm_ex(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, static_cast<dim_t>(m),
               static_cast<dim_t>(n), static_cast<dim_t>(k), &one, const_cast<float*>(a), lda, 1, const_cast<float*>(b), ldb, 1,
               &beta, c, static_cast<inc_t>(n), 1, nullptr, &rntm);
#else
  (void)threads;
  const auto M = static_cast<Eigen::Index>(m), N = static_cast<Eigen::Index>(n), K = static_cast<Eigen::Index>(k);
  Map C(c, M, N);
  auto run = [&](const auto& A, const auto& B) {
    if (accumulate)
      C.noalias() += A * B;
    else
      C.noalias() = A * B;
  };
  if (ta && tb) run(CMap(a, K, M).transpose(), CMap(b, N, K).transpose());
  else if (ta) run(CMap(a, K, M).transpose(), CMap(b, K, N));
  else if (tb) run(CMap(a, M, K), CMap(b, N, K).transpose());
  else run(CMap(a, M, K), CMap(b, K, N));
#endif
}

// Cut Cross-Entropy's forward (see the header): rows in blocks of the plan's chunk_rows, every
// (block, vocab tile) GEMM into a per-thread tile, the tile's row log-sum-exps and target logits
// kept, merged per row in tile order afterwards.
void cce_forward(const linear::LinearLogits<float>& in, const linear::Plan& p, std::span<float> seq, std::vector<float>& scratch) {
  namespace kernel = dftune::logprob::cpu::kernel;
  const std::size_t N = in.rows(), V = in.vocab, d = in.dim, R = p.chunk_rows, Vt = p.vocab_tile;
  const std::size_t tiles = (V + Vt - 1) / Vt;
  const auto threads = static_cast<std::size_t>(omp_get_max_threads());
  scratch.resize(threads * R * Vt + R * d + 2 * R * tiles);
  float* const Hc = scratch.data() + threads * R * Vt;
  float* const part = Hc + R * d;      // [R, tiles] log-sum-exp of each tile's part of a row
  float* const target = part + R * tiles;  // [R] target logit
  std::vector<std::size_t> idx;
  std::size_t s = 0;
  double acc = 0;
  std::fill(seq.begin(), seq.end(), 0.0f);
  for (std::size_t cursor = 0; cursor < N;) {
    idx.clear();
    while (cursor < N && idx.size() < R) {
      if (in.weight(cursor) != 0) idx.push_back(cursor);
      ++cursor;
    }
    const std::size_t k = idx.size();
    for (std::size_t i = 0; i < k; ++i) std::copy_n(in.hidden.data() + idx[i] * d, d, Hc + i * d);
#pragma omp parallel for schedule(dynamic, 1)
    for (std::ptrdiff_t t = 0; t < static_cast<std::ptrdiff_t>(tiles); ++t) {
      float* tile = scratch.data() + static_cast<std::size_t>(omp_get_thread_num()) * R * Vt;
      const std::size_t v0 = static_cast<std::size_t>(t) * Vt, n = std::min(Vt, V - v0);
      linear::gemm::EigenGemm::run<true, false>(k, n, d, Hc, d, in.proj.data() + v0 * d, d, tile, n, false);
      for (std::size_t i = 0; i < k; ++i) {
        part[i * tiles + static_cast<std::size_t>(t)] = static_cast<float>(kernel::row_logsumexp(tile + i * n, n));
        const auto y = static_cast<std::size_t>(in.targets[idx[i]]);
        if (y >= v0 && y < v0 + n) target[i] = tile[i * n + (y - v0)];
      }
    }
    for (std::size_t i = 0; i < k; ++i) {
      const float* pi = part + i * tiles;
      const double m = *std::max_element(pi, pi + tiles);
      double sum = 0;
      for (std::size_t t = 0; t < tiles; ++t) sum += std::exp(static_cast<double>(pi[t]) - m);
      const double lse = m + std::log(sum);
      while (static_cast<std::size_t>(in.offsets[s + 1]) <= idx[i]) {
        seq[s++] = static_cast<float>(acc);
        acc = 0;
      }
      acc += static_cast<double>(in.weight(idx[i])) * (static_cast<double>(target[i]) - lse);
    }
  }
  while (s < in.sequences()) {
    seq[s++] = static_cast<float>(acc);
    acc = 0;
  }
}

struct Args {
  std::string method;
  std::size_t d = 512, V = 32000, N = 1024;
  linear::LinearOptions opt;  // --chunk, --vtile, --dtile (0: the plan's)
  double masked = 0, min_time = 1.0, zloss = 0;
  int threads = 2, reps = 2;
  bool token = false, lse = false, entropy = false;  // --outputs
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--method") a.method = v;
    else if (k == "--d") a.d = std::stoul(v);
    else if (k == "--V") a.V = std::stoul(v);
    else if (k == "--N") a.N = std::stoul(v);
    else if (k == "--masked") a.masked = std::stod(v);
    else if (k == "--threads") a.threads = std::stoi(v);
    else if (k == "--min-time") a.min_time = std::stod(v);
    else if (k == "--reps") a.reps = std::stoi(v);
    else if (k == "--zloss") a.zloss = std::stod(v);
    else if (k == "--outputs") {
      for (std::size_t b = 0; b <= v.size();) {
        const std::size_t e = std::min(v.find(',', b), v.size());
        const std::string o = v.substr(b, e - b);
        if (o == "token") a.token = true;
        else if (o == "lse") a.lse = true;
        else if (o == "entropy") a.entropy = true;
        else if (!o.empty() && o != "none") throw std::invalid_argument("unknown output " + o);
        b = e + 1;
      }
    }
    else if (k == "--chunk") a.opt.chunk_rows = std::stoul(v);
    else if (k == "--vtile") a.opt.vocab_tile = std::stoul(v);
    else if (k == "--dtile") a.opt.dim_tile = std::stoul(v);
    else throw std::invalid_argument("unknown flag " + k);
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  omp_set_num_threads(a.threads);
  const std::size_t N = a.N, V = a.V, d = a.d;
  // Inputs: counted in the baseline.
  std::vector<float> H(N * d), W(V * d);
  fill(H, 1, 1.0f);
  fill(W, 2, 3.0f / std::sqrt(static_cast<float>(d)));
  std::vector<token_t> targets(N);
  std::vector<float> weights(N, 1.0f);
  std::vector<std::int64_t> offsets{0};
  const auto masked_rows = static_cast<std::size_t>(a.masked * kSeqLen);
  for (std::size_t r = 0; r < N; ++r) {
    targets[r] = static_cast<token_t>((r * 7919) % V);
    if (r % kSeqLen < masked_rows) weights[r] = 0;
    if ((r + 1) % kSeqLen == 0 || r + 1 == N) offsets.push_back(static_cast<std::int64_t>(r + 1));
  }
  const std::size_t S = offsets.size() - 1;
  std::vector<float> d_seq(S);
  for (std::size_t s = 0; s < S; ++s) d_seq[s] = s % 3 == 0 ? -1.0f / static_cast<float>(S) : 0.5f / static_cast<float>(S);
  const linear::LinearLogits<float> in{.hidden = H, .proj = W, .dim = d, .vocab = V, .targets = targets, .weights = weights, .offsets = offsets};

  // Everything below is allocated by the first call, inside the measured window.
  struct State {
    std::vector<float> seq, lse, dH, dW, Z, scratch, token, row_lse, entropy;
    std::vector<std::byte> ws;
  };
  std::unique_ptr<State> st;
  std::size_t workspace_bytes = 0;
  auto call = [&]() {
    if (!st) {
      st = std::make_unique<State>();
      st->seq.resize(S);
      if (a.method != "fused_fwd" && a.method.rfind("fused", 0) == 0) st->lse.resize(N);
      if (a.method != "fused_fwd") {
        st->dH.resize(N * d);
        st->dW.assign(V * d, 0.0f);
      }
      if (a.method.rfind("fused", 0) == 0) {
        st->ws.resize(linear::workspace_size(in, a.opt));
      } else if (a.method != "cce_fwd") {
        st->Z.resize(N * V);
        st->lse.resize(N);
      }
      if (a.token) st->token.resize(N);
      if (a.lse) st->row_lse.resize(N);
      if (a.entropy) st->entropy.resize(N);
      workspace_bytes = st->ws.size();
      if (a.method == "cce_fwd") workspace_bytes = 0;  // measured only (scratch)
    }
    State& s = *st;
    const std::span<std::byte> ws(s.ws);
    const linear::TokenOutputs<float> rows{.token_logp = s.token, .row_lse = s.row_lse, .entropy = s.entropy};
    const linear::LinearGrads<float> grads{.hidden = s.dH, .proj = s.dW, .z_loss = a.zloss};
    if (a.method == "fused_fwd") {
      linear::forward(in, std::span<float>(s.seq), rows, ws, a.opt);
    } else if (a.method == "cce_fwd") {
      cce_forward(in, linear::make_plan(in, a.opt), std::span<float>(s.seq), s.scratch);
    } else if (a.method == "fused_fb") {
      linear::forward_backward(in, std::span<const float>(d_seq), grads, std::span<float>(s.seq), rows, ws, a.opt);
    } else if (a.method == "fused_2p") {
      linear::forward(in, std::span<float>(s.seq), {.token_logp = s.token, .row_lse = s.lse, .entropy = s.entropy}, ws, a.opt);
      linear::backward(in, std::span<const float>(d_seq), grads, std::span<const float>(s.lse), ws, a.opt);
    } else if (a.method == "gemms") {
      library_gemm(false, true, N, V, d, H.data(), W.data(), s.Z.data(), false, a.threads);      // Z = H Wᵀ
      library_gemm(false, false, N, d, V, s.Z.data(), W.data(), s.dH.data(), false, a.threads);  // dH = Z W
      library_gemm(true, false, V, d, N, s.Z.data(), H.data(), s.dW.data(), true, a.threads);    // dW += Zᵀ H
    } else if (a.method == "materialised") {
      library_gemm(false, true, N, V, d, H.data(), W.data(), s.Z.data(), false, a.threads);
      const logprob::TokenLogits<float> tl{.logits = s.Z, .vocab = V, .targets = targets, .weights = weights, .offsets = offsets};
      logprob::forward(tl, std::span<float>(s.seq), {}, std::span<float>(s.lse));
      logprob::backward(tl, std::span<const float>(d_seq), std::span<float>(s.Z), std::span<const float>(s.lse));
      library_gemm(false, false, N, d, V, s.Z.data(), W.data(), s.dH.data(), false, a.threads);
      library_gemm(true, false, V, d, N, s.Z.data(), H.data(), s.dW.data(), true, a.threads);
    } else {
      throw std::invalid_argument("unknown method " + a.method);
    }
  };

  const long base_kib = status_kib("VmRSS");
  { std::ofstream("/proc/self/clear_refs") << "5"; }  // VmHWM := VmRSS
  const double t0 = now();
  call();
  const double first = now() - t0;
  const long peak_kib = status_kib("VmHWM");
  std::vector<double> times;
  double total = 0;
  while (static_cast<int>(times.size()) < a.reps || total < a.min_time) {
    const double t = now();
    call();
    times.push_back(now() - t);
    total += times.back();
    if (times.size() >= 50) break;
  }
  std::sort(times.begin(), times.end());
  const double flops_gemm = 2.0 * static_cast<double>(N) * static_cast<double>(V) * static_cast<double>(d);
  const auto plan = linear::make_plan(in, a.opt);
  std::printf(
      "{\"gemm\": \"%s\", \"method\": \"%s\", \"d\": %zu, \"V\": %zu, \"N\": %zu, \"masked\": %g, \"threads\": %d, "
      "\"ms\": %.3f, \"ms_median\": %.3f, \"runs\": %zu, \"first_ms\": %.3f, \"peak_extra_bytes\": %ld, \"workspace_bytes\": %zu, "
      "\"chunk_rows\": %zu, \"vocab_tile\": %zu, \"dim_tile\": %zu, \"chunk_sweep\": %s, \"plan_chunk_rows\": %zu, "
      "\"gemm_gflop\": %.3f, \"outputs\": \"%s%s%s\", \"zloss\": %g, \"seq0\": %.8g, \"env\": %s}\n",
      linear::DefaultGemm::name, a.method.c_str(), d, V, N, a.masked, a.threads, 1e3 * times.front(),
      1e3 * times[times.size() / 2], times.size(), 1e3 * first, (peak_kib - base_kib) * 1024L, workspace_bytes, plan.chunk_rows,
      plan.vocab_tile, plan.dim_tile, a.opt.chunk_rows != 0 ? "true" : "false", linear::make_plan(in).chunk_rows, flops_gemm / 1e9,
      a.token ? "token," : "", a.lse ? "lse," : "", a.entropy ? "entropy" : "", a.zloss, static_cast<double>(st->seq[0]), bench_env::env_json(linear::DefaultGemm::name).c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_fused_linear: %s\n", e.what());
  return 1;
}
