"""The baselines (SFT, DPO, IPO, SimPO, ORPO, RLOO) of dftune_torch against their plain-torch
versions in reference.py (values, autograd gradients), finite differences (gradcheck), bad inputs
with the library's messages, dtypes and non-contiguous tensors."""
import math

import pytest
import torch

import dftune_torch as dt
import reference as ref

B, M = 3, 4


def data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    d = dict(
        pos=(-torch.rand(B, generator=g, dtype=torch.float64) * 5 - 0.2).to(dtype),
        neg=(-torch.rand(B, M, generator=g, dtype=torch.float64) * 7 - 0.2).to(dtype),
        ref_pos=-torch.rand(B, generator=g, dtype=torch.float64) * 5 - 0.2,
        ref_neg=-torch.rand(B, M, generator=g, dtype=torch.float64) * 7 - 0.2,
        pos_len=torch.randint(1, 7, (B,), generator=g),
        neg_len=torch.randint(1, 7, (B, M), generator=g),
        logp=(-torch.rand(B, M, generator=g, dtype=torch.float64) * 6).to(dtype),
        reward=torch.randint(0, 2, (B, M), generator=g).double() + torch.rand(B, M, generator=g, dtype=torch.float64),
    )
    return d


# (name, binding call, reference call, differentiable inputs)
CASES = [
    ("sft sequence_mean", lambda d, x: dt.sft_loss(x[0]), lambda d, x: ref.sft(x[0]), ["pos"]),
    ("sft token_mean", lambda d, x: dt.sft_loss(x[0], reduction="token_mean", len=d["pos_len"]),
     lambda d, x: ref.sft(x[0], "token_mean", d["pos_len"].double()), ["pos"]),
    ("sft length_normalized", lambda d, x: dt.sft_loss(x[0], reduction="length_normalized", len=d["pos_len"]),
     lambda d, x: ref.sft(x[0], "length_normalized", d["pos_len"].double()), ["pos"]),
    ("dpo", lambda d, x: dt.dpo_loss(x[0], x[1], d["ref_pos"], d["ref_neg"], beta=0.3),
     lambda d, x: ref.dpo(x[0], x[1], d["ref_pos"], d["ref_neg"], 0.3), ["pos", "neg"]),
    ("ipo", lambda d, x: dt.ipo_loss(x[0], x[1], d["ref_pos"], d["ref_neg"], beta=0.2),
     lambda d, x: ref.ipo(x[0], x[1], d["ref_pos"], d["ref_neg"], 0.2), ["pos", "neg"]),
    ("simpo", lambda d, x: dt.simpo_loss(x[0], x[1], d["pos_len"], d["neg_len"], beta=2.5, gamma=0.4),
     lambda d, x: ref.simpo(x[0], x[1], d["pos_len"].double(), d["neg_len"].double(), 2.5, 0.4), ["pos", "neg"]),
    ("orpo token_mean", lambda d, x: dt.orpo_loss(x[0], x[1], d["pos_len"], d["neg_len"], lambda_=0.7),
     lambda d, x: ref.orpo(x[0], x[1], d["pos_len"].double(), d["neg_len"].double(), 0.7), ["pos", "neg"]),
    ("orpo sequence_mean",
     lambda d, x: dt.orpo_loss(x[0], x[1], d["pos_len"], d["neg_len"], lambda_=0.2, sft_reduction="sequence_mean"),
     lambda d, x: ref.orpo(x[0], x[1], d["pos_len"].double(), d["neg_len"].double(), 0.2, "sequence_mean"),
     ["pos", "neg"]),
    ("rloo", lambda d, x: dt.rloo_loss(x[0], d["reward"]), lambda d, x: ref.rloo(x[0], d["reward"]), ["logp"]),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradient_against_torch(case, seed):
    _, call, want_call, names = case
    d = data(seed)
    x = [d[n].clone().requires_grad_() for n in names]
    y = [d[n].clone().requires_grad_() for n in names]
    got, want = call(d, x), want_call(d, y)
    assert got.shape == () and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)
    gx = torch.autograd.grad(got, x)
    gy = torch.autograd.grad(want, y)
    for a, b in zip(gx, gy):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_finite_differences(case):
    _, call, _, names = case
    d = data(4)
    x = tuple(d[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(lambda *x: call(d, list(x)), x, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_closed_forms():
    # SFT: -mean; DPO at zero margin: log 2; IPO at zero margin: (1/(2 beta))^2; RLOO with equal
    # rewards: no gradient.
    lp = torch.tensor([-1.0, -3.0], dtype=torch.float64, requires_grad=True)
    assert dt.sft_loss(lp).item() == 2.0
    z = torch.zeros(2, 1, dtype=torch.float64)
    assert dt.dpo_loss(torch.zeros(2, dtype=torch.float64), z, torch.zeros(2), z).item() == pytest.approx(math.log(2), abs=1e-15)
    assert dt.ipo_loss(torch.zeros(2, dtype=torch.float64), z, torch.zeros(2), z, beta=0.25).item() == 4.0
    l2 = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    dt.rloo_loss(l2, torch.tensor([[1.0, 1.0]])).backward()
    assert l2.grad.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2.0**-23), (torch.bfloat16, 2.0**-8)])
