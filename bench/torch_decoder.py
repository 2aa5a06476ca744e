#!/usr/bin/env python3
"""GPT-2 124M's shape in plain PyTorch eager (torch.nn modules, the textbook model: logits [tokens, V]
materialised, log_softmax, gather), forward and forward + backward on the same tokens as
bench/decoder_step.cpp, one JSON line. Threads: torch.set_num_threads(--threads).
  torch_decoder.py --threads N [--S 4] [--L 64] [--reps 3]
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, H):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.c_proj2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):  # x [S, L, d]
        S, L, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, -1)
        q, k, v = (t.view(S, L, self.H, d // self.H).transpose(1, 2) for t in (q, k, v))
        a = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.H)
        a = a.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + self.c_proj((a @ v).transpose(1, 2).reshape(S, L, d))
        return x + self.c_proj2(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, V=50257, P=1024, d=768, layers=12, H=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(P, d)
        self.h = nn.ModuleList(Block(d, H) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for b in self.h:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied head


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--S", type=int, default=4)
    ap.add_argument("--L", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Gpt2()
    V = 50257
    tokens = torch.tensor([[((s * 7919 + t * 104729 + 13) % V) for t in range(a.L)] for s in range(a.S)])
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def seq_logp():
        lp = torch.log_softmax(model(tokens)[:, :-1].float(), -1)
        return lp.gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(-1)  # prompt = the first token

    def fwd():
        with torch.no_grad():
            seq_logp()

    def fwd_bwd():
        model.zero_grad(set_to_none=False)
        seq_logp().sum().backward()

    def time_it(f):
        f()
        best = 1e300
        for _ in range(a.reps):
            t0 = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t0)
        return best

    t_f = time_it(fwd)
    t_fb = time_it(fwd_bwd)
    print(json.dumps({"impl": "torch eager " + torch.__version__, "threads": torch.get_num_threads(), "S": a.S, "L": a.L,
                      "forward_s": round(t_f, 4), "fwd_bwd_s": round(t_fb, 4), "fwd_bwd_tokens_per_s": round(a.S * a.L / t_fb, 1),
                      "peak_rss_mb_model": round(rss_model), "peak_rss_mb_fwd_bwd": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
