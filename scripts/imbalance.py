#!/usr/bin/env python3
"""The imbalance term of docs/distributed.md's scaling model.

With the default sampler (distributed/sampler.hpp, Balance::global_batches) a global batch of B ids
is drawn independently of P and rank r trains on the ids it owns (i mod P = r): its share is
hypergeometric around B/P, and the step waits for the busiest rank. rho(B, P) = E[max_r B_r] / (B/P)
multiplies the compute term: T(P) = rho * T_1/P + T_ar(P). The balanced sampler (Balance::per_rank)
has rho = 1. Run: python3 scripts/imbalance.py
"""
import random
from math import comb


def rho_simulated(N, B, P, trials=4000, seed=1):
    rng = random.Random(seed)
    ids = range(N)
    total = 0
    for _ in range(trials):
        count = [0] * P
        for i in rng.sample(ids, B):
            count[i % P] += 1
        total += max(count)
    return total / trials / (B / P)


def rho_exact_two(N, B):
    """P = 2, N even: the share of rank 0 is hypergeometric(N, N/2, B)."""
    h = N // 2
    return sum(comb(h, k) * comb(h, B - k) / comb(N, B) * max(k, B - k) for k in range(B + 1)) / (B / 2)


print("rho = E[busiest share] / (B/P), N = 100000 (simulated, 4000 batches):")
rho = {}
for B, P in [(32, 2), (128, 8), (128, 16), (128, 32), (128, 64), (1024, 64)]:
    rho[(B, P)] = rho_simulated(100000, B, P)
    print(f"  B = {B:5d}, P = {P:3d}: {rho[(B, P)]:.3f}")
print(f"the demo (N = 128, B = 32, P = 2), exact: {rho_exact_two(128, 32):.3f}")

alpha, beta = 10e-6, 50e9  # s, bytes/s
print("\n| model | P | T_1/P | rho | rho*T_1/P | T_ar | E global, no overlap | E balanced, no overlap | E global, overlapped | E balanced, overlapped |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, T1, S in [("1.5B (T_1 = 4.42 s, S = 3 GB)", 4.42, 3e9), ("7B (T_1 = 20.6 s, S = 14 GB)", 20.6, 14e9)]:
    for P in (8, 16, 32, 64):
        Tc = T1 / P
        Tar = 2 * (P - 1) * alpha + 2 * (P - 1) / P * S / beta
        r = rho[(128, P)]
        e = lambda k: Tc / (k * Tc + Tar)
        eo = lambda k: Tc / max(k * Tc, k * Tc / 3 + Tar)
        print(f"| {name if P == 8 else ''} | {P} | {Tc*1e3:.0f} ms | {r:.2f} | {r*Tc*1e3:.0f} ms | {Tar*1e3:.0f} ms | "
              f"{e(r)*100:.0f} % | {e(1)*100:.0f} % | {eo(r)*100:.0f} % | {eo(1)*100:.0f} % |")
