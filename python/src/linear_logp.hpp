#pragma once
// linear_sequence_logp(hidden, proj, bias, targets, weights, offsets): the fused linear + log-prob
// head (logprob/linear/linear.hpp) as an autograd function: sequence_logp of the logits
// z = hidden · projᵀ + bias, without ever holding more than one chunk of them.
//
//   forward   seq_logp[s] = Σ_{n in s} w_n · log_softmax(z_n)[y_n],   z_n = proj h_n + bias
//   backward  with G_n = d_seq[s] w_n (onehot(y_n) − softmax(z_n)):
//             ∂L/∂h_n = G_n proj,  ∂L/∂proj = Σ_n G_nᵀ h_n,  ∂L/∂bias = Σ_n G_n
//             (the logits of each chunk are recomputed; row_lse from the forward saves a pass)
//
// proj is [V, d], torch.nn.Linear(d, V).weight's layout. hidden, proj and bias share one storage
// type (float32, float64, bfloat16) on the CPU and are made contiguous; targets, weights and
// offsets follow sequence_logp's rules. Only the gradients autograd asks for are computed; the
// library accumulates proj's and bias's in the compute type (float32 for bfloat16), which are
// returned in the storage type.
#include "autograd.hpp"
#include "sequence_logp.hpp"
#include "tensors.hpp"

#include <dftune/logprob/linear/linear.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace dftune_torch {

template <class T>
dftune::logprob::linear::LinearLogits<T> linear_logits(const at::Tensor& hidden, const at::Tensor& proj,
                                                       const at::Tensor& bias, const TokenInputs& in) {
  using C = dftune::logprob::compute_t<T>;
  auto view = [](const at::Tensor& t) {
    return t.defined() ? std::span<const T>(reinterpret_cast<const T*>(t.data_ptr()), static_cast<std::size_t>(t.numel()))
                       : std::span<const T>{};
  };
  return {.hidden = view(hidden),
          .proj = view(proj),
          .bias = view(bias),
          .dim = static_cast<std::size_t>(hidden.size(1)),
          .vocab = static_cast<std::size_t>(in.vocab),
          .layout = dftune::logprob::linear::Layout::vocab_major,
          .targets = span_of<dftune::token_t>(in.targets),
          .weights = in.weights.defined() ? span_of<C>(in.weights) : std::span<const C>{},
          .offsets = i64_span(in.offsets)};
}

template <class X>
std::span<X> writable(at::Tensor& t) {
  return t.defined() ? std::span<X>(reinterpret_cast<X*>(t.data_ptr()), static_cast<std::size_t>(t.numel())) : std::span<X>{};
}

