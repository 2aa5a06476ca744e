// The fused linear + log-prob head (logprob/linear/) against the materialised oracle: logits
// H·Wᵀ + b in double, then logprob::generic::forward / backward on them, then dH = G W, dW = Gᵀ H,
// db = Σ G by plain loops. Random shapes (V not a multiple of the tile, N below one chunk, several
// chunks), both layouts, with and without bias, float/double/bf16, every row masked, extreme
// logits; finite differences; results independent of the thread count; the named errors, with
// nothing written. The row work runs in each kernel version this CPU has (cpu/isa.hpp), forced.
#include <dftune/cpu/isa.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/logprob/logprob.hpp>

#include "support/isa.hpp"
#include "support/linear_problem.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

using dftune::token_t;
using dftune::logprob::compute_t;
using dftune::logprob::cpu::bf16;
namespace linear = dftune::logprob::linear;
namespace generic = dftune::logprob::generic;
namespace logprob = dftune::logprob;
using namespace linear_problem;

namespace {

// The materialised path in double: the oracle.
struct Oracle {
  std::vector<double> logits, seq, token, lse, G, dH, dW, db;
  std::vector<double> delta;  // per row: a bound on the error of a logit computed in the storage's compute type
  // per row: −Σ p log p from log_softmax, Σ p |log p + H| (how far an error δ in the logits moves
  // it: δ times this) and Σ p |log p| (1 + |log p|) (what rounding each log p moves it by)
  std::vector<double> entropy, entropy_sens, entropy_mag;
};

template <class T>
Oracle oracle(const Problem<T>& p) {
  const std::size_t N = p.N, V = p.V, d = p.d;
  Oracle o;
  o.logits.assign(N * V, 0.0);
  o.delta.assign(N, 0.0);
  const double eps = std::numeric_limits<compute_t<T>>::epsilon();
  for (std::size_t n = 0; n < N; ++n) {
    double mag = 0;
    for (std::size_t v = 0; v < V; ++v) {
      double z = p.b.empty() ? 0.0 : as_double(p.b[v]), m = std::abs(z);
      for (std::size_t k = 0; k < d; ++k) {
        z += as_double(p.H[n * d + k]) * p.w_at(v, k);
        m += std::abs(as_double(p.H[n * d + k]) * p.w_at(v, k));
      }
      o.logits[n * V + v] = z;
      mag = std::max(mag, m);
    }
    o.delta[n] = 2.0 * static_cast<double>(d + 1) * eps * mag;  // γ_{d+1}: the dot product and the bias
  }
  std::vector<double> w(p.weights.begin(), p.weights.end()), ds(p.d_seq.begin(), p.d_seq.end());
  const logprob::TokenLogits<double> tl{.logits = o.logits, .vocab = V, .targets = p.targets, .weights = w, .offsets = p.offsets};
  o.seq.resize(p.S());
  o.token.resize(N);
  o.lse.resize(N);
  generic::forward(tl, std::span<double>(o.seq), std::span<double>(o.token), std::span<double>(o.lse));
  o.G.resize(N * V);
  generic::backward(tl, std::span<const double>(ds), std::span<double>(o.G));
  o.entropy.assign(N, 0.0);
  o.entropy_sens.assign(N, 0.0);
  o.entropy_mag.assign(N, 0.0);
  for (std::size_t n = 0; n < N; ++n) {
    if (p.weights[n] == 0) continue;
    std::vector<double> logp(V);  // log_softmax of the materialised row
    for (std::size_t v = 0; v < V; ++v) logp[v] = o.logits[n * V + v] - o.lse[n];
    for (std::size_t v = 0; v < V; ++v) o.entropy[n] -= std::exp(logp[v]) * logp[v];
    for (std::size_t v = 0; v < V; ++v) {
      const double pv = std::exp(logp[v]);
      o.entropy_sens[n] += pv * std::abs(logp[v] + o.entropy[n]);
      o.entropy_mag[n] += pv * std::abs(logp[v]) * (1 + std::abs(logp[v]));
      // The z-loss ζ Σ w lse²: ∂/∂z_v = 2 ζ w lse p_v.
      o.G[n * V + v] += 2 * p.zeta * static_cast<double>(p.weights[n]) * o.lse[n] * pv;
    }
  }
  o.dH.assign(N * d, 0.0);
  o.dW.assign(V * d, 0.0);
  o.db.assign(V, 0.0);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t v = 0; v < V; ++v) {
      const double gv = o.G[n * V + v];
      o.db[v] += gv;
      for (std::size_t k = 0; k < d; ++k) {
        o.dH[n * d + k] += gv * p.w_at(v, k);
        const std::size_t at = p.layout == linear::Layout::vocab_major ? v * d + k : k * V + v;
        o.dW[at] += gv * as_double(p.H[n * d + k]);
      }
    }
  return o;
}

// Tolerances: the row kernels' own (cpu/fast.hpp), plus what an error δ_n in the logits of row n
// makes of each output (δ bounds the rounding of a dot product of length d + 1 in compute_t<T>).
template <class T>
constexpr double kernel_tol = std::is_same_v<compute_t<T>, double> ? 1e-12 : 4e-6;

template <class T>
struct Outputs {
  using C = compute_t<T>;
  std::vector<C> seq, token, lse, entropy, dW, db;
  std::vector<T> dH;
};

// The worst of err / bound over an output, and where it is: one assertion per output.
struct Worst {
  double ratio = 0;
  std::size_t at = 0;
  void add(std::size_t i, double err, double bound) {
    const double r = err <= bound ? err / std::max(bound, 1e-300) : std::max(err / bound, 1.0 + 1e-9);
    if (!(r <= ratio)) {  // NaN counts as a failure too
      ratio = std::isnan(r) ? std::numeric_limits<double>::infinity() : r;
      at = i;
    }
  }
};

#define CHECK_WORST(name, w)                      \
  do {                                            \
    INFO(name, ": worst err/bound at ", (w).at);  \
    CHECK((w).ratio <= 1.0);                      \
  } while (0)

template <class T>
void check_forward(const Problem<T>& p, const Oracle& o, const Outputs<T>& out) {
  const double tol = kernel_tol<T>;
  Worst lse, token, seq, ent;
  bool masked_ok = true;
  for (std::size_t n = 0; n < p.N; ++n) {
    const double w = p.weights[n];
    if (w == 0) {
      masked_ok = masked_ok && out.token[n] == 0 && std::isnan(out.lse[n]) && (out.entropy.empty() || std::isnan(out.entropy[n]));
      continue;
    }
    const double err_lse = tol * (1 + std::abs(o.lse[n])) + o.delta[n];
    lse.add(n, std::abs(out.lse[n] - o.lse[n]), err_lse);
    token.add(n, std::abs(out.token[n] - o.token[n]), std::abs(w) * (err_lse + o.delta[n]) + tol * std::abs(o.token[n]));
    // A shift Δ of lse (its error and its rounding to compute_t) moves H by Δ (1 − H), |·| ≤ Δ (1 + H).
    if (!out.entropy.empty())
      ent.add(n, std::abs(out.entropy[n] - o.entropy[n]),
              (2 * tol * (1 + std::abs(o.lse[n])) + o.delta[n]) * (1 + o.entropy[n]) + o.delta[n] * o.entropy_sens[n] +
                  tol * (o.entropy[n] + o.entropy_mag[n]));
  }
  for (std::size_t s = 0; s < p.S(); ++s) {
    double bound = 0, mag = 0;
    for (auto n = static_cast<std::size_t>(p.offsets[s]); n < static_cast<std::size_t>(p.offsets[s + 1]); ++n) {
      if (p.weights[n] == 0) continue;
      bound += std::abs(p.weights[n]) * (2 * tol * (1 + std::abs(o.lse[n])) + 2 * o.delta[n]);
      mag += std::abs(o.token[n]);
    }
    seq.add(s, std::abs(out.seq[s] - o.seq[s]), bound + tol * mag);
  }
  CHECK(masked_ok);
  CHECK_WORST("row_lse", lse);
  CHECK_WORST("token_logp", token);
  CHECK_WORST("seq_logp", seq);
  CHECK_WORST("entropy", ent);
}

