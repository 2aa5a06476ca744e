// Tests of the CUDA log-prob reductions (include/dftune/logprob/cuda/).
//
//   test_logprob_cuda host     checks that need no GPU: the online log-sum-exp against long double
//                              (chunked and merged in many orders, IEEE corners), the workspace size,
//                              every host-side argument check, and the dispatching overloads on host
//                              data (they must go to the CPU path and match the generic oracle).
//   test_logprob_cuda device   the kernels against the generic CPU oracle for float / __half /
//                              __nv_bfloat16, V from 2 to 256000, masked rows and sequences, empty
//                              sequences, in place and separate gradients (aligned and not), without
//                              row_lse, finite differences, bitwise determinism, status bits, N of
//                              2^21 rows, and the location dispatch. Without a device it prints
//                              "SKIPPED: no CUDA device (cudaGetDeviceCount: ...)" and exits 77,
//                              which CTest reports as skipped (SKIP_RETURN_CODE).
//   The fused linear head's CUDA path (linear.cuh): its host-side checks in host mode; on a device,
//   its three calls against the CPU head (logprob/linear/) on random shapes, both layouts, bias,
//   masked rows, chunks smaller than N, and its status report for bad logits.
//
// A tiny harness instead of doctest: one file, nvcc-friendly, with the skip under our control.
#include <dftune/logprob/cuda/linear.cuh>
#include <dftune/logprob/cuda/logprob.cuh>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/linear/linear.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace lp = dftune::logprob;
namespace lc = dftune::logprob::cuda;
using lp::TokenLogits;

// ---- harness ---------------------------------------------------------------------------------

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    ++g_checks;                                                                       \
    if (!(cond)) {                                                                    \
      ++g_failures;                                                                   \
      std::printf("  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
    }                                                                                 \
  } while (0)

#define CHECK_MSG(cond, ...)                                                          \
  do {                                                                                \
    ++g_checks;                                                                       \
    if (!(cond)) {                                                                    \
      ++g_failures;                                                                   \
      std::printf("  FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);                 \
      std::printf(__VA_ARGS__);                                                       \
      std::printf("\n");                                                              \
    }                                                                                 \
  } while (0)

// The call must throw dftune::error whose message contains `needle`.
template <class F>
static void check_throws(const char* what, const char* needle, F&& f) {
  ++g_checks;
  try {
    f();
  } catch (const dftune::error& e) {
    if (std::strstr(e.what(), needle)) return;
    ++g_failures;
    std::printf("  FAILED %s: message \"%s\" lacks \"%s\"\n", what, e.what(), needle);
    return;
  } catch (const std::exception& e) {
    ++g_failures;
    std::printf("  FAILED %s: threw something else: %s\n", what, e.what());
    return;
  }
  ++g_failures;
  std::printf("  FAILED %s: did not throw\n", what);
}

static void run_case(const char* name, const std::function<void()>& body) {
  const int before = g_failures;
  try {
    body();
  } catch (const std::exception& e) {
    ++g_failures;
    std::printf("  FAILED: uncaught exception: %s\n", e.what());
  }
  std::printf("[%s] %s\n", g_failures == before ? " ok " : "FAIL", name);
}

#define CUDA_OK(call) lc::detail::check_cuda((call), #call)

// ---- storage helpers -------------------------------------------------------------------------

template <class T>
static T to_storage(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, lc::bf16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}

template <class T>
static float to_f(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, lc::bf16>) return __bfloat162float(x);
  else return __half2float(x);
}

template <class T>
static const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, lc::bf16>) return "bf16";
  else return "fp16";
}

// Relative rounding of a gradient stored in T, and the smallest step it can hold near 0.
template <class T>
static double storage_rel() {
  if constexpr (std::is_same_v<T, float>) return 0;
  else if constexpr (std::is_same_v<T, lc::bf16>) return std::ldexp(1.0, -8);
  else return std::ldexp(1.0, -11);
}
template <class T>
static double storage_abs() {
  return std::is_same_v<T, lc::fp16> ? 1e-7 : 0.0;
}

// A problem on the host: logits already rounded to T, and their float image for the oracle.
template <class T>
struct Problem {
  std::size_t V = 0;
  std::vector<T> logits;
  std::vector<float> logits_f;
  std::vector<std::int32_t> targets;
  std::vector<float> weights;
  std::vector<std::int64_t> offsets;
  std::size_t rows() const { return targets.size(); }
  std::size_t seqs() const { return offsets.size() - 1; }
  TokenLogits<float> oracle_view() const {
    return {.logits = logits_f, .vocab = V, .targets = targets, .weights = weights, .offsets = offsets};
  }
};

// Sequences of random length (some empty), some rows masked, one whole sequence masked, logits
// of spread `scale` around a per-row offset (up to ±40), the target often the row's largest entry.
template <class T>
static Problem<T> make_problem(std::size_t V, std::size_t N, std::uint32_t seed, bool with_weights = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  Problem<T> p;
  p.V = V;
  p.logits.resize(N * V);
  p.logits_f.resize(N * V);
  p.targets.resize(N);
  if (with_weights) p.weights.resize(N);
  for (std::size_t n = 0; n < N; ++n) {
    const float shift = (unit(rng) - 0.5f) * 80.0f;
    for (std::size_t v = 0; v < V; ++v) {
      const T t = to_storage<T>(shift + normal(rng));
      p.logits[n * V + v] = t;
      p.logits_f[n * V + v] = to_f(t);
    }
    p.targets[n] = static_cast<std::int32_t>(rng() % V);
    if (with_weights) p.weights[n] = unit(rng) < 0.2f ? 0.0f : 0.5f + unit(rng);
  }
  p.offsets.push_back(0);
  std::size_t at = 0;
  while (at < N) {
    const std::size_t len = std::min<std::size_t>(N - at, rng() % 7);  // 0..6: some empty
    at += len;
    p.offsets.push_back(static_cast<std::int64_t>(at));
  }
  if (p.offsets.size() == 1) p.offsets.push_back(0);
  // Mask every row of the first non-empty sequence (a sequence of prompt only).
  if (with_weights)
    for (std::size_t s = 0; s + 1 < p.offsets.size(); ++s)
      if (p.offsets[s + 1] > p.offsets[s]) {
        for (auto r = p.offsets[s]; r < p.offsets[s + 1]; ++r) {
          p.weights[static_cast<std::size_t>(r)] = 0.0f;
          p.targets[static_cast<std::size_t>(r)] = -5;  // never read where masked
        }
        break;
      }
  return p;
}

// ---- host mode -------------------------------------------------------------------------------

static long double ref_lse(const std::vector<float>& z) {
  long double m = -std::numeric_limits<long double>::infinity();
  for (float x : z) m = std::max<long double>(m, x);
  if (std::isinf(m)) return m;
  long double s = 0;
  for (float x : z) s += std::exp(static_cast<long double>(x) - m);
  return m + std::log(s);
}

