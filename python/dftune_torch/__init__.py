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

Data-parallel (DDP): ``Estimator(n, shard=shard_of())`` holds only the ids i with i mod P = rank, so
each u_i lives on one rank and is exact; with such an estimator (or ``group=``) dft_loss and
dft_step are collective over a torch.distributed process group: the 1/B of the loss is the global
batch's, and a bad input on any rank is the same :class:`Error` on every rank, before anything is
stored (docs/distributed.md, "From PyTorch").
"""
from __future__ import annotations

import builtins
import math
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch  # the extension links the libtorch of this torch: import it first

from . import _C
from ._C import Error, __version__

Error.__module__ = __name__

__all__ = [
    "Error", "Estimator", "shard_of", "dft_loss", "dft_step", "sft_loss", "dpo_loss", "ipo_loss", "simpo_loss",
    "orpo_loss", "rloo_loss", "dynamic_ft_loss", "sequence_logp", "linear_sequence_logp", "__version__",
]

Tensor = torch.Tensor


def _doc(f) -> str:
    """The docstring of a compiled function without pybind11's signature line."""
    doc = f.__doc__ or ""
    head, sep, rest = doc.partition("\n")
    return rest.strip() if sep and "(" in head else doc


def _rebuild(cls, num_examples, init, log_u0, shard):
    return cls(num_examples, init, log_u0, shard=shard)


def _shard_pair(shard) -> Tuple[int, int]:
    if shard is None:
        return 0, 1
    if isinstance(shard, (tuple, list)) and len(shard) == 2 and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in shard):
        return int(shard[0]), int(shard[1])
    raise Error(f"shard: got {shard!r}, expected None or (rank, world size), two ints (dftune_torch.shard_of(group))")


