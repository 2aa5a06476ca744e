// The CPU fast path (logprob/cpu/fast.hpp) against the generic oracle on the same storage type,
// across packet and block boundaries, for float, double and bf16: the documented tolerance, in
// place = out of place, results independent of the thread count, extreme and non-finite logits,
// the workspace contract and the shared error checks; non-finite logits and results refused alike
// (the same error from both paths, no extra pass), and forward with row_lse but no token_logp.
// The accuracy cases run once per kernel version this CPU has (cpu/isa.hpp: baseline, avx2,
// avx512), each forced and checked to be the one that ran; the baseline one is what a CPU without
// AVX2 runs.
#include "support/isa.hpp"
#include "support/testing.hpp"

#include <dftune/cpu/isa.hpp>
#include <dftune/logprob/cpu/fast.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/logprob.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
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
namespace isa = dftune::cpu;

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

using test::for_each_isa;

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
  for_each_isa([] {
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
  });
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
  for_each_isa([&] {
    const auto one = run(1);
    const auto two = run(2);
    const auto four = run(4);
    CHECK(one == two);
    CHECK(one == four);
  });
#if defined(_OPENMP)
  omp_set_num_threads(omp_get_num_procs());
#endif
}

TEST_CASE_TEMPLATE("logits of magnitude 1e4, -inf and NaN", T, float, double, bf16) {
  for_each_isa([] {
  using C = compute_t<T>;
  std::mt19937_64 rng(13);
  auto b = random_batch<T>(rng, 5000, 4, 1e4);
  for (auto& z : b.logits) z = static_cast<T>(std::clamp(as_double(z), -1e4, 1e4));
  check_against_generic(b);
  std::vector<C> seq(b.sequences());
  std::vector<std::byte> ws(cpu::workspace_size(b.view()));
  cpu::forward(b.view(), std::span<C>(seq), {}, {}, std::span<std::byte>(ws));
  for (C s : seq) CHECK(std::isfinite(s));

  // One row: −inf entries have probability ~0; a NaN logit is an error (issue #12: it was a NaN
  // log-prob), as in the oracle.
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
  CHECK(std::fabs(as_double(grad[3])) <= 1e-30);  // the kernels' exp clamps −inf to about the smallest normal
  CHECK(as_double(grad[5]) == doctest::Approx(1 - 1 / 38.0).epsilon(1e-2));
  r.logits[20] = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
  one[0] = C(7);
  CHECK_THROWS_WITH_AS(cpu::forward(r.view(), std::span<C>(one), {}, {}, std::span<std::byte>(ws)),
                       "logits[20]: got nan, expected a finite number or −inf on a weighted row (row 0)", dftune::error);
  CHECK(one[0] == C(7));
  });
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

namespace {

using test::error_of;

// Every forward and backward entry point on b: each must throw the same dftune::error (`want`, or
// none when want is test::no_error), and a throwing forward leaves seq_logp untouched.
template <class T>
void same_verdict(const Batch<T>& b, const std::string& want) {
  using C = compute_t<T>;
  const auto in = b.view();
  const std::size_t N = b.rows(), S = b.sequences();
  const C sentinel = C(-12345);
  std::vector<C> seq(S, sentinel), tok(N), lse(N);
  std::vector<std::byte> ws(cpu::workspace_size(in));
  const std::vector<std::string> got{
      error_of([&] { generic::forward(in, std::span<C>(seq), std::span<C>(tok), std::span<C>(lse)); }),
      error_of([&] { generic::forward(in, std::span<C>(seq)); }),
      error_of([&] { cpu::forward(in, std::span<C>(seq), std::span<C>(tok), std::span<C>(lse), {}); }),
      error_of([&] { cpu::forward(in, std::span<C>(seq), {}, {}, std::span<std::byte>(ws)); }),
      error_of([&] { logprob::forward(in, std::span<C>(seq)); }),
      error_of([&] { logprob::forward(in, std::span<C>(seq), {}, std::span<C>(lse)); }),
  };
  for (const auto& g : got) CHECK(g == want);
  if (want != test::no_error)
    for (C x : seq) CHECK(x == sentinel);
  // Backward recomputing row_lse refuses the logits forward refuses (a token_logp or seq_logp
  // overflow is forward's alone: the gradient is finite there).
  if (want.rfind("logits", 0) == 0 || want == test::no_error) {
    std::vector<T> g1(b.logits.size()), g2(b.logits.size());
    CHECK(error_of([&] { generic::backward(in, std::span<const C>(b.d_seq), std::span<T>(g1)); }) == want);
    CHECK(error_of([&] { cpu::backward(in, std::span<const C>(b.d_seq), std::span<T>(g2)); }) == want);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("non-finite logits: the fast path and the oracle refuse the same rows with the same error", T, float, double, bf16) {
  // Rows of V logits across packet and block boundaries; bad values at the start, inside and at
  // the end of a row, in several rows (the smallest is named), and on masked rows (never read).
  // Before the fix: a +inf logit gave NaN (fast) against −inf (oracle), a NaN gave NaN — no error.
  const T inf = static_cast<T>(std::numeric_limits<float>::infinity()), nan = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
  std::mt19937_64 rng(21);
  for (std::size_t V : {1u, 7u, 40u, 2047u, 2048u, 2049u, 5000u}) {
    CAPTURE(V);
    Batch<T> b = random_batch<T>(rng, V, 5, 2.0);
    const std::size_t N = b.rows();
    REQUIRE(N >= 3);
    std::size_t w0 = 0;
    while (b.weights[w0] == 0) ++w0;  // a weighted row
    std::size_t masked = 1;           // random_batch masks every fourth row from row 1
    REQUIRE(b.weights[masked] == 0);
    same_verdict(b, test::no_error);
    const auto y = static_cast<std::size_t>(b.targets[w0]);
    for (std::size_t v : {std::size_t{0}, V / 2, V - 1}) {
      for (T bad : {nan, inf}) {
        Batch<T> c = b;
        c.logits[w0 * V + v] = bad;
        c.logits[masked * V + v] = nan;  // masked: ignored
        const std::string value = std::isnan(as_double(bad)) ? "nan" : "inf";
        same_verdict(c, "logits[" + std::to_string(w0 * V + v) + "]: got " + value +
                            ", expected a finite number or −inf on a weighted row (row " + std::to_string(w0) + ")");
        // A later bad row does not change which is named; an earlier one does.
        c.logits[(N - 1) * V] = nan;
        c.weights[N - 1] = 1;
        c.targets[N - 1] = 0;
        same_verdict(c, "logits[" + std::to_string(w0 * V + v) + "]: got " + value +
                            ", expected a finite number or −inf on a weighted row (row " + std::to_string(w0) + ")");
      }
    }
    // A −inf target: log 0.
    if (V > 1) {
      Batch<T> c = b;
      c.logits[w0 * V + y] = -inf;
      same_verdict(c, "logits[" + std::to_string(w0 * V + y) + "]: got -inf, expected a finite logit for the target y = " +
                          std::to_string(y) + " on a weighted row (row " + std::to_string(w0) + ") (its log-prob would be −inf)");
      // −inf elsewhere is fine (probability 0).
      Batch<T> d = b;
      d.logits[w0 * V + (y + 1) % V] = -inf;
      same_verdict(d, test::no_error);
    }
    // A row of −inf.
    {
      Batch<T> c = b;
      for (std::size_t v = 0; v < V; ++v) c.logits[w0 * V + v] = -inf;
      same_verdict(c, "logits[" + std::to_string(w0 * V + y) + "]: got -inf, expected a finite logit for the target y = " +
                          std::to_string(y) + " on a weighted row (row " + std::to_string(w0) + ") (its log-prob would be −inf)");
    }
    // A NaN among −inf before any finite logit (in the fast path's first block of −inf, where the
    // max ignores it and the sum was skipped), with finite logits after it.
    if (V > 2) {
      Batch<T> c = b;
      const std::size_t lead = std::min<std::size_t>(V - 1, 2048);
      for (std::size_t v = 0; v < lead; ++v) c.logits[w0 * V + v] = -inf;
      c.logits[w0 * V + lead / 2] = nan;
      c.targets[w0] = static_cast<token_t>(V - 1);
      same_verdict(c, "logits[" + std::to_string(w0 * V + lead / 2) +
                          "]: got nan, expected a finite number or −inf on a weighted row (row " + std::to_string(w0) + ")");
    }
  }
}

TEST_CASE_TEMPLATE("finite logits whose log-probs compute_t cannot hold are named errors in both paths", T, float, double) {
  using C = compute_t<T>;
  const double big = static_cast<double>(std::numeric_limits<T>::max());
  // A token log-prob z[y] − lse ≈ −2·max: overflows compute_t (float: before the fix −inf, no error).
  Batch<T> b;
  b.V = 2;
  b.logits = {static_cast<T>(big), static_cast<T>(-big)};
  b.targets = {1};
  b.weights = {C(1)};
  b.offsets = {0, 1};
  b.d_seq = {C(1)};
  std::vector<C> seq(1);
  const std::string msg = error_of([&] { generic::forward(b.view(), std::span<C>(seq)); });
  CHECK(msg.rfind("token_logp[0]: got -", 0) == 0);
  CHECK(msg.find("expected a weighted log-prob w·(z[y] − lse) that compute_t<T> can hold") != std::string::npos);
  same_verdict(b, msg);
  // Each token fits, their sum does not: seq_logp is named and left untouched.
  Batch<T> s;
  s.V = 2;
  s.logits = {T(0), static_cast<T>(-0.75 * big), T(0), static_cast<T>(-0.75 * big)};
  s.targets = {1, 1};
  s.weights = {C(1), C(1)};
  s.offsets = {0, 2};
  s.d_seq = {C(1)};
  const std::string smsg = error_of([&] { generic::forward(s.view(), std::span<C>(seq)); });
  CHECK(smsg.rfind("seq_logp[0]: got -", 0) == 0);
  same_verdict(s, smsg);
  // Half of it fits.
  s.offsets = {0, 1, 2};
  s.d_seq = {C(1), C(1)};
  same_verdict(s, test::no_error);
}

TEST_CASE_TEMPLATE("backward: a gradient scale |d_seq·w| beyond half of T's largest value is a named error", T, float, double, bf16) {
  using C = compute_t<T>;
  std::mt19937_64 rng(22);
  Batch<T> b = random_batch<T>(rng, 33, 3, 1.0);
  std::size_t r = 0;
  while (b.weights[r] == 0) ++r;
  const std::size_t s = b.seq_of(r);
  const double tmax = static_cast<double>(static_cast<C>(std::numeric_limits<T>::max()));
  b.weights[r] = C(2);
  b.d_seq[s] = static_cast<C>(0.26 * tmax);  // |c| = 0.52·max: before the fix some gradients were inf
  std::vector<T> g(b.logits.size(), T(7.0f));
  const std::string want = "d_seq[" + std::to_string(s) + "]: got ";
  for (auto* f : {+[](const Batch<T>& x, std::span<T> gr) { generic::backward(x.view(), std::span<const C>(x.d_seq), gr); },
                  +[](const Batch<T>& x, std::span<T> gr) { cpu::backward(x.view(), std::span<const C>(x.d_seq), gr); }}) {
    const std::string m = error_of([&] { f(b, std::span<T>(g)); });
    CHECK(m.rfind(want, 0) == 0);
    CHECK(m.find("is at most half the largest gradient value (row " + std::to_string(r) + ")") != std::string::npos);
    for (const T& x : g) CHECK(as_double(x) == 7.0);
  }
  b.d_seq[s] = static_cast<C>(0.24 * tmax);  // 0.48·max: every entry finite
  cpu::backward(b.view(), std::span<const C>(b.d_seq), std::span<T>(g));
  for (const T& x : g) CHECK(std::isfinite(as_double(x)));
}

TEST_CASE_TEMPLATE("forward with row_lse but no token_logp (workspace and allocating branches) equals the oracle", T, float, double, bf16) {
  using C = compute_t<T>;
  std::mt19937_64 rng(23);
  for (std::size_t V : {3u, 2049u}) {
    const auto b = random_batch<T>(rng, V, 6, 3.0);
    const auto in = b.view();
    const std::size_t N = b.rows(), S = b.sequences();
    std::vector<C> seq_g(S), lse_g(N);
    generic::forward(in, std::span<C>(seq_g), {}, std::span<C>(lse_g));
    std::vector<std::byte> ws(logprob::workspace_size(in));
    std::vector<C> seq_w(S, C(-1)), lse_w(N, C(-1)), seq_a(S, C(-1)), lse_a(N, C(-1));
    logprob::forward(in, std::span<C>(seq_w), {}, std::span<C>(lse_w), std::span<std::byte>(ws));  // workspace
    logprob::forward(in, std::span<C>(seq_a), {}, std::span<C>(lse_a));                           // allocates
    for (std::size_t n = 0; n < N; ++n) {
      CAPTURE(n);
      if (b.weights[n] == 0) {
        CHECK(std::isnan(lse_w[n]));
        CHECK(std::isnan(lse_a[n]));
        CHECK(std::isnan(lse_g[n]));
        continue;
      }
      CHECK(std::fabs(lse_w[n] - lse_g[n]) <= rel_tol<T> * (1 + std::fabs(lse_g[n])));
      CHECK(lse_a[n] == lse_w[n]);
    }
    for (std::size_t s = 0; s < S; ++s) {
      double scale = 0;
      for (std::size_t n = static_cast<std::size_t>(b.offsets[s]); n < static_cast<std::size_t>(b.offsets[s + 1]); ++n)
        scale += std::fabs(b.weights[n]) * (1 + std::fabs(b.weights[n] == 0 ? 0.0 : static_cast<double>(lse_g[n])));
      CHECK(std::fabs(seq_w[s] - seq_g[s]) <= rel_tol<T> * scale + 1e-30);
      CHECK(seq_a[s] == seq_w[s]);
    }
  }
}

TEST_CASE("workspace_size is overflow-safe (a wrapped rows·sizeof would under-size the workspace)") {
  // A bf16 span of 2^62 + 1 elements, never read: rows·sizeof(float) = 2^64 + 4 wraps to 4.
  const std::size_t n = (std::size_t{1} << 62) + 1;
  static const bf16 one{1.0f};
  const TokenLogits<bf16> in{.logits = std::span<const bf16>(&one, n), .vocab = 1};
  CHECK_THROWS_WITH_AS(cpu::workspace_size(in), doctest::Contains("workspace_size (rows·sizeof(compute_t<T>)): got 4611686018427387905·4"),
                       dftune::error);
  CHECK_THROWS_AS(logprob::workspace_size(in), dftune::error);
}

TEST_CASE("kernel versions: force_isa is checked, last_isa says what ran, reset_isa goes back") {
  std::mt19937_64 rng(16);
  const auto b = random_batch<float>(rng, 1000, 3, 2.0);
  std::vector<float> seq(b.sequences()), tok(b.rows());
  for (isa::Isa i : {isa::Isa::baseline, isa::Isa::avx2, isa::Isa::avx512}) {
    if (static_cast<int>(i) <= static_cast<int>(isa::supported_isa())) {
      isa::force_isa(i);
      CHECK(isa::active_isa() == i);
      cpu::forward(b.view(), std::span<float>(seq), std::span<float>(tok), {}, {});
      CHECK(isa::last_isa() == i);
    } else {  // a CPU without it: refused up front, the forced choice unchanged
      const isa::Isa before = isa::active_isa();
      CHECK_THROWS_WITH_AS(isa::force_isa(i),
                           (std::string("isa: got ") + isa::isa_name(i) + ", expected an ISA this CPU runs (at most " +
                            isa::isa_name(isa::supported_isa()) + ")").c_str(),
                           dftune::error);
      CHECK(isa::active_isa() == before);
    }
  }
  isa::reset_isa();
  CHECK(isa::active_isa() == isa::detail::environment_isa());
#if DFTUNE_CPU_DISPATCH && defined(__x86_64__)
  // What this machine runs when nothing is forced (a CI host without AVX2 still passes).
  MESSAGE("this CPU's widest kernel version: " << isa::isa_name(isa::supported_isa()));
#endif
}

// ctest runs this case alone with DFTUNE_ISA set (tests/CMakeLists.txt); elsewhere it checks
// only that an unset variable means the CPU's widest version.
TEST_CASE("DFTUNE_ISA picks the kernel version, and a bad value is a named error") {
  const char* env = std::getenv("DFTUNE_ISA");
  const std::string v = env ? env : "";
  std::mt19937_64 rng(17);
  const auto b = random_batch<float>(rng, 500, 3, 2.0);
  std::vector<float> seq(b.sequences(), 7.0f);
  std::vector<std::byte> ws(cpu::workspace_size(b.view()));
  std::optional<isa::Isa> want;
  for (isa::Isa i : {isa::Isa::baseline, isa::Isa::avx2, isa::Isa::avx512})
    if (v == isa::isa_name(i)) want = i;
  if (v.empty()) want = isa::supported_isa();
  if (want && static_cast<int>(*want) <= static_cast<int>(isa::supported_isa())) {
    CHECK(isa::active_isa() == *want);
    cpu::forward(b.view(), std::span<float>(seq), {}, {}, std::span<std::byte>(ws));
    CHECK(isa::last_isa() == *want);
  } else {
    const std::string expected = want ? std::string("an ISA this CPU runs (at most ") + isa::isa_name(isa::supported_isa()) + ")"
                                      : std::string("baseline, avx2 or avx512");
    CHECK_THROWS_WITH_AS(isa::active_isa(), ("DFTUNE_ISA: got " + v + ", expected " + expected).c_str(), dftune::error);
    CHECK_THROWS_WITH_AS(cpu::forward(b.view(), std::span<float>(seq), {}, {}, std::span<std::byte>(ws)),
                         ("DFTUNE_ISA: got " + v + ", expected " + expected).c_str(), dftune::error);
    for (float x : seq) CHECK(x == 7.0f);  // thrown before any write
    isa::force_isa(isa::Isa::baseline);     // force_isa wins over a bad environment
    cpu::forward(b.view(), std::span<float>(seq), {}, {}, std::span<std::byte>(ws));
    CHECK(isa::last_isa() == isa::Isa::baseline);
    isa::reset_isa();
  }
}
