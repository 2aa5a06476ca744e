// The CPU fast path (logprob/cpu/fast.hpp) against the generic oracle on the same storage type,
// across packet and block boundaries, for float, double and bf16: the documented tolerance, in
// place = out of place, results independent of the thread count, extreme and non-finite logits,
// the workspace contract and the shared error checks.
#include <dftune/logprob/cpu/fast.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/logprob.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

using dftune::token_t;
using dftune::logprob::compute_t;
using dftune::logprob::TokenLogits;
using dftune::logprob::cpu::bf16;
namespace cpu = dftune::logprob::cpu;
namespace generic = dftune::logprob::generic;
namespace logprob = dftune::logprob;

namespace {

template <class T>
struct Batch {
  using C = compute_t<T>;
  std::size_t V = 0;
  std::vector<T> logits;
  std::vector<token_t> targets;
  std::vector<C> weights;
  std::vector<std::int64_t> offsets;
  std::vector<C> d_seq;
  TokenLogits<T> view() const { return {.logits = logits, .vocab = V, .targets = targets, .weights = weights, .offsets = offsets}; }
  std::size_t rows() const { return targets.size(); }
  std::size_t sequences() const { return offsets.size() - 1; }
  std::size_t seq_of(std::size_t n) const {
    std::size_t s = 0;
    while (static_cast<std::size_t>(offsets[s + 1]) <= n) ++s;
    return s;
  }
};

// Sequences of 0..max_len rows (the second one empty), every fourth row masked with a bad target.
template <class T>
Batch<T> random_batch(std::mt19937_64& rng, std::size_t V, std::size_t S, double scale, int max_len = 4) {
  Batch<T> b;
  b.V = V;
  b.offsets = {0};
  std::uniform_int_distribution<int> len(0, max_len);
  for (std::size_t s = 0; s < S; ++s) b.offsets.push_back(b.offsets.back() + (s == 1 ? 0 : len(rng)));
  const auto N = static_cast<std::size_t>(b.offsets.back());
  std::normal_distribution<double> z(0.0, scale);
  std::uniform_int_distribution<token_t> y(0, static_cast<token_t>(V - 1));
  std::uniform_real_distribution<double> w(0.25, 2.0), d(-2.0, 2.0);
  for (std::size_t i = 0; i < N * V; ++i) b.logits.push_back(static_cast<T>(z(rng)));
  for (std::size_t n = 0; n < N; ++n) {
    const bool masked = n % 4 == 1;
    b.targets.push_back(masked ? -1 : y(rng));
    b.weights.push_back(static_cast<compute_t<T>>(masked ? 0.0 : w(rng)));
  }
  for (std::size_t s = 0; s < S; ++s) b.d_seq.push_back(static_cast<compute_t<T>>(d(rng)));
  return b;
}

template <class T>
double as_double(const T& x) {
  return static_cast<double>(static_cast<compute_t<T>>(x));
}

// The documented tolerance of the fast path against the generic path (cpu/fast.hpp).
template <class T>
constexpr double rel_tol = std::is_same_v<T, double> ? 1e-12 : 2e-6;

template <class T>
void check_against_generic(const Batch<T>& b) {
  using C = compute_t<T>;
  const auto in = b.view();
  const std::size_t N = b.rows(), S = b.sequences();
  std::vector<C> seq_g(S), tok_g(N), lse_g(N), seq_f(S, -1), tok_f(N, -1), lse_f(N, -1);
  generic::forward(in, std::span<C>(seq_g), std::span<C>(tok_g), std::span<C>(lse_g));
  cpu::forward(in, std::span<C>(seq_f), std::span<C>(tok_f), std::span<C>(lse_f), {});
  std::vector<double> seq_scale(S, 0.0);
  for (std::size_t n = 0; n < N; ++n) {
    INFO("row " << n << " V " << b.V);
    if (b.weights[n] == 0) {
      CHECK(tok_f[n] == 0);
      CHECK(std::isnan(lse_f[n]));
      continue;
    }
    const double scale = std::fabs(b.weights[n]) * (1 + std::fabs(lse_g[n]));
    seq_scale[b.seq_of(n)] += scale;
    CHECK(std::fabs(tok_f[n] - tok_g[n]) <= rel_tol<T> * scale);
    CHECK(std::fabs(lse_f[n] - lse_g[n]) <= rel_tol<T> * (1 + std::fabs(lse_g[n])));
  }
  for (std::size_t s = 0; s < S; ++s) CHECK(std::fabs(seq_f[s] - seq_g[s]) <= rel_tol<T> * seq_scale[s] + 1e-30);

  // Backward, out of place, with and without row_lse, against the generic backward.
  std::vector<T> grad_g(b.logits.size()), grad_f(b.logits.size()), grad_f2(b.logits.size());
  generic::backward(in, std::span<const C>(b.d_seq), std::span<T>(grad_g));
  cpu::backward(in, std::span<const C>(b.d_seq), std::span<T>(grad_f), std::span<const C>(lse_f));
  cpu::backward(in, std::span<const C>(b.d_seq), std::span<T>(grad_f2));
  const double store_tol = std::is_same_v<T, bf16> ? std::ldexp(1.0, -8) : 0.0;  // one bf16 rounding
  for (std::size_t n = 0; n < N; ++n) {
    const double c = std::fabs(static_cast<double>(b.d_seq[b.seq_of(n)]) * b.weights[n]);
    const double lse_scale = 1 + std::fabs(lse_g[n] == lse_g[n] ? lse_g[n] : 0.0);
    for (std::size_t v = 0; v < b.V; ++v) {
      const std::size_t i = n * b.V + v;
      const double g = as_double(grad_g[i]);
      const double tol = 2 * rel_tol<T> * lse_scale * c + store_tol * std::fabs(g) + 1e-300;
      INFO("row " << n << " v " << v << " V " << b.V);
      CHECK(std::fabs(as_double(grad_f[i]) - g) <= tol);
      CHECK(std::fabs(as_double(grad_f2[i]) - g) <= tol);
    }
  }
  // In place gives the same bits as out of place.
  Batch<T> inplace = b;
  cpu::backward(inplace.view(), std::span<const C>(b.d_seq), std::span<T>(inplace.logits), std::span<const C>(lse_f));
  bool same = true;
  for (std::size_t i = 0; i < grad_f.size(); ++i) same = same && as_double(inplace.logits[i]) == as_double(grad_f[i]);
  CHECK(same);
}

}  // namespace