def test_low_precision_returns_in_input_dtype(case, dtype, rtol):
    _, call, want_call, names = case
    d = data(1, dtype)
    x = [d[n].clone().requires_grad_() for n in names]
    y = [d[n].clone().double().requires_grad_() for n in names]
    got, want = call(d, x), want_call(d, y)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=torch.finfo(dtype).tiny)
    for a, b in zip(torch.autograd.grad(got, x), torch.autograd.grad(want, y)):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=torch.finfo(dtype).tiny)


def test_non_contiguous_inputs():
    d = data(2)
    neg = d["neg"].t().contiguous().t().requires_grad_()
    ref_neg = d["ref_neg"].t().contiguous().t()
    pos = torch.stack([d["pos"], d["pos"]], 1)[:, 1].requires_grad_()
    assert not neg.is_contiguous() and not pos.is_contiguous()
    got = dt.dpo_loss(pos, neg, d["ref_pos"], ref_neg)
    got.backward()
    p, n = d["pos"].clone().requires_grad_(), d["neg"].clone().requires_grad_()
    want = dt.dpo_loss(p, n, d["ref_pos"], d["ref_neg"])
    want.backward()
    assert got.item() == want.item() and torch.equal(neg.grad, n.grad) and torch.equal(pos.grad, p.grad)
    # RLOO with a strided logp and integer/bool rewards.
    logp = d["logp"].t().contiguous().t().requires_grad_()
    reward = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 0]])
    got = dt.rloo_loss(logp, reward.bool())
    torch.testing.assert_close(got, ref.rloo(d["logp"], reward.double()), rtol=1e-13, atol=1e-15)