// G_nv = c_n (onehot − p_nv): an error δ in the logits moves p_nv by about p_nv·2δ, so every
// gradient is checked against Σ over its terms of |c_n| (p_nv + onehot) (tol + 4δ_n) |other factor|.
// Eigen's exp returns the smallest normal number for exp(−huge) where the oracle has 0: `tiny`.
template <class T>
void check_backward(const Problem<T>& p, const Oracle& o, const Outputs<T>& out, const std::vector<double>& dW0,
                    const std::vector<double>& db0) {
  const std::size_t N = p.N, V = p.V, d = p.d;
  const double tol = kernel_tol<T>;
  const double tiny = 1e6 * std::numeric_limits<compute_t<T>>::min();
  const double narrow = std::is_same_v<T, bf16> ? 1.0 / 256 : 0.0;  // dH is rounded to bf16 once
  std::vector<double> bound_w(V * d, 0.0), bound_b(V, 0.0), prob(V);
  Worst dh, dw, db;
  bool zero_rows_ok = true;
  for (std::size_t n = 0; n < N; ++n) {
    if (!p.carries_grad(n)) {
      for (std::size_t k = 0; k < d; ++k) zero_rows_ok = zero_rows_ok && as_double(out.dH[n * d + k]) == 0.0;
      continue;
    }
    // The row's coefficients: c, and the z-loss's 2ζw·lse, whose lse is off by (1 + |lse|)·e at most.
    const double c = std::abs(p.coef(n)) + 2 * std::abs(p.zeta * p.weights[n]) * (1 + std::abs(o.lse[n]));
    const double e = tol + 4 * o.delta[n];
    const auto y = static_cast<std::size_t>(p.targets[n]);
    for (std::size_t v = 0; v < V; ++v) {
      prob[v] = std::abs(c) * (std::exp(o.logits[n * V + v] - o.lse[n]) + (v == y ? 1.0 : 0.0));
      bound_b[v] += prob[v] * e;
    }
    for (std::size_t k = 0; k < d; ++k) {
      double bound = tiny;
      const double h = std::abs(as_double(p.H[n * d + k]));
      for (std::size_t v = 0; v < V; ++v) {
        bound += prob[v] * e * std::abs(p.w_at(v, k));
        bound_w[p.layout == linear::Layout::vocab_major ? v * d + k : k * V + v] += prob[v] * e * h;
      }
      dh.add(n * d + k, std::abs(as_double(out.dH[n * d + k]) - o.dH[n * d + k]), bound + narrow * std::abs(o.dH[n * d + k]));
    }
  }
  for (std::size_t i = 0; i < V * d; ++i)
    dw.add(i, std::abs(out.dW[i] - (dW0[i] + o.dW[i])), bound_w[i] + tol * std::abs(dW0[i]) + tiny);
  for (std::size_t v = 0; v < V; ++v)
    db.add(v, std::abs(out.db[v] - (db0[v] + o.db[v])), bound_b[v] + tol * std::abs(db0[v]) + tiny);
  CHECK(zero_rows_ok);
  CHECK_WORST("grads.hidden", dh);
  CHECK_WORST("grads.proj", dw);
  CHECK_WORST("grads.bias", db);
}

template <class T>
std::vector<std::byte> workspace_for(const Problem<T>& p, const linear::LinearOptions& opt) {
  return std::vector<std::byte>(linear::workspace_size(p.view(), opt));
}

// Runs forward + backward (or forward_backward), with dW and db starting from non-zero values
// (they accumulate).
template <class T>
Outputs<T> run(const Problem<T>& p, Path path, const linear::LinearOptions& opt, std::vector<double>* dW0 = nullptr,
               std::vector<double>* db0 = nullptr) {
  using C = compute_t<T>;
  Outputs<T> out;
  out.seq.assign(p.S(), C(99));
  out.token.assign(p.N, C(99));
  out.lse.assign(p.N, C(99));
  if (p.entropy) out.entropy.assign(p.N, C(99));
  out.dH.assign(p.N * p.d, T(99.0f));
  out.dW.resize(p.V * p.d);
  out.db.resize(p.V);
  for (std::size_t i = 0; i < out.dW.size(); ++i) out.dW[i] = static_cast<C>(0.25 * std::sin(static_cast<double>(i)));
  for (std::size_t i = 0; i < out.db.size(); ++i) out.db[i] = static_cast<C>(0.5 * std::cos(static_cast<double>(i)));
  if (dW0) dW0->assign(out.dW.begin(), out.dW.end());
  if (db0) db0->assign(out.db.begin(), out.db.end());
  auto ws = workspace_for(p, opt);
  const linear::LinearGrads<T> grads{.hidden = out.dH, .proj = out.dW, .bias = out.db, .z_loss = p.zeta};
  const linear::TokenOutputs<T> rows{.token_logp = out.token, .row_lse = out.lse, .entropy = out.entropy};
  if (path == Path::one_pass) {
    linear::forward_backward(p.view(), std::span<const C>(p.d_seq), grads, std::span<C>(out.seq), rows, std::span<std::byte>(ws), opt);
  } else {
    if (p.entropy)
      linear::forward(p.view(), std::span<C>(out.seq), rows, std::span<std::byte>(ws), opt);
    else  // the signature without TokenOutputs
      linear::forward(p.view(), std::span<C>(out.seq), std::span<C>(out.token), std::span<C>(out.lse), std::span<std::byte>(ws), opt);
    const std::span<const C> lse = path == Path::two_phase ? std::span<const C>(out.lse) : std::span<const C>();
    linear::backward(p.view(), std::span<const C>(p.d_seq), grads, lse, std::span<std::byte>(ws), opt);
  }
  return out;
}