TEST_CASE_TEMPLATE("fast path matches the generic oracle across packet and block boundaries", T, float, double, bf16) {
  std::mt19937_64 rng(11);
  for (std::size_t V : {1u, 2u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 64u, 100u, 2047u, 2048u, 2049u, 4100u, 40000u}) {
    const auto b = random_batch<T>(rng, V, V > 5000 ? 3 : 6, 3.0);
    check_against_generic(b);
  }
  // Wider logits, where the running max moves between blocks.
  for (double scale : {20.0, 200.0}) check_against_generic(random_batch<T>(rng, 6000, 4, scale));
  // Rising logits: each block raises the max, so the running sum is rescaled every block.
  auto b = random_batch<T>(rng, 9000, 3, 1.0);
  for (std::size_t i = 0; i < b.logits.size(); ++i) b.logits[i] = static_cast<T>(static_cast<double>(i % b.V) * 0.01);
  check_against_generic(b);
}

TEST_CASE_TEMPLATE("results do not depend on the thread count", T, float, double, bf16) {
  using C = compute_t<T>;
  std::mt19937_64 rng(12);
  const auto b = random_batch<T>(rng, 3000, 12, 4.0, 6);  // above the threading threshold
  REQUIRE(b.logits.size() >= cpu::kernel::parallel_min);
  auto run = [&](int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    std::vector<C> seq(b.sequences()), tok(b.rows()), lse(b.rows());
    cpu::forward(b.view(), std::span<C>(seq), std::span<C>(tok), std::span<C>(lse), {});
    std::vector<T> grad(b.logits.size());
    cpu::backward(b.view(), std::span<const C>(b.d_seq), std::span<T>(grad), std::span<const C>(lse));
    std::vector<double> all(seq.begin(), seq.end());
    all.insert(all.end(), tok.begin(), tok.end());
    for (const auto& g : grad) all.push_back(as_double(g));
    return all;
  };
  const auto one = run(1);
  const auto two = run(2);
  const auto four = run(4);
#if defined(_OPENMP)
  omp_set_num_threads(omp_get_num_procs());
#endif
  CHECK(one == two);
  CHECK(one == four);
}

