"""One rank of test_distributed.py's data-parallel job, and the single-process runs it is held to.

    ddp_worker.py RANK WORLD INIT_FILE OUT_DIR

joins a Gloo process group through a FileStore (INIT_FILE) and runs, in this order:
  objective  fixed log-probs over STEPS global batches (one of them holds rank 0's ids only), the
             estimator sharded by id: losses, gradients wrt the log-probs and log u, DFT and DFT2;
  resume     the single-process estimator after RESUME_AT steps (OUT_DIR/single_resume.pt) loaded
             into this rank's shard, then the remaining steps;
  ddp        a torch.nn.Linear policy wrapped in DistributedDataParallel, SGD with momentum;
  bad        bad input on one rank (or ranks that disagree): the error every rank gets, its time,
             and the estimator's state before and after;
and saves what it saw to OUT_DIR/rank<RANK>.pt. The functions below are the shared definitions:
the single-process runs are the same functions with world = 1.
"""
import os
import sys
import time

import torch

import dftune_torch as dt

N, M, D, V = 12, 2, 3, 5     # examples, negatives per prompt, feature size, choices of the policy
B = 6                        # global batch (N / B = 2 batches per epoch)
STEPS = 5                    # objective: 4 sampled global batches, then EVEN_BATCH
EVEN_BATCH = [0, 2, 4, 8]    # rank 1 of 2 owns none of these: its share is empty
RESUME_AT = 2
DDP_STEPS = 4


def global_batch(t):
    """Global batch t, independent of the world size (ShardedBatches' rule: epoch e's permutation
    from (seed, e), batch t a slice of it)."""
    if t == STEPS - 1:
        return torch.tensor(EVEN_BATCH)
    per_epoch = N // B
    g = torch.Generator().manual_seed(1000 + t // per_epoch)
    return torch.randperm(N, generator=g)[(t % per_epoch) * B:(t % per_epoch + 1) * B]


def share(ids, rank, world):
    """The ids of the global batch this rank owns (id mod world = rank), in the batch's order."""
    return ids[ids % world == rank]


def fixed_logps(t):
    """Step t's log-probs of every example: pos [N], neg [N, M], ref [N, M], lengths (DFT2)."""
    g = torch.Generator().manual_seed(t)
    pos = -torch.rand(N, generator=g, dtype=torch.float64) * 6 - 0.5
    neg = -torch.rand(N, M, generator=g, dtype=torch.float64) * 8 - 0.5
    ref = -torch.rand(N, M, generator=g, dtype=torch.float64) * 8 - 0.5
    pos_len = torch.randint(1, 9, (N,), generator=g)
    neg_len = torch.randint(1, 9, (N, M), generator=g)
    return pos, neg, ref, pos_len, neg_len


VARIANTS = {"dft": dict(variant="dft", tau=1.0, gamma=0.85), "dft2": dict(variant="dft2", tau=0.3, gamma=0.9)}


def objective_step(t, ids, est, variant):
    """dft_step on fixed log-probs: (loss, grad_pos [b], grad_neg [b, M])."""
    pos, neg, ref, pos_len, neg_len = fixed_logps(t)
    p = pos[ids].clone().requires_grad_()
    n = neg[ids].clone().requires_grad_()
    kw = dict(VARIANTS[variant])
    if variant == "dft":
        kw["ref_neg_logp"] = ref[ids]
    else:
        kw.update(pos_len=pos_len[ids], neg_len=neg_len[ids])
    loss = dt.dft_step(p, n, ids, est, **kw)
    loss.backward()
    return loss.detach(), p.grad, n.grad


def run_objective(rank, world, variant, est=None, first=0):
    """Steps first..STEPS-1; returns per step (ids, loss, grad_pos, grad_neg) and the estimator."""
    if est is None:
        est = dt.Estimator(N, init="constant", log_u0=0.25, shard=(rank, world))
    steps = []
    for t in range(first, STEPS):
        ids = share(global_batch(t), rank, world)
        steps.append((ids, *objective_step(t, ids, est, variant)))
    return steps, est


def reductions(rank, world, est):
    """dft_loss of this rank's share of global batch 0 with grad_reduction 'mean' and 'sum'."""
    ids = share(global_batch(0), rank, world)
    pos, neg, ref, _, _ = fixed_logps(0)
    return [float(dt.dft_loss(pos[ids], neg[ids], ids, est, ref_neg_logp=ref[ids], update=False, grad_reduction=g))
            for g in ("mean", "sum")]


def make_model():
    torch.manual_seed(7)  # the same initial parameters on every rank
    return torch.nn.Linear(D, V).double()


def features():
    g = torch.Generator().manual_seed(99)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    pos_tok = torch.randint(V, (N,), generator=g)
    neg_tok = torch.randint(V, (N, M), generator=g)
    ref = -torch.rand(N, M, generator=g, dtype=torch.float64) * 3 - 0.5
    return x, pos_tok, neg_tok, ref


def run_ddp(rank, world, wrap=None):
    """DDP_STEPS steps of SGD (momentum 0.9) on a linear policy: per step the global loss, the
    (averaged) gradient, and at the end the parameters and the estimator."""
    x, pos_tok, neg_tok, ref = features()
    model = make_model()
    net = wrap(model) if wrap else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    est = dt.Estimator(N, shard=(rank, world))
    losses, grads = [], []
    for t in range(DDP_STEPS):
        ids = share(global_batch(t), rank, world)
        lp = torch.log_softmax(net(x[ids]), dim=-1)
        loss = dt.dft_step(lp.gather(1, pos_tok[ids, None])[:, 0], lp.gather(1, neg_tok[ids]), ids, est,
                           ref_neg_logp=ref[ids])
        opt.zero_grad()
        loss.backward()
        total = loss.detach().clone()
        if world > 1:  # the mean of the ranks' losses is the global L ('mean' grad_reduction)
            torch.distributed.all_reduce(total)
            total /= world
        losses.append(total)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).clone())
        opt.step()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return losses, grads, params, est


