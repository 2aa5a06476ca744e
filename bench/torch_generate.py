#!/usr/bin/env python3
"""PyTorch baseline for bench_generate (the same flags; --batch and --new take lists): an eager sampler with its own key/value cache on the same
architecture at the same shape (pre-layer-norm GPT: learned positions, fused q|k|v, tanh GELU, final
layer norm; --arch gpt2, the default: GPT-2's head tied to the token embedding without a bias;
--arch tiny: the tiny LM's untied head with a bias; GPT-2 124M's shape by default), the same
sampling (temperature, top-k, top-p, inverse CDF at one uniform per row), the same batch, prompt
length, number of new tokens and threads. The cache is preallocated per layer, [B, H, len, dh], and
written in place (no torch.cat per step); only the last row's logits are computed per step.
One configuration per process; prints one JSON object with the environment (torch_env.py)."""
import argparse, json, math, os, sys, time
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_env  # noqa: E402


class Block(torch.nn.Module):
    def __init__(s, d, H, ff):
        super().__init__()
        s.H, s.dh = H, d // H
        s.ln1, s.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        s.qkv, s.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        s.fc1, s.fc2 = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)

    def forward(s, x, k_cache, v_cache, t0):
        B, T, d = x.shape
        q, k, v = s.qkv(s.ln1(x)).view(B, T, 3, s.H, s.dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, dh]
        k_cache[:, :, t0:t0 + T] = k
        v_cache[:, :, t0:t0 + T] = v
        K, V = k_cache[:, :, :t0 + T], v_cache[:, :, :t0 + T]
        att = (q @ K.transpose(-1, -2)) * (1.0 / math.sqrt(s.dh))
        if T > 1:  # prefill: causal mask over the new rows
            mask = torch.ones(T, t0 + T, dtype=torch.bool).triu(t0 + 1)
            att = att.masked_fill(mask, float("-inf"))
        o = (att.softmax(-1) @ V).transpose(1, 2).reshape(B, T, d)
        x = x + s.o(o)
        return x + s.fc2(F.gelu(s.fc1(s.ln2(x)), approximate="tanh"))


class Lm(torch.nn.Module):
    def __init__(s, V, max_len, d, H, L, ff, tied):
        super().__init__()
        s.tok, s.pos = torch.nn.Embedding(V, d), torch.nn.Embedding(max_len, d)
        s.blocks = torch.nn.ModuleList(Block(d, H, ff) for _ in range(L))
        s.lnf = torch.nn.LayerNorm(d)
        s.lm = None if tied else torch.nn.Linear(d, V)

    def head(s, h):  # GPT-2: logits = h Eᵀ
        return F.linear(h, s.tok.weight) if s.lm is None else s.lm(h)

    def extend(s, tokens, caches, t0):  # hidden state of the last new row, [B, d]
        x = s.tok(tokens) + s.pos(torch.arange(t0, t0 + tokens.shape[1]))
        for b, (kc, vc) in zip(s.blocks, caches):
            x = b(x, kc, vc, t0)
        return s.lnf(x[:, -1])


def sample(logits, temperature, top_k, top_p, u):
    if temperature == 0:
        return logits.argmax(-1)
    z = logits / temperature
    k = top_k if 0 < top_k < z.shape[-1] else z.shape[-1]
    vals, idx = (z.topk(k, dim=-1) if k < z.shape[-1] else z.sort(dim=-1, descending=True))
    p = vals.softmax(-1)
    if top_p < 1:
        c = p.cumsum(-1)
        p = p.masked_fill(c - p >= top_p * c[:, -1:], 0)
        p = p / p.sum(-1, keepdim=True)
    pick = torch.searchsorted(p.cumsum(-1), u.unsqueeze(1)).clamp_(max=k - 1)
    return idx.gather(1, pick).squeeze(1)


def generate(m, prompts, new, a, L, H, dh):
    B, P = prompts.shape
    caches = [(torch.empty(B, H, P + new, dh), torch.empty(B, H, P + new, dh)) for _ in range(L)]
    h = m.extend(prompts, caches, 0)
    out = []
    for step in range(new):
        y = sample(m.head(h), a.temperature, a.top_k, a.top_p, torch.rand(B))
        out.append(y)
        if step + 1 < new:
            h = m.extend(y.unsqueeze(1), caches, P + step)
    return torch.stack(out, 1)


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(layers=12, d=768, heads=12, ff=3072, V=50257, max_len=1024, prompt=16, threads=1, top_k=50, reps=1).items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    ints = lambda v: [int(x) for x in v.split(",")]
    ap.add_argument("--batch", type=ints, default=[1])
    ap.add_argument("--new", type=ints, default=[64])
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--arch", choices=["gpt2", "tiny"], default="gpt2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    m = Lm(a.V, a.max_len, a.d, a.heads, a.layers, a.ff, a.arch == "gpt2").eval()
    for batch in a.batch:
        for new in a.new:
            g = torch.Generator().manual_seed(7)
            prompts = torch.randint(0, a.V, (batch, a.prompt), generator=g)
            best = cpu = float("inf")
            with torch.inference_mode():
                generate(m, prompts, 2, a, a.layers, a.heads, a.d // a.heads)  # warm-up
                for _ in range(a.reps):
                    t, c = time.perf_counter(), time.process_time()  # process_time: every thread's CPU time
                    out = generate(m, prompts, new, a, a.layers, a.heads, a.d // a.heads)
                    cpu = min(cpu, time.process_time() - c)
                    best = min(best, time.perf_counter() - t)
            print(json.dumps({"impl": "torch", "arch": a.arch, "layers": a.layers, "d": a.d, "V": a.V, "batch": batch, "new": new, "prompt": a.prompt,
                              "threads": a.threads, "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
                              "seconds": best, "tokens_per_s": batch * new / best, "generated": int(out.numel()),
                              "cpu_seconds": cpu, "tokens_per_cpu_s": batch * new / cpu,
                              "load": " ".join(open("/proc/loadavg").read().split()[:3]), "env": torch_env.env()}), flush=True)

if __name__ == "__main__":
    main()
