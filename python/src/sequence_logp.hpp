#pragma once
// sequence_logp(logits, targets, weights, offsets): the library's token log-prob reduction
// (logprob/logprob.hpp, the CPU fast path for float, double and bf16) as an autograd function.
//
//   forward   seq_logp[s] = Σ_{n in s} w_n · (z_n[y_n] − log Σ_v exp z_n[v])      (logprob/generic.hpp)
//   backward  ∂L/∂z_n[v] = d_seq[s] · w_n · (onehot(y_n)[v] − softmax(z_n)[v])  (the fused backward)
//
// The forward keeps each row's log-sum-exp (N numbers), so the backward reads the logits once.
// Conversions: logits are made contiguous (a copy when they are not) and must be float32, float64
// or bfloat16 on the CPU; targets of any integer dtype (int64 as torch's cross-entropy takes
// them) are narrowed to the library's int32 after the range check of every weighted row, so an
// int64 target never wraps into range; weights of any real dtype (a bool or 0/1 attention mask
// works) are converted to the compute dtype (float32 for float32 and bfloat16 logits, float64
// for float64); offsets of any integer dtype to int64. Weights are constants: a weights tensor
// that requires grad is refused rather than silently given no gradient.
#include "autograd.hpp"
#include "tensors.hpp"

#include <dftune/logprob/logprob.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dftune_torch {

static_assert(sizeof(at::BFloat16) == sizeof(dftune::logprob::cpu::bf16), "bf16 layouts differ");

// The converted non-logit inputs, shared by forward and backward (not tensors of the graph).
struct TokenInputs {
  std::int64_t vocab = 0;
  at::Tensor targets;  // [N] int32
  at::Tensor weights;  // [N] compute dtype, or undefined (all 1)
  at::Tensor offsets;  // [S + 1] int64

  void save(torch::autograd::AutogradContext* ctx) const {
    ctx->saved_data["vocab"] = vocab;
    ctx->saved_data["targets"] = targets;
    ctx->saved_data["has_weights"] = weights.defined();
    if (weights.defined()) ctx->saved_data["weights"] = weights;
    ctx->saved_data["offsets"] = offsets;
  }
  static TokenInputs load(torch::autograd::AutogradContext* ctx) {
    TokenInputs in{ctx->saved_data["vocab"].toInt(), ctx->saved_data["targets"].toTensor(), {},
                   ctx->saved_data["offsets"].toTensor()};
    if (ctx->saved_data["has_weights"].toBool()) in.weights = ctx->saved_data["weights"].toTensor();
    return in;
  }
};

// The library's storage type of a torch dtype.
template <class F>
decltype(auto) with_storage_type(at::ScalarType s, F&& f) {
  switch (s) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    default: return f(dftune::logprob::cpu::bf16{});
  }
}

template <class T>
dftune::logprob::TokenLogits<T> token_logits(const at::Tensor& logits, const TokenInputs& in) {
  using C = dftune::logprob::compute_t<T>;
  const T* z = reinterpret_cast<const T*>(logits.data_ptr());
  return {.logits = std::span<const T>(z, static_cast<std::size_t>(logits.numel())),
          .vocab = static_cast<std::size_t>(in.vocab),
          .targets = span_of<dftune::token_t>(in.targets),
          .weights = in.weights.defined() ? span_of<C>(in.weights) : std::span<const C>{},
          .offsets = i64_span(in.offsets)};
}

inline at::ScalarType compute_dtype(at::ScalarType logits) { return logits == at::kDouble ? at::kDouble : at::kFloat; }

// A tensor of the CPU fast path's storage types.
inline void check_storage(std::string_view name, const at::Tensor& t) {
  const auto s = t.scalar_type();
  if (s != at::kFloat && s != at::kDouble && s != at::kBFloat16)
    fail(name, dtype_of(t), "float32, float64 or bfloat16 (the CPU fast path's storage types)");
  if (!t.device().is_cpu()) fail(name, "device " + t.device().str(), "a CPU tensor (dftune_torch binds the CPU reductions)");
}

