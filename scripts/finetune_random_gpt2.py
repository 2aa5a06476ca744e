# A random-weight GPT-2 124M-shaped checkpoint (HF tensor names and shapes, F32) + a byte-level
# tokenizer.json (256 byte tokens + <|endoftext|> = 256) in DIR, and DIR/../train.jsonl (10 lines of
# 32 + 31 bytes): what docs/finetune.md times finetune on. Needs numpy.
#   /usr/bin/python3 scripts/finetune_random_gpt2.py /tmp/h22ft/gpt2
import json, struct, sys, os
import numpy as np
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
V, D, L, T = 50257, 768, 12, 1024
rng = np.random.default_rng(0)
t = {}
def w(name, *shape, std=0.02, const=None):
    t[name] = (np.full(shape, const, np.float32) if const is not None else (rng.standard_normal(shape, dtype=np.float32) * std))
w("wte.weight", V, D); w("wpe.weight", T, D, std=0.01)
for i in range(L):
    p = f"h.{i}."
    w(p+"ln_1.weight", D, const=1.0); w(p+"ln_1.bias", D, const=0.0)
    w(p+"attn.c_attn.weight", D, 3*D); w(p+"attn.c_attn.bias", 3*D, const=0.0)
    w(p+"attn.c_proj.weight", D, D); w(p+"attn.c_proj.bias", D, const=0.0)
    w(p+"ln_2.weight", D, const=1.0); w(p+"ln_2.bias", D, const=0.0)
    w(p+"mlp.c_fc.weight", D, 4*D); w(p+"mlp.c_fc.bias", 4*D, const=0.0)
    w(p+"mlp.c_proj.weight", 4*D, D); w(p+"mlp.c_proj.bias", D, const=0.0)
w("ln_f.weight", D, const=1.0); w("ln_f.bias", D, const=0.0)
hdr, off = {}, 0
for k, a in t.items():
    hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}; off += a.nbytes
h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open(f"{d}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for a in t.values(): f.write(a.tobytes())
json.dump({"model_type": "gpt2", "vocab_size": V, "n_embd": D, "n_layer": L, "n_head": 12, "n_positions": T,
           "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": True}, open(f"{d}/config.json", "w"))
bs = list(range(ord("!"), ord("~")+1)) + list(range(ord("¡"), ord("¬")+1)) + list(range(ord("®"), ord("ÿ")+1))
cs = bs[:]; n = 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + n); n += 1
vocab = {chr(c): b for b, c in zip(bs, cs)}
json.dump({"added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": True}], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}, "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "vocab": vocab, "merges": []}}, open(f"{d}/tokenizer.json", "w"))
with open(f"{os.path.dirname(d.rstrip('/'))}/train.jsonl", "w") as f:
    for i in range(10):  # 32-byte prompts and 31-byte answers + EOS: 64 tokens per positive
        f.write(json.dumps({"prompt": f"Question {i:02d}: what is {i} + {i}?"[:32].ljust(32), "answer": f"The answer is {2*i:02d}, said the model"[:31].ljust(31)}) + "\n")