def bad_inputs(rank, world):
    """(name, the estimator of this rank's call, the call) for each bad case: the bad rank's call
    differs from its good one in one thing; the other ranks make their good call."""
    est = dt.Estimator(N, shard=(rank, world))
    pos, neg, ref, _, _ = fixed_logps(0)
    ids = share(global_batch(0), rank, world)
    assert len(ids) > 1, "global batch 0 must give every rank at least two ids"
    good = dict(e=est, p=pos[ids], n=neg[ids], i=ids, r=ref[ids])
    no_rank, other_rank = ids.clone(), ids.clone()
    no_rank[-1] = N                               # in no rank's shard: outside [0, N)
    other_rank[-1] = (rank + 1) % world           # the next rank's id
    nan = good["p"].clone()
    nan[0] = float("nan")
    cases = []
    for name, bad_rank, change in [
            ("num_examples", 1, dict(e=dt.Estimator(N + 1, shard=(rank, world)))),
            ("world_size", 1, dict(e=dt.Estimator(N, shard=(rank, world + 1)))),
            ("id_of_no_rank", 0, dict(i=no_rank)),
            ("id_of_another_rank", 1, dict(i=other_rank)),
            ("nan_logp", 1, dict(p=nan))]:
        a = {**good, **(change if rank == bad_rank else {})}
        cases.append((name, a["e"], lambda a=a: dt.dft_step(a["p"], a["n"], a["i"], a["e"], ref_neg_logp=a["r"])))
    return est, cases


def main():
    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import datetime
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    result = {}
    est_of = {}
    for variant in VARIANTS:
        steps, est = run_objective(rank, world, variant)
        est_of[variant] = est
        result["objective", variant] = (steps, est.state_dict())
    # Read-only, on the trained DFT estimator: both reductions of global batch 0.
    result["reductions"] = reductions(rank, world, est_of["dft"])
    resumed = dt.Estimator(N, init="constant", log_u0=0.25, shard=(rank, world))
    resumed.load_state_dict(torch.load(os.path.join(out, "single_resume.pt")))
    steps, resumed = run_objective(rank, world, "dft", est=resumed, first=RESUME_AT)
    result["resume"] = (steps, resumed.state_dict())
    losses, grads, params, est = run_ddp(rank, world, wrap=DistributedDataParallel)
    result["ddp"] = (losses, grads, params, est.state_dict())

    good_est, cases = bad_inputs(rank, world)
    for name, e, call in cases:
        before = [e.state_dict(), good_est.state_dict()]
        start = time.monotonic()
        try:
            call()
            message = None
        except dt.Error as err:
            message = str(err)
        elapsed = time.monotonic() - start
        after = [e.state_dict(), good_est.state_dict()]
        unchanged = all(torch.equal(b["log_u"], a["log_u"]) and torch.equal(b["seen"], a["seen"])
                        for b, a in zip(before, after))
        result["bad", name] = (message, elapsed, unchanged)
    # The group still works after the refused calls: a good step goes through.
    ids = share(global_batch(0), rank, world)
    pos, neg, ref, _, _ = fixed_logps(0)
    result["after_bad"] = float(dt.dft_step(pos[ids], neg[ids], ids, good_est, ref_neg_logp=ref[ids]))
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