// targets, weights and offsets of N rows over a vocabulary of V, for logits stored as `storage`.
inline TokenInputs row_inputs(std::int64_t N, std::int64_t V, at::ScalarType storage, const at::Tensor& targets,
                              const std::optional<at::Tensor>& weights, const at::Tensor& offsets) {
  TokenInputs in;
  in.vocab = V;
  check_shape("targets", targets, {N}, "[N], one target per row of logits");
  check_dim("offsets", offsets, 1, "a 1-D tensor [S + 1]");
  in.offsets = as_i64("offsets", offsets);
  if (weights) {
    check_shape("weights", *weights, {N}, "[N], one weight per row of logits");
    if (weights->is_complex()) fail("weights", dtype_of(*weights), "a real tensor");
    if (weights->requires_grad())
      fail("weights", "a tensor that requires grad", "a constant (no gradient flows to the weights; detach them)");
    in.weights = weights->detach().to(at::kCPU, compute_dtype(storage)).contiguous();
  }
  const at::Tensor t = as_i64("targets", targets);
  const std::int64_t* y = t.data_ptr<std::int64_t>();
  in.targets = at::empty({N}, at::kInt);
  dftune::token_t* out = in.targets.data_ptr<dftune::token_t>();
  for (std::int64_t r = 0; r < N; ++r) {
    const double w = !in.weights.defined()    ? 1.0
                     : storage == at::kDouble ? in.weights.data_ptr<double>()[r]
                                              : static_cast<double>(in.weights.data_ptr<float>()[r]);
    const bool fits = y[r] >= std::numeric_limits<dftune::token_t>::min() && y[r] <= std::numeric_limits<dftune::token_t>::max();
    // A masked row's target is never read (it may be -100, torch's ignore_index, or anything).
    if (!fits && w != 0)
      dftune::detail::fail_at("targets", static_cast<std::size_t>(r), y[r], "in [0, vocab = " + std::to_string(V) + ")");
    out[r] = fits ? static_cast<dftune::token_t>(y[r]) : 0;
  }
  return in;
}

inline TokenInputs token_inputs(const at::Tensor& logits, const at::Tensor& targets, const std::optional<at::Tensor>& weights,
                                const at::Tensor& offsets) {
  check_dim("logits", logits, 2, "a 2-D tensor [N, V]");
  check_storage("logits", logits);
  return row_inputs(logits.size(0), logits.size(1), logits.scalar_type(), targets, weights, offsets);
}

struct SequenceLogp : torch::autograd::Function<SequenceLogp> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const TokenInputs& in) {
    const at::Tensor z = logits.contiguous();
    const auto C = compute_dtype(z.scalar_type());
    const std::int64_t S = in.offsets.numel() - 1;
    at::Tensor seq = at::empty({std::max<std::int64_t>(S, 0)}, C);
    at::Tensor token = at::empty({z.size(0)}, C);
    at::Tensor lse = at::empty({z.size(0)}, C);
    with_storage_type(z.scalar_type(), [&]<class T>(T) {
      using Ct = dftune::logprob::compute_t<T>;
      auto out = [](at::Tensor& t) { return std::span<Ct>(t.data_ptr<Ct>(), static_cast<std::size_t>(t.numel())); };
      dftune::logprob::forward(token_logits<T>(z, in), out(seq), out(token), out(lse));
    });
    ctx->save_for_backward({logits});
    ctx->saved_data["row_lse"] = lse;
    in.save(ctx);
    return seq;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    return python_errors([&] { return backward_impl(ctx, grad_output); });
  }

  static torch::autograd::variable_list backward_impl(torch::autograd::AutogradContext* ctx,
                                                      const torch::autograd::variable_list& grad_output) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor z = saved[0].contiguous();
    const at::Tensor lse = ctx->saved_data["row_lse"].toTensor();
    const TokenInputs in = TokenInputs::load(ctx);
    const auto C = compute_dtype(z.scalar_type());
    const at::Tensor d_seq = grad_output[0].defined() ? grad_output[0].detach().to(at::kCPU, C).contiguous()
                                                      : at::zeros({in.offsets.numel() - 1}, C);
    at::Tensor grad = at::empty_like(z);
    with_storage_type(z.scalar_type(), [&]<class T>(T) {
      using Ct = dftune::logprob::compute_t<T>;
      auto view = [](const at::Tensor& t) { return std::span<const Ct>(t.data_ptr<Ct>(), static_cast<std::size_t>(t.numel())); };
      dftune::logprob::backward(token_logits<T>(z, in), view(d_seq),
                                std::span<T>(reinterpret_cast<T*>(grad.data_ptr()), static_cast<std::size_t>(grad.numel())),
                                view(lse));
    });
    torch::autograd::variable_list out = once_differentiable({grad}, saved);
    out.emplace_back();  // TokenInputs: not a tensor input
    return out;
  }
};

inline at::Tensor sequence_logp(const at::Tensor& logits, const at::Tensor& targets, const std::optional<at::Tensor>& weights,
                                const at::Tensor& offsets) {
  return SequenceLogp::apply(logits, token_inputs(logits, targets, weights, offsets));
}

}  // namespace dftune_torch
