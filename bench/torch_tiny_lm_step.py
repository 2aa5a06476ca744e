#!/usr/bin/env python3
"""TinyLm's GPT-2-like shape (bench/tiny_lm_step.cpp gpt2: 6 layers, d 384, 6 heads, d_ff 1536,
V 50257, untied output head with bias, pre-LN, tanh GELU) in plain PyTorch eager, on the same
tokens: 4 sequences of 64 (prompt 32, completion 32) drawn as tiny_lm_step draws them,
std::mt19937(3)() % V. One scored step = forward, log-softmax of the 32 completion rows of each
sequence (the head only on the rows that are scored, as dftune's fused head), gather, the
per-sequence sums, and the backward of Σ_s d_s·score_s with tiny_lm_step's d = (0.5, -0.25, 1, -1).
Prints one JSON line: median CPU and wall ms per step over --rounds (after one warm-up).
  torch_tiny_lm_step.py --threads 1 [--rounds 5]
"""
import argparse
import json
import math
import time

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_env  # noqa: E402

V, D, H, LAYERS, FF, MAX_LEN = 50257, 384, 6, 6, 1536, 64
S, PROMPT, COMPLETION = 4, 32, 32


def mt19937(seed):
    """std::mt19937(seed)'s outputs (init_genrand), so the tokens are tiny_lm_step's."""
    mt = [0] * 624
    mt[0] = seed
    for i in range(1, 624):
        mt[i] = (1812433253 * (mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
    i = 624
    while True:
        if i >= 624:
            for k in range(624):
                y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7FFFFFFF)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            i = 0
        y = mt[i]
        i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        yield y


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.w_1, self.w_2 = nn.Linear(D, FF), nn.Linear(FF, D)

    def forward(self, x):  # [S, L, D]
        s, L, _ = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, -1)
        q, k, v = (t.view(s, L, H, D // H).transpose(1, 2) for t in (q, k, v))
        a = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)
        a = a.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(s, L, D))
        return x + self.w_2(F.gelu(self.w_1(self.ln_2(x)), approximate="tanh"))


class TinyLm(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(MAX_LEN, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)

    def scores(self, tokens):  # [S, L] -> log π(completion | prompt) per sequence
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1]))
        for b in self.blocks:
            x = b(x)
        h = self.ln_f(x[:, PROMPT - 1:-1])  # the rows that predict the completion tokens
        lp = torch.log_softmax(self.head(h), -1)
        return lp.gather(-1, tokens[:, PROMPT:, None]).squeeze(-1).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = TinyLm()
    rng = mt19937(3)
    tokens = torch.tensor([[next(rng) % V for _ in range(PROMPT + COMPLETION)] for _ in range(S)])
    d = torch.tensor([0.5, -0.25, 1.0, -1.0])

    def step():
        model.zero_grad(set_to_none=False)
        model.scores(tokens).backward(d)

    step()  # warm-up
    cpu, wall = [], []
    for _ in range(a.rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(1e3 * (time.process_time() - c0))
        wall.append(1e3 * (time.perf_counter() - w0))
    cpu.sort()
    wall.sort()
    print(json.dumps({"impl": "torch eager " + torch.__version__, "threads": torch.get_num_threads(), "rounds": a.rounds,
                      "tokens": tokens[:, :4].tolist(), "cpu_ms": round(cpu[len(cpu) // 2], 1), "wall_ms": round(wall[len(wall) // 2], 1),
                      "env": torch_env.env()}))


if __name__ == "__main__":
    main()