template <class T>
void against_oracle(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const Shape shapes[] = {
      {1, 3, 3, {}},                                                         // V = 1: every log-prob is 0
      {37, 5, 4, {}},                                                        // N below one chunk (auto plan)
      {301, 19, 12, {.chunk_rows = 8, .vocab_tile = 64, .dim_tile = 8}},     // V % tile ≠ 0, d % tile ≠ 0, many chunks
      {257, 33, 9, {.chunk_rows = 5, .vocab_tile = 256, .dim_tile = 64}},    // last vocab tile of one column
      {130, 17, 7, {.chunk_rows = 1, .vocab_tile = 7, .dim_tile = 1}},       // one-row chunks, tiny tiles
  };
  // The optional outputs and the z-loss on half the cases (with the bias); the default call on the other half.
  for_each_case<T>(rng, shapes, [&](const Problem<T>& p, const Shape& sh, linear::Layout layout, bool bias, Path path) {
    INFO("V ", sh.V, " d ", sh.d, " N ", p.N, " layout ", static_cast<int>(layout), " bias ", bias, " path ", static_cast<int>(path),
         " chunk ", sh.opt.chunk_rows, " entropy and z-loss ", bias);
    const Oracle o = oracle(p);
    std::vector<double> dW0, db0;
    const auto out = run(p, path, sh.opt, &dW0, &db0);
    check_forward(p, o, out);
    check_backward(p, o, out, dW0, db0);
  });
}

}  // namespace

TEST_CASE("fused linear head: float against the materialised oracle") { against_oracle<float>(1); }
TEST_CASE("fused linear head: double against the materialised oracle") { against_oracle<double>(2); }
TEST_CASE("fused linear head: bf16 storage against the materialised oracle") { against_oracle<bf16>(3); }

TEST_CASE("fused linear head: the row work in every kernel version (baseline, avx2, avx512) against the oracle") {
  test::for_each_isa([](dftune::cpu::Isa i) {
    against_oracle<float>(11);
    CHECK(dftune::cpu::last_isa() == i);
    against_oracle<double>(12);
    against_oracle<bf16>(13);
  });
}

TEST_CASE("fused linear head: the path of builds without Eigen (plain loops, generic row kernels)") {
  // What linear.hpp dispatches to without Eigen on the include path, run here explicitly.
  std::mt19937_64 rng(14);
  for (auto layout : {linear::Layout::vocab_major, linear::Layout::dim_major}) {
    auto p = random_problem<double>(rng, 97, 11, 8, layout, true);
    p.entropy = true;
    p.zeta = 0.2;
    const Oracle o = oracle(p);
    const linear::LinearOptions opt{.chunk_rows = 6, .vocab_tile = 40, .dim_tile = 4};
    Outputs<double> out;
    out.seq.assign(p.S(), 9.0);
    out.token.assign(p.N, 9.0);
    out.lse.assign(p.N, 9.0);
    out.entropy.assign(p.N, 9.0);
    out.dH.assign(p.N * p.d, 9.0);
    out.dW.assign(p.V * p.d, 0.0);
    out.db.assign(p.V, 0.0);
    auto ws = workspace_for(p, opt);
    const dftune::logprob::linear::detail::Call<double> call{
        .mode = dftune::logprob::linear::detail::Mode::forward_backward, .seq_logp = out.seq, .token_logp = out.token,
        .row_lse = out.lse, .entropy = out.entropy, .d_seq = p.d_seq,
        .grads = {.hidden = out.dH, .proj = out.dW, .bias = out.db, .z_loss = p.zeta}};
    linear::chunked::execute<linear::gemm::LoopGemm, linear::chunked::GenericRows>(p.view(), call, std::span<std::byte>(ws), opt);
    check_forward(p, o, out);
    check_backward(p, o, out, std::vector<double>(p.V * p.d, 0.0), std::vector<double>(p.V, 0.0));
  }
}

TEST_CASE("fused linear head: a wrong bias, target or layout is caught by the oracle comparison") {
  // The tolerances above are tight enough to see a mistake of one logit's worth: shifting the bias
  // of the first target by 1e-3 (float) breaks the comparison.
  std::mt19937_64 rng(4);
  auto p = random_problem<float>(rng, 61, 7, 5, linear::Layout::vocab_major, true);
  const Oracle o = oracle(p);
  const auto y = static_cast<std::size_t>(p.targets[0]);
  p.b[y] += 1e-3f;
  const auto out = run(p, Path::one_pass, {});
  CHECK(std::abs(out.token[0] - o.token[0]) > std::abs(p.weights[0]) * (kernel_tol<float> * (1 + std::abs(o.lse[0])) + 2 * o.delta[0]));
}

TEST_CASE("fused linear head: every row masked") {
  std::mt19937_64 rng(5);
  for (auto path : {Path::two_phase, Path::one_pass}) {
    auto p = random_problem<float>(rng, 50, 6, 6, linear::Layout::vocab_major, true);
    std::fill(p.weights.begin(), p.weights.end(), 0.0f);
    std::fill(p.targets.begin(), p.targets.end(), -1);  // never read
    std::vector<double> dW0, db0;
    const auto out = run(p, path, {.chunk_rows = 4}, &dW0, &db0);
    for (std::size_t s = 0; s < p.S(); ++s) CHECK(out.seq[s] == 0);
    for (std::size_t n = 0; n < p.N; ++n) {
      CHECK(out.token[n] == 0);
      CHECK(std::isnan(out.lse[n]));
    }
    for (const auto& x : out.dH) CHECK(x == 0);
    for (std::size_t i = 0; i < out.dW.size(); ++i) CHECK(out.dW[i] == static_cast<float>(dW0[i]));  // untouched
    for (std::size_t i = 0; i < out.db.size(); ++i) CHECK(out.db[i] == static_cast<float>(db0[i]));
  }
}

TEST_CASE("fused linear head: no rows, empty sequences") {
  Problem<float> p;
  p.V = 4;
  p.d = 3;
  p.W.assign(12, 1.0f);
  p.offsets = {0, 0, 0};
  p.d_seq = {1.0f, 2.0f};
  const auto out = run(p, Path::one_pass, {});
  CHECK(out.seq == std::vector<float>{0.0f, 0.0f});
  CHECK(linear::workspace_size(p.view()) == 0);
}

TEST_CASE("fused linear head: extreme logits") {
  // Logits of ±1e4 and more: the target can sit 2e4 nats below the maximum; the max-shifted
  // log-sum-exp keeps every result finite and within the oracle's bounds.
  std::mt19937_64 rng(6);
  for (double scale : {1e3, 3e4}) {
    auto pd = random_problem<double>(rng, 211, 13, 8, linear::Layout::dim_major, true, scale);
    pd.entropy = true;
    pd.zeta = 1e-4;
    const Oracle od = oracle(pd);
    std::vector<double> dW0, db0;
    const auto outd = run(pd, Path::one_pass, {.chunk_rows = 16, .vocab_tile = 64}, &dW0, &db0);
    check_forward(pd, od, outd);
    check_backward(pd, od, outd, dW0, db0);
    for (double x : outd.token) CHECK(std::isfinite(x));
    auto pf = random_problem<float>(rng, 211, 13, 8, linear::Layout::vocab_major, false, scale);
    const Oracle of = oracle(pf);
    const auto outf = run(pf, Path::two_phase, {.chunk_rows = 16, .vocab_tile = 64}, &dW0, &db0);
    check_forward(pf, of, outf);
    check_backward(pf, of, outf, dW0, db0);
  }
}

