#!/usr/bin/env python3
"""Cached generation of dftune's decoders against a plain-PyTorch sampler: hf_generate_dump writes a
random-weight checkpoint and the completions Decoder<double>::generate (key/value cache) draws for
fixed prompts under six sampling settings; this script recomputes them without a cache, in float64,
with the architectures from parity.py (written from their definitions) and a sampler written from
docs/generation.md's rule, drawing the same uniforms (SplitMix64, stream p per prompt), and
requires every token to be equal. Exit 77 (skipped) without torch.

  generate_parity.py --dump PATH/hf_generate_dump --arch gpt2|llama --dir DIR
"""
import json
import math
import os
import sys

try:
    import torch
except ImportError:
    print("skipped: python3-torch is not installed (Debian: apt-get install python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity  # noqa: E402  (run_dump: the dump, its checkpoint and the architecture's forward)

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed, stream):
        self.state = (seed ^ ((stream * 0xD1342543DE82EF95 + 0x9E3779B97F4A7C15) & M64)) & M64

    def uniform(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        return (z >> 11) * 2.0**-53


def sample(z, temperature, top_k, top_p, u):
    """p_v ∝ exp((z_v − max z)/T); the top_k largest logits (ties: lower id first), then the
    shortest prefix of them holding top_p of their mass; inverse CDF at u in token-id order."""
    z = z.tolist()
    V = len(z)
    hi = max(z)
    if temperature == 0:
        return z.index(hi)
    p = [math.exp((x - hi) / temperature) for x in z]
    keep = top_k if 0 < top_k < V else V
    if keep < V or top_p < 1:
        order = sorted(range(V), key=lambda v: (-z[v], v))
        if top_p < 1:
            kept = sum(p[v] for v in order[:keep])
            cum = 0.0
            for i, v in enumerate(order[:keep]):
                cum += p[v]
                if cum >= top_p * kept:
                    keep = i + 1
                    break
        for v in order[keep:]:
            p[v] = 0.0
    s = sum(p)
    cum, last = 0.0, 0
    for v in range(V):
        if p[v] == 0:
            continue
        last = v
        cum += p[v] / s
        if u < cum:
            return v
    return last


def main():
    a, cfg, params, forward = parity.run_dump()
    with open(os.path.join(a.dir, "generated.json")) as f:
        gen = json.load(f)
    bad = 0
    with torch.no_grad():
        for run in gen["runs"]:
            eos = run["eos"] if run["eos"] >= 0 else None
            for p, (prompt, want) in enumerate(zip(gen["prompts"], run["completions"])):
                rng = SplitMix64(run["seed"], p)
                seq, got = list(prompt), []
                for _ in range(gen["max_new"]):
                    z = forward(params, cfg, torch.tensor(seq))[-1]
                    y = sample(z, run["temperature"], run["top_k"], run["top_p"], rng.uniform())
                    seq.append(y)
                    got.append(y)
                    if y == eos:
                        break
                if got != want:
                    bad += 1
                    print(f"MISMATCH {a.arch} T={run['temperature']} top_k={run['top_k']} top_p={run['top_p']} prompt {p}:\n"
                          f"  dftune  {want}\n  PyTorch {got}")
    n = len(gen["runs"]) * len(gen["prompts"])
    print(f"{a.arch}: {n - bad} of {n} completions token for token equal to the PyTorch sampler "
          f"({sum(len(c) for r in gen['runs'] for c in r['completions'])} tokens)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
