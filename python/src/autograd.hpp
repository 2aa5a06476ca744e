#pragma once
// The autograd node of every objective binding. The library returns a loss and its gradient wrt
// the log-prob tensors in one call (dftune::dft_step, dpo_loss, ...), so the forward of the node
// only attaches them: backward is grad_output · ∂L/∂input, with no library call and no state
// touched (the estimator was updated, at most once, when the loss was computed).
//
// First derivatives only: the returned gradients are constants with respect to the inputs (the
// DFT weights are stop-gradients anyway, but DPO's are not). As with @once_differentiable, a
// backward run under create_graph=True returns gradients whose own backward raises, instead of
// silently wrong second derivatives.
#include <dftune/error.hpp>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

namespace dftune_torch {

inline const char* const kSecondDerivative =
    "dftune_torch: second derivatives are not supported (the gradients are computed by the library "
    "in the forward pass; backward through them again is not defined)";

// Outputs of a backward: when the caller asked for a differentiable backward (create_graph=True
// turns grad mode on during backward), they get an Error node as their history, whose edges lead
// to the forward's inputs, so that differentiating through them raises, whichever inputs the
// second derivative is taken for. Unlike @once_differentiable, this holds even when grad_output
// does not require grad: the gradient still depends on the inputs (through a log_softmax before
// this node, say), and a gradient without that history would drop the term silently.
inline torch::autograd::variable_list once_differentiable(torch::autograd::variable_list grads,
                                                          const torch::autograd::variable_list& forward_inputs) {
  if (!torch::autograd::GradMode::is_enabled()) return grads;
  auto error = std::make_shared<torch::autograd::Error>(kSecondDerivative,
                                                         torch::autograd::collect_next_edges(forward_inputs));
  for (at::Tensor& g : grads) {
    if (!g.defined()) continue;
    g = g.detach();  // a fresh tensor whose only history is the Error node
    torch::autograd::set_history(g, error);
  }
  return grads;
}

// dftune_torch.Error, set when the module is initialised.
inline PyObject* error_type = nullptr;

// Runs a backward's body so that a dftune::error it throws reaches Python as dftune_torch.Error,
// as it does from a forward. Backward runs inside torch's autograd engine, which turns every C++
// exception into RuntimeError except torch's python_error: so the error is raised as a Python
// exception of our type and carried out as a python_error (persisted here: the engine may
// rethrow it on another thread).
template <class F>
decltype(auto) python_errors(F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const dftune::error& e) {
    if (error_type == nullptr) throw;
    python_error err;
    {
      pybind11::gil_scoped_acquire gil;
      PyErr_SetString(error_type, e.what());
      err.persist();
    }
    throw err;
  }
}

// What the library computed: not a tensor argument of the node (autograd ignores it).
struct LossAndGrads {
  at::Tensor loss;                 // 0-dim
  std::vector<at::Tensor> grads;   // grads[k] = ∂loss/∂inputs[k], same shape, dtype and device
};

struct PrecomputedGrad : torch::autograd::Function<PrecomputedGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList inputs, LossAndGrads r) {
    TORCH_INTERNAL_ASSERT(inputs.size() == r.grads.size());
    ctx->saved_data["grads"] = c10::List<at::Tensor>(r.grads);
    ctx->save_for_backward(inputs.vec());  // only for once_differentiable's edges
    return r.loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    const auto grads = ctx->saved_data["grads"].toTensorList();
    const at::Tensor& g = grad_output[0];
    torch::autograd::variable_list out;
    for (std::size_t k = 0; k < grads.size(); ++k) {
      const at::Tensor gk = grads.get(k);
      out.push_back(g.defined() ? gk * g.to(gk.device(), gk.scalar_type()) : at::Tensor());
    }
    out = once_differentiable(std::move(out), ctx->get_saved_variables());
    out.emplace_back();  // LossAndGrads: not a tensor input
    return out;
  }
};

// The scalar `loss` of `inputs` with gradients `grads`, attached to autograd.
inline at::Tensor attach(const std::vector<at::Tensor>& inputs, LossAndGrads r) {
  return PrecomputedGrad::apply(at::TensorList(inputs), std::move(r));
}

}  // namespace dftune_torch