namespace {

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const dftune::error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// The reductions' rule for logits they refuse (logprob/generic.hpp, "Non-finite logits"): the head
// judges the logits H·Wᵀ + b it computes as logprob::forward / backward judge materialised ones, and
// throws their error, word for word; forward leaves seq_logp untouched.
namespace {

// The materialised logits of p in float, summed in k order as the test's own reference.
std::vector<float> materialise(const Problem<float>& p) {
  std::vector<float> logits(p.N * p.V);
  for (std::size_t n = 0; n < p.N; ++n)
    for (std::size_t v = 0; v < p.V; ++v) {
      float z = p.b.empty() ? 0.0f : p.b[v];
      for (std::size_t k = 0; k < p.d; ++k) z += p.H[n * p.d + k] * p.W[v * p.d + k];
      logits[n * p.V + v] = z;
    }
  return logits;
}

// Every path of the head on p throws what logprob::forward (backward, recomputing row_lse) throws on
// the materialised logits; seq_logp keeps its sentinel; the DFT path (forward, then backward given
// forward's row_lse) throws in the forward, before any gradient is written. Returns the message.
std::string refused_as_materialised(const Problem<float>& p, const linear::LinearOptions& opt) {
  auto logits = materialise(p);
  const logprob::TokenLogits<float> tl{.logits = logits, .vocab = p.V, .targets = p.targets, .weights = p.weights, .offsets = p.offsets};
  std::vector<float> seq_ref(p.S()), seq(p.S(), 7.0f), token(p.N), lse(p.N), dH(p.N * p.d), dW(p.V * p.d, 7.0f), db(p.V, 7.0f);
  const std::string expected = message_of([&] { logprob::forward(tl, std::span<float>(seq_ref)); });
  auto ws = workspace_for(p, opt);
  const linear::LinearGrads<float> grads{.hidden = dH, .proj = dW, .bias = db};
  CHECK(message_of([&] {
          linear::forward(p.view(), std::span<float>(seq), std::span<float>(token), std::span<float>(lse), std::span<std::byte>(ws), opt);
        }) == expected);
  CHECK(std::all_of(seq.begin(), seq.end(), [](float x) { return x == 7.0f; }));
  CHECK(std::all_of(dW.begin(), dW.end(), [](float x) { return x == 7.0f; }));
  CHECK(message_of([&] {
          linear::forward_backward(p.view(), std::span<const float>(p.d_seq), grads, std::span<float>(seq), std::span<float>(token),
                                   std::span<float>(lse), std::span<std::byte>(ws), opt);
        }) == expected);
  CHECK(std::all_of(seq.begin(), seq.end(), [](float x) { return x == 7.0f; }));
  // Backward alone, recomputing row_lse, refuses what logprob::backward refuses (the rows of d_seq ≠ 0).
  std::vector<float> g(p.N * p.V);
  const std::string expected_bwd = message_of([&] {
    logprob::backward(tl, std::span<const float>(p.d_seq), std::span<float>(g));
  });
  CHECK(message_of([&] {
          linear::backward(p.view(), std::span<const float>(p.d_seq), grads, {}, std::span<std::byte>(ws), opt);
        }) == expected_bwd);
  return expected;
}

}  // namespace

TEST_CASE("fused linear head: logits the reductions refuse are refused with their error, seq_logp untouched") {
  std::mt19937_64 rng(15);
  const linear::LinearOptions opt{.chunk_rows = 4, .vocab_tile = 32};
  // A NaN or an inf in a weighted row of H (the row's logits NaN or ±inf), in a later chunk.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto p = random_problem<float>(rng, 90, 6, 6, linear::Layout::vocab_major, false);
    for (auto& c : p.d_seq) c = 1.0f;
    std::size_t row = 5;
    while (p.weights[row] == 0) ++row;
    p.H[row * p.d + 2] = bad;
    const std::string msg = refused_as_materialised(p, opt);
    INFO(msg);
    CHECK(msg.find("logits[" + std::to_string(row * p.V)) == 0);
    CHECK(msg.find("on a weighted row (row " + std::to_string(row) + ")") != std::string::npos);
    // The same row masked: nothing is refused, and the other rows' values are the reduction's.
    p.weights[row] = 0;
    const auto out = run(p, Path::one_pass, opt);
    for (double x : out.seq) CHECK(std::isfinite(x));
  }
  // H = 0 makes the logits the bias exactly: a −inf target logit, a log-prob float cannot hold, and
  // a sequence sum float cannot hold, each named as the reduction names it.
  Problem<float> p;
  p.V = 3;
  p.d = 2;
  p.N = 4;
  p.H.assign(p.N * p.d, 0.0f);
  p.W = {1, 2, 3, 4, 5, 6};
  p.targets = {0, 1, 1, 2};
  p.weights = {1, 1, 1, 1};
  p.offsets = {0, 2, 4};
  p.d_seq = {1, -1};
  const float inf = std::numeric_limits<float>::infinity();
  p.b = {0.0f, 1.0f, -inf};
  CHECK(refused_as_materialised(p, opt).find("logits[11]: got -inf") == 0);
  p.b = {3e38f, -3e38f, 0.0f};  // w·(z[y] − lse) = −6e38 for rows 1 and 2
  CHECK(refused_as_materialised(p, opt).find("token_logp[1]") == 0);
  p.b = {1e38f, -1e38f, 0.0f};  // −2e38 per row fits, the sum of sequence 0's two rows does not
  p.targets = {1, 1, 0, 0};
  CHECK(refused_as_materialised(p, opt).find("seq_logp[0]") == 0);
}

TEST_CASE("fused linear head: gradients against finite differences") {
  // L = Σ_s d_s seq_logp_s; central differences of the fused forward itself (double).
  std::mt19937_64 rng(7);
  for (auto layout : {linear::Layout::vocab_major, linear::Layout::dim_major}) {
    auto p = random_problem<double>(rng, 11, 4, 4, layout, true, 2.0, 5);
    const linear::LinearOptions opt{.chunk_rows = 3, .vocab_tile = 4, .dim_tile = 2};
    auto ws = workspace_for(p, opt);
    auto loss = [&]() {
      std::vector<double> seq(p.S());
      linear::forward(p.view(), std::span<double>(seq), {}, {}, std::span<std::byte>(ws), opt);
      double l = 0;
      for (std::size_t s = 0; s < p.S(); ++s) l += p.d_seq[s] * seq[s];
      return l;
    };
    std::vector<double> dH(p.N * p.d), dW(p.V * p.d, 0.0), db(p.V, 0.0);
    linear::backward(p.view(), std::span<const double>(p.d_seq), linear::LinearGrads<double>{dH, dW, db}, {},
                     std::span<std::byte>(ws), opt);
    auto fd = [&](std::vector<double>& x, std::size_t i) {
      const double h = 1e-6, keep = x[i];
      x[i] = keep + h;
      const double up = loss();
      x[i] = keep - h;
      const double down = loss();
      x[i] = keep;
      return (up - down) / (2 * h);
    };
    for (std::size_t i = 0; i < p.H.size(); ++i) CHECK(dH[i] == doctest::Approx(fd(p.H, i)).epsilon(1e-6).scale(1));
    for (std::size_t i = 0; i < p.W.size(); ++i) CHECK(dW[i] == doctest::Approx(fd(p.W, i)).epsilon(1e-6).scale(1));
    for (std::size_t i = 0; i < p.b.size(); ++i) CHECK(db[i] == doctest::Approx(fd(p.b, i)).epsilon(1e-6).scale(1));
  }
}

