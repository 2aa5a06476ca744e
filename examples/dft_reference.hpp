#pragma once
// One DFT / DFT2 step written as the paper writes it, with no checks: the teaching copy of what
// dft_step + Estimator + DftOptimizer compute (tests/test_dft_reference.cpp: equal bit for bit).
//
// Paper: S. Guo et al., "Discriminative Finetuning of Generative Large Language Models without
// Reward Models and Human Preference Data", arXiv 2502.18679 (v3). Its numbered equations were
// not available to us when this was written, so each line cites the paper by section and by the
// name of the equation: §4 "discriminative likelihood", §4 "importance sampling", §4 "moving-average
// estimator u" (the FCCO update), §4 "gradient estimator"; §5 for DFT2.
//
// The model is the categorical policy of model/categorical_policy.hpp: context c = the prompt's last
// token, each answer token drawn from softmax(θ_c); the inner rule is plain SGD, θ ← θ − lr·∇.
// Where the library's floating-point order differs from the textbook form (a reciprocal multiplied
// instead of a division, log1p, a running max), the reference takes the library's order so that the
// two agree to the bit; the comments say where.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace dft_reference {

struct Sequence {  // one (prompt, answer): the prompt's last token is the context
  int context;
  std::vector<int> answer;
};

struct Example {   // prompt x_i, its positive y_i, its m negatives y'_ij ~ π_ref and log π_ref(y'_ij|x_i)
  std::int64_t id;
  Sequence positive;
  std::vector<Sequence> negatives;
  std::vector<double> ref_logp;  // DFT only
};

struct Policy {    // θ: one row of logits per context
  std::size_t vocab;
  std::vector<double> theta;
  const double* row(int c) const { return theta.data() + static_cast<std::size_t>(c) * vocab; }

  // log Σ_v exp θ_c[v], computed from the row's maximum (the library's order).
  double lse(int c) const {
    double hi = -INFINITY, sum = 0;
    for (std::size_t v = 0; v < vocab; ++v) hi = std::fmax(hi, row(c)[v]);
    for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(row(c)[v] - hi);
    return hi + std::log(sum);
  }
  // log π_θ(y|x) = Σ_t log softmax(θ_c)[y_t]                                       (§3, SFT's likelihood)
  double log_pi(const Sequence& s) const {
    double lp = 0;
    for (int y : s.answer) lp += row(s.context)[y] - lse(s.context);
    return lp;
  }
  // grad += coef · ∇θ log π_θ(y|x) = coef · Σ_t (onehot(y_t) − softmax(θ_c))     (∇ of §3's likelihood)
  void add_grad(const Sequence& s, double coef, std::vector<double>& grad) const {
    for (int y : s.answer) {
      const double l = lse(s.context);
      for (std::size_t v = 0; v < vocab; ++v)
        grad[static_cast<std::size_t>(s.context) * vocab + v] += coef * ((static_cast<int>(v) == y ? 1.0 : 0.0) - std::exp(row(s.context)[v] - l));
    }
  }
};

struct Options {
  bool dft2 = false;         // §5: reference-free, length-normalised score
  double tau = 1.0;          // τ of the discriminative likelihood (§4)
  double gamma = 0.85;       // γ of the moving average u (§4, FCCO update)
  double eps = 1e-8;         // ε of DFT2's |y| + ε
  std::optional<double> log_u0;  // nothing: an example's first batch initialises u (dftune's first_visit)
  double lr = 0.1;           // SGD
};

struct Step {              // what dft_step reports for the batch
  double loss = 0;
  std::vector<double> grad_pos, grad_neg, log_u;
};