TEST_CASE_TEMPLATE("logits of magnitude 1e4, -inf and NaN", T, float, double, bf16) {
  using C = compute_t<T>;
  std::mt19937_64 rng(13);
  auto b = random_batch<T>(rng, 5000, 4, 1e4);
  for (auto& z : b.logits) z = static_cast<T>(std::clamp(as_double(z), -1e4, 1e4));
  check_against_generic(b);
  std::vector<C> seq(b.sequences());
  std::vector<std::byte> ws(cpu::workspace_size(b.view()));
  cpu::forward(b.view(), std::span<C>(seq), {}, {}, std::span<std::byte>(ws));
  for (C s : seq) CHECK(std::isfinite(s));

  // One row: −inf entries have probability ~0; a NaN logit makes the row's log-prob NaN.
  Batch<T> r;
  r.V = 40;
  r.logits.assign(40, static_cast<T>(0.0f));
  r.logits[3] = static_cast<T>(-std::numeric_limits<float>::infinity());
  r.logits[35] = static_cast<T>(-std::numeric_limits<float>::infinity());
  r.targets = {5};
  r.offsets = {0, 1};
  std::vector<C> one(1), lse(1);
  cpu::forward(r.view(), std::span<C>(one), {}, std::span<C>(lse), std::span<std::byte>(ws));
  CHECK(static_cast<double>(one[0]) == doctest::Approx(-std::log(38.0)).epsilon(1e-6));
  const std::vector<C> d{1};
  std::vector<T> grad(40);
  cpu::backward(r.view(), std::span<const C>(d), std::span<T>(grad), std::span<const C>(lse));
  CHECK(std::fabs(as_double(grad[3])) <= 1e-30);  // Eigen's exp clamps −inf to about the smallest normal
  CHECK(as_double(grad[5]) == doctest::Approx(1 - 1 / 38.0).epsilon(1e-2));
  r.logits[20] = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
  cpu::forward(r.view(), std::span<C>(one), {}, {}, std::span<std::byte>(ws));
  CHECK(std::isnan(one[0]));
}

TEST_CASE("workspace: size query, errors, and the dispatch point") {
  std::mt19937_64 rng(14);
  const auto b = random_batch<float>(rng, 300, 5, 2.0);
  const auto in = b.view();
  const std::size_t S = b.sequences(), N = b.rows();
  CHECK(cpu::workspace_size(in) == N * sizeof(float));
  CHECK(logprob::workspace_size(in) == N * sizeof(float));

  std::vector<float> with_tok(S), tok(N), with_ws(S), via_dispatch(S), via_dispatch_ws(S);
  cpu::forward(in, std::span<float>(with_tok), std::span<float>(tok), {}, {});
  std::vector<std::byte> ws(cpu::workspace_size(in));
  cpu::forward(in, std::span<float>(with_ws), {}, {}, std::span<std::byte>(ws));
  CHECK(with_ws == with_tok);
  logprob::forward(in, std::span<float>(via_dispatch));  // allocates its own
  logprob::forward(in, std::span<float>(via_dispatch_ws), {}, {}, std::span<std::byte>(ws));
  CHECK(via_dispatch == with_tok);
  CHECK(via_dispatch_ws == with_tok);

  // Too small or misaligned: dftune::error naming "workspace", outputs untouched.
  std::vector<float> seq(S, 7.0f), lse(N, 7.0f);
  for (std::span<std::byte> bad : {std::span<std::byte>(ws).first(ws.size() - 1), std::span<std::byte>(ws).subspan(1, ws.size() - 4)}) {
    bool thrown = false;
    try {
      cpu::forward(in, std::span<float>(seq), {}, std::span<float>(lse), bad);
    } catch (const dftune::error& e) {
      thrown = true;
      CHECK(std::string(e.what()).find("workspace") != std::string::npos);
    }
    CHECK(thrown);
    for (float x : seq) CHECK(x == 7.0f);
    for (float x : lse) CHECK(x == 7.0f);
  }
}

TEST_CASE_TEMPLATE("the fast path shares the generic checks, and writes nothing when it throws", T, float, double, bf16) {
  using C = compute_t<T>;
  std::mt19937_64 rng(15);
  auto b = random_batch<T>(rng, 9, 4, 1.0);
  REQUIRE(b.rows() >= 3);
  b.weights[0] = 1;
  b.targets[0] = 9;  // == V on a weighted row
  std::vector<C> seq(b.sequences(), C(5)), tok(b.rows(), C(5));
  CHECK_THROWS_AS(cpu::forward(b.view(), std::span<C>(seq), std::span<C>(tok), {}, {}), dftune::error);
  for (C x : seq) CHECK(x == C(5));
  for (C x : tok) CHECK(x == C(5));
  b.targets[0] = 0;
  std::vector<C> d = b.d_seq;
  d.back() = std::numeric_limits<C>::quiet_NaN();
  const auto before = b.logits;
  CHECK_THROWS_AS(cpu::backward(b.view(), std::span<const C>(d), std::span<T>(b.logits)), dftune::error);
  bool same = true;
  for (std::size_t i = 0; i < before.size(); ++i) same = same && as_double(b.logits[i]) == as_double(before[i]);
  CHECK(same);
  // Partial aliasing.
  std::vector<T> storage(2 * b.logits.size(), static_cast<T>(1.0f));
  TokenLogits<T> in = b.view();
  in.logits = std::span<const T>(storage.data(), b.logits.size());
  CHECK_THROWS_AS(cpu::backward(in, std::span<const C>(b.d_seq), std::span<T>(storage.data() + 3, b.logits.size())),
                  dftune::error);
  for (const auto& x : storage) CHECK(as_double(x) == 1.0);
}