TEST_CASE("fused linear head: the same values as logprob::forward on the same logits") {
  // Where the chunk's GEMM reproduces the materialised logits bit for bit (d = 1: one product per
  // logit, no bias), the head's log-probs are the reduction's, bit for bit: it runs the same kernels.
  std::mt19937_64 rng(8);
  auto p = random_problem<float>(rng, 3001, 1, 6, linear::Layout::vocab_major, false, 8.0);
  std::vector<float> logits(p.N * p.V);
  for (std::size_t n = 0; n < p.N; ++n)
    for (std::size_t v = 0; v < p.V; ++v) logits[n * p.V + v] = p.H[n] * p.W[v];
  const logprob::TokenLogits<float> tl{.logits = logits, .vocab = p.V, .targets = p.targets, .weights = p.weights, .offsets = p.offsets};
  std::vector<float> seq(p.S()), token(p.N), lse(p.N);
  logprob::forward(tl, std::span<float>(seq), std::span<float>(token), std::span<float>(lse));
  const auto out = run(p, Path::one_pass, {.chunk_rows = 4, .vocab_tile = 1000});
  CHECK(out.seq == seq);
  CHECK(out.token == token);
  for (std::size_t n = 0; n < p.N; ++n) CHECK(std::memcmp(&out.lse[n], &lse[n], sizeof(float)) == 0);
}

#if defined(_OPENMP)
TEST_CASE("fused linear head: results do not depend on the thread count") {
  std::mt19937_64 rng(9);
  const int before = omp_get_max_threads();
  auto p = random_problem<float>(rng, 1500, 40, 30, linear::Layout::vocab_major, true);
  auto pb = random_problem<bf16>(rng, 1500, 40, 30, linear::Layout::dim_major, true);
  auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  // Explicit thread counts (the default plan would run chunks this small on one thread), and the
  // team size set as well, so the GEMM library sees the same team as the head.
  auto opt = [](std::size_t t) { return linear::LinearOptions{.chunk_rows = 24, .vocab_tile = 256, .dim_tile = 16, .threads = t}; };
  for (auto path : {Path::two_phase, Path::one_pass}) {
    omp_set_num_threads(1);
    const auto one = run(p, path, opt(1));
    const auto one_b = run(pb, path, opt(1));
    for (int t : {2, 3}) {
      omp_set_num_threads(t);
      const auto many = run(p, path, opt(static_cast<std::size_t>(t)));
      const auto many_b = run(pb, path, opt(static_cast<std::size_t>(t)));
      INFO("threads ", t);
      CHECK(same(one.seq, many.seq));
      CHECK(same(one.token, many.token));
      CHECK(same(one.lse, many.lse));
      CHECK(same(one.dH, many.dH));
      CHECK(same(one.dW, many.dW));
      CHECK(same(one.db, many.db));
      CHECK(same(one_b.seq, many_b.seq));
      CHECK(same(one_b.dH, many_b.dH));
      CHECK(same(one_b.dW, many_b.dW));
      CHECK(same(one_b.db, many_b.db));
    }
  }
  omp_set_num_threads(before);
}
#endif

namespace {

// With no d_seq of 0 the backward recomputes the same chunks, so the outputs agree but for the
// lse: forward_backward keeps it in double, the two-phase backward reads row_lse as stored, in
// compute_t<T>. In double that is all of it (bit for bit); in float half an ulp of lse moves every
// softmax entry of the row: measured 2.6e-7 of the largest element of dH (1e-7 of dW, db).
template <class T>
void one_pass_is_two_phase(double tol) {
  std::mt19937_64 rng(10);
  auto p = random_problem<T>(rng, 700, 24, 14, linear::Layout::vocab_major, true);
  for (auto& x : p.d_seq)
    if (x == 0) x = 0.5f;
  const linear::LinearOptions opt{.chunk_rows = 16};
  const auto a = run(p, Path::one_pass, opt);
  const auto b = run(p, Path::two_phase, opt);
  CHECK(a.seq == b.seq);
  CHECK(a.token == b.token);
  CHECK(rel_error(a.dH, b.dH, false) <= tol);
  CHECK(rel_error(a.dW, b.dW, false) <= tol);
  CHECK(rel_error(a.db, b.db, false) <= tol);
  if (tol == 0) {
    CHECK(a.dH == b.dH);
    CHECK(a.dW == b.dW);
    CHECK(a.db == b.db);
  }
}

}  // namespace

TEST_CASE("fused linear head: forward_backward equals forward then backward (bit for bit in double)") {
  one_pass_is_two_phase<double>(0);
  one_pass_is_two_phase<float>(1e-6);
}

TEST_CASE("fused linear head: dW and db accumulate, dH is written") {
  // The same backward from zero and from a prior value X: the second is X + the first, up to one
  // rounding per chunk and per row (not bit for bit: the chunks add into X one after another).
  std::mt19937_64 rng(13);
  auto p = random_problem<float>(rng, 300, 12, 10, linear::Layout::dim_major, true);
  const linear::LinearOptions opt{.chunk_rows = 8};
  auto ws = workspace_for(p, opt);
  std::vector<float> dH1(p.N * p.d, 5.0f), dH2(p.N * p.d, -5.0f), dW1(p.V * p.d, 0.0f), db1(p.V, 0.0f);
  std::vector<float> dW2(p.V * p.d), db2(p.V);
  for (std::size_t i = 0; i < dW2.size(); ++i) dW2[i] = static_cast<float>(std::cos(static_cast<double>(i)));
  for (std::size_t i = 0; i < db2.size(); ++i) db2[i] = static_cast<float>(std::sin(static_cast<double>(i)));
  const std::vector<float> X = dW2, Y = db2;
  linear::backward(p.view(), std::span<const float>(p.d_seq), linear::LinearGrads<float>{dH1, dW1, db1}, {}, std::span<std::byte>(ws), opt);
  linear::backward(p.view(), std::span<const float>(p.d_seq), linear::LinearGrads<float>{dH2, dW2, db2}, {}, std::span<std::byte>(ws), opt);
  CHECK(dH1 == dH2);
  // Each chunk (dW) or row (db) adds once into the running sum, whose terms are bounded by
  // Σ_n |c_n| (p + onehot) |h| <= 2 Σ_n |c_n| max|H|.
  double sum_c = 0, max_h = 0;
  for (std::size_t n = 0; n < p.N; ++n) sum_c += std::abs(p.coef(n));
  for (float h : p.H) max_h = std::max(max_h, static_cast<double>(std::abs(h)));
  Worst w, b;
  const double eps = 6e-8, chunks = static_cast<double>((p.N + 7) / 8);
  for (std::size_t i = 0; i < X.size(); ++i)
    w.add(i, std::abs(dW2[i] - (X[i] + dW1[i])), 2 * chunks * eps * (std::abs(X[i]) + 2 * sum_c * max_h));
  for (std::size_t i = 0; i < Y.size(); ++i)
    b.add(i, std::abs(db2[i] - (Y[i] + db1[i])), 2 * static_cast<double>(p.N) * eps * (std::abs(Y[i]) + 2 * sum_c));
  CHECK_WORST("grads.proj", w);
  CHECK_WORST("grads.bias", b);
  CHECK(dW2 != X);
}

