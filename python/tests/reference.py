"""Plain PyTorch implementations of what dftune_torch binds, written from the formulas (the
library's headers cite them) with torch's own ops and autograd: the oracles of the tests."""
import math

import torch


# ---- DFT / DFT2 (objective/dft.hpp) ---------------------------------------------------------------
class DftReference:
    """The estimator state and the loss of arXiv 2502.18679 as the library defines them:
    d_ij = s'_ij/tau - ref_ij (DFT) or s'_ij/tau (DFT2, s = logp/(len + eps));
    log u_i <- logaddexp(log(1 - gamma) + log u_i, log gamma + logmeanexp_j d_ij), or
    logmeanexp_j d_ij on an example's first visit (init 'first_visit'), or log_u0 ('fixed');
    L = mean_i [ -s_i + mean_j sg(exp(d_ij - log u_i)) s'_ij ]."""

    def __init__(self, num_examples, init="first_visit", log_u0=0.0):
        self.init, self.log_u0 = init, log_u0
        self.log_u = torch.zeros(num_examples, dtype=torch.float64)
        self.seen = torch.zeros(num_examples, dtype=torch.bool)

    def loss(self, pos, neg, ids, variant="dft", tau=1.0, gamma=0.85, ref=None, pos_len=None, neg_len=None,
             eps=1e-8, update=True):
        """The loss, differentiable wrt pos and neg (their own dtype promoted to float64)."""
        pos, neg = pos.double(), neg.double()
        if variant == "dft":
            s_pos, s_neg = pos, neg
            d = s_neg / tau - ref.double()
        else:
            s_pos = pos / (pos_len.double() + eps)
            s_neg = neg / (neg_len.double() + eps)
            d = s_neg / tau
        d = d.detach()
        m = neg.shape[1]
        lme = torch.logsumexp(d, dim=1) - math.log(m)
        log_u = torch.empty_like(lme)
        for k, i in enumerate(ids.tolist()):
            if self.init == "fixed":
                log_u[k] = self.log_u0
            elif self.seen[i] or self.init == "constant":
                prior = self.log_u[i] if self.seen[i] else torch.tensor(self.log_u0, dtype=torch.float64)
                log_u[k] = torch.logaddexp(math.log1p(-gamma) + prior if gamma < 1 else torch.tensor(-math.inf),
                                           math.log(gamma) + lme[k])
            else:
                log_u[k] = lme[k]
        w = torch.exp(d - log_u[:, None])
        loss = (-s_pos + (w * s_neg).mean(dim=1)).mean()
        if update and self.init != "fixed":
            self.log_u[ids] = log_u
            self.seen[ids] = True
        return loss


# ---- baselines (objective/*.hpp) -----------------------------------------------------------------
def sft(logp, reduction="sequence_mean", lengths=None):
    if reduction == "sequence_mean":
        return -logp.mean()
    if reduction == "token_mean":
        return -logp.sum() / lengths.sum()
    return -(logp / lengths).mean()


def dpo(pos, neg, ref_pos, ref_neg, beta=0.1):
    h = beta * ((pos - ref_pos)[:, None] - (neg - ref_neg))
    return -torch.nn.functional.logsigmoid(h).mean()


def ipo(pos, neg, ref_pos, ref_neg, beta=0.1):
    h = (pos - ref_pos)[:, None] - (neg - ref_neg)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def simpo(pos, neg, pos_len, neg_len, beta=2.0, gamma=0.5):
    h = beta * (pos / pos_len)[:, None] - beta * neg / neg_len - gamma
    return -torch.nn.functional.logsigmoid(h).mean()


def orpo(pos, neg, pos_len, neg_len, lambda_=0.1, sft_reduction="token_mean"):
    def log_odds(lp, n):
        p = lp / n
        return p - torch.log1p(-torch.exp(p))
    h = log_odds(pos, pos_len)[:, None] - log_odds(neg, neg_len)
    return sft(pos, sft_reduction, pos_len) + lambda_ * -torch.nn.functional.logsigmoid(h).mean()


def rloo(logp, reward):
    k = logp.shape[1]
    baseline = (reward.sum(dim=1, keepdim=True) - reward) / (k - 1)
    return -((reward - baseline).detach() * logp).mean()


# ---- token log-prob reduction (logprob/generic.hpp) ----------------------------------------------
def sequence_logp(logits, targets, weights, offsets):
    """seq[s] = sum_{n in s} w_n log_softmax(z_n)[y_n], in float64; masked rows never read."""
    z = logits.double()
    n = z.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    safe = torch.where(w != 0, targets.long(), torch.zeros_like(targets.long()))
    tok = torch.log_softmax(z, dim=-1).gather(1, safe[:, None]).squeeze(1)
    tok = torch.where(w != 0, w * tok, torch.zeros_like(tok))
    seq_of = torch.repeat_interleave(torch.arange(len(offsets) - 1), torch.diff(offsets.long()))
    return torch.zeros(len(offsets) - 1, dtype=torch.float64).index_add(0, seq_of, tok)


# ---- Dynamic Fine-Tuning (objective/dynamic_ft.hpp) ---------------------------------------------
def dynamic_ft(token_logp, mask, offsets, reduction="token_mean"):
    """sum_n c_n * (-sg(p_n) log p_n) over completion tokens (mask 1), p_n = exp(token_logp[n])."""
    lengths = torch.diff(offsets.long())
    seq_of = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    m = torch.ones_like(token_logp, dtype=torch.float64) if mask is None else mask.double()
    safe = torch.where(m != 0, token_logp.double(), torch.zeros_like(token_logp, dtype=torch.float64))
    per_token = -torch.exp(safe).detach() * safe * m
    S = len(lengths)
    if reduction == "token_mean":
        return per_token.sum() / m.sum()
    if reduction == "sequence_mean":
        return per_token.sum() / S
    tokens_of_seq = torch.zeros(S, dtype=torch.float64).index_add(0, seq_of, m)
    return (per_token / (S * tokens_of_seq[seq_of])).sum()
