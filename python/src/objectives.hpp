#pragma once
// The sequence-level objectives on log-prob tensors: DFT/DFT2 (objective/dft.hpp) and the
// baselines SFT, DPO, IPO, SimPO, ORPO and RLOO (objective/*.hpp). Each binding converts its
// tensors (tensors.hpp), calls the library once — loss and gradient together, every check before
// any computation — stores the estimator's update (DFT, once per call, only after everything
// succeeded), and attaches the gradient to the log-prob tensors (autograd.hpp).
//
// Shapes: positives [B], negatives [B, m] row-major (the library's [i][j] layout), samples [B, k],
// token log-probs [N] with sequence offsets [S + 1] (Dynamic FT).
// The differentiable log-probs of one call share one floating dtype, which the loss and the
// gradients are returned in; the computation runs in float64, as the library's does internally.
#include "autograd.hpp"
#include "estimator.hpp"
#include "tensors.hpp"

#include <dftune/objective/dft.hpp>
#include <dftune/objective/dpo.hpp>
#include <dftune/objective/dynamic_ft.hpp>
#include <dftune/objective/ipo.hpp>
#include <dftune/objective/orpo.hpp>
#include <dftune/objective/reinforce.hpp>
#include <dftune/objective/sft.hpp>
#include <dftune/objective/simpo.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dftune_torch {

using OptTensor = std::optional<at::Tensor>;

// A differentiable log-prob tensor: the original (for autograd, dtype and device) and its float64
// CPU copy (for the library).
struct LogProbs {
  at::Tensor input;
  at::Tensor f64;
  std::span<const double> span() const { return f64_span(f64); }
};

inline LogProbs log_probs(std::string_view name, const at::Tensor& t, std::int64_t dim, std::string_view shape) {
  check_dim(name, t, dim, shape);
  return {t, as_f64(name, t)};
}

// b must have a's dtype: one call returns one loss dtype.
inline void check_same_dtype(std::string_view name, const at::Tensor& b, std::string_view first, const at::Tensor& a) {
  if (b.scalar_type() != a.scalar_type())
    fail(name, dtype_of(b), dtype_name(a.scalar_type()) + " (the dtype of " + std::string(first) + ")");
}

// An optional constant input of the shape of `like` (reference log-probs, lengths); empty if None.
// With as many elements as `like`, any other shape (a transposed [m, B] pairs the wrong log-probs)
// is refused here; with another count, the library's size check names the mismatch, so that a
// wrong `like` (neg_logp with the wrong B) is reported as such and not as a wrong reference.
inline void check_layout(std::string_view name, const at::Tensor& t, const at::Tensor& like, std::string_view why) {
  check_defined(name, t);
  if (t.numel() == like.numel()) check_shape(name, t, like.sizes(), why);
}

inline Optional optional_f64(std::string_view name, const OptTensor& t, const at::Tensor& like, std::string_view why) {
  if (!t) return {};
  check_layout(name, *t, like, why);
  return {as_f64(name, *t)};
}

// A reference log-prob is a constant of the objective: one that requires grad is refused (as the
// weights of sequence_logp are) rather than silently given no gradient.
inline Optional reference_f64(std::string_view name, const OptTensor& t, const at::Tensor& like, std::string_view why) {
  if (t && t->defined() && t->requires_grad())
    fail(name, "a tensor that requires grad", "a constant (no gradient flows to the reference log-probs; detach it)");
  return optional_f64(name, t, like, why);
}

inline Optional optional_i64(std::string_view name, const OptTensor& t, const at::Tensor& like, std::string_view why) {
  if (!t) return {};
  check_layout(name, *t, like, why);
  return {as_i64(name, *t)};
}

// The gradient `g` of input `x` as a tensor of x's shape, dtype and device.
inline at::Tensor grad_like(std::string_view name, const std::vector<double>& g, const at::Tensor& x) {
  return narrow_to(name, g, x.scalar_type()).reshape(x.sizes()).to(x.device());
}

inline at::Tensor loss_like(double loss, const at::Tensor& x) {
  return narrow_scalar("loss", loss, x.scalar_type()).to(x.device());
}

// ---- DFT / DFT2 ----------------------------------------------------------------------------------

inline dftune::Variant parse_variant(const std::string& s) {
  if (s == "dft") return dftune::Variant::dft;
  if (s == "dft2") return dftune::Variant::dft2;
  fail("variant", "'" + s + "'", "'dft' or 'dft2'");
}

// The converted tensors of a DFT call (every tensor check done); scores() is the library's view.
struct DftInputs {
  dftune::DftOptions opt;
  LogProbs pos, neg;
  at::Tensor id;
  Optional ref, plen, nlen;