TEST_CASE("fused linear head: workspace is one chunk of logits, whatever N") {
  std::mt19937_64 rng(11);
  Problem<float> small = random_problem<float>(rng, 1000, 8, 2, linear::Layout::vocab_major, false);
  Problem<float> big = small;
  big.H.assign(5000 * 8, 1.0f);
  big.targets.assign(5000, 0);
  big.weights.assign(5000, 1.0f);
  big.offsets = {0, 5000};
  const linear::LinearOptions opt{.chunk_rows = 64};
  const auto plan = linear::make_plan(big.view(), opt);
  CHECK(plan.chunk_rows == 64);
  CHECK(linear::workspace_size(big.view(), opt) < 64 * 1000 * sizeof(float) + 3 * 64 * 8 * 8 + 1024);
  Problem<float> bigger = big;
  bigger.H.assign(50000 * 8, 1.0f);
  CHECK(linear::workspace_size(bigger.view(), opt) == linear::workspace_size(big.view(), opt));
  // The derived plan: at least 256 rows and about one last-level cache of logits.
  const auto derived = linear::make_plan(bigger.view());
  CHECK(derived.chunk_rows >= 256);
  CHECK((derived.chunk_rows == 256 || derived.chunk_rows * 1000 * sizeof(float) <= linear::machine().llc_bytes));
}

TEST_CASE("fused linear head: the optional spans and the workspace default to empty, as logprob::forward's") {
  // Without a workspace the call allocates its own; the bits are those of the call given one.
  std::mt19937_64 rng(21);
  auto p = random_problem<float>(rng, 90, 7, 6, linear::Layout::vocab_major, true);
  const linear::LinearLogits<float> in = p.view();
  auto ws = workspace_for(p, {});
  std::vector<float> seq_a(p.S(), 7.0f), seq_b(p.S(), 7.0f), tok_a(p.N), tok_b(p.N), lse(p.N);
  linear::forward(in, seq_a);
  linear::forward(in, std::span<float>(seq_b), {}, std::span<float>(lse), std::span<std::byte>(ws));
  CHECK(seq_a == seq_b);
  linear::forward(in, seq_a, tok_a);
  linear::forward(in, std::span<float>(seq_b), std::span<float>(tok_b), {}, std::span<std::byte>(ws));
  CHECK(tok_a == tok_b);
  CHECK(seq_a == seq_b);

  std::vector<float> dH_a(p.N * p.d), dH_b(p.N * p.d), dW_a(p.V * p.d, 0.0f), dW_b(p.V * p.d, 0.0f);
  const std::span<const float> d_seq(p.d_seq);
  linear::backward(in, d_seq, {.hidden = dH_a, .proj = dW_a});
  linear::backward(in, d_seq, {.hidden = dH_b, .proj = dW_b}, {}, std::span<std::byte>(ws));
  CHECK(dH_a == dH_b);
  CHECK(dW_a == dW_b);
  linear::forward_backward(in, d_seq, {.hidden = dH_a}, seq_a);
  linear::forward_backward(in, d_seq, {.hidden = dH_b}, std::span<float>(seq_b), {}, {}, std::span<std::byte>(ws));
  CHECK(dH_a == dH_b);
  CHECK(seq_a == seq_b);

  // Bad input without a workspace: the same named errors, thrown before anything is allocated or
  // written (a wrong dim would make the plan's size meaningless).
  std::fill(seq_a.begin(), seq_a.end(), 7.0f);
  linear::LinearLogits<float> bad = in;
  bad.dim = 4;
  CHECK(message_of([&] { linear::forward(bad, seq_a); }).rfind("hidden: got size", 0) == 0);
  auto q = p;
  q.weights[2] = 1.0f;
  q.targets[2] = static_cast<token_t>(p.V);
  CHECK(message_of([&] { linear::forward(q.view(), seq_a); }).rfind("targets[2]", 0) == 0);
  CHECK(std::all_of(seq_a.begin(), seq_a.end(), [](float x) { return x == 7.0f; }));
  // A workspace given but too small is still an error (only an empty one means "allocate").
  std::vector<std::byte> small(ws.size() - 1);
  CHECK(message_of([&] { linear::forward(in, seq_a, {}, {}, small); }).rfind("workspace: got size", 0) == 0);
}

TEST_CASE("fused linear head: linear::Options, the old name of LinearOptions, still compiles (deprecated)") {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
  static_assert(std::is_same_v<linear::Options, linear::LinearOptions>);
  const linear::Options old{.chunk_rows = 8};
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  CHECK(old.chunk_rows == 8);
}

// ---- errors: the names logprob::forward uses, nothing written -------------------------------

