#!/usr/bin/env python3
"""A small PyTorch GPT fine-tuned with DFT through dftune_torch, on the demo's task (examples/demo/):
three-digit addition, digits least-significant first, where 80 % of the pre-training answers drop
the carry, so the base model (also pi_ref) learns a systematic error. Then, from that base: m = 2
negatives per training prompt sampled once at temperature 0.7 (right answers redrawn up to 8
times), scored once by pi_ref, and fine-tuning with DFT (dftune_torch.dft_loss on log-probs from
dftune_torch.sequence_logp), SFT or DFT2, AdamW with a cosine schedule and 10 % warm-up. Prints
the learning curve: loss, mean log pi of the batch's positives and negatives, validation accuracy
(greedy exact match); then test accuracy.

    PYTHONPATH=build/python /usr/bin/python3 examples/torch/finetune.py              # DFT
    PYTHONPATH=build/python /usr/bin/python3 examples/torch/finetune.py --method sft
    ... --quick                                                                      # the ctest run
"""
import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

import dftune_torch as dt

PLUS, EQUALS, VOCAB, PROMPT, ANSWER = 10, 11, 12, 8, 4
SEQ = PROMPT + ANSWER


# ---- the task (the demo's examples/demo/addition.hpp, in torch) -----------------------------------
def split_of(a, b):
    """The demo's split by a hash of (a, b): 0 pre-train, 1 fine-tune, 2 validation, 3 test."""
    mask = (1 << 64) - 1
    z = (a * 1000 + b + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    bucket = (z ^ (z >> 31)) % 100
    return 0 if bucket < 60 else 1 if bucket < 80 else 2 if bucket < 90 else 3


def draw(split, n, gen):
    out, used = [], set()
    while len(out) < n:
        a, b = torch.randint(0, 1000, (2,), generator=gen).tolist()
        if split_of(a, b) == split and (a, b) not in used:
            used.add((a, b))
            out.append((a, b))
    return out


def digits(x):
    return [x % 10, x // 10 % 10, x // 100]


def prompt(a, b):
    return digits(a) + [PLUS] + digits(b) + [EQUALS]


def answer(a, b, drop_carry=False):
    s, carry = [], 0
    for da, db in zip(digits(a), digits(b)):
        t = da + db + carry
        s.append(t % 10)
        carry = 0 if drop_carry else t // 10
    return s + [carry]


# ---- a pre-LN GPT (the demo's size: d 32, 4 heads, 2 layers, d_ff 128) ----------------------------
class TinyGPT(torch.nn.Module):
    def __init__(self, d=32, heads=4, layers=2, d_ff=128):
        super().__init__()
        self.tok = torch.nn.Embedding(VOCAB, d)
        self.pos = torch.nn.Embedding(SEQ, d)
        block = torch.nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.0, activation="gelu", batch_first=True,
                                                 norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, VOCAB)

    def forward(self, x):  # [n, T] tokens -> [n, T, V] next-token logits
        T = x.shape[1]
        causal = torch.triu(torch.full((T, T), -math.inf), diagonal=1)
        return self.head(self.norm(self.blocks(self.tok(x) + self.pos(torch.arange(T)), mask=causal)))


def sequence_logp(model, seqs):
    """log pi(answer | prompt) of each sequence [n, 12] through dftune_torch.sequence_logp: the
    prompt's rows are masked (target -100, weight 0, as torch's ignore_index), never read."""
    n = seqs.shape[0]
    logits = model(seqs[:, :-1])                       # [n, 11, V]: row t predicts token t + 1
    targets = seqs[:, 1:].clone()
    targets[:, : PROMPT - 1] = -100
    weights = (targets != -100).float()
    offsets = torch.arange(n + 1) * (SEQ - 1)
    return dt.sequence_logp(logits.reshape(-1, VOCAB), targets.reshape(-1), weights.reshape(-1), offsets)


@torch.no_grad()
def generate(model, prompts, temperature=0.0, gen=None):
    """Answers [n, 4] to prompts [n, 8]: greedy (temperature 0) or sampled."""
    x = prompts
    for _ in range(ANSWER):
        logits = model(x)[:, -1]
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)
        x = torch.cat([x, nxt[:, None]], 1)
    return x[:, PROMPT:]


def accuracy(model, problems):
    prompts = torch.tensor([prompt(a, b) for a, b in problems])
    right = torch.tensor([answer(a, b) for a, b in problems])
    return (generate(model, prompts) == right).all(1).float().mean().item()


