#!/usr/bin/env python3
"""Parity of dftune's decoders with plain PyTorch implementations written from the architectures'
definitions (GPT-2: Radford et al. 2019 / transformers' GPT2Model; Llama: Touvron et al. 2023 with
RoPE in the rotate-half convention, Llama-3's rope scaling, grouped-query attention; Qwen2: Llama
with q/k/v biases). Runs hf_parity_dump (which writes a random-weight checkpoint with
dftune::hf::save_pretrained and what the C++ model computes after load_pretrained), loads the same
checkpoint here, and compares, against this implementation in float64 with autograd:
  C++ float:  logits and sequence log-probs <= 1e-5, gradients <= 1e-4
  C++ double: logits and sequence log-probs <= 1e-10, gradients <= 1e-9
  C++ bf16-stored (Decoder<float, bf16> on the same weights saved as BF16): logits <= 1e-5; sequence
    log-probs, from the hidden rows rounded to bf16 as the C++ head takes them, <= 1e-4 (a float
    hidden value and its float64 counterpart can fall on either side of a bf16 rounding boundary)
each as max|c++ - torch| / max|torch| over the tensor. Exit 77 (skipped) without torch.

  parity.py --dump PATH/hf_parity_dump --arch gpt2|llama|qwen2 --dir DIR
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

try:
    import torch
except ImportError:
    print("skipped: python3-torch is not installed (Debian: apt-get install python3-torch)")
    sys.exit(77)

DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2)}


def read_safetensors(path):
    """A safetensors reader written from the format's definition (no safetensors package needed)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        dtype, size = DTYPES[e["dtype"]]
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + b : base + end]), dtype=dtype) if end > b else torch.zeros(0, dtype=dtype)
        out[name] = t.reshape(e["shape"]).to(torch.float64)
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def attention(q, k, v):
    """q [H, L, dh], k/v [H, L, dh] (kv heads already repeated): causal softmax(q kᵀ/√dh) v."""
    L, dh = q.shape[1], q.shape[2]
    s = q @ k.transpose(1, 2) / math.sqrt(dh)
    mask = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    s = s.masked_fill(mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def rounded(x, bf16):
    # The bf16-stored C++ decoder hands its fused head the last hidden rows rounded to bf16.
    return x.to(torch.bfloat16).to(x.dtype) if bf16 else x


def gpt2_logits(p, cfg, tokens, bf16_hidden=False):
    L = tokens.shape[0]
    d, H = cfg["n_embd"], cfg["n_head"]
    dh, eps = d // H, cfg["layer_norm_epsilon"]
    x = p["wte.weight"][tokens] + p["wpe.weight"][:L]
    for i in range(cfg["n_layer"]):
        g = lambda n: p[f"h.{i}.{n}"]
        h = layer_norm(x, g("ln_1.weight"), g("ln_1.bias"), eps)
        qkv = h @ g("attn.c_attn.weight") + g("attn.c_attn.bias")  # Conv1D: x W, W [in, out]
        q, k, v = (t.reshape(L, H, dh).transpose(0, 1) for t in qkv.split(d, -1))
        a = attention(q, k, v).transpose(0, 1).reshape(L, d)
        x = x + a @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        h = layer_norm(x, g("ln_2.weight"), g("ln_2.bias"), eps)
        x = x + gelu_tanh(h @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias")) @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return rounded(x, bf16_hidden) @ p["wte.weight"].T


def llama_inv_freq(cfg, dh):
    inv = [1.0 / cfg["rope_theta"] ** (2 * i / dh) for i in range(dh // 2)]
    rs = cfg.get("rope_scaling")
    if rs:
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        inv = out
    return torch.tensor(inv, dtype=torch.float64)


def rope(x, cos, sin):
    """x [heads, L, dh]: (x1, x2) halves rotate as x·cos + rotate_half(x)·sin, rotate_half = (−x2, x1)."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def llama_logits(p, cfg, tokens, bf16_hidden=False):
    L = tokens.shape[0]
    H, Hk = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    ang = torch.arange(L, dtype=torch.float64)[:, None] * llama_inv_freq(cfg, dh)[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x = p["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        g = lambda n: p[f"model.layers.{i}.{n}"]
        lin = lambda h, n: h @ g(n + ".weight").T + (g(n + ".bias") if f"model.layers.{i}.{n}.bias" in p else 0)
        h = rms_norm(x, g("input_layernorm.weight"), eps)
        q = lin(h, "self_attn.q_proj").reshape(L, H, dh).transpose(0, 1)
        k = lin(h, "self_attn.k_proj").reshape(L, Hk, dh).transpose(0, 1)
        v = lin(h, "self_attn.v_proj").reshape(L, Hk, dh).transpose(0, 1)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k, v = k.repeat_interleave(H // Hk, 0), v.repeat_interleave(H // Hk, 0)  # head h reads kv head h // (H/Hk)
        a = attention(q, k, v).transpose(0, 1).reshape(L, H * dh)
        x = x + lin(a, "self_attn.o_proj")
        h = rms_norm(x, g("post_attention_layernorm.weight"), eps)
        x = x + lin(torch.nn.functional.silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else p["lm_head.weight"]
    return rounded(x, bf16_hidden) @ head.T


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def run_dump():
    """The command line --dump PATH --arch A --dir DIR of this script and generate_parity.py: runs
    the dump tool at PATH into DIR; returns the arguments, the checkpoint's config.json, its
    parameters and the forward of its architecture."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    subprocess.run([a.dump, "--arch", a.arch, "--dir", a.dir], check=True)
    with open(os.path.join(a.dir, "model", "config.json")) as f:
        cfg = json.load(f)
    params = read_safetensors(os.path.join(a.dir, "model", "model.safetensors"))
    return a, cfg, params, gpt2_logits if cfg["model_type"] == "gpt2" else llama_logits


def main():
    a, cfg, params, forward = run_dump()
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ok = True
    for kind, tol_logits, tol_grad in (("float", 1e-5, 1e-4), ("double", 1e-10, 1e-9)):
        out = read_safetensors(os.path.join(a.dir, f"out_{kind}.safetensors"))
        tokens = out["tokens"].long()
        offsets = out["offsets"].long().tolist()
        plen = out["prompt_len"].long().tolist()
        for p in params.values():
            p.grad = None
        logits, seq = [], []
        for s in range(len(offsets) - 1):
            t = tokens[offsets[s] : offsets[s + 1]]
            z = forward(params, cfg, t)
            logits.append(z)
            lp = torch.log_softmax(z, -1)
            r = torch.arange(plen[s] - 1, len(t) - 1)
            seq.append(lp[r, t[r + 1]].sum())
        logits, seq = torch.cat(logits), torch.stack(seq)
        (out["d_scores"] * seq).sum().backward()
        errs = {"logits": rel(out["logits"], logits.detach()), "seq_logp": rel(out["seq_logp"], seq.detach())}
        worst_grad, worst_name = 0.0, ""
        for name, p in params.items():
            e = rel(out["grad." + name], p.grad)
            if e > worst_grad:
                worst_grad, worst_name = e, name
        print(f"{a.arch} C++ {kind}: logits {errs['logits']:.2e}, seq_logp {errs['seq_logp']:.2e} (tolerance {tol_logits:g}); "
              f"worst gradient {worst_grad:.2e} at {worst_name} (tolerance {tol_grad:g}); seq_logp {out['seq_logp'].tolist()}")
        ok &= errs["logits"] <= tol_logits and errs["seq_logp"] <= tol_logits and worst_grad <= tol_grad
    bf = {k: v for k, v in read_safetensors(os.path.join(a.dir, "model_bf16", "model.safetensors")).items()}
    out = read_safetensors(os.path.join(a.dir, "out_bf16.safetensors"))
    tokens, offsets, plen = out["tokens"].long(), out["offsets"].long().tolist(), out["prompt_len"].long().tolist()
    with torch.no_grad():
        logits, seq, seq_float_hidden = [], [], []
        for s in range(len(offsets) - 1):
            t = tokens[offsets[s] : offsets[s + 1]]
            r = torch.arange(plen[s] - 1, len(t) - 1)
            logits.append(forward(bf, cfg, t))
            seq_float_hidden.append(torch.log_softmax(logits[-1], -1)[r, t[r + 1]].sum())
            seq.append(torch.log_softmax(forward(bf, cfg, t, bf16_hidden=True), -1)[r, t[r + 1]].sum())
        logits, seq, seq_float_hidden = torch.cat(logits), torch.stack(seq), torch.stack(seq_float_hidden)
    e_logits, e_seq, e_unrounded = rel(out["logits"], logits), rel(out["seq_logp"], seq), rel(out["seq_logp"], seq_float_hidden)
    print(f"{a.arch} C++ bf16-stored: logits {e_logits:.2e} (tolerance 1e-05), seq_logp {e_seq:.2e} (tolerance 0.0001 and "
          f"below the {e_unrounded:.2e} from the unrounded hidden rows); seq_logp {out['seq_logp'].tolist()}")
    ok &= e_logits <= 1e-5 and e_seq <= 1e-4 and e_seq < e_unrounded
    if not ok:
        print("FAILED: the C++ decoder and the PyTorch definition disagree beyond the tolerance")
        sys.exit(1)


if __name__ == "__main__":
    main()