  dftune::SequenceScores<double> scores(std::size_t global_batch_size = 0) const {
    return {.ids = i64_span(id), .pos_logp = pos.span(), .neg_logp = neg.span(), .ref_neg_logp = ref.span<double>(),
            .pos_len = plen.span<std::int64_t>(), .neg_len = nlen.span<std::int64_t>(),
            .num_negatives = static_cast<std::size_t>(neg.input.size(1)), .global_batch_size = global_batch_size};
  }
};

inline DftInputs dft_inputs(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const at::Tensor& ids,
                            const PyEstimator& estimator, const std::string& variant, double tau, double gamma,
                            const OptTensor& ref_neg_logp, const OptTensor& pos_len, const OptTensor& neg_len,
                            double eps) {
  const dftune::DftOptions opt{.variant = parse_variant(variant), .tau = tau, .gamma = gamma,
                               .init = estimator.get().init(), .log_u0 = estimator.get().log_u0(), .eps = eps};
  LogProbs pos = log_probs("pos_logp", pos_logp, 1, "a 1-D tensor [B]");
  LogProbs neg = log_probs("neg_logp", neg_logp, 2, "a 2-D tensor [B, m]");
  check_same_dtype("neg_logp", neg_logp, "pos_logp", pos_logp);
  check_dim("ids", ids, 1, "a 1-D tensor [B]");
  at::Tensor id = as_i64("ids", ids);
  // Only the inputs the variant reads are converted (the library ignores the others).
  const bool dft = opt.variant == dftune::Variant::dft;
  Optional ref = dft ? reference_f64("ref_neg_logp", ref_neg_logp, neg_logp, "the shape of neg_logp") : Optional{};
  Optional plen = dft ? Optional{} : optional_i64("pos_len", pos_len, pos_logp, "the shape of pos_logp");
  Optional nlen = dft ? Optional{} : optional_i64("neg_len", neg_len, neg_logp, "the shape of neg_logp");
  return DftInputs{opt, std::move(pos), std::move(neg), std::move(id), std::move(ref), std::move(plen), std::move(nlen)};
}

// The loss of a batch, or of one rank's share of a global batch of global_batch_size examples
// (SequenceScores::global_batch_size), times `scale` (loss and gradients, in float64 before they are
// narrowed to the log-probs' dtype), attached to autograd; and the batch's new log u (float64 [B],
// checked as Estimator::set would: commit() cannot refuse it). Changes nothing.
inline std::pair<at::Tensor, at::Tensor> dft_compute(const DftInputs& in, const PyEstimator& estimator,
                                                     std::size_t global_batch_size, double scale) {
  dftune::DftResult<double> r = dftune::dft_loss(in.scores(global_batch_size), estimator.get(), in.opt);
  if (scale != 1.0) {
    r.loss *= scale;
    for (double& g : r.grad_pos) g *= scale;
    for (double& g : r.grad_neg) g *= scale;
  }
  if (estimator.get().init() != dftune::EstimatorInit::fixed)
    estimator.get().check_set(i64_span(in.id), std::span<const double>(r.log_u));
  // Narrowed in the library's order (the weights first), so the first value to overflow is named.
  at::Tensor grad_neg = grad_like("grad_neg", r.grad_neg, in.neg.input);
  at::Tensor grad_pos = grad_like("grad_pos", r.grad_pos, in.pos.input);
  LossAndGrads out{loss_like(r.loss, in.pos.input), {std::move(grad_pos), std::move(grad_neg)}};
  at::Tensor log_u = at::tensor(at::ArrayRef<double>(r.log_u), at::kDouble);
  return {attach({in.pos.input, in.neg.input}, std::move(out)), std::move(log_u)};
}

inline at::Tensor dft_loss(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const at::Tensor& ids,
                           PyEstimator& estimator, const std::string& variant, double tau, double gamma,
                           const OptTensor& ref_neg_logp, const OptTensor& pos_len, const OptTensor& neg_len,
                           bool update, double eps) {
  const DftInputs in = dft_inputs(pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len,
                                  neg_len, eps);
  auto [loss, log_u] = dft_compute(in, estimator, 0, 1.0);
  // Everything succeeded: the one update of this call (dft_step's, which dft_loss computed).
  if (update) estimator.commit(in.id, log_u);
  return loss;
}

// ---- one rank's share of a data-parallel DFT step (dftune_torch/__init__.py runs the collectives) --