def bad_calls():
    d = data(0)
    nan = d["pos"].clone()
    nan[2] = math.nan
    pos_zero = d["pos"].clone()
    pos_zero[1] = 0.0
    zero_len = d["neg_len"].clone()
    zero_len[1, 2] = 0
    return [
        (lambda: dt.sft_loss(nan), r"^logp\[2\]: got nan, expected a finite number$"),
        (lambda: dt.sft_loss(d["pos"][:0]), r"^logp: got size 0, expected at least one sequence$"),
        (lambda: dt.sft_loss(d["pos"], reduction="token_mean"), r"^len: .*SFT with a token-mean or length-normalised reduction"),
        (lambda: dt.sft_loss(d["pos"], reduction="mean"), r"^reduction: got 'mean', expected 'sequence_mean', 'token_mean' or 'length_normalized'$"),
        (lambda: dt.sft_loss(d["neg"]), r"^logp: got shape \[3, 4\], expected a 1-D tensor \[B\]$"),
        (lambda: dt.ipo_loss(d["pos"], d["neg"], d["ref_pos"].clone().requires_grad_(), d["ref_neg"]),
         r"^ref_pos_logp: got a tensor that requires grad, expected a constant"),
        (lambda: dt.dpo_loss(d["pos"], d["neg"], d["ref_pos"], d["ref_neg"].clone().requires_grad_()),
         r"^ref_neg_logp: got a tensor that requires grad, expected a constant"),
        (lambda: dt.dpo_loss(d["pos"], d["neg"], None, d["ref_neg"]), r"^ref_pos_logp: got size 0, expected size B = 3 \(DPO needs log π_ref\)$"),
        (lambda: dt.dpo_loss(d["pos"], d["neg"], d["ref_pos"], d["ref_neg"].t()), r"^ref_neg_logp: got shape \[4, 3\], expected shape \[3, 4\] \(the shape of neg_logp\)$"),
        (lambda: dt.dpo_loss(d["pos"], d["neg"], d["ref_pos"], d["ref_neg"], beta=-1.0), r"^beta: got -1, expected"),
        (lambda: dt.dpo_loss(d["pos"], d["neg"].float(), d["ref_pos"], d["ref_neg"]), r"^neg_logp: got dtype torch.float32, expected torch.float64 \(the dtype of pos_logp\)$"),
        (lambda: dt.ipo_loss(d["pos"], d["neg"][:2], d["ref_pos"], d["ref_neg"][:2]), r"^neg_logp: got size 8, expected size 12"),
        (lambda: dt.simpo_loss(d["pos"], d["neg"], d["pos_len"], zero_len), r"^neg_len\[6\]: got 0, expected"),
        (lambda: dt.simpo_loss(d["pos"], d["neg"], d["pos_len"].float(), d["neg_len"]), r"^pos_len: got dtype torch.float32, expected an integer tensor"),
        (lambda: dt.orpo_loss(pos_zero, d["neg"], d["pos_len"], d["neg_len"]), r"^pos_logp\[1\]: got 0, expected a log-prob < 0"),
        (lambda: dt.orpo_loss(d["pos"], d["neg"], d["pos_len"], d["neg_len"], lambda_=-0.1), r"^lambda: got -0.10*1?, expected"),
        (lambda: dt.orpo_loss(d["pos"], d["neg"], None, d["neg_len"]), r"^pos_len: .*ORPO needs completion lengths"),
        (lambda: dt.rloo_loss(d["logp"][:, :1], d["reward"][:, :1]), r"^group_size: got 1, expected at least 2 \(RLOO needs another sample of the same prompt\)$"),
        (lambda: dt.rloo_loss(d["logp"], d["reward"].t()), r"^reward: got shape \[4, 3\], expected shape \[3, 4\] \(the shape of logp\)$"),
        (lambda: dt.rloo_loss(d["logp"].reshape(-1), d["reward"].reshape(-1)), r"^logp: got shape \[12\], expected a 2-D tensor \[B, k\]"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_raises_the_library_message(case):
    call, message = bad_calls()[case]
    with pytest.raises(dt.Error, match=message):
        call()


def test_no_grad_and_second_derivative():
    d = data(0)
    with torch.no_grad():
        assert not dt.simpo_loss(d["pos"].requires_grad_(), d["neg"], d["pos_len"], d["neg_len"]).requires_grad
    pos = d["pos"].detach().requires_grad_()
    (g,) = torch.autograd.grad(dt.dpo_loss(pos, d["neg"], d["ref_pos"], d["ref_neg"]), pos, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        torch.autograd.grad(g.sum(), pos)


def test_sft_lengths_keyword_is_a_deprecated_spelling_of_len():
    d = data(7)
    want = dt.sft_loss(d["pos"], reduction="token_mean", len=d["pos_len"])
    with pytest.warns(FutureWarning, match="len="):
        got = dt.sft_loss(d["pos"], reduction="token_mean", lengths=d["pos_len"])
    assert got.item() == want.item()
    with pytest.raises(dt.Error, match="^lengths: "), pytest.warns(FutureWarning):
        dt.sft_loss(d["pos"], reduction="token_mean", len=d["pos_len"], lengths=d["pos_len"])
