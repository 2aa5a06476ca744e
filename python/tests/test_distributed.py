"""dftune_torch under torch.distributed: two processes (Gloo, a FileStore on this machine) against
the single-process run (ddp_worker.py has the job and the shared definitions). Held to:
- the estimator's log u and the gradients wrt the log-probs: bit for bit (each rank computes its
  ids exactly as one process does, with the global 1/B; 'mean' doubles them and DDP halves them);
- the loss: 1e-15 relative (the sum of two ranks' partial sums against one sum);
- through a DDP-wrapped model (SGD, momentum): losses, averaged gradients, parameters and log u to
  1e-13 relative (the gradients sum in another order, so the parameters differ in the last bits);
- bad input on one rank, or ranks that disagree: the same dftune_torch.Error on both, within 10 s,
  the estimators unchanged, and the group usable afterwards.
Resharding a state_dict between world sizes needs no process group: tested here in one process.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import dftune_torch as dt
import ddp_worker as w

WORLD = 2
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed's Gloo backend is unavailable in this torch: "
                                       "dftune_torch's data-parallel tests skipped")


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Runs the single-process reference, then the 2-rank job; returns (single, [rank 0, rank 1])."""
    out = tmp_path_factory.mktemp("ddp")
    single = {v: w.run_objective(0, 1, v) for v in w.VARIANTS}
    est = dt.Estimator(w.N, init="constant", log_u0=0.25)
    for t in range(w.RESUME_AT):
        w.objective_step(t, w.global_batch(t), est, "dft")
    torch.save(est.state_dict(), out / "single_resume.pt")
    single["ddp"] = w.run_ddp(0, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(w.__file__)] + sys.path)}
    procs = [subprocess.Popen([sys.executable, w.__file__, str(r), str(WORLD), str(out / "store"), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r]}"
    return single, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def gathered(states, init="constant", log_u0=0.25):
    """The ranks' estimator state_dicts loaded into one unsharded estimator (P = 2 -> 1)."""
    est = dt.Estimator(w.N, init=init, log_u0=log_u0)
    est.load_state_dict(states)
    return est.state_dict()


@pytest.mark.parametrize("variant", list(w.VARIANTS))
def test_objective_equals_single_process_bit_for_bit(job, variant):
    single, ranks = job
    steps1, est1 = single[variant]
    for t, (ids, loss, gpos, gneg) in enumerate(steps1):
        total = 0.0
        for r, res in enumerate(ranks):
            rids, rloss, rgpos, rgneg = res["objective", variant][0][t]
            total += float(rloss) / WORLD
            at = torch.cat([(ids == i).nonzero()[0] for i in rids]) if len(rids) else torch.tensor([], dtype=int)
            assert torch.equal(rids, ids[ids % WORLD == r])
            # 'mean': P times this rank's terms, so that DDP's average is the single-process gradient.
            assert torch.equal(rgpos / WORLD, gpos[at]) and torch.equal(rgneg / WORLD, gneg[at]), (t, r)
        assert rel(total, loss) <= 1e-15, (t, total, float(loss))
    # Rank 1 owned no id of the last batch: a zero loss, zero gradients, and it took part.
    last = ranks[1]["objective", variant][0][-1]
    assert len(last[0]) == 0 and float(last[1]) == 0.0
    sd = gathered([res["objective", variant][1] for res in ranks])
    want = est1.state_dict()
    assert torch.equal(sd["log_u"], want["log_u"]) and torch.equal(sd["seen"], want["seen"])


def test_grad_reduction_mean_is_world_times_sum(job):
    single, ranks = job
    ids = w.global_batch(0)
    pos, neg, ref, _, _ = w.fixed_logps(0)
    want = float(dt.dft_loss(pos[ids], neg[ids], ids, single["dft"][1], ref_neg_logp=ref[ids], update=False))
    mean, total = [res["reductions"][0] for res in ranks], [res["reductions"][1] for res in ranks]
    assert all(a == WORLD * b for a, b in zip(mean, total))
    assert rel(sum(total), want) <= 1e-15 and rel(sum(mean) / WORLD, want) <= 1e-15


def test_resume_a_single_process_state_at_two_ranks(job):
    single, ranks = job
    sd = gathered([res["resume"][1] for res in ranks])
    want = single["dft"][1].state_dict()
    assert torch.equal(sd["log_u"], want["log_u"]) and torch.equal(sd["seen"], want["seen"])
    assert ranks[1]["resume"][1]["shard"] == (1, 2) and ranks[1]["resume"][1]["num_examples"] == w.N


def test_ddp_model_follows_the_single_process_run(job):
    single, ranks = job
    losses1, grads1, params1, est1 = single["ddp"]
    for res in ranks:
        losses, grads, params, sd = res["ddp"]
        for t in range(w.DDP_STEPS):
            assert rel(losses[t], losses1[t]) <= 1e-13, (t, float(losses[t]), float(losses1[t]))
            assert rel(grads[t], grads1[t]) <= 1e-13, t
        assert rel(params, params1) <= 1e-13
        assert torch.equal(ranks[0]["ddp"][2], params)  # the replicas hold the same bits
    sd = gathered([res["ddp"][3] for res in ranks], init="first_visit", log_u0=0.0)
    want = est1.state_dict()
    assert torch.equal(sd["seen"], want["seen"]) and rel(sd["log_u"], want["log_u"]) <= 1e-13


BAD = {
    "num_examples": r"^num_examples: got 13 on rank 1, expected 12 as on rank 0 \(every rank of a data-parallel step must agree\)$",
    "world_size": r"^rank 1 of 2: estimator.shard: got \(1, 3\), expected \(1, 2\), this process's rank and world size",
    "id_of_no_rank": r"^rank 0 of 2: ids\[\d+\]: got 12, expected an example id in \[0, num_examples = 12\)$",
    "id_of_another_rank": r"^rank 1 of 2: ids\[\d+\]: got 0, expected an id this estimator's shard owns, rank 1 of 2 .*belongs to rank 0\)$",
    "nan_logp": r"^rank 1 of 2: pos_logp\[0\]: got nan, expected a finite number$",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_on_one_rank_is_the_same_error_on_every_rank(job, name):
    import re
    _, ranks = job
    messages = [res["bad", name][0] for res in ranks]
    assert messages[0] is not None and messages[0] == messages[1], messages
    assert re.match(BAD[name], messages[0]), messages[0]
    for res in ranks:
        _, elapsed, unchanged = res["bad", name]
        assert elapsed < 10 and unchanged, (elapsed, unchanged)
    assert all(res["after_bad"] != 0 for res in ranks)


# ---- without a process group ----------------------------------------------------------------------
def trained(world, steps=3):
    """The single-process estimator after `steps` objective steps, and its state split into `world`
    shards (each loaded from the unsharded state_dict: 1 -> world)."""
    _, est = w.run_objective(0, 1, "dft")
    shards = []
    for r in range(world):
        e = dt.Estimator(w.N, init="constant", log_u0=0.25, shard=(r, world))
        e.load_state_dict(est.state_dict())
        shards.append(e)
    return est, shards


def test_sharded_estimator_holds_its_ids_and_reshards_at_any_world_size():
    est, three = trained(3)
    full = est.state_dict()
    for r, e in enumerate(three):
        sd = e.state_dict()
        assert len(e) == 4 and sd["shard"] == (r, 3) and sd["num_examples"] == w.N
        assert torch.equal(sd["log_u"], full["log_u"][r::3]) and torch.equal(sd["seen"], full["seen"][r::3])
        assert repr(e) == f"dftune_torch.Estimator(num_examples=12, init='constant', log_u0=0.25, shard=({r}, 3))"
    # 3 -> 2: rank r of 2 needs old ranks q = r (mod gcd(3, 2) = 1): all three, in any order.
    for r in range(2):
        e = dt.Estimator(w.N, init="constant", log_u0=0.25, shard=(r, 2))
        e.load_state_dict([s.state_dict() for s in reversed(three)])
        assert torch.equal(e.state_dict()["log_u"], full["log_u"][r::2])
    # 4 -> 2: rank r needs only q = r (mod 2); the others may be left out.
    _, four = trained(4)
    e = dt.Estimator(w.N, init="constant", log_u0=0.25, shard=(1, 2))
    e.load_state_dict([four[1].state_dict(), four[3].state_dict()])
    assert torch.equal(e.state_dict()["log_u"], full["log_u"][1::2])
    # Pickling keeps the shard.
    import pickle
    c = pickle.loads(pickle.dumps(three[2]))
    assert c.shard == (2, 3) and torch.equal(c.state_dict()["log_u"], three[2].state_dict()["log_u"])


def test_bad_state_dicts_of_another_world_size_change_nothing():
    _, four = trained(4)
    e = dt.Estimator(w.N, init="constant", log_u0=0.25, shard=(1, 2))
    before = e.state_dict()
    sds = [s.state_dict() for s in four]
    cases = [
        ([sds[1]], r"^state_dict: got the shards \[1\] of a world of 4, expected also shard \(3, 4\), which holds id 3"),
        ([sds[1], sds[1]], r"^state_dict\[1\]\.shard: got \(1, 4\) twice"),
        ([sds[1], {**sds[3], "shard": (5, 4)}], r"^state_dict\[1\]\.shard: got \(5, 4\), expected \(rank, world size\) with 0 <= rank"),
        ([sds[1], {**sds[3], "num_examples": 13}], r"^state_dict\[1\]\.num_examples: got 13, expected 12"),
        ([sds[1], {**sds[3], "log_u0": 0.5}], r"^state_dict\[1\]\.log_u0: got 0.5, expected 0.25"),
        ([sds[1], {**sds[3], "log_u": sds[3]["log_u"].float()}], r"^state_dict of shard \(3, 4\)\.log_u: got dtype"),
        (dt.Estimator(w.N, init="constant", log_u0=0.25, shard=(0, 3)).state_dict() | {"shard": (0, 3)},
         r"^state_dict: got the shards \[0\] of a world of 3, expected also shard \(1, 3\)"),
        ({**before, "num_examples": 11}, r"^num_examples: got 11, expected 12 \(this estimator's\)$"),
        ({k: v for k, v in before.items() if k != "shard"},
         r"^state_dict of shard \(0, 1\)\.log_u: got shape \[6\], expected a tensor of shape \[12\]"),
        ({**before, "shard": "r1"}, r"^shard: got 'r1', expected None or \(rank, world size\)"),
    ]
    for sd, message in cases:
        with pytest.raises(dt.Error, match=message):
            e.load_state_dict(sd)
        after = e.state_dict()
        assert torch.equal(after["log_u"], before["log_u"]) and torch.equal(after["seen"], before["seen"])


def test_sharded_estimator_errors_without_a_process_group():
    with pytest.raises(dt.Error, match=r"^shard: got rank 2, expected \(rank, world size\) with rank in \[0, 2\)$"):
        dt.Estimator(4, shard=(2, 2))
    with pytest.raises(dt.Error, match=r"^shard: got world size 0, expected"):
        dt.Estimator(4, shard=(0, 0))
    with pytest.raises(dt.Error, match=r"^shard: got \(0, 2, 1\), expected None or \(rank, world size\)"):
        dt.Estimator(4, shard=(0, 2, 1))
    e = dt.Estimator(4, shard=(1, 2))
    with pytest.raises(dt.Error, match=r"^id: got 2, expected an id this estimator's shard owns, rank 1 of 2"):
        e.log_u(2)
    pos, neg, ref, _, _ = w.fixed_logps(0)
    if not dist.is_initialized():
        with pytest.raises(dt.Error, match=r"^estimator: got an Estimator with shard \(1, 2\) .*init_process_group"):
            dt.dft_step(pos[:1], neg[:1], torch.tensor([1]), e, ref_neg_logp=ref[:1])
    assert not e.state_dict()["seen"].any()