// Every check dft_share would make before computing, on a rank's share; returns its B_r. A share
// may be empty (a rank that owns no id of the global batch): then its options and shapes are checked.
inline std::int64_t dft_check(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const at::Tensor& ids,
                              const PyEstimator& estimator, const std::string& variant, double tau, double gamma,
                              const OptTensor& ref_neg_logp, const OptTensor& pos_len, const OptTensor& neg_len,
                              double eps) {
  const DftInputs in = dft_inputs(pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len,
                                  neg_len, eps);
  const dftune::SequenceScores<double> s = in.scores();
  if (s.batch_size() != 0) {
    dftune::detail::validate_dft(s, estimator.get(), in.opt);
  } else {
    dftune::validate(in.opt);
    estimator.get().check_options(in.opt);
    if (s.num_negatives == 0) fail("num_negatives", s.num_negatives, "at least 1");
    dftune::detail::check_size("pos_logp", s.pos_logp.size(), 0);
    dftune::detail::check_size("neg_logp", s.neg_logp.size(), 0);
  }
  return static_cast<std::int64_t>(s.batch_size());
}

// A rank's share of the global batch: (loss times scale, with its gradients attached; new log u).
inline std::pair<at::Tensor, at::Tensor> dft_share(const at::Tensor& pos_logp, const at::Tensor& neg_logp,
                                                   const at::Tensor& ids, const PyEstimator& estimator,
                                                   const std::string& variant, double tau, double gamma,
                                                   const OptTensor& ref_neg_logp, const OptTensor& pos_len,
                                                   const OptTensor& neg_len, double eps,
                                                   std::int64_t global_batch_size, double scale) {
  if (global_batch_size < 1) fail("global_batch_size", global_batch_size, "at least 1");
  if (!(std::isfinite(scale) && scale > 0)) fail("scale", scale, "a finite number > 0");
  const DftInputs in = dft_inputs(pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len,
                                  neg_len, eps);
  return dft_compute(in, estimator, static_cast<std::size_t>(global_batch_size), scale);
}

// ---- pairwise baselines: DPO, IPO, SimPO, ORPO ---------------------------------------------------

struct PreferenceInputs {
  LogProbs pos, neg;
  Optional ref_pos, ref_neg, pos_len, neg_len;

  dftune::PreferenceScores<double> scores() const {
    return {.pos_logp = pos.span(), .neg_logp = neg.span(), .ref_pos_logp = ref_pos.span<double>(),
            .ref_neg_logp = ref_neg.span<double>(), .pos_len = pos_len.span<std::int64_t>(),
            .neg_len = neg_len.span<std::int64_t>(), .num_negatives = static_cast<std::size_t>(neg.input.size(1))};
  }
  at::Tensor attach(const dftune::PreferenceResult<double>& r) const {
    return dftune_torch::attach({pos.input, neg.input},
                                {loss_like(r.loss, pos.input),
                                 {grad_like("grad_pos", r.grad_pos, pos.input), grad_like("grad_neg", r.grad_neg, neg.input)}});
  }
};

inline PreferenceInputs preference_inputs(const at::Tensor& pos_logp, const at::Tensor& neg_logp) {
  PreferenceInputs in{log_probs("pos_logp", pos_logp, 1, "a 1-D tensor [B]"),
                      log_probs("neg_logp", neg_logp, 2, "a 2-D tensor [B, m]"), {}, {}, {}, {}};
  check_same_dtype("neg_logp", neg_logp, "pos_logp", pos_logp);
  return in;
}

// References and lengths are required by the objectives that read them; None reaches the library
// as an empty span, which it refuses with its own message ("… needs log π_ref").
inline PreferenceInputs with_references(PreferenceInputs in, const OptTensor& ref_pos, const OptTensor& ref_neg) {
  in.ref_pos = reference_f64("ref_pos_logp", ref_pos, in.pos.input, "the shape of pos_logp");
  in.ref_neg = reference_f64("ref_neg_logp", ref_neg, in.neg.input, "the shape of neg_logp");
  return in;
}

inline PreferenceInputs with_lengths(PreferenceInputs in, const OptTensor& pos_len, const OptTensor& neg_len) {
  in.pos_len = optional_i64("pos_len", pos_len, in.pos.input, "the shape of pos_logp");
  in.neg_len = optional_i64("neg_len", neg_len, in.neg.input, "the shape of neg_logp");
  return in;
}

inline at::Tensor dpo_loss(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const OptTensor& ref_pos_logp,
                           const OptTensor& ref_neg_logp, double beta) {
  const PreferenceInputs in = with_references(preference_inputs(pos_logp, neg_logp), ref_pos_logp, ref_neg_logp);
  return in.attach(dftune::dpo_loss(in.scores(), dftune::DpoOptions{.beta = beta}));
}