TEST_CASE("fused linear head: bad input gets the reduction's named errors and writes nothing") {
  std::mt19937_64 rng(12);
  const auto good = random_problem<float>(rng, 40, 6, 5, linear::Layout::vocab_major, true);
  const linear::LinearOptions opt{.chunk_rows = 8};
  std::vector<float> seq(good.S(), 7.0f), token(good.N, 7.0f), lse(good.N, 7.0f), dH(good.N * good.d, 7.0f),
      dW(good.V * good.d, 7.0f), db(good.V, 7.0f);
  auto ws = workspace_for(good, opt);
  auto untouched = [&] {
    auto all7 = [](const std::vector<float>& v) { return std::all_of(v.begin(), v.end(), [](float x) { return x == 7.0f; }); };
    return all7(seq) && all7(token) && all7(lse) && all7(dH) && all7(dW) && all7(db);
  };
  auto fwd = [&](const Problem<float>& p, std::span<std::byte> w = {}) {
    linear::forward(p.view(), std::span<float>(seq), std::span<float>(token), std::span<float>(lse),
                    w.empty() ? std::span<std::byte>(ws) : w, opt);
  };
  auto fb = [&](const Problem<float>& p, linear::LinearGrads<float> g) {
    linear::forward_backward(p.view(), std::span<const float>(p.d_seq), g, std::span<float>(seq), std::span<float>(token),
                             std::span<float>(lse), std::span<std::byte>(ws), opt);
  };
  const linear::LinearGrads<float> grads{.hidden = dH, .proj = dW, .bias = db};

  auto expect = [&](auto&& call, const std::string& name) {
    const std::string msg = message_of(call);
    INFO(msg);
    CHECK(msg.rfind(name, 0) == 0);
    CHECK(untouched());
  };
  // Shapes and rows.
  {
    auto p = good;
    p.d = 0;
    expect([&] { fwd(p); }, "dim: got 0");
    p = good;
    p.V = 0;
    expect([&] { fwd(p); }, "vocab: got 0");
    p = good;
    p.H.pop_back();
    expect([&] { fwd(p); }, "hidden: got size");
    p = good;
    p.W.pop_back();
    expect([&] { fwd(p); }, "proj: got size");
    p = good;
    p.b.pop_back();
    expect([&] { fwd(p); }, "bias: got size");
    p = good;
    p.targets[0] = 40;
    p.weights[0] = 1;
    expect([&] { fwd(p); }, "targets[0]: got 40");
    p = good;
    p.weights[2] = std::numeric_limits<float>::infinity();
    expect([&] { fwd(p); }, "weights[2]");
    p = good;
    p.offsets.back() += 1;
    expect([&] { fwd(p); }, "offsets[");
  }
  // The same messages as logprob::forward on the materialised logits.
  {
    auto p = good;
    p.targets[3] = -2;
    p.weights[3] = 0.5f;
    std::vector<float> logits(p.N * p.V);
    const logprob::TokenLogits<float> tl{.logits = logits, .vocab = p.V, .targets = p.targets, .weights = p.weights, .offsets = p.offsets};
    std::vector<float> s2(p.S());
    CHECK(message_of([&] { fwd(p); }) == message_of([&] { logprob::forward(tl, std::span<float>(s2)); }));
  }
  // Outputs.
  {
    std::vector<float> short_seq(good.S() - 1);
    expect([&] { linear::forward(good.view(), std::span<float>(short_seq), {}, {}, std::span<std::byte>(ws), opt); }, "seq_logp: got size");
    auto p = good;
    p.d_seq[1] = std::numeric_limits<float>::quiet_NaN();
    expect([&] { fb(p, grads); }, "d_seq[1]");
    expect([&] { fb(good, {.hidden = std::span<float>(dH).first(3), .proj = dW, .bias = db}); }, "grads.hidden: got size");
    expect([&] { fb(good, {.hidden = dH, .proj = std::span<float>(dW).first(3), .bias = db}); }, "grads.proj: got size");
    expect([&] { fb(good, {.hidden = dH, .proj = dW, .bias = std::span<float>(db).first(3)}); }, "grads.bias: got size");
    std::vector<float> bad_lse(good.N, 0.0f);
    for (std::size_t n = 0; n < good.N; ++n)
      if (good.weights[n] != 0) {
        bad_lse[n] = std::numeric_limits<float>::infinity();
        break;
      }
    expect([&] { linear::backward(good.view(), std::span<const float>(good.d_seq), grads, std::span<const float>(bad_lse), std::span<std::byte>(ws), opt); },
           "row_lse[");
  }
  // Workspace.
  {
    std::vector<std::byte> small(ws.size() - 1);
    expect([&] { fwd(good, small); }, "workspace: got size");
  }
  // Aliasing: an output over an input, over another output, the workspace over an output.
  {
    auto p = good;
    std::vector<float> shared(p.N * p.d + 10);
    std::copy(p.H.begin(), p.H.end(), shared.begin());
    linear::LinearLogits<float> in = p.view();
    in.hidden = std::span<const float>(shared).first(p.N * p.d);
    auto msg = message_of([&] {
      linear::forward_backward(in, std::span<const float>(p.d_seq), {.hidden = std::span<float>(shared).subspan(5, p.N * p.d)},
                               std::span<float>(seq), {}, {}, std::span<std::byte>(ws), opt);
    });
    CHECK(msg.rfind("grads.hidden: got a buffer overlapping hidden", 0) == 0);
    msg = message_of([&] { fb(good, {.hidden = dH, .proj = dW, .bias = std::span<float>(dW).first(good.V)}); });
    CHECK(msg.rfind("grads.bias: got a buffer overlapping grads.proj", 0) == 0);
    std::vector<float> both(good.S() + good.N);
    msg = message_of([&] {
      linear::forward(good.view(), std::span<float>(both).first(good.S()), std::span<float>(both).subspan(good.S() - 1, good.N), {},
                      std::span<std::byte>(ws), opt);
    });
    CHECK(msg.rfind("token_logp: got a buffer overlapping seq_logp", 0) == 0);
    std::vector<std::byte> big(ws.size() + good.S() * sizeof(float));
    msg = message_of([&] {
      linear::forward(good.view(), std::span<float>(reinterpret_cast<float*>(big.data()), good.S()), {}, {},
                      std::span<std::byte>(big).subspan(0, ws.size()), opt);
    });
    CHECK(msg.rfind("workspace: got a buffer overlapping seq_logp", 0) == 0);
    CHECK(untouched());
  }
}

// ---- the optional per-token outputs and the z-loss (docs/fused_linear.md) -------------------

TEST_CASE("fused linear head: the z-loss gradient against finite differences") {
  // L = Σ_s d_s seq_logp_s + ζ Σ_n w_n lse_n², both terms from the fused forward itself (double),
  // against backward and forward_backward with grads.z_loss = ζ; d_seq = 0 on some sequences, so
  // some rows carry the z-loss's gradient alone.
  std::mt19937_64 rng(15);
  for (auto layout : {linear::Layout::vocab_major, linear::Layout::dim_major}) {
    auto p = random_problem<double>(rng, 11, 4, 6, layout, true, 2.0, 5);
    p.zeta = 0.35;
    const linear::LinearOptions opt{.chunk_rows = 3, .vocab_tile = 4, .dim_tile = 2};
    auto ws = workspace_for(p, opt);
    auto loss = [&]() {
      std::vector<double> seq(p.S()), lse(p.N);
      linear::forward(p.view(), std::span<double>(seq), {}, std::span<double>(lse), std::span<std::byte>(ws), opt);
      double l = 0;
      for (std::size_t s = 0; s < p.S(); ++s) l += p.d_seq[s] * seq[s];
      for (std::size_t n = 0; n < p.N; ++n)
        if (p.weights[n] != 0) l += p.zeta * p.weights[n] * lse[n] * lse[n];
      return l;
    };
    auto fd = [&](std::vector<double>& x, std::size_t i) {
      const double h = 1e-6, keep = x[i];
      x[i] = keep + h;
      const double up = loss();
      x[i] = keep - h;
      const double down = loss();
      x[i] = keep;
      return (up - down) / (2 * h);
    };
    for (bool one_pass : {false, true}) {
      std::vector<double> dH(p.N * p.d), dW(p.V * p.d, 0.0), db(p.V, 0.0), seq(p.S());
      const linear::LinearGrads<double> g{dH, dW, db, p.zeta};
      if (one_pass)
        linear::forward_backward(p.view(), std::span<const double>(p.d_seq), g, std::span<double>(seq), {}, std::span<std::byte>(ws), opt);
      else
        linear::backward(p.view(), std::span<const double>(p.d_seq), g, {}, std::span<std::byte>(ws), opt);
      INFO("one pass ", one_pass);
      for (std::size_t i = 0; i < p.H.size(); ++i) CHECK(dH[i] == doctest::Approx(fd(p.H, i)).epsilon(1e-6).scale(1));
      for (std::size_t i = 0; i < p.W.size(); ++i) CHECK(dW[i] == doctest::Approx(fd(p.W, i)).epsilon(1e-6).scale(1));
      for (std::size_t i = 0; i < p.b.size(); ++i) CHECK(db[i] == doctest::Approx(fd(p.b, i)).epsilon(1e-6).scale(1));
    }
    // A row whose sequence has d_seq = 0 still carries the z-loss's gradient (and none without it).
    std::size_t row = p.N;
    for (std::size_t n = 0; n < p.N && row == p.N; ++n)
      if (p.coef(n) == 0 && p.weights[n] != 0) row = n;
    REQUIRE(row < p.N);
    for (double zeta : {0.0, p.zeta}) {
      std::vector<double> dH(p.N * p.d, 5.0);
      linear::backward(p.view(), std::span<const double>(p.d_seq), linear::LinearGrads<double>{.hidden = dH, .z_loss = zeta}, {},
                       std::span<std::byte>(ws), opt);
      const bool zero = std::all_of(dH.begin() + static_cast<std::ptrdiff_t>(row * p.d),
                                    dH.begin() + static_cast<std::ptrdiff_t>((row + 1) * p.d), [](double x) { return x == 0; });
      CHECK(zero == (zeta == 0));
    }
  }
}