struct LinearLogp : torch::autograd::Function<LinearLogp> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& proj,
                            const c10::optional<at::Tensor>& bias, const TokenInputs& in) {
    const at::Tensor h = hidden.contiguous(), w = proj.contiguous(), b = bias ? bias->contiguous() : at::Tensor();
    const auto C = compute_dtype(h.scalar_type());
    at::Tensor seq = at::empty({std::max<std::int64_t>(in.offsets.numel() - 1, 0)}, C);
    at::Tensor lse = at::empty({h.size(0)}, C);
    with_storage_type(h.scalar_type(), [&]<class T>(T) {
      using Ct = dftune::logprob::compute_t<T>;
      const auto li = linear_logits<T>(h, w, b, in);
      dftune::logprob::linear::validate(li);  // before workspace_size, which assumes valid shapes
      at::Tensor ws = at::empty({static_cast<std::int64_t>(dftune::logprob::linear::workspace_size(li))}, at::kByte);
      dftune::logprob::linear::forward(li, writable<Ct>(seq), std::span<Ct>{}, writable<Ct>(lse), writable<std::byte>(ws));
    });
    ctx->save_for_backward({hidden, proj, bias ? *bias : at::Tensor()});
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
    const at::Tensor h = saved[0].contiguous(), w = saved[1].contiguous();
    const at::Tensor b = saved[2].defined() ? saved[2].contiguous() : at::Tensor();
    const at::Tensor lse = ctx->saved_data["row_lse"].toTensor();
    const TokenInputs in = TokenInputs::load(ctx);
    const auto C = compute_dtype(h.scalar_type());
    const at::Tensor d_seq = grad_output[0].defined() ? grad_output[0].detach().to(at::kCPU, C).contiguous()
                                                      : at::zeros({in.offsets.numel() - 1}, C);
    // Only what autograd needs; the library skips an empty span. proj's and bias's accumulate (+=).
    at::Tensor dh = ctx->needs_input_grad(0) ? at::empty_like(h) : at::Tensor();
    at::Tensor dw = ctx->needs_input_grad(1) ? at::zeros(w.sizes(), C) : at::Tensor();
    at::Tensor db = b.defined() && ctx->needs_input_grad(2) ? at::zeros(b.sizes(), C) : at::Tensor();
    with_storage_type(h.scalar_type(), [&]<class T>(T) {
      using Ct = dftune::logprob::compute_t<T>;
      const auto li = linear_logits<T>(h, w, b, in);
      at::Tensor ws = at::empty({static_cast<std::int64_t>(dftune::logprob::linear::workspace_size(li))}, at::kByte);
      const dftune::logprob::linear::LinearGrads<T> grads{.hidden = writable<T>(dh), .proj = writable<Ct>(dw),
                                                          .bias = writable<Ct>(db)};
      dftune::logprob::linear::backward(li, std::span<const Ct>(d_seq.data_ptr<Ct>(), static_cast<std::size_t>(d_seq.numel())),
                                        grads, std::span<const Ct>(lse.data_ptr<Ct>(), static_cast<std::size_t>(lse.numel())),
                                        writable<std::byte>(ws));
    });
    const auto storage = h.scalar_type();
    torch::autograd::variable_list out = once_differentiable(
        {dh, dw.defined() ? dw.to(storage) : dw, db.defined() ? db.to(storage) : db}, saved);
    out.emplace_back();  // TokenInputs: not a tensor input
    return out;
  }
};

inline at::Tensor linear_sequence_logp(const at::Tensor& hidden, const at::Tensor& proj, const std::optional<at::Tensor>& bias,
                                       const at::Tensor& targets, const std::optional<at::Tensor>& weights,
                                       const at::Tensor& offsets) {
  check_dim("hidden", hidden, 2, "a 2-D tensor [N, d]");
  check_storage("hidden", hidden);
  check_dim("proj", proj, 2, "a 2-D tensor [V, d] (torch.nn.Linear(d, V).weight)");
  if (proj.scalar_type() != hidden.scalar_type())
    fail("proj", dtype_of(proj), dtype_name(hidden.scalar_type()) + " (the dtype of hidden)");
  check_storage("proj", proj);
  if (proj.size(1) != hidden.size(1))
    fail("proj", shape_of(proj), shape_of({proj.size(0), hidden.size(1)}) + " ([V, d], d = hidden.size(1))");
  if (bias) {
    check_shape("bias", *bias, {proj.size(0)}, "[V], V = proj.size(0)");
    if (bias->scalar_type() != hidden.scalar_type())
      fail("bias", dtype_of(*bias), dtype_name(hidden.scalar_type()) + " (the dtype of hidden)");
    check_storage("bias", *bias);
  }
  TokenInputs in = row_inputs(hidden.size(0), proj.size(0), hidden.scalar_type(), targets, weights, offsets);
  // c10::optional, not std::optional: autograd counts only the former as a (possible) tensor input.
  const c10::optional<at::Tensor> b = bias ? c10::optional<at::Tensor>(*bias) : c10::nullopt;
  return LinearLogp::apply(hidden, proj, b, std::move(in));
}

}  // namespace dftune_torch
