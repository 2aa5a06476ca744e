"""dftune from PyTorch: Discriminative Fine-Tuning (arXiv 2502.18679) and its baselines as autograd
functions over dftune's C++ headers (the compiled module ``dftune_torch._C``).

Objectives take per-sequence log-probs: positives [B], negatives [B, m] (row-major, negative j of
prompt i at [i, j]), samples [B, k]. The log-probs that receive gradients share one floating dtype
(float16, bfloat16, float32, float64); the loss and gradients come back in that dtype, the
computation runs in float64. Ids and lengths: any integer dtype. A wrong dtype family, dimension
count or shape raises :class:`Error` (a ValueError) with the library's "argument: got ...,
expected ..." message, before anything is computed or stored; so does an error found in backward.

The estimator, as in C++: :func:`dft_loss` only reads it (evaluation), :func:`dft_step` also
stores the batch's update (training).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch  # the extension links the libtorch of this torch: import it first

from . import _C
from ._C import Error, __version__

Error.__module__ = __name__

__all__ = [
    "Error", "Estimator", "dft_loss", "dft_step", "sft_loss", "dpo_loss", "ipo_loss", "simpo_loss",
    "orpo_loss", "rloo_loss", "dynamic_ft_loss", "sequence_logp", "linear_sequence_logp", "__version__",
]

Tensor = torch.Tensor


def _doc(f) -> str:
    """The docstring of a compiled function without pybind11's signature line."""
    doc = f.__doc__ or ""
    head, sep, rest = doc.partition("\n")
    return rest.strip() if sep and "(" in head else doc


class Estimator(_C.Estimator):
    """Per-example DFT estimator state log u_i (float64), keyed by example id in [0, num_examples).

    init: 'first_visit' (an example's first batch initialises log u, the default), 'constant'
    (log u starts at log_u0; log_u0 = 0 is the reference trainer) or 'fixed' (log u = log_u0
    forever). Picklable and deep-copyable (through state_dict / load_state_dict).
    """

    def __init__(self, num_examples: int, init: str = "first_visit", log_u0: float = 0.0) -> None:
        super().__init__(num_examples, init, log_u0)

    def __reduce__(self):
        return (type(self), (self.num_examples, self.init, self.log_u0), self.state_dict())

    def __setstate__(self, state: dict) -> None:
        self.load_state_dict(state)


def _dft(update: bool, pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len, neg_len, eps):
    return _C.dft_loss(pos_logp, neg_logp, ids, estimator, variant=variant, tau=tau, gamma=gamma,
                       ref_neg_logp=ref_neg_logp, pos_len=pos_len, neg_len=neg_len, update=update, eps=eps)


def dft_loss(pos_logp: Tensor, neg_logp: Tensor, ids: Tensor, estimator: Estimator, *, variant: str = "dft",
             tau: float = 1.0, gamma: float = 0.85, ref_neg_logp: Optional[Tensor] = None,
             pos_len: Optional[Tensor] = None, neg_len: Optional[Tensor] = None, update: Optional[bool] = None,
             eps: float = 1e-8) -> Tensor:
    if update is None:
        # Up to 0.x dft_loss updated the estimator unless told update=False; now it only reads it,
        # as C++'s dft_loss. A call that looks like training (log-probs that require grad) is told.
        if torch.is_grad_enabled() and (pos_logp.requires_grad or neg_logp.requires_grad):
            warnings.warn("dftune_torch.dft_loss no longer updates the estimator by default: call dft_step(...) "
                          "to train (or pass update=True / update=model.training); update=False silences this",
                          FutureWarning, stacklevel=2)
        update = False
    return _dft(bool(update), pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len,
                neg_len, eps)


dft_loss.__doc__ = _doc(_C.dft_loss)


def dft_step(pos_logp: Tensor, neg_logp: Tensor, ids: Tensor, estimator: Estimator, *, variant: str = "dft",
             tau: float = 1.0, gamma: float = 0.85, ref_neg_logp: Optional[Tensor] = None,
             pos_len: Optional[Tensor] = None, neg_len: Optional[Tensor] = None, eps: float = 1e-8) -> Tensor:
    """dft_loss(..., update=True): the loss of a training step, whose computation also stores the
    batch's new log u in the estimator (once, after every check passed; never in backward), as C++'s
    dftune::dft_step. Arguments as dft_loss."""
    return _dft(True, pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len, neg_len, eps)


def sft_loss(logp: Tensor, *, reduction: str = "sequence_mean", lengths: Optional[Tensor] = None) -> Tensor:
    return _C.sft_loss(logp, reduction=reduction, lengths=lengths)


def dpo_loss(pos_logp: Tensor, neg_logp: Tensor, ref_pos_logp: Optional[Tensor], ref_neg_logp: Optional[Tensor], *,
             beta: float = 0.1) -> Tensor:
    return _C.dpo_loss(pos_logp, neg_logp, ref_pos_logp, ref_neg_logp, beta=beta)


def ipo_loss(pos_logp: Tensor, neg_logp: Tensor, ref_pos_logp: Optional[Tensor], ref_neg_logp: Optional[Tensor], *,
             beta: float = 0.1) -> Tensor:
    return _C.ipo_loss(pos_logp, neg_logp, ref_pos_logp, ref_neg_logp, beta=beta)


def simpo_loss(pos_logp: Tensor, neg_logp: Tensor, pos_len: Optional[Tensor], neg_len: Optional[Tensor], *,
               beta: float = 2.0, gamma: float = 0.5) -> Tensor:
    return _C.simpo_loss(pos_logp, neg_logp, pos_len, neg_len, beta=beta, gamma=gamma)


def orpo_loss(pos_logp: Tensor, neg_logp: Tensor, pos_len: Optional[Tensor], neg_len: Optional[Tensor], *,
              lambda_: float = 0.1, sft_reduction: str = "token_mean") -> Tensor:
    return _C.orpo_loss(pos_logp, neg_logp, pos_len, neg_len, lambda_=lambda_, sft_reduction=sft_reduction)


def rloo_loss(logp: Tensor, reward: Tensor) -> Tensor:
    return _C.rloo_loss(logp, reward)


def dynamic_ft_loss(token_logp: Tensor, mask: Optional[Tensor], offsets: Tensor, *,
                    reduction: str = "token_mean") -> Tensor:
    return _C.dynamic_ft_loss(token_logp, mask, offsets, reduction=reduction)


def sequence_logp(logits: Tensor, targets: Tensor, weights: Optional[Tensor], offsets: Tensor) -> Tensor:
    return _C.sequence_logp(logits, targets, weights, offsets)


def linear_sequence_logp(hidden: Tensor, proj: Tensor, bias: Optional[Tensor], targets: Tensor,
                         weights: Optional[Tensor], offsets: Tensor) -> Tensor:
    return _C.linear_sequence_logp(hidden, proj, bias, targets, weights, offsets)


for _f in (sft_loss, dpo_loss, ipo_loss, simpo_loss, orpo_loss, rloo_loss, dynamic_ft_loss, sequence_logp,
           linear_sequence_logp):
    _f.__doc__ = _doc(getattr(_C, _f.__name__))
del _f
