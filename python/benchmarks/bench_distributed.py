"""What dftune_torch's collective dft_step costs: the time of one call at P ranks (Gloo, this
machine) against the same share in one process, measured side by side in each rank.

    PYTHONPATH=build/python /usr/bin/python3 python/benchmarks/bench_distributed.py [P] [B] [m] [calls]

(default 2 ranks, global batch 32, m = 2, 300 calls). Prints, for rank 0: the mean time of a
collective dft_step on its share, of a single-process dft_step on the same share, and their
difference (the two all-gathers of the agreement).
"""
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dftune_torch as dt


def rank_main(rank, P, B, m, calls, store):
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=P)
    N = 4 * B
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(0, N, P)[: B // P] + rank                 # this rank's share of a global batch
    pos = -torch.rand(len(ids), generator=g, dtype=torch.float64) - 0.5
    neg = -torch.rand(len(ids), m, generator=g, dtype=torch.float64) - 0.5
    ref = -torch.rand(len(ids), m, generator=g, dtype=torch.float64) - 0.5
    sharded = dt.Estimator(N, shard=(rank, P))
    single = dt.Estimator(N)

    def timed(est):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
        return (time.perf_counter() - start) / calls

    times = {"collective": [], "single": []}
    for _ in range(3):  # interleaved, so that the machine's load hits both alike
        times["collective"].append(timed(sharded))
        times["single"].append(timed(single))
    if rank == 0:
        c, s = min(times["collective"]), min(times["single"])
        print(f"P = {P}, B = {B} (share {len(ids)}), m = {m}, {calls} calls, OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}: collective {c * 1e6:.0f} us, single process "
              f"{s * 1e6:.0f} us, the agreement {(c - s) * 1e6:.0f} us per step (best of 3)")
    dist.destroy_process_group()


if __name__ == "__main__":
    P, B, m, calls = (int(a) for a in (sys.argv[1:] + ["2", "32", "2", "300"][len(sys.argv) - 1:]))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(rank_main, args=(P, B, m, calls, os.path.join(tmp, "store")), nprocs=P)