// The kernels' chunking on the host: `lanes` partial states over chunks of K, merged as a butterfly.
template <int K>
static float emulate_lse(const std::vector<float>& z, int lanes) {
  namespace d = lc::detail;
  std::vector<d::lse_state> st(static_cast<std::size_t>(lanes), d::lse_empty());
  std::size_t i = 0;
  for (int step = 0; i < z.size(); ++step)
    for (int l = 0; l < lanes && i < z.size(); ++l) {
      if (i + K <= z.size()) {
        float x[K];
        for (int k = 0; k < K; ++k) x[k] = z[i + static_cast<std::size_t>(k)];
        d::lse_add(st[static_cast<std::size_t>(l)], x);
        i += K;
      } else {
        const float x[1] = {z[i]};
        d::lse_add(st[static_cast<std::size_t>(l)], x);
        ++i;
      }
    }
  for (int off = lanes / 2; off > 0; off /= 2)
    for (int l = 0; l < off; ++l)
      st[static_cast<std::size_t>(l)] = d::lse_merge(st[static_cast<std::size_t>(l)], st[static_cast<std::size_t>(l + off)]);
  return d::lse_finish(st[0]);
}

static void host_online_lse() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (std::size_t V : {1u, 2u, 3u, 7u, 31u, 33u, 1000u, 4097u, 32000u}) {
    for (float shift : {0.0f, 60.0f, -60.0f}) {
      std::vector<float> z(V);
      for (auto& x : z) x = shift + normal(rng);
      const long double ref = ref_lse(z);
      for (int lanes : {1, 32, 256}) {
        const float a = emulate_lse<32>(z, lanes);
        const float b = emulate_lse<4>(z, lanes);
        const double tol = 4e-6 * (1.0 + std::fabs(static_cast<double>(ref)));
        CHECK_MSG(std::fabs(a - static_cast<double>(ref)) <= tol, "V=%zu lanes=%d: %.9g vs %.9Lg", V, lanes, a, ref);
        CHECK_MSG(std::fabs(b - static_cast<double>(ref)) <= tol, "V=%zu lanes=%d: %.9g vs %.9Lg", V, lanes, b, ref);
      }
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(emulate_lse<4>({-inf, -inf, -inf}, 2) == -inf);
  CHECK(std::isnan(emulate_lse<4>({1.0f, nan, 2.0f, 3.0f, 4.0f}, 2)));
  CHECK(std::isnan(emulate_lse<4>({nan}, 1)));
  CHECK(emulate_lse<4>({1.0f, inf, 2.0f}, 2) == inf);
  CHECK(std::fabs(emulate_lse<4>({-inf, 0.0f, -inf, -inf, -inf}, 32) - 0.0f) <= 1e-7f);
  CHECK(std::fabs(emulate_lse<4>({-inf, 3.0f, 3.0f}, 32) - (3.0f + std::log(2.0f))) <= 1e-6f);
  // A huge spread: the small terms vanish, the max survives exactly.
  CHECK(emulate_lse<4>({-1e30f, 5.0f}, 2) == 5.0f);
}

static void host_workspace_size() {
  std::vector<float> z(10 * 3);
  std::vector<std::int32_t> y(10);
  std::vector<std::int64_t> off{0, 10};
  TokenLogits<float> in{.logits = z, .vocab = 3, .targets = y, .offsets = off};
  CHECK(lc::workspace_size(in) == lc::status_bytes + 256);
  CHECK(lc::workspace_size(in) >= lp::workspace_size(in));
  std::vector<float> big(100000 * 2);
  std::vector<std::int32_t> yb(100000);
  std::vector<std::int64_t> offb{0, 100000};
  TokenLogits<float> inb{.logits = big, .vocab = 2, .targets = yb, .offsets = offb};
  CHECK(lc::workspace_size(inb) == lc::status_bytes + 400128);
  CHECK(lc::workspace_size(inb) % 256 == 0);
}

// Every check that runs on the host, before anything is enqueued (so host pointers are fine).
static void host_argument_checks() {
  alignas(256) static std::byte ws_storage[4096];
  std::span<std::byte> ws(ws_storage, sizeof ws_storage);
  std::vector<float> z(4 * 5), seq(2), tok(4), lse(4), w(4, 1.0f), d(2, 1.0f), g(20);
  std::vector<std::int32_t> y(4, 0);
  std::vector<std::int64_t> off{0, 2, 4};
  TokenLogits<float> ok{.logits = z, .vocab = 5, .targets = y, .weights = w, .offsets = off};
  const cudaStream_t s = nullptr;

  auto bad = ok;
  bad.vocab = 0;
  check_throws("vocab 0", "vocab: got 0", [&] { lc::forward(bad, seq, tok, lse, ws, s); });
  bad = ok;
  bad.vocab = (std::size_t{1} << 30) + 1;
  bad.logits = {};
  bad.targets = {};
  bad.weights = {};
  check_throws("vocab too large", "expected at most 2^30", [&] { lc::forward(bad, seq, tok, lse, ws, s); });
  bad = ok;
  bad.vocab = 3;
  check_throws("logits size", "logits: got size 20, expected a multiple of vocab = 3",
               [&] { lc::forward(bad, seq, tok, lse, ws, s); });
  bad = ok;
  bad.targets = std::span(y).first(3);
  check_throws("targets size", "targets: got size 3, expected size 4", [&] { lc::forward(bad, seq, tok, lse, ws, s); });
  bad = ok;
  bad.weights = std::span(w).first(2);
  check_throws("weights size", "weights: got size 2", [&] { lc::forward(bad, seq, tok, lse, ws, s); });
  bad = ok;
  bad.offsets = {};
  check_throws("offsets empty", "offsets: got size 0", [&] { lc::forward(bad, seq, tok, lse, ws, s); });
  bad = ok;
  bad.offsets = std::span(off).first(1);
  check_throws("no sequence", "offsets: got size 1 (no sequence) with N = 4 rows",
               [&] { lc::forward(bad, std::span(seq).first(0), tok, lse, ws, s); });
  check_throws("seq_logp size", "seq_logp: got size 1, expected size 2",
               [&] { lc::forward(ok, std::span(seq).first(1), tok, lse, ws, s); });
  check_throws("token_logp size", "token_logp: got size 3", [&] { lc::forward(ok, seq, std::span(tok).first(3), lse, ws, s); });
  check_throws("row_lse size", "row_lse: got size 2", [&] { lc::forward(ok, seq, tok, std::span(lse).first(2), ws, s); });
  check_throws("workspace small", "workspace: got size 100, expected at least workspace_size(in) = 512 bytes",
               [&] { lc::forward(ok, seq, tok, lse, ws.first(100), s); });
  check_throws("workspace misaligned", "workspace: got a misaligned buffer",
               [&] { lc::forward(ok, seq, tok, lse, ws.subspan(4), s); });

  check_throws("d_seq size", "d_seq: got size 1", [&] {
    lc::backward(ok, std::span<const float>(d).first(1), std::span(g), std::span<const float>(lse), ws, s);
  });
  check_throws("grad size", "grad: got size 19", [&] {
    lc::backward(ok, std::span<const float>(d), std::span(g).first(19), std::span<const float>(lse), ws, s);
  });
  check_throws("grad overlap", "grad: got a buffer overlapping the logits", [&] {
    std::vector<float> both(40);
    TokenLogits<float> in2 = ok;
    in2.logits = std::span<const float>(both).subspan(0, 20);
    lc::backward(in2, std::span<const float>(d), std::span(both).subspan(5, 20), std::span<const float>(lse), ws, s);
  });
  check_throws("backward workspace", "workspace: got size 8", [&] {
    lc::backward(ok, std::span<const float>(d), std::span(g), std::span<const float>(lse), ws.first(8), s);
  });
  check_throws("backward row_lse size", "row_lse: got size 3", [&] {
    lc::backward(ok, std::span<const float>(d), std::span(g), std::span<const float>(lse).first(3), ws, s);
  });
}

// The dispatching overloads on host data run the CPU path: same bits as the generic oracle.
template <class T>
static void host_dispatch_matches_oracle() {
  const auto p = make_problem<T>(37, 23, 11);
  TokenLogits<T> in{.logits = p.logits, .vocab = p.V, .targets = p.targets, .weights = p.weights, .offsets = p.offsets};
  std::vector<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
  std::vector<std::byte> ws(lc::workspace_size(in));
  lp::forward(in, std::span(seq), std::span(tok), std::span(lse), std::span(ws), cudaStream_t{});
  std::vector<float> seq_r(p.seqs()), tok_r(p.rows()), lse_r(p.rows());
  lp::generic::forward(in, std::span(seq_r), std::span(tok_r), std::span(lse_r));
  CHECK(std::memcmp(seq.data(), seq_r.data(), seq.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(tok.data(), tok_r.data(), tok.size() * sizeof(float)) == 0);
  std::vector<float> d_seq(p.seqs());
  for (std::size_t s = 0; s < d_seq.size(); ++s) d_seq[s] = 0.25f * static_cast<float>(s % 5) - 0.5f;
  std::vector<T> g(p.logits.size()), g_r(p.logits.size());
  lp::backward(in, std::span<const float>(d_seq), std::span(g), std::span<const float>(lse), std::span(ws), cudaStream_t{});
  lp::generic::backward(in, std::span<const float>(d_seq), std::span(g_r), std::span<const float>(lse_r));
  CHECK(std::memcmp(g.data(), g_r.data(), g.size() * sizeof(T)) == 0);
  // A double problem on the host also dispatches (the CUDA path never takes double).
  std::vector<double> zd(p.logits_f.begin(), p.logits_f.end()), wd(p.weights.begin(), p.weights.end());
  TokenLogits<double> ind{.logits = zd, .vocab = p.V, .targets = p.targets, .weights = wd, .offsets = p.offsets};
  std::vector<double> seqd(p.seqs());
  lp::forward(ind, std::span(seqd), std::span<double>(), std::span<double>(), std::span(ws), cudaStream_t{});
  for (std::size_t s = 0; s < seqd.size(); ++s) CHECK(std::fabs(seqd[s] - seq_r[s]) <= 1e-4 * (1 + std::fabs(seqd[s])));
}


// ---- the fused linear head (linear.cuh) ------------------------------------------------------

namespace ll = dftune::logprob::cuda::linear;
namespace cl = dftune::logprob::linear;

// Its host-side checks, before any CUDA or cuBLAS call (host pointers and a null handle are fine).
static void host_linear_checks() {
  alignas(256) static std::byte ws_storage[1 << 16];
  std::span<std::byte> ws(ws_storage, sizeof ws_storage);
  const std::size_t N = 4, V = 5, d = 3;
  std::vector<float> H(N * d), W(V * d), b(V), seq(2), tok(N), lse(N), dH(N * d), dW(V * d), db(V), dseq(2, 1.0f);
  std::vector<std::int32_t> y(N, 0);
  std::vector<std::int64_t> off{0, 2, 4};
  cl::LinearLogits<float> ok{.hidden = H, .proj = W, .bias = b, .dim = d, .vocab = V, .targets = y, .offsets = off};
  const cudaStream_t s = nullptr;
  auto fwd = [&](const cl::LinearLogits<float>& in, std::span<std::byte> w) { ll::forward(in, seq, tok, lse, w, nullptr, s); };
  CHECK(ll::workspace_size(ok) >= N * V * sizeof(float));
  std::vector<float> Wbig(1000 * d);
  auto wide = ok;
  wide.proj = Wbig;
  wide.vocab = 1000;
  wide.bias = {};
  CHECK(ll::workspace_size(wide, {.chunk_rows = 2}) + 2 * 1000 * sizeof(float) <= ll::workspace_size(wide) + 256);
  CHECK(ll::workspace_size(wide) >= N * 1000 * sizeof(float));
  auto bad = ok;
  bad.dim = 0;
  check_throws("linear: dim 0", "dim: got 0", [&] { fwd(bad, ws); });
  bad = ok;
  bad.proj = std::span(W).first(14);
  check_throws("linear: proj size", "proj: got size 14", [&] { fwd(bad, ws); });
  bad = ok;
  bad.bias = std::span(b).first(4);
  check_throws("linear: bias size", "bias: got size 4", [&] { fwd(bad, ws); });
  bad = ok;
  bad.targets = std::span(y).first(3);
  check_throws("linear: targets size", "targets: got size 3", [&] { fwd(bad, ws); });
  check_throws("linear: seq_logp size", "seq_logp: got size 1",
               [&] { ll::forward(ok, std::span(seq).first(1), tok, lse, ws, nullptr, s); });
  check_throws("linear: workspace", "workspace: got size 16",
               [&] { fwd(ok, ws.first(16)); });
  check_throws("linear: misaligned workspace", "workspace: got a misaligned buffer", [&] { fwd(ok, ws.subspan(16)); });
  check_throws("linear: grads.proj size", "grads.proj: got size 3",
               [&] { ll::backward(ok, dseq, {.proj = std::span(dW).first(3)}, {}, ws, nullptr, s); });
  check_throws("linear: aliasing", "grads.hidden: got a buffer overlapping hidden",
               [&] { ll::backward(ok, dseq, {.hidden = std::span(H)}, {}, ws, nullptr, s); });
  check_throws("linear: null handle", "handle: got null", [&] { fwd(ok, ws); });
}

static int run_host() {
  std::printf("test_logprob_cuda host: checks that need no GPU\n");
  run_case("online log-sum-exp vs long double, chunked and merged like the kernels; IEEE corners", host_online_lse);
  run_case("workspace size", host_workspace_size);
  run_case("host-side argument checks name the argument, value and expectation", host_argument_checks);
  run_case("dispatch on host data = CPU path (float)", host_dispatch_matches_oracle<float>);
  run_case("dispatch on host data = CPU path (bf16)", host_dispatch_matches_oracle<lc::bf16>);
  run_case("dispatch on host data = CPU path (fp16)", host_dispatch_matches_oracle<lc::fp16>);
  run_case("fused linear head: host-side argument checks", host_linear_checks);
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

// ---- device mode -----------------------------------------------------------------------------

// A device buffer (the tests may allocate; the library does not).
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  std::size_t n = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count, std::size_t pad_elems = 0) : n(count) {
    CUDA_OK(cudaMalloc(&ptr, (count + pad_elems) * sizeof(T) + 1));
  }
  template <class U>
  static DeviceBuffer from(const std::vector<U>& host) {
    static_assert(sizeof(U) == sizeof(T));
    DeviceBuffer b(host.size());
    if (!host.empty()) CUDA_OK(cudaMemcpy(b.ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return b;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(std::exchange(o.ptr, nullptr)), n(o.n) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(n, o.n);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  std::span<T> span() const { return {ptr, n}; }
  std::vector<T> to_host() const {
    std::vector<T> h(n);
    if (n) CUDA_OK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T>
struct DeviceProblem {
  DeviceBuffer<T> logits;
  DeviceBuffer<std::int32_t> targets;
  DeviceBuffer<float> weights;
  DeviceBuffer<std::int64_t> offsets;
  DeviceBuffer<std::byte> workspace;
  TokenLogits<T> in;
  explicit DeviceProblem(const Problem<T>& p)
      : logits(DeviceBuffer<T>::from(p.logits)),
        targets(DeviceBuffer<std::int32_t>::from(p.targets)),
        weights(DeviceBuffer<float>::from(p.weights)),
        offsets(DeviceBuffer<std::int64_t>::from(p.offsets)) {
    in = {.logits = logits.span(), .vocab = p.V, .targets = targets.span(), .weights = weights.span(),
          .offsets = offsets.span()};
    workspace = DeviceBuffer<std::byte>(lc::workspace_size(in));
  }
};

struct OracleForward {
  std::vector<float> seq, tok, lse;
};

template <class T>
static OracleForward oracle_forward(const Problem<T>& p) {
  OracleForward o{std::vector<float>(p.seqs()), std::vector<float>(p.rows()), std::vector<float>(p.rows())};
  lp::generic::forward(p.oracle_view(), std::span(o.seq), std::span(o.tok), std::span(o.lse));
  return o;
}

// Forward against the oracle: lse within 2e-5 (1 + |lse|) (fp32 accumulation of inputs that are
// exactly the oracle's), token log-probs within w times that, sequence sums within the sum.
template <class T>
static void check_forward(const Problem<T>& p, const OracleForward& o, const std::vector<float>& seq,
                          const std::vector<float>& tok, const std::vector<float>& lse, const char* label) {
  int bad = 0;
  std::vector<double> seq_tol(p.seqs(), 1e-6);
  for (std::size_t s = 0; s < p.seqs(); ++s)
    for (auto r = p.offsets[s]; r < p.offsets[s + 1]; ++r) {
      const auto n = static_cast<std::size_t>(r);
      const double w = p.weights.empty() ? 1.0 : p.weights[n];
      const double tol = 2e-5 * (1.0 + std::fabs(o.lse[n]));
      if (w == 0) {
        if (tok[n] != 0.0f || !std::isnan(lse[n])) ++bad;
        continue;
      }
      if (!(std::fabs(lse[n] - o.lse[n]) <= tol)) ++bad;
      if (!(std::fabs(tok[n] - o.tok[n]) <= std::fabs(w) * tol + 1e-6 * std::fabs(o.tok[n]))) ++bad;
      seq_tol[s] += std::fabs(w) * tol + 1e-6 * std::fabs(o.tok[n]);
    }
  for (std::size_t s = 0; s < p.seqs(); ++s)
    if (!(std::fabs(seq[s] - o.seq[s]) <= seq_tol[s])) ++bad;
  CHECK_MSG(bad == 0, "%s %s V=%zu N=%zu: %d mismatches", label, type_name<T>(), p.V, p.rows(), bad);
}

template <class T>
static std::vector<float> make_d_seq(std::size_t S) {
  std::vector<float> d(S);
  for (std::size_t s = 0; s < S; ++s) d[s] = (s % 4 == 3) ? 0.0f : 0.3f * static_cast<float>(s % 7) - 0.8f;
  return d;
}

template <class T>
static void check_grad(const Problem<T>& p, const std::vector<float>& d_seq, const std::vector<T>& g,
                       const char* label) {
  std::vector<float> g_ref(p.logits_f.size());
  lp::generic::backward(p.oracle_view(), std::span<const float>(d_seq), std::span(g_ref));
  int bad = 0;
  double worst = 0;
  for (std::size_t s = 0; s < p.seqs(); ++s)
    for (auto r = p.offsets[s]; r < p.offsets[s + 1]; ++r) {
      const auto n = static_cast<std::size_t>(r);
      const double c = static_cast<double>(d_seq[s]) * (p.weights.empty() ? 1.0 : p.weights[n]);
      for (std::size_t v = 0; v < p.V; ++v) {
        const double ref = g_ref[n * p.V + v];
        const double got = to_f(g[n * p.V + v]);
        const double tol = 2e-5 * std::fabs(c) + storage_rel<T>() * std::fabs(ref) + storage_abs<T>();
        const double err = std::fabs(got - ref);
        if (!(err <= tol)) ++bad;
        if (c == 0 && got != 0.0) ++bad;
        worst = std::max(worst, err);
      }
    }
  CHECK_MSG(bad == 0, "%s %s V=%zu N=%zu: %d mismatches (worst %.3g)", label, type_name<T>(), p.V, p.rows(), bad, worst);
}

// Forward, then the backward four ways: in place and separate, with and without row_lse; plus a
// separate buffer whose offset from the logits is not a multiple of 16 bytes (scalar accesses).
template <class T>
static void device_against_oracle(std::size_t V, std::size_t N, std::uint32_t seed) {
  const auto p = make_problem<T>(V, N, seed);
  const auto o = oracle_forward(p);
  DeviceProblem<T> dp(p);
  DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  lc::forward(dp.in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), stream);
  CHECK(lc::read_status(dp.workspace.span(), stream) == lc::status_ok);
  check_forward(p, o, seq.to_host(), tok.to_host(), lse.to_host(), "forward");

  // Without token_logp and row_lse (the workspace holds the token log-probs): same seq_logp bits.
  DeviceBuffer<float> seq2(p.seqs());
  lc::forward(dp.in, seq2.span(), {}, {}, dp.workspace.span(), stream);
  CUDA_OK(cudaStreamSynchronize(stream));
  const auto a = seq.to_host(), b = seq2.to_host();
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);

  const auto d_host = make_d_seq<T>(p.seqs());
  auto d_seq = DeviceBuffer<float>::from(d_host);
  const std::span<const float> d(d_seq.ptr, d_seq.n);
  const std::span<const float> lse_c(lse.ptr, lse.n);
  for (bool with_lse : {true, false}) {
    DeviceBuffer<T> g(p.logits.size());
    lc::backward(dp.in, d, g.span(), with_lse ? lse_c : std::span<const float>(), dp.workspace.span(), stream);
    CHECK(lc::read_status(dp.workspace.span(), stream) == lc::status_ok);
    check_grad(p, d_host, g.to_host(), with_lse ? "backward separate" : "backward separate, no row_lse");
  }
  {  // separate, misaligned by one element
    DeviceBuffer<T> g(p.logits.size(), 1);
    std::span<T> gs(g.ptr + 1, p.logits.size());
    lc::backward(dp.in, d, gs, lse_c, dp.workspace.span(), stream);
    CUDA_OK(cudaStreamSynchronize(stream));
    std::vector<T> h(p.logits.size());
    CUDA_OK(cudaMemcpy(h.data(), gs.data(), h.size() * sizeof(T), cudaMemcpyDeviceToHost));
    check_grad(p, d_host, h, "backward separate misaligned");
  }
  for (bool with_lse : {true, false}) {  // in place
    DeviceProblem<T> ip(p);
    std::span<T> gs(ip.logits.ptr, ip.logits.n);
    lc::backward(ip.in, d, gs, with_lse ? lse_c : std::span<const float>(), ip.workspace.span(), stream);
    CHECK(lc::read_status(ip.workspace.span(), stream) == lc::status_ok);
    check_grad(p, d_host, ip.logits.to_host(), with_lse ? "backward in place" : "backward in place, no row_lse");
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

// Row starts at every alignment: the logits start 1..7 elements after an aligned address.
template <class T>
static void device_unaligned_base() {
  const auto p = make_problem<T>(45, 9, 3);
  const auto o = oracle_forward(p);
  for (std::size_t shift = 1; shift < 8; ++shift) {
    DeviceBuffer<T> z(p.logits.size(), shift);
    CUDA_OK(cudaMemcpy(z.ptr + shift, p.logits.data(), p.logits.size() * sizeof(T), cudaMemcpyHostToDevice));
    DeviceProblem<T> dp(p);
    auto in = dp.in;
    in.logits = std::span<const T>(z.ptr + shift, p.logits.size());
    DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
    lc::forward(in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), nullptr);
    check_forward(p, o, seq.to_host(), tok.to_host(), lse.to_host(), "forward unaligned");
    const auto d_host = make_d_seq<T>(p.seqs());
    auto d_seq = DeviceBuffer<float>::from(d_host);
    lc::backward(in, std::span<const float>(d_seq.ptr, d_seq.n), std::span<T>(z.ptr + shift, p.logits.size()),
                 std::span<const float>(lse.ptr, lse.n), dp.workspace.span(), nullptr);
    std::vector<T> h(p.logits.size());
    CUDA_OK(cudaMemcpy(h.data(), z.ptr + shift, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
    check_grad(p, d_host, h, "backward in place unaligned");
  }
}

// Central differences of L = Σ_s d_s · seq_logp_s through the GPU forward, against the GPU backward.
static void device_finite_differences() {
  auto p = make_problem<float>(37, 12, 5);
  for (auto& x : p.logits) x *= 0.1f;  // keep the logits near 0 so that fp32 differences are meaningful
  p.logits_f = p.logits;
  const auto d_host = make_d_seq<float>(p.seqs());
  DeviceProblem<float> dp(p);
  DeviceBuffer<float> seq(p.seqs());
  auto loss = [&](const std::vector<float>& z) {
    CUDA_OK(cudaMemcpy(dp.logits.ptr, z.data(), z.size() * sizeof(float), cudaMemcpyHostToDevice));
    lc::forward(dp.in, seq.span(), {}, {}, dp.workspace.span(), nullptr);
    const auto s = seq.to_host();
    double l = 0;
    for (std::size_t i = 0; i < s.size(); ++i) l += static_cast<double>(d_host[i]) * s[i];
    return l;
  };
  auto d_seq = DeviceBuffer<float>::from(d_host);
  DeviceBuffer<float> g(p.logits.size());
  CUDA_OK(cudaMemcpy(dp.logits.ptr, p.logits.data(), p.logits.size() * sizeof(float), cudaMemcpyHostToDevice));
  lc::backward(dp.in, std::span<const float>(d_seq.ptr, d_seq.n), g.span(), {}, dp.workspace.span(), nullptr);
  const auto grad = g.to_host();
  const float h = 1e-2f;
  int bad = 0;
  for (std::size_t i = 0; i < p.logits.size(); i += 7) {
    auto zp = p.logits, zm = p.logits;
    zp[i] += h;
    zm[i] -= h;
    const double fd = (loss(zp) - loss(zm)) / (static_cast<double>(zp[i]) - static_cast<double>(zm[i]));
    if (!(std::fabs(fd - grad[i]) <= 2e-3 + 1e-2 * std::fabs(fd))) {
      ++bad;
      if (bad < 5) std::printf("    element %zu: fd %.6g vs grad %.6g\n", i, fd, grad[i]);
    }
  }
  CHECK(bad == 0);
}

// Same inputs, same bits, twice (no atomics in the sums); seq sums exact for a large single sequence.
template <class T>
static void device_deterministic() {
  const auto p = make_problem<T>(3001, 700, 9);
  DeviceProblem<T> dp(p);
  DeviceBuffer<float> s1(p.seqs()), s2(p.seqs()), t1(p.rows()), t2(p.rows());
  lc::forward(dp.in, s1.span(), t1.span(), {}, dp.workspace.span(), nullptr);
  lc::forward(dp.in, s2.span(), t2.span(), {}, dp.workspace.span(), nullptr);
  const auto a = s1.to_host(), b = s2.to_host(), c = t1.to_host(), d = t2.to_host();
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(c.data(), d.data(), c.size() * sizeof(float)) == 0);
}

// Millions of tokens (2^21 rows of V = 2), in sequences of 1000 and in one sequence (block sums).
static void device_many_rows() {
  for (std::size_t seq_len : {1000u, 1u << 21}) {
    const std::size_t N = std::size_t{1} << 21;
    Problem<float> p;
    p.V = 2;
    p.logits.resize(2 * N);
    p.targets.resize(N);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (auto& x : p.logits) x = normal(rng);
    for (std::size_t n = 0; n < N; ++n) p.targets[n] = static_cast<std::int32_t>(n & 1);
    p.logits_f = p.logits;
    for (std::size_t at = 0; at <= N; at += seq_len) p.offsets.push_back(static_cast<std::int64_t>(at));
    if (p.offsets.back() != static_cast<std::int64_t>(N)) p.offsets.push_back(static_cast<std::int64_t>(N));
    const auto o = oracle_forward(p);
    DeviceProblem<float> dp(p);
    DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
    lc::forward(dp.in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), nullptr);
    check_forward(p, o, seq.to_host(), tok.to_host(), lse.to_host(), "forward 2^21 rows");
  }
}

// Bad data the host cannot see: NaN outputs, status bits, no out-of-bounds access (run under
// compute-sanitizer to see the last part).
static void device_status_bits() {
  auto p = make_problem<float>(50, 20, 4);
  for (std::size_t n = 0; n < p.rows(); ++n) {
    p.weights[n] = 1.0f;
    p.targets[n] = static_cast<std::int32_t>(n % 50);
  }
  p.targets[3] = 50;  // == V
  p.targets[4] = -1;
  DeviceProblem<float> dp(p);
  DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
  lc::forward(dp.in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), nullptr);
  CHECK(lc::read_status(dp.workspace.span(), nullptr) == lc::status_bad_target);
  const auto t = tok.to_host();
  CHECK(std::isnan(t[3]) && std::isnan(t[4]) && std::isfinite(t[5]));
  check_throws("check_status", "a weighted row's target outside [0, vocab)",
               [&] { lc::check_status(dp.workspace.span(), nullptr); });
  const std::vector<float> d_host(p.seqs(), 1.0f);  // every weighted row has c != 0, so its target is read
  auto d_seq = DeviceBuffer<float>::from(d_host);
  DeviceBuffer<float> g(p.logits.size());
  lc::backward(dp.in, std::span<const float>(d_seq.ptr, d_seq.n), g.span(), {}, dp.workspace.span(), nullptr);
  CHECK(lc::read_status(dp.workspace.span(), nullptr) == lc::status_bad_target);
  const auto gh = g.to_host();
  CHECK(std::isnan(gh[3 * 50]) && std::isnan(gh[4 * 50 + 49]) && std::isfinite(gh[5 * 50]));

  // A non-finite d_seq on a sequence with weighted rows.
  auto d_nan = d_host;
  d_nan.back() = std::numeric_limits<float>::quiet_NaN();
  auto d_seq_nan = DeviceBuffer<float>::from(d_nan);
  lc::backward(dp.in, std::span<const float>(d_seq_nan.ptr, d_seq_nan.n), g.span(), {}, dp.workspace.span(), nullptr);
  CHECK((lc::read_status(dp.workspace.span(), nullptr) & lc::status_bad_d_seq) != 0);

  // Offsets that do not end at N.
  auto off = p.offsets;
  off.back() = static_cast<std::int64_t>(p.rows()) - 1;
  auto doff = DeviceBuffer<std::int64_t>::from(off);
  auto in = dp.in;
  in.offsets = doff.span();
  lc::forward(in, seq.span(), {}, {}, dp.workspace.span(), nullptr);
  CHECK((lc::read_status(dp.workspace.span(), nullptr) & lc::status_bad_offsets) != 0);
  CHECK(std::isnan(seq.to_host().back()));
  lc::backward(in, std::span<const float>(d_seq.ptr, d_seq.n), g.span(), {}, dp.workspace.span(), nullptr);
  CHECK((lc::read_status(dp.workspace.span(), nullptr) & lc::status_bad_offsets) != 0);
}

// Bad logits (docs/cuda.md), judged as the CPU paths judge them: a weighted row whose log-sum-exp
// or log-prob is not finite (a NaN or +inf logit, only −inf logits, a −inf target logit) has NaN
// token log-prob, row_lse and gradient row, its sequence sum is NaN, status_bad_logits is set with
// the smallest such row, and check_status names it; a masked row is never read. A gradient scale
// above half of fp16's range is refused the same way (status_bad_d_seq).
static void device_bad_logits() {
  const std::size_t V = 5000;  // one block per row
  auto p = make_problem<float>(V, 9, 6);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  p.offsets = {0, 2, 3, 4, 5, 6, 8, 9};
  for (std::size_t n = 0; n < 9; ++n) {
    p.weights[n] = 1.0f;
    p.targets[n] = 3;
  }
  p.logits[1 * V + 7] = inf;
  p.logits[2 * V + 3] = inf;  // at the target
  p.logits[3 * V + V - 1] = nan;
  for (std::size_t v = 0; v < V; ++v) p.logits[4 * V + v] = -inf;
  p.logits[5 * V] = -inf;  // one −inf: a fine row
  p.logits[6 * V + 1] = nan;
  p.weights[6] = 0.0f;         // masked: never read
  p.logits[7 * V + 3] = -inf;  // the target's logit −inf
  p.logits_f = p.logits;
  const std::vector<bool> bad = {false, true, true, true, true, false, false, true, false};
  DeviceProblem<float> dp(p);
  DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
  lc::forward(dp.in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), nullptr);
  const auto report = lc::read_status_report(dp.workspace.span(), nullptr);
  CHECK(report.bits == lc::status_bad_logits && report.first_bad_row == 1);
  check_throws("check_status", "log-prob float cannot hold) (first at row 1)",
               [&] { lc::check_status(dp.workspace.span(), nullptr); });
  const auto t = tok.to_host(), l = lse.to_host(), sq = seq.to_host();
  for (std::size_t n = 0; n < 9; ++n) {
    if (bad[n]) CHECK(std::isnan(t[n]) && std::isnan(l[n]));
    else if (n == 6) CHECK(t[n] == 0.0f && std::isnan(l[n]));
    else CHECK(std::isfinite(t[n]) && std::isfinite(l[n]));
  }
  const bool nan_seq[7] = {true, true, true, true, false, true, false};
  for (std::size_t s = 0; s < 7; ++s) CHECK(std::isnan(sq[s]) == nan_seq[s]);
  const std::vector<float> d_host(p.seqs(), 1.0f);
  auto d_seq = DeviceBuffer<float>::from(d_host);
  DeviceBuffer<float> g(p.logits.size());
  lc::backward(dp.in, std::span<const float>(d_seq.ptr, d_seq.n), g.span(), {}, dp.workspace.span(), nullptr);
  CHECK(lc::read_status_report(dp.workspace.span(), nullptr).first_bad_row == 1);
  const auto gh = g.to_host();
  for (std::size_t n = 0; n < 9; ++n) {
    std::size_t nans = 0, zeros = 0;
    for (std::size_t v = 0; v < V; ++v) {
      nans += std::isnan(gh[n * V + v]);
      zeros += gh[n * V + v] == 0.0f;
    }
    CHECK(nans == (bad[n] ? V : 0));
    if (n == 6) CHECK(zeros == V);
  }

  // fp16 gradients: |d_seq·w| = 30000 is taken, 40000 (above 65504 / 2) is refused.
  auto h = make_problem<lc::fp16>(40, 4, 7);
  h.offsets = {0, 2, 4};
  for (std::size_t n = 0; n < 4; ++n) {
    h.weights[n] = 1.0f;
    h.targets[n] = static_cast<std::int32_t>(n);
  }
  DeviceProblem<lc::fp16> dh(h);
  auto d_big = DeviceBuffer<float>::from(std::vector<float>{30000.0f, 40000.0f});
  DeviceBuffer<lc::fp16> gh16(h.logits.size());
  lc::backward(dh.in, std::span<const float>(d_big.ptr, d_big.n), gh16.span(), {}, dh.workspace.span(), nullptr);
  CHECK(lc::read_status(dh.workspace.span(), nullptr) == lc::status_bad_d_seq);
  const auto g16 = gh16.to_host();
  for (std::size_t i = 0; i < g16.size(); ++i) CHECK(std::isfinite(to_f(g16[i])) == (i < 80));
}

template <class T>
static void device_large_vocab(std::size_t V, std::size_t N) {
  device_against_oracle<T>(V, N, static_cast<std::uint32_t>(V));
}

// The location of the data picks the implementation; a mix of host and device buffers is refused.
static void device_dispatch() {
  const auto p = make_problem<float>(300, 40, 8);
  const auto o = oracle_forward(p);
  DeviceProblem<float> dp(p);
  CHECK(lc::locate(dp.logits.ptr) == lp::memory_space::device);
  CHECK(lc::locate(p.logits.data()) == lp::memory_space::host);
  DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
  lp::forward(dp.in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), cudaStream_t{});
  check_forward(p, o, seq.to_host(), tok.to_host(), lse.to_host(), "dispatched forward");
  std::vector<float> host_seq(p.seqs());
  check_throws("mixed", "seq_logp: got host memory, expected device or managed memory",
               [&] { lp::forward(dp.in, std::span(host_seq), tok.span(), lse.span(), dp.workspace.span(), cudaStream_t{}); });
  TokenLogits<float> hin{.logits = p.logits, .vocab = p.V, .targets = p.targets, .weights = p.weights, .offsets = p.offsets};
  check_throws("mixed host", "seq_logp: got device memory, expected host or managed memory",
               [&] { lp::forward(hin, seq.span(), {}, {}, dp.workspace.span(), cudaStream_t{}); });
  // No rows: the first non-empty buffer (the offsets, on the device) decides.
  Problem<float> e;
  e.V = 5;
  e.offsets = {0, 0};
  DeviceProblem<float> de(e);
  DeviceBuffer<float> s0(1);
  lp::forward(de.in, s0.span(), {}, {}, de.workspace.span(), cudaStream_t{});
  CHECK(s0.to_host()[0] == 0.0f);
  // Managed memory goes to the device.
  float* managed = nullptr;
  CUDA_OK(cudaMallocManaged(&managed, p.seqs() * sizeof(float)));
  lp::forward(dp.in, std::span(managed, p.seqs()), {}, {}, dp.workspace.span(), cudaStream_t{});
  CUDA_OK(cudaDeviceSynchronize());
  const auto s = seq.to_host();
  CHECK(std::memcmp(managed, s.data(), s.size() * sizeof(float)) == 0);
  CUDA_OK(cudaFree(managed));
}

template <class T>
static void device_all_masked_and_empty() {
  auto p = make_problem<T>(1000, 30, 2);
  for (auto& w : p.weights) w = 0.0f;
  p.offsets = {0, 0, 10, 10, 30, 30};
  const auto o = oracle_forward(p);
  DeviceProblem<T> dp(p);
  DeviceBuffer<float> seq(p.seqs()), tok(p.rows()), lse(p.rows());
  lc::forward(dp.in, seq.span(), tok.span(), lse.span(), dp.workspace.span(), nullptr);
  CHECK(lc::read_status(dp.workspace.span(), nullptr) == lc::status_ok);
  check_forward(p, o, seq.to_host(), tok.to_host(), lse.to_host(), "all masked");
  for (float s : seq.to_host()) CHECK(s == 0.0f);
  // No rows at all.
  Problem<T> e;
  e.V = 5;
  e.offsets = {0, 0, 0};
  DeviceProblem<T> de(e);
  DeviceBuffer<float> s2(2);
  lc::forward(de.in, s2.span(), {}, {}, de.workspace.span(), nullptr);
  const auto h = s2.to_host();
  CHECK(h[0] == 0.0f && h[1] == 0.0f);
}

template <class T>
static void device_suite() {
  for (std::size_t V : {2u, 3u, 7u, 8u, 9u, 31u, 32u, 33u, 255u, 1000u, 4095u, 4096u, 4097u, 5003u, 32000u})
    device_against_oracle<T>(V, V > 4096 ? 17 : 67, static_cast<std::uint32_t>(V) * 3 + 1);
  device_large_vocab<T>(128256, 5);
  device_large_vocab<T>(256000, 3);
  device_unaligned_base<T>();
  device_deterministic<T>();
  device_all_masked_and_empty<T>();
}


// The CUDA head's three calls against the CPU head on the same inputs: float GEMMs summed in
// another order, so to a tolerance scaled by the logits' size (|z| ≲ 6 here), not bit for bit.
static void device_linear_case(std::size_t V, std::size_t d, std::size_t S, cl::Layout layout, bool bias, std::size_t chunk,
                               std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_int_distribution<int> len(0, 9);
  std::vector<std::int64_t> off{0};
  for (std::size_t s = 0; s < S; ++s) off.push_back(off.back() + (s == 1 ? 0 : len(rng)));
  const std::size_t N = static_cast<std::size_t>(off.back());
  std::vector<float> H(N * d), W(V * d), b(bias ? V : 0), w(N), dseq(S);
  for (auto& x : H) x = g(rng);
  for (auto& x : W) x = g(rng) * 2.0f / std::sqrt(static_cast<float>(d));
  for (auto& x : b) x = g(rng);
  std::vector<std::int32_t> y(N);
  for (std::size_t n = 0; n < N; ++n) {
    const bool masked = n % 4 == 1;
    y[n] = masked ? -3 : static_cast<std::int32_t>(rng() % V);
    w[n] = masked ? 0.0f : 0.5f + static_cast<float>(rng() % 3);
  }
  for (std::size_t s = 0; s < S; ++s) dseq[s] = s % 5 == 3 ? 0.0f : g(rng);
  const cl::LinearLogits<float> host{.hidden = H, .proj = W, .bias = b, .dim = d, .vocab = V, .layout = layout, .targets = y,
                                     .weights = w, .offsets = off};
  // The CPU head: forward, then forward_backward (dW, db start from a pattern: they accumulate).
  std::vector<float> seq_c(S), tok_c(N), lse_c(N), dH_c(N * d), dW_c(V * d), db_c(V);
  for (std::size_t i = 0; i < dW_c.size(); ++i) dW_c[i] = 0.25f * std::sin(static_cast<float>(i));
  for (std::size_t i = 0; i < db_c.size(); ++i) db_c[i] = 0.5f * std::cos(static_cast<float>(i));
  const std::vector<float> dW0 = dW_c, db0 = db_c;
  std::vector<std::byte> cws(cl::workspace_size(host));
  cl::forward_backward(host, std::span<const float>(dseq), {.hidden = dH_c, .proj = dW_c, .bias = bias ? std::span<float>(db_c) : std::span<float>()},
                       std::span<float>(seq_c), std::span<float>(tok_c), std::span<float>(lse_c), std::span<std::byte>(cws));

  auto Hd = DeviceBuffer<float>::from(H), Wd = DeviceBuffer<float>::from(W), bd = DeviceBuffer<float>::from(b),
       wd = DeviceBuffer<float>::from(w), dsd = DeviceBuffer<float>::from(dseq);
  auto yd = DeviceBuffer<std::int32_t>::from(y);
  auto od = DeviceBuffer<std::int64_t>::from(off);
  const cl::LinearLogits<float> dev{.hidden = Hd.span(), .proj = Wd.span(), .bias = bd.span(), .dim = d, .vocab = V,
                                    .layout = layout, .targets = yd.span(), .weights = wd.span(), .offsets = od.span()};
  const ll::LinearOptions opt{.chunk_rows = chunk};
  DeviceBuffer<std::byte> ws(ll::workspace_size(dev, opt));
  cublasHandle_t handle = nullptr;
  ll::detail::check_cublas(cublasCreate(&handle), "cublasCreate");
  const double tol = 2e-4;
  auto close = [&](double a, double r, double scale) { return std::abs(a - r) <= tol * (1.0 + std::abs(r) + scale); };
  for (int path = 0; path < 3; ++path) {  // forward_backward; forward then backward(row_lse); backward recomputing
    DeviceBuffer<float> seq(S), tok(N), lse(N), dH(N * d);
    auto dW = DeviceBuffer<float>::from(dW0);
    auto db = DeviceBuffer<float>::from(db0);
    const cl::LinearGrads<float> grads{.hidden = dH.span(), .proj = dW.span(), .bias = bias ? db.span() : std::span<float>()};
    if (path == 0) {
      ll::forward_backward(dev, dsd.span(), grads, seq.span(), tok.span(), lse.span(), ws.span(), handle, nullptr, opt);
    } else {
      ll::forward(dev, seq.span(), tok.span(), lse.span(), ws.span(), handle, nullptr, opt);
      ll::backward(dev, dsd.span(), grads, path == 1 ? std::span<const float>(lse.span()) : std::span<const float>(), ws.span(),
                   handle, nullptr, opt);
    }
    CHECK(lc::read_status(ws.span(), nullptr) == lc::status_ok);
    const auto seq_h = seq.to_host(), tok_h = tok.to_host(), dH_h = dH.to_host(), dW_h = dW.to_host(), db_h = db.to_host();
    int bad = 0;
    for (std::size_t s = 0; s < S; ++s) bad += !close(seq_h[s], seq_c[s], 10.0);
    for (std::size_t n = 0; n < N; ++n) bad += !close(tok_h[n], tok_c[n], 10.0);
    for (std::size_t i = 0; i < dH_h.size(); ++i) bad += !close(dH_h[i], dH_c[i], 3.0);
    for (std::size_t i = 0; i < dW_h.size(); ++i) bad += !close(dW_h[i], dW_c[i], 3.0);
    if (bias)
      for (std::size_t i = 0; i < V; ++i) bad += !close(db_h[i], db_c[i], 3.0);
    CHECK_MSG(bad == 0, "V %zu d %zu N %zu %s bias %d chunk %zu path %d: %d values off", V, d, N,
              layout == cl::Layout::vocab_major ? "vocab_major" : "dim_major", bias, chunk, path, bad);
  }
  cublasDestroy(handle);
}

static void device_linear() {
  std::uint32_t seed = 1;
  for (cl::Layout layout : {cl::Layout::vocab_major, cl::Layout::dim_major})
    for (bool bias : {false, true}) {
      device_linear_case(257, 19, 9, layout, bias, 8, seed++);      // many chunks, V and d odd
      device_linear_case(4097, 64, 6, layout, bias, 0, seed++);     // one chunk, the block-per-row kernels
      device_linear_case(32000, 128, 4, layout, bias, 7, seed++);   // a real vocabulary
    }
}

// A NaN hidden state in a weighted row of a later chunk: its outputs are NaN, the status says
// status_bad_logits with that row (not the chunk's own index), check_status throws.
static void device_linear_bad_logits() {
  const std::size_t V = 50, d = 4, N = 12;
  std::vector<float> H(N * d, 0.5f), W(V * d, 0.1f), w(N, 1.0f);
  std::vector<std::int32_t> y(N, 3);
  std::vector<std::int64_t> off{0, 5, 12};
  H[9 * d + 1] = std::numeric_limits<float>::quiet_NaN();
  auto Hd = DeviceBuffer<float>::from(H), Wd = DeviceBuffer<float>::from(W), wd = DeviceBuffer<float>::from(w);
  auto yd = DeviceBuffer<std::int32_t>::from(y);
  auto od = DeviceBuffer<std::int64_t>::from(off);
  const cl::LinearLogits<float> dev{.hidden = Hd.span(), .proj = Wd.span(), .dim = d, .vocab = V, .targets = yd.span(),
                                    .weights = wd.span(), .offsets = od.span()};
  const ll::LinearOptions opt{.chunk_rows = 4};
  DeviceBuffer<std::byte> ws(ll::workspace_size(dev, opt));
  DeviceBuffer<float> seq(2);
  cublasHandle_t handle = nullptr;
  ll::detail::check_cublas(cublasCreate(&handle), "cublasCreate");
  ll::forward(dev, seq.span(), {}, {}, ws.span(), handle, nullptr, opt);
  const auto r = lc::read_status_report(ws.span(), nullptr);
  CHECK(r.bits & lc::status_bad_logits);
  CHECK(r.first_bad_row == 9);
  const auto seq_h = seq.to_host();
  CHECK(std::isfinite(seq_h[0]) && std::isnan(seq_h[1]));
  check_throws("linear: check_status", "first at row 9", [&] { lc::check_status(ws.span(), nullptr); });
  cublasDestroy(handle);
}

static int run_device() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no CUDA device (cudaGetDeviceCount: %s)\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 77;
  }
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("test_logprob_cuda device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  run_case("float: kernels vs oracle, V 2..256000, in place / separate / misaligned / no row_lse", device_suite<float>);
  run_case("bf16: kernels vs oracle, V 2..256000, in place / separate / misaligned / no row_lse", device_suite<lc::bf16>);
  run_case("fp16: kernels vs oracle, V 2..256000, in place / separate / misaligned / no row_lse", device_suite<lc::fp16>);
  run_case("finite differences of the GPU forward = GPU backward (float)", device_finite_differences);
  run_case("2^21 rows, short sequences and one long sequence", device_many_rows);
  run_case("bad targets / offsets: NaN, status bits, check_status", device_status_bits);
  run_case("bad logits and extreme scales: NaN rows, status bits, first bad row, check_status", device_bad_logits);
  run_case("location dispatch: device, host, managed, mixed refused", device_dispatch);
  run_case("fused linear head: forward_backward, forward + backward (with / without row_lse) = the CPU head", device_linear);
  run_case("fused linear head: bad logits in a later chunk: NaN, status, the global first bad row", device_linear_bad_logits);
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode == "host") return run_host();
  if (mode == "device") return run_device();
  const int h = run_host();
  const int d = run_device();
  return h != 0 ? h : d;
}