inline at::Tensor ipo_loss(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const OptTensor& ref_pos_logp,
                           const OptTensor& ref_neg_logp, double beta) {
  const PreferenceInputs in = with_references(preference_inputs(pos_logp, neg_logp), ref_pos_logp, ref_neg_logp);
  return in.attach(dftune::ipo_loss(in.scores(), dftune::IpoOptions{.beta = beta}));
}

inline at::Tensor simpo_loss(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const OptTensor& pos_len,
                             const OptTensor& neg_len, double beta, double gamma) {
  const PreferenceInputs in = with_lengths(preference_inputs(pos_logp, neg_logp), pos_len, neg_len);
  return in.attach(dftune::simpo_loss(in.scores(), dftune::SimpoOptions{.beta = beta, .gamma = gamma}));
}

inline dftune::NllReduction parse_reduction(std::string_view name, const std::string& s) {
  if (s == "sequence_mean") return dftune::NllReduction::sequence_mean;
  if (s == "token_mean") return dftune::NllReduction::token_mean;
  if (s == "length_normalized") return dftune::NllReduction::length_normalized;
  fail(name, "'" + s + "'", "'sequence_mean', 'token_mean' or 'length_normalized'");
}

inline at::Tensor orpo_loss(const at::Tensor& pos_logp, const at::Tensor& neg_logp, const OptTensor& pos_len,
                            const OptTensor& neg_len, double lambda, const std::string& sft_reduction) {
  const dftune::OrpoOptions opt{.lambda = lambda, .sft_reduction = parse_reduction("sft_reduction", sft_reduction)};
  const PreferenceInputs in = with_lengths(preference_inputs(pos_logp, neg_logp), pos_len, neg_len);
  return in.attach(dftune::orpo_loss(in.scores(), opt));
}

// ---- SFT, RLOO -----------------------------------------------------------------------------------

inline at::Tensor score_result(const LogProbs& lp, const dftune::ScoreResult<double>& r) {
  return attach({lp.input}, {loss_like(r.loss, lp.input), {grad_like("grad", r.grad, lp.input)}});
}

inline at::Tensor sft_loss(const at::Tensor& logp, const std::string& reduction, const OptTensor& lengths) {
  const dftune::SftOptions opt{.reduction = parse_reduction("reduction", reduction)};
  const LogProbs lp = log_probs("logp", logp, 1, "a 1-D tensor [B]");
  const Optional len = optional_i64("len", lengths, logp, "the shape of logp");
  return score_result(lp, dftune::sft_loss(lp.span(), len.span<std::int64_t>(), opt));
}

// Rewards may be of any real dtype (exact-match rewards often come as bool or int).
inline at::Tensor rloo_loss(const at::Tensor& logp, const at::Tensor& reward) {
  const LogProbs lp = log_probs("logp", logp, 2, "a 2-D tensor [B, k] (k samples per prompt)");
  check_shape("reward", reward, logp.sizes(), "the shape of logp");
  if (reward.is_complex()) fail("reward", dtype_of(reward), "a real tensor");
  const at::Tensor r = reward.detach().to(at::kCPU, at::kDouble).contiguous();
  const dftune::SampleScores<double> s{.logp = lp.span(),
                                       .reward = f64_span(r), .group_size = static_cast<std::size_t>(logp.size(1))};
  return score_result(lp, dftune::rloo_loss(s));
}

// ---- Dynamic Fine-Tuning (objective/dynamic_ft.hpp): per-token log-probs -------------------------

// The weights may be of any real dtype (a bool completion mask works); the library refuses values
// other than 0 and 1. A row of weight 0 is never read (its log-prob may be NaN).
inline at::Tensor dynamic_ft_loss(const at::Tensor& token_logp, const OptTensor& weights, const at::Tensor& offsets,
                                  const std::string& reduction) {
  const dftune::DynamicFtOptions opt{.reduction = parse_reduction("reduction", reduction)};
  const LogProbs lp = log_probs("token_logp", token_logp, 1, "a 1-D tensor [N]");
  Optional w;
  if (weights) {
    check_shape("weights", *weights, token_logp.sizes(), "the shape of token_logp");
    if (weights->is_complex()) fail("weights", dtype_of(*weights), "a real tensor");
    w.tensor = weights->detach().to(at::kCPU, at::kDouble).contiguous();
  }
  check_dim("offsets", offsets, 1, "a 1-D tensor [S + 1]");
  const at::Tensor off = as_i64("offsets", offsets);
  const dftune::TokenScores<double> in{.token_logp = lp.span(), .weights = w.span<double>(), .offsets = i64_span(off)};
  const dftune::ScoreResult<double> r = dftune::dynamic_ft_loss(in, opt);
  return attach({lp.input}, {loss_like(r.loss, lp.input), {grad_like("grad", r.grad, lp.input)}});
}

}  // namespace dftune_torch