TEST_CASE("fused linear head: outputs not asked for leave the others' bits unchanged") {
  // The entropy is computed from the chunk's logits without touching them, and ζ = 0 is the call
  // without a z-loss: every other output is the same, bit for bit, with and without them.
  std::mt19937_64 rng(16);
  auto p = random_problem<float>(rng, 900, 20, 12, linear::Layout::vocab_major, true);
  const linear::LinearOptions opt{.chunk_rows = 16, .vocab_tile = 256};
  for (auto path : {Path::two_phase, Path::one_pass}) {
    p.entropy = false;
    const auto plain = run(p, path, opt);
    p.entropy = true;
    const auto with = run(p, path, opt);
    CHECK(plain.seq == with.seq);
    CHECK(plain.token == with.token);
    CHECK(plain.dH == with.dH);
    CHECK(plain.dW == with.dW);
    CHECK(plain.db == with.db);
    for (std::size_t n = 0; n < p.N; ++n) CHECK(std::memcmp(&plain.lse[n], &with.lse[n], sizeof(float)) == 0);
  }
}

TEST_CASE("fused linear head: entropy of a uniform and of a one-hot row (closed forms)") {
  // W = 0 and b = 0: every logit is 0, H = log V exactly; b with one logit 200 above the rest: H ≈ 0.
  for (std::size_t V : {1u, 7u, 5000u}) {
    Problem<float> p;
    p.V = V;
    p.d = 3;
    p.N = 2;
    p.H.assign(p.N * p.d, 1.0f);
    p.W.assign(V * p.d, 0.0f);
    p.b.assign(V, 0.0f);
    p.targets = {0, 0};
    p.weights = {1, 1};
    p.offsets = {0, 2};
    p.d_seq = {1};
    p.entropy = true;
    auto out = run(p, Path::one_pass, {});
    // float: lse off by Δ ≤ kernel_tol·(1 + lse) moves H by Δ (1 − H) (check_forward's bound).
    const double logV = std::log(static_cast<double>(V));
    CHECK(std::abs(out.entropy[0] - logV) <= 2 * kernel_tol<float> * (1 + logV) * (1 + logV));
    p.b[0] = 200.0f;
    out = run(p, Path::one_pass, {});
    CHECK(std::abs(out.entropy[1]) < 1e-30);
    CHECK(out.entropy[1] >= 0);
  }
}

TEST_CASE("fused linear head: bad per-token outputs and z-loss are named errors, nothing written") {
  std::mt19937_64 rng(17);
  const auto good = random_problem<float>(rng, 40, 6, 5, linear::Layout::vocab_major, true);
  const linear::LinearOptions opt{.chunk_rows = 8};
  std::vector<float> seq(good.S(), 7.0f), token(good.N, 7.0f), lse(good.N, 7.0f), ent(good.N, 7.0f),
      dH(good.N * good.d, 7.0f), dW(good.V * good.d, 7.0f), db(good.V, 7.0f);
  auto ws = workspace_for(good, opt);
  auto untouched = [&] {
    auto all7 = [](const std::vector<float>& v) { return std::all_of(v.begin(), v.end(), [](float x) { return x == 7.0f; }); };
    return all7(seq) && all7(token) && all7(lse) && all7(ent) && all7(dH) && all7(dW) && all7(db);
  };
  auto fb = [&](const Problem<float>& p, linear::TokenOutputs<float> rows, double zeta) {
    linear::forward_backward(p.view(), std::span<const float>(p.d_seq), {.hidden = dH, .proj = dW, .bias = db, .z_loss = zeta},
                             std::span<float>(seq), rows, std::span<std::byte>(ws), opt);
  };
  const linear::TokenOutputs<float> rows{.token_logp = token, .row_lse = lse, .entropy = ent};
  auto expect = [&](auto&& call, const std::string& name) {
    const std::string msg = message_of(call);
    INFO(msg);
    CHECK(msg.rfind(name, 0) == 0);
    CHECK(untouched());
  };
  expect([&] { fb(good, {.token_logp = token, .row_lse = lse, .entropy = std::span<float>(ent).first(good.N - 1)}, 0.0); },
         "entropy: got size " + std::to_string(good.N - 1) + ", expected size " + std::to_string(good.N));
  expect([&] { fb(good, {.token_logp = std::span<float>(token).first(2), .row_lse = lse, .entropy = ent}, 0.0); },
         "token_logp: got size 2");
  expect([&] { fb(good, {.token_logp = token, .row_lse = std::span<float>(lse).subspan(1), .entropy = ent}, 0.0); },
         "row_lse: got size");
  expect([&] { fb(good, rows, std::numeric_limits<double>::quiet_NaN()); }, "grads.z_loss: got nan");
  expect([&] { fb(good, rows, std::numeric_limits<double>::infinity()); }, "grads.z_loss: got inf");
  expect([&] {
    linear::backward(good.view(), std::span<const float>(good.d_seq), {.hidden = dH, .z_loss = -std::numeric_limits<double>::infinity()}, {},
                     std::span<std::byte>(ws), opt);
  }, "grads.z_loss: got -inf");
  auto p = good;
  p.weights[3] = std::numeric_limits<float>::quiet_NaN();
  expect([&] { fb(p, rows, 0.1); }, "weights[3]: got nan");
  expect([&] { linear::forward(p.view(), std::span<float>(seq), rows, std::span<std::byte>(ws), opt); }, "weights[3]: got nan");
  expect([&] { fb(good, {.token_logp = token, .row_lse = lse, .entropy = std::span<float>(token)}, 0.0); },
         "entropy: got a buffer overlapping token_logp");
  expect([&] { fb(good, {.entropy = std::span<float>(dW).first(good.N)}, 0.0); }, "grads.proj: got a buffer overlapping entropy");
}
