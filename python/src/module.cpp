// The compiled module dftune_torch._C: dftune's objectives, estimator and CPU log-prob reductions
// for PyTorch users, as autograd functions over the same headers. The package dftune_torch
// (python/dftune_torch/__init__.py) wraps it with Python signatures, pickling and dft_step. One translation unit on purpose:
// torch/extension.h costs most of the build, once.
#include "estimator.hpp"
#include "linear_logp.hpp"
#include "objectives.hpp"
#include "sequence_logp.hpp"

#include <dftune/version.hpp>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

namespace py = pybind11;
using namespace pybind11::literals;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = R"doc(dftune from PyTorch: Discriminative Fine-Tuning (arXiv 2502.18679) and its baselines as
autograd functions over dftune's C++ headers.

Objectives take per-sequence log-probs: positives [B], negatives [B, m] (row-major, negative j
of prompt i at [i, j]), samples [B, k]. The log-probs that receive gradients share one floating
dtype (float16, bfloat16, float32, float64); the loss and gradients come back in that dtype, the
computation runs in float64. Ids and lengths: any integer dtype. Non-contiguous tensors are
copied to contiguous ones; a wrong dtype family, dimension count or shape raises dftune_torch.Error
(a ValueError) with the library's "argument: got ..., expected ..." message, before anything is
computed or stored. Gradients are first-order only (a second backward raises).)doc";
  m.attr("__version__") = std::to_string(DFTUNE_VERSION_MAJOR) + "." + std::to_string(DFTUNE_VERSION_MINOR) + "." +
                          std::to_string(DFTUNE_VERSION_PATCH);

  dftune_torch::error_type = py::register_exception<dftune::error>(m, "Error", PyExc_ValueError).ptr();

  using dftune_torch::PyEstimator;
  py::class_<PyEstimator>(m, "Estimator", R"doc(Per-example DFT estimator state log u_i (float64), keyed by example id in [0, num_examples).

init: 'first_visit' (an example's first batch initialises log u, the default), 'constant'
(log u starts at log_u0; log_u0 = 0 is the reference trainer) or 'fixed' (log u = log_u0 forever).)doc")
      .def(py::init<std::int64_t, const std::string&, double, std::int64_t, std::int64_t>(), "num_examples"_a,
           "init"_a = "first_visit", "log_u0"_a = 0.0, "shard_rank"_a = 0, "shard_size"_a = 1)
      .def_property_readonly("num_examples", &PyEstimator::num_examples)
      .def_property_readonly("shard", &PyEstimator::shard, "(rank, world size): the ids held are those with id mod world size = rank")
      .def_property_readonly("init", &PyEstimator::init)
      .def_property_readonly("log_u0", &PyEstimator::log_u0)
      .def("__len__", &PyEstimator::size, "the number of ids held (num_examples unless sharded)")
      .def("log_u", &PyEstimator::log_u, "id"_a, "log u of example id, or None before its first update")
      .def("state_dict", &PyEstimator::state_dict,
           "{'init', 'log_u0', 'log_u': float64 [n] (0 where never updated), 'seen': bool [n]}, n = len(self)")
      .def("load_state_dict", &PyEstimator::load_state_dict, "state_dict"_a,
           "Replaces the state with a state_dict of an estimator of the same size, init and log_u0; "
           "checks everything first, so a refused state_dict changes nothing.")
      .def("_commit", &PyEstimator::commit, "ids"_a, "log_u"_a,
           "Stores log u (float64 [B], from dft_share) for ids [B] unless init is 'fixed'; checks first.")
      .def("__repr__", [](const PyEstimator& e) {
        std::string s = "dftune_torch.Estimator(num_examples=" + std::to_string(e.num_examples()) + ", init='" +
                        e.init() + "', log_u0=" + dftune_torch::number(e.log_u0());
        if (e.sharded())
          s += ", shard=(" + std::to_string(e.shard().first) + ", " + std::to_string(e.shard().second) + ")";
        return s + ")";
      });

  m.def("dft_loss", &dftune_torch::dft_loss, "pos_logp"_a, "neg_logp"_a, "ids"_a, "estimator"_a, py::kw_only(),
        "variant"_a = "dft", "tau"_a = 1.0, "gamma"_a = 0.85, "ref_neg_logp"_a = py::none(), "pos_len"_a = py::none(),
        "neg_len"_a = py::none(), "update"_a = false, "eps"_a = 1e-8,
        R"doc(The DFT (variant='dft') or DFT2 ('dft2') loss of a batch, differentiable wrt pos_logp [B] and neg_logp [B, m].

  L = (1/B) sum_i [ -s_i + (1/m) sum_j sg(exp(d_ij - log u_i)) s'_ij ]
  DFT:  s = log pi(y|x),           d_ij = s'_ij / tau - ref_neg_logp[i, j]   (ref_neg_logp required)
  DFT2: s = log pi(y|x)/(|y| + eps), d_ij = s'_ij / tau                       (pos_len, neg_len required)

ids [B]: distinct example ids of the estimator. With update=True the estimator's log u of the batch
is updated once, here (never in backward), after every check passed (dftune::dft_step); with
update=False (the default, as dftune::dft_loss) the estimator is only read.)doc");

  m.def("dft_check", &dftune_torch::dft_check, "pos_logp"_a, "neg_logp"_a, "ids"_a, "estimator"_a, py::kw_only(),
        "variant"_a = "dft", "tau"_a = 1.0, "gamma"_a = 0.85, "ref_neg_logp"_a = py::none(), "pos_len"_a = py::none(),
        "neg_len"_a = py::none(), "eps"_a = 1e-8,
        "Every check of dft_loss on one rank's share of a data-parallel batch (which may be empty); returns its size B_r.");
  m.def("dft_share", &dftune_torch::dft_share, "pos_logp"_a, "neg_logp"_a, "ids"_a, "estimator"_a, py::kw_only(),
        "variant"_a = "dft", "tau"_a = 1.0, "gamma"_a = 0.85, "ref_neg_logp"_a = py::none(), "pos_len"_a = py::none(),
        "neg_len"_a = py::none(), "eps"_a = 1e-8, "global_batch_size"_a, "scale"_a = 1.0,
        "One rank's share of a data-parallel DFT step: (its terms of L with the global batch's 1/B, times scale, "
        "differentiable; the new log u of its ids, float64 [B_r]). Changes nothing: Estimator._commit stores log u.");

  m.def("sft_loss", &dftune_torch::sft_loss, "logp"_a, py::kw_only(), "reduction"_a = "sequence_mean",
        "len"_a = py::none(),
        "SFT: -(1/B) sum_i logp[i] ('sequence_mean'), -sum logp / sum len ('token_mean') or "
        "-(1/B) sum logp[i]/len[i] ('length_normalized'). logp [B], len [B] completion lengths.");
  m.def("dpo_loss", &dftune_torch::dpo_loss, "pos_logp"_a, "neg_logp"_a, "ref_pos_logp"_a, "ref_neg_logp"_a,
        py::kw_only(), "beta"_a = 0.1,
        "DPO: mean over pairs (i, j) of -log sigmoid(beta [(pos - ref_pos)_i - (neg - ref_neg)_ij]). "
        "pos [B], neg [B, m], refs of the same shapes (constants).");
  m.def("ipo_loss", &dftune_torch::ipo_loss, "pos_logp"_a, "neg_logp"_a, "ref_pos_logp"_a, "ref_neg_logp"_a,
        py::kw_only(), "beta"_a = 0.1,
        "IPO: mean over pairs of (h - 1/(2 beta))^2, h = (pos - ref_pos)_i - (neg - ref_neg)_ij.");
  m.def("simpo_loss", &dftune_torch::simpo_loss, "pos_logp"_a, "neg_logp"_a, "pos_len"_a, "neg_len"_a,
        py::kw_only(), "beta"_a = 2.0, "gamma"_a = 0.5,
        "SimPO: mean over pairs of -log sigmoid(beta pos_i/|y_i| - beta neg_ij/|y_ij| - gamma).");
  m.def("orpo_loss", &dftune_torch::orpo_loss, "pos_logp"_a, "neg_logp"_a, "pos_len"_a, "neg_len"_a,
        py::kw_only(), "lambda_"_a = 0.1, "sft_reduction"_a = "token_mean",
        "ORPO: SFT on the positives (sft_reduction) + lambda_ * mean over pairs of "
        "-log sigmoid(log odds(pos/|y|) - log odds(neg/|y'|)); every log-prob must be < 0.");
  m.def("rloo_loss", &dftune_torch::rloo_loss, "logp"_a, "reward"_a,
        "RLOO: -(1/(B k)) sum_ij (r_ij - mean of the other rewards of prompt i) logp_ij. logp, reward [B, k], k >= 2.");

  m.def("dynamic_ft_loss", &dftune_torch::dynamic_ft_loss, "token_logp"_a, "weights"_a, "offsets"_a, py::kw_only(),
        "reduction"_a = "token_mean",
        "Dynamic Fine-Tuning (Wu et al. 2025, arXiv 2508.05629; TRL's loss_type='dft', not Discriminative FT): "
        "sum over completion tokens of -c_n sg(p_n) log p_n, p_n = exp(token_logp[n]); c_n = 1/tokens ('token_mean'), "
        "1/S ('sequence_mean') or 1/(S |y_s|) ('length_normalized'). token_logp [N] (differentiable), weights [N] 0/1 "
        "(the completion mask) or None (rows of weight 0 never read), offsets [S + 1].");

  // The two reductions run without the GIL (the library's loops touch no Python object): other
  // Python threads (a data loader, a logger) keep running. Arguments are converted before, and
  // the result after, the GIL is released; an error is translated once it is held again.
  m.def("sequence_logp", &dftune_torch::sequence_logp, "logits"_a, "targets"_a, "weights"_a, "offsets"_a,
        py::call_guard<py::gil_scoped_release>(),
        R"doc(Per-sequence log-probs from token logits on the CPU fast path, differentiable wrt logits.

  seq[s] = sum over rows n of sequence s of weights[n] * log_softmax(logits[n])[targets[n]]

logits [N, V] float32, float64 or bfloat16 (CPU; made contiguous); targets [N] integer; weights [N]
real (a 0/1 mask; None means all 1; a masked row's target is never read) or None; offsets [S + 1]:
sequence s is rows [offsets[s], offsets[s + 1]). Returns [S] in float32 (float64 for float64 logits).)doc");

  m.def("linear_sequence_logp", &dftune_torch::linear_sequence_logp, "hidden"_a, "proj"_a, "bias"_a, "targets"_a,
        "weights"_a, "offsets"_a, py::call_guard<py::gil_scoped_release>(),
        R"doc(sequence_logp of the logits hidden @ proj.T + bias, fused: the [N, V] logits are never held beyond one
chunk of rows, and the backward recomputes them. Differentiable wrt hidden, proj and bias.

hidden [N, d], proj [V, d] (torch.nn.Linear(d, V).weight), bias [V] or None: one dtype, float32,
float64 or bfloat16, on the CPU (made contiguous). targets, weights, offsets: as sequence_logp.)doc");
}