def shard_of(group=None) -> Tuple[int, int]:
    """(rank, world size) of this process in a torch.distributed process group (default: the
    default group): the ``shard`` of its Estimator, as C++'s distributed::shard_of(comm)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise Error("group: got torch.distributed not initialised, expected dist.init_process_group(...) first "
                    "(shard_of reads this process's rank and world size)")
    return dist.get_rank(group), dist.get_world_size(group)


class Estimator(_C.Estimator):
    """Per-example DFT estimator state log u_i (float64), keyed by example id in [0, num_examples).

    init: 'first_visit' (an example's first batch initialises log u, the default), 'constant'
    (log u starts at log_u0; log_u0 = 0 is the reference trainer) or 'fixed' (log u = log_u0
    forever). Picklable and deep-copyable (through state_dict / load_state_dict).

    shard=(rank, P) (data-parallel training; ``shard_of(group)`` gives this process's): holds only
    the ids i with i mod P = rank (len(est) of them), refuses every other id, and makes dft_loss and
    dft_step collective. Its state_dict is this rank's (save one per rank); load_state_dict also
    takes the state_dicts of another world size (see its doc).
    """

    def __init__(self, num_examples: int, init: str = "first_visit", log_u0: float = 0.0, *,
                 shard: Optional[Tuple[int, int]] = None) -> None:
        super().__init__(num_examples, init, log_u0, *_shard_pair(shard))

    def __reduce__(self):
        return (_rebuild, (type(self), self.num_examples, self.init, self.log_u0, self.shard), self.state_dict())

    def __setstate__(self, state: dict) -> None:
        self.load_state_dict(state)

    def state_dict(self) -> dict:
        """{'init', 'log_u0', 'log_u': float64 [n] (0 where never updated), 'seen': bool [n]}, n = len(self):
        this estimator's ids in order (id = rank + k·P). A sharded estimator's also has
        'num_examples' and 'shard': (rank, P)."""
        sd = super().state_dict()
        if self.shard != (0, 1):
            sd["num_examples"] = self.num_examples
            sd["shard"] = self.shard
        return sd

    def load_state_dict(self, state_dict: Union[dict, Sequence[dict]]) -> None:
        """Replaces the state, checking everything first (a refused state_dict changes nothing).

        state_dict: this estimator's own (same num_examples, init, log_u0 and shard), or the
        state_dicts of the ranks of another world size P' (a list, in any order; a single
        unsharded one is P' = 1): this rank takes its ids from them. Rank r needs those of the old
        ranks q with q ≡ r (mod gcd(P, P')); others given are ignored. As C++'s io::load_sharded.
        """
        if isinstance(state_dict, dict):
            mine = self.shard
            if _shard_pair(state_dict.get("shard", (0, 1))) == mine:
                if "num_examples" in state_dict and state_dict["num_examples"] != self.num_examples:
                    raise Error(f"num_examples: got {state_dict['num_examples']!r}, expected {self.num_examples} "
                                "(this estimator's)")
                if mine != (0, 1):
                    for key in ("num_examples", "shard"):
                        if key not in state_dict:
                            raise Error(f"state_dict: got no key '{key}', expected the keys 'init', 'log_u0', "
                                        "'log_u', 'seen', 'num_examples' and 'shard' (a sharded estimator's)")
                super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("num_examples", "shard")})
                return
            state_dict = [state_dict]
        if not isinstance(state_dict, (list, tuple)) or not all(isinstance(d, dict) for d in state_dict):
            raise Error(f"state_dict: got {type(state_dict).__name__}, expected a dict or a list of dicts "
                        "(the state_dicts of every rank of another world size)")
        super().load_state_dict(_reshard(self, list(state_dict)))


def _reshard(est: Estimator, sds: List[dict]) -> dict:
    """est's own state_dict, gathered from the state_dicts of a world of P' ranks: id i is at local
    index i // P' of old rank i mod P', and at local index i // P of est's rank (i mod P)."""
    N, (r, P) = est.num_examples, est.shard
    old = {}
    world = None
    for k, sd in enumerate(sds):
        q, Pq = _shard_pair(sd.get("shard", (0, 1)))
        if not 0 <= q < Pq:
            raise Error(f"state_dict[{k}].shard: got ({q}, {Pq}), expected (rank, world size) with 0 <= rank < world size")
        n = sd.get("num_examples", N if Pq == 1 else None)
        if n != N:
            raise Error(f"state_dict[{k}].num_examples: got {n!r}, expected {N} (this estimator's)")
        if world is not None and Pq != world:
            raise Error(f"state_dict[{k}].shard: got ({q}, {Pq}), expected a shard of a world of {world} "
                        "(as state_dict[0]): the state_dicts of one save")
        world = Pq
        if q in old:
            raise Error(f"state_dict[{k}].shard: got ({q}, {Pq}) twice, expected each rank's state_dict once")
        for key, want in (("init", est.init), ("log_u0", est.log_u0)):
            if key in sd and sd[key] != want:
                raise Error(f"state_dict[{k}].{key}: got {sd[key]!r}, expected {want!r} (this estimator's)")
        old[q] = sd
    if not old:
        raise Error("state_dict: got an empty list, expected the state_dicts of every rank of a world")
    g = math.gcd(P, world)
    log_u = torch.zeros(len(est), dtype=torch.float64)
    seen = torch.zeros(len(est), dtype=torch.int64)  # the C++ load checks the flags are 0 or 1
    covered = torch.zeros(len(est), dtype=torch.bool)
    for q, sd in sorted(old.items()):
        if q % g != r % g:
            continue  # old rank q holds no id of this rank
        count = (N - q - 1) // world + 1 if N > q else 0
        lu, sn = sd.get("log_u"), sd.get("seen")
        for key, t in (("log_u", lu), ("seen", sn)):
            if not isinstance(t, torch.Tensor) or t.shape != (count,):
                got = f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise Error(f"state_dict of shard ({q}, {world}).{key}: got {got}, expected a tensor of shape "
                            f"[{count}] (the ids of that shard)")
        if lu.dtype != torch.float64:
            raise Error(f"state_dict of shard ({q}, {world}).log_u: got dtype {lu.dtype}, expected dtype "
                        "torch.float64 (the estimator's state)")
        if sn.dtype.is_floating_point or sn.dtype.is_complex:
            raise Error(f"state_dict of shard ({q}, {world}).seen: got dtype {sn.dtype}, expected a bool or "
                        "integer tensor")
        ids = q + world * torch.arange(count)
        held = ids % P == r
        local = ids[held] // P
        log_u[local] = lu.detach().cpu()[held]
        seen[local] = sn.detach().cpu()[held].to(torch.int64)
        covered[local] = True
    if not covered.all():
        i = int((~covered).nonzero()[0]) * P + r
        raise Error(f"state_dict: got the shards {sorted(old)} of a world of {world}, expected also shard "
                    f"({i % world}, {world}), which holds id {i} of this estimator's shard ({r}, {P})")
    return {"init": est.init, "log_u0": est.log_u0, "log_u": log_u, "seen": seen}


_DIST_DOC = """
group: a torch.distributed process group (default: the default group when the estimator is sharded;
None with an unsharded estimator: a single process). Data-parallel, every rank of the group calls
this with its share of the global batch (the ids its shard owns; possibly none) and the call is
collective: the loss uses the global batch's 1/B and u_i stays exact (each rank updates its own
ids); a bad input on any rank, or ranks that disagree (num_examples, world size, options, m),
is the same Error on every rank ("rank r of P: ..."), before any estimator is changed.
grad_reduction: 'mean' (the default: DDP and FSDP average the ranks' gradients) returns P times
this rank's terms of L, so that the averaged gradient is that of the global L; 'sum' returns the
terms themselves (the ranks' losses sum to L). Either way the ranks' losses average (or sum) to L.
"""


def _exception_record(e: BaseException) -> Tuple[str, str]:
    kind = "Error" if isinstance(e, Error) else type(e).__name__
    return kind, str(e)


def _raise_agreed(kind: str, message: str):
    if kind == "Error":
        raise Error(message)
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        raise cls(message)
    raise RuntimeError(f"{kind}: {message}")


def _agree(group, width, local):
    """Runs local() -> (result, record: `width` floats) on every rank of group and returns (this
    rank's result, every rank's record), or raises on every rank the error of the lowest rank whose
    local() raised, prefixed "rank r of P: " (C++'s distributed::agree): one all-gather of
    1 + width float64 per rank, and a second one of the messages only when a rank failed. A world
    of one only calls local()."""
    import torch.distributed as dist
    P = dist.get_world_size(group)
    if P == 1:
        result, record = local()
        return result, [record]
    result, failure, record = None, None, [0.0] * width
    try:
        result, record = local()
    except Exception as e:  # sent to every rank: a rank that raised alone would leave the others waiting
        failure = _exception_record(e)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    mine = torch.tensor([0.0 if failure else 1.0] + [float(v) for v in record], dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(P)]
    dist.all_gather(rows, mine, group=group)
    rows = torch.stack(rows).cpu().tolist()
    failed = [r for r in range(P) if rows[r][0] != 1.0]
    if failed:
        failures = [None] * P
        dist.all_gather_object(failures, failure, group=group)
        kind, message = failures[failed[0]]
        prefix = f"rank {failed[0]} of {P}"
        if len(failed) > 1:
            prefix += f" (and {len(failed) - 1} more)"
        _raise_agreed(kind, f"{prefix}: {message}")
    return result, [row[1:] for row in rows]


_INITS, _VARIANTS, _REDUCTIONS = ("first_visit", "constant", "fixed"), ("dft", "dft2"), ("mean", "sum")
# What every rank of a step must agree on, as floats (names by index), and how to print each.
_AGREED = (("num_examples", int), ("init", _INITS.__getitem__), ("log_u0", float),
           ("variant", _VARIANTS.__getitem__), ("tau", float), ("gamma", float), ("eps", float),
           ("num_negatives", int), ("grad_reduction", _REDUCTIONS.__getitem__), ("update", bool))


def _dft_collective(update, pos_logp, neg_logp, ids, estimator, group, grad_reduction, kw):
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise Error(f"estimator: got an Estimator with shard {estimator.shard} (or a group) outside torch.distributed, "
                    "expected dist.init_process_group(...) first: a sharded dft_loss / dft_step is collective")
    P, rank = dist.get_world_size(group), dist.get_rank(group)

    def check():
        if estimator.shard != (rank, P):
            raise Error(f"estimator.shard: got {estimator.shard}, expected ({rank}, {P}), this process's rank and "
                        "world size in the process group (build it with shard=dftune_torch.shard_of(group))")
        if grad_reduction not in _REDUCTIONS:
            raise Error(f"grad_reduction: got {grad_reduction!r}, expected 'mean' (DDP, FSDP) or 'sum'")
        B_r = _C.dft_check(pos_logp, neg_logp, ids, estimator, **kw)
        config = (estimator.num_examples, _INITS.index(estimator.init), estimator.log_u0,
                  _VARIANTS.index(kw["variant"]), kw["tau"], kw["gamma"], kw["eps"], int(neg_logp.shape[1]),
                  _REDUCTIONS.index(grad_reduction), update)
        return B_r, (B_r,) + config

    B_r, records = _agree(group, 1 + len(_AGREED), check)
    # Every rank compares the same records: a disagreement is the same error everywhere.
    for k, (key, value) in enumerate(_AGREED, start=1):
        want = records[0][k]
        for r in range(1, P):
            if records[r][k] != want:
                raise Error(f"{key}: got {value(records[r][k])!r} on rank {r}, expected {value(want)!r} as on rank 0 "
                            "(every rank of a data-parallel step must agree)")
    B = int(sum(rec[0] for rec in records))
    if B == 0:
        raise Error("ids: got size 0 on every rank, expected at least one example in the global batch")
    scale = float(P) if grad_reduction == "mean" else 1.0

    def compute():
        if B_r == 0:  # no id of this batch here: a zero loss, so that the model still gets (zero) gradients
            return (pos_logp.sum() * 0 + neg_logp.sum() * 0, None), ()
        return _C.dft_share(pos_logp, neg_logp, ids, estimator, global_batch_size=B, scale=scale, **kw), ()

    (loss, log_u), _ = _agree(group, 0, compute)
    if update and log_u is not None:
        estimator._commit(ids, log_u)  # checked in compute(): cannot refuse
    return loss


def _dft(update, pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len, neg_len, eps,
         group=None, grad_reduction="mean"):
    kw = dict(variant=variant, tau=tau, gamma=gamma, ref_neg_logp=ref_neg_logp, pos_len=pos_len, neg_len=neg_len,
              eps=eps)
    if group is not None or (isinstance(estimator, _C.Estimator) and estimator.shard[1] != 1):
        return _dft_collective(update, pos_logp, neg_logp, ids, estimator, group, grad_reduction, kw)
    return _C.dft_loss(pos_logp, neg_logp, ids, estimator, update=update, **kw)


def dft_loss(pos_logp: Tensor, neg_logp: Tensor, ids: Tensor, estimator: Estimator, *, variant: str = "dft",
             tau: float = 1.0, gamma: float = 0.85, ref_neg_logp: Optional[Tensor] = None,
             pos_len: Optional[Tensor] = None, neg_len: Optional[Tensor] = None, update: Optional[bool] = None,
             eps: float = 1e-8, group: Optional["torch.distributed.ProcessGroup"] = None,
             grad_reduction: str = "mean") -> Tensor:
    if update is None:
        # Up to 0.x dft_loss updated the estimator unless told update=False; now it only reads it,
        # as C++'s dft_loss. A call that looks like training (log-probs that require grad) is told.
        if torch.is_grad_enabled() and (pos_logp.requires_grad or neg_logp.requires_grad):
            warnings.warn("dftune_torch.dft_loss no longer updates the estimator by default: call dft_step(...) "
                          "to train (or pass update=True / update=model.training); update=False silences this",
                          FutureWarning, stacklevel=2)
        update = False
    return _dft(bool(update), pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len,
                neg_len, eps, group, grad_reduction)


dft_loss.__doc__ = _doc(_C.dft_loss) + "\n" + _DIST_DOC


def dft_step(pos_logp: Tensor, neg_logp: Tensor, ids: Tensor, estimator: Estimator, *, variant: str = "dft",
             tau: float = 1.0, gamma: float = 0.85, ref_neg_logp: Optional[Tensor] = None,
             pos_len: Optional[Tensor] = None, neg_len: Optional[Tensor] = None, eps: float = 1e-8,
             group: Optional["torch.distributed.ProcessGroup"] = None, grad_reduction: str = "mean") -> Tensor:
    return _dft(True, pos_logp, neg_logp, ids, estimator, variant, tau, gamma, ref_neg_logp, pos_len, neg_len, eps,
                group, grad_reduction)


dft_step.__doc__ = """dft_loss(..., update=True): the loss of a training step, whose computation also stores the
batch's new log u in the estimator (once, after every check passed; never in backward), as C++'s
dftune::dft_step. Arguments as dft_loss.
""" + _DIST_DOC


def sft_loss(logp: Tensor, *, reduction: str = "sequence_mean", len: Optional[Tensor] = None,
             lengths: Optional[Tensor] = None) -> Tensor:
    # `lengths` is the spelling before the lengths were named `len` / `pos_len` / `neg_len` everywhere.
    if lengths is not None:
        warnings.warn("dftune_torch.sft_loss(lengths=...) is deprecated: pass len=...", FutureWarning, stacklevel=2)
        if len is not None:
            raise Error("lengths: got a tensor, expected None when len is given (lengths is len's old name)")
        len = lengths
    return _C.sft_loss(logp, reduction=reduction, len=len)


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


def dynamic_ft_loss(token_logp: Tensor, weights: Optional[Tensor], offsets: Tensor, *,
                    reduction: str = "token_mean") -> Tensor:
    return _C.dynamic_ft_loss(token_logp, weights, offsets, reduction=reduction)


def sequence_logp(logits: Tensor, targets: Tensor, weights: Optional[Tensor], offsets: Tensor) -> Tensor:
    return _C.sequence_logp(logits, targets, weights, offsets)


def linear_sequence_logp(hidden: Tensor, proj: Tensor, bias: Optional[Tensor], targets: Tensor,
                         weights: Optional[Tensor], offsets: Tensor) -> Tensor:
    return _C.linear_sequence_logp(hidden, proj, bias, targets, weights, offsets)


for _f in (sft_loss, dpo_loss, ipo_loss, simpo_loss, orpo_loss, rloo_loss, dynamic_ft_loss, sequence_logp,
           linear_sequence_logp):
    _f.__doc__ = _doc(getattr(_C, _f.__name__))
del _f