def cosine(step, total, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["dft", "dft2", "sft"], default="dft")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: 3e-4 DFT/DFT2, 1e-3 SFT)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--negatives", type=int, default=2)
    p.add_argument("--estimator", choices=["first_visit", "constant", "fixed"], default="first_visit")
    p.add_argument("--pretrain-steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke run for ctest (a few seconds)")
    args = p.parse_args()
    if args.quick:
        args.pretrain_steps, args.steps, args.batch = 40, 6, 8
    lr = args.lr if args.lr is not None else (1e-3 if args.method == "sft" else 3e-4)
    n_train, n_eval = (1024, 400) if not args.quick else (64, 32)
    t0 = time.time()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    # Pre-training: the base model, also pi_ref. 80 % of the corpus drops every carry.
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pretrain = draw(0, 20000 if not args.quick else 512, gen)
    for step in range(args.pretrain_steps):
        idx = torch.randint(0, len(pretrain), (64,), generator=gen).tolist()
        drop = (torch.rand(64, generator=gen) < 0.8).tolist()
        seqs = torch.tensor([prompt(*pretrain[i]) + answer(*pretrain[i], d) for i, d in zip(idx, drop)])
        loss = -sequence_logp(model, seqs).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    train, val, test = draw(1, n_train, gen), draw(2, n_eval, gen), draw(3, n_eval, gen)
    print(f"base model: {args.pretrain_steps} pre-training steps, val accuracy {accuracy(model, val):.3f}, "
          f"test accuracy {accuracy(model, test):.3f} ({time.time() - t0:.0f} s)")

    # Negatives: m samples per prompt from the base at temperature 0.7, right answers redrawn up to
    # 8 times; log pi_ref computed once.
    prompts = torch.tensor([prompt(a, b) for a, b in train])
    right = torch.tensor([answer(a, b) for a, b in train])
    pos_seqs = torch.cat([prompts, right], 1)                               # [n_train, 12]
    m = args.negatives
    neg = generate(model, prompts.repeat_interleave(m, 0), 0.7, gen)       # [n_train·m, 4]
    for _ in range(8):
        same = (neg == right.repeat_interleave(m, 0)).all(1)
        if not same.any():
            break
        neg[same] = generate(model, prompts.repeat_interleave(m, 0)[same], 0.7, gen)
    neg_seqs = torch.cat([prompts.repeat_interleave(m, 0), neg], 1)         # [n_train·m, 12], row i·m + j
    with torch.no_grad():
        ref_neg = sequence_logp(model, neg_seqs).view(n_train, m)
    print(f"negatives: m = {m}, {(neg == right.repeat_interleave(m, 0)).all(1).float().mean():.0%} right answers; "
          f"mean log pi_ref(neg) {ref_neg.mean():.3f}")

    # Fine-tuning with dftune_torch.
    est = dt.Estimator(n_train, init=args.estimator)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, args.steps, max(1, args.steps // 10)))
    order = torch.randperm(n_train, generator=gen)
    every = max(1, args.steps // 6)
    print(f"{args.method.upper()} lr {lr:g}, {args.steps} steps x {args.batch} prompts, AdamW + cosine (10 % warm-up)")
    print(f"{'step':>5} {'loss':>9} {'log pi(pos)':>12} {'log pi(neg)':>12} {'val acc':>8}")
    def batch_loss(step, update=True):
        start = step * args.batch % n_train
        ids = order[start:start + args.batch]
        seqs = torch.cat([pos_seqs[ids], neg_seqs.view(n_train, m, SEQ)[ids].reshape(-1, SEQ)])
        lp = sequence_logp(model, seqs)
        pos_lp, neg_lp = lp[: len(ids)], lp[len(ids):].view(len(ids), m)
        if args.method == "sft":
            loss = dt.sft_loss(pos_lp)
        elif args.method == "dft":
            loss = dt.dft_loss(pos_lp, neg_lp, ids, est, tau=1.0, gamma=0.85, ref_neg_logp=ref_neg[ids], update=update)
        else:
            loss = dt.dft_loss(pos_lp, neg_lp, ids, est, variant="dft2", tau=0.3, gamma=0.9, update=update,
                               pos_len=torch.full((len(ids),), ANSWER), neg_len=torch.full((len(ids), m), ANSWER))
        return loss, pos_lp.mean().item(), neg_lp.mean().item()

    def report(step, loss, pos, neg):
        print(f"{step:5d} {loss:9.4f} {pos:12.3f} {neg:12.3f} {accuracy(model, val):8.3f}", flush=True)

    for step in range(args.steps):
        loss, pos, neg = batch_loss(step)  # the estimator's one update for this batch
        if step % every == 0:
            report(step, loss.item(), pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        loss, pos, neg = batch_loss(args.steps, update=False)  # evaluation: the estimator stays
    report(args.steps, loss.item(), pos, neg)
    print(f"test accuracy {accuracy(model, test):.3f} (base model's above; {time.time() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