// One step on the batch: updates θ (SGD) and log_u (the estimator state, one slot per example id).
inline Step dft_step(Policy& p, std::vector<std::optional<double>>& log_u, const std::vector<Example>& batch,
                     const Options& o) {
  const double B = static_cast<double>(batch.size());
  Step r;
  std::vector<double> grad(p.theta.size(), 0.0);
  std::vector<double> dpos, dneg;  // ∂L/∂log π of each sequence, applied to θ after the scores
  for (const Example& e : batch) {
    const std::size_t m = e.negatives.size();
    // The score s_θ(y, x): log π_θ(y|x) for DFT (§4); log π_θ(y|x) / (|y| + ε) for DFT2 (§5),
    // as a product with the reciprocal (the library's order). ds = ∂s/∂log π.
    auto ds = [&](const Sequence& y) { return o.dft2 ? 1.0 / (static_cast<double>(y.answer.size()) + o.eps) : 1.0; };
    auto s = [&](const Sequence& y) { return p.log_pi(y) * ds(y); };
    // P_θ(y|x) = exp(s_θ(y,x)/τ) / Σ_{y'} exp(s_θ(y',x)/τ)                        (§4, discriminative likelihood)
    // Σ_{y'} exp(s_θ(y',x)/τ) = E_{y'~π_ref}[exp(s_θ(y',x)/τ − log π_ref(y'|x))]    (§4, importance sampling)
    // d_ij = s_θ(y'_ij,x_i)/τ − log π_ref(y'_ij|x_i)  (DFT2: s_θ/τ, no π_ref)       (§4; §5)
    std::vector<double> d(m);
    for (std::size_t j = 0; j < m; ++j) d[j] = s(e.negatives[j]) / o.tau - (o.dft2 ? 0.0 : e.ref_logp[j]);
    // log g_i = log (1/m) Σ_j exp(d_ij): the sample mean of the identity above, in the log domain
    double hi = -INFINITY, sum = 0;
    for (double x : d) hi = std::fmax(hi, x);
    for (double x : d) sum += std::exp(x - hi);
    const double log_g = hi + std::log(sum) - std::log(static_cast<double>(m));
    // u_i ← (1 − γ) u_i + γ g_i, before the weights are taken                      (§4, moving-average estimator u)
    // = logaddexp(log(1 − γ) + log u_i, log γ + log g_i), with log1p (the library's order)
    std::optional<double> prior = log_u[static_cast<std::size_t>(e.id)];
    if (!prior) prior = o.log_u0;
    double lu = log_g;  // an unseen example without log_u0: u_i = g_i
    if (prior) {
      const double a = std::log1p(-o.gamma) + *prior, b = std::log(o.gamma) + log_g;
      const double top = std::fmax(a, b), low = std::fmin(a, b);
      lu = top + std::log1p(std::exp(low - top));
    }
    r.log_u.push_back(lu);
    // Gradient estimator (§4): ∇ −log P_θ(y_i|x_i) ≈ (1/τ)[−∇s_i + (1/m) Σ_j (exp(d_ij)/u_i) ∇s'_ij];
    // L = (1/B) Σ_i [−s_i + (1/m) Σ_j sg(exp(d_ij − log u_i)) s'_ij] is τ times it, so
    //   ∂L/∂s_i = −1/B,   ∂L/∂s'_ij = exp(d_ij − log u_i) / (B·m)                    (× ∂s/∂log π)
    double push = 0;  // (1/m) Σ_j w_ij s'_ij, the negatives' term
    for (std::size_t j = 0; j < m; ++j) {
      const double w = std::exp(d[j] - lu) / static_cast<double>(m);
      push += w * s(e.negatives[j]);
      dneg.push_back(w / B * ds(e.negatives[j]));
    }
    dpos.push_back(-1.0 / B * ds(e.positive));
    r.loss += -s(e.positive) + push;
  }
  r.loss /= B;
  // ∇θ L = Σ_i ∂L/∂log π(y_i) ∇ log π(y_i) + Σ_ij ∂L/∂log π(y'_ij) ∇ log π(y'_ij): positives, then negatives
  for (std::size_t i = 0; i < batch.size(); ++i) p.add_grad(batch[i].positive, dpos[i], grad);
  for (std::size_t i = 0, k = 0; i < batch.size(); ++i)
    for (const Sequence& y : batch[i].negatives) p.add_grad(y, dneg[k++], grad);
  for (std::size_t k = 0; k < p.theta.size(); ++k) p.theta[k] = p.theta[k] - o.lr * grad[k];  // SGD
  for (std::size_t i = 0; i < batch.size(); ++i) log_u[static_cast<std::size_t>(batch[i].id)] = r.log_u[i];
  r.grad_pos = dpos;
  r.grad_neg = dneg;
  return r;
}

}  // namespace dft_reference
