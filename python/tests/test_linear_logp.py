"""dftune_torch.linear_sequence_logp (the fused linear + log-prob head) against torch: the
reduction of reference.py on the logits hidden @ proj.T + bias, with autograd to hidden, proj and
bias; finite differences; bfloat16 and float32; a torch.nn.Linear head; bad inputs."""
import math

import pytest
import torch

import dftune_torch as dt
import reference as ref


def problem(seed, n=13, d=6, vocab=29, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    proj = (torch.randn(vocab, d, generator=g, dtype=torch.float64) / math.sqrt(d) * 3).to(dtype)
    b = torch.randn(vocab, generator=g, dtype=torch.float64).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    weights[torch.rand(n, generator=g) < 0.3] = 0
    targets[weights == 0] = -100
    weights = weights.to(torch.float64 if dtype == torch.float64 else torch.float32)
    offsets = torch.tensor([0, 4, 4, n])
    return hidden, proj, b, targets, weights, offsets


def reference(hidden, proj, bias, targets, weights, offsets):
    z = hidden.double() @ proj.double().t()
    if bias is not None:
        z = z + bias.double()
    return ref.sequence_logp(z, targets, weights, offsets)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 2e-5), (torch.bfloat16, 2e-5)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("vocab", [29, 3001])
def test_values_and_gradients_against_torch(dtype, rtol, with_bias, vocab):
    hidden, proj, bias, targets, weights, offsets = problem(vocab, vocab=vocab, dtype=dtype, bias=with_bias)
    d_seq = torch.tensor([0.6, -1.1, 1.7], dtype=torch.float64)
    xs = [t.clone().requires_grad_() for t in (hidden, proj) + ((bias,) if with_bias else ())]
    ys = [t.double().clone().requires_grad_() for t in (hidden, proj) + ((bias,) if with_bias else ())]
    got = dt.linear_sequence_logp(xs[0], xs[1], xs[2] if with_bias else None, targets, weights, offsets)
    want = reference(ys[0], ys[1], ys[2] if with_bias else None, targets, weights, offsets)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.shape == (3,)
    scale = want.abs().max().item() + 1
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * scale)
    assert got[1].item() == 0.0  # the empty sequence
    (got * d_seq.to(got.dtype)).sum().backward()
    (want * d_seq).sum().backward()
    for x, y in zip(xs, ys):
        assert x.grad.dtype == dtype and x.grad.shape == x.shape
        # bf16 gradients are rounded to bf16 once (2^-8 relative) after a float computation.
        r = 2.0**-8 if dtype == torch.bfloat16 else rtol
        torch.testing.assert_close(x.grad.double(), y.grad, rtol=r, atol=r * (y.grad.abs().max().item() + 1e-3))
    assert (xs[0].grad[weights == 0] == 0).all()  # rows without a gradient


def test_gradcheck_float64():
    hidden, proj, bias, targets, weights, offsets = problem(1, n=5, d=3, vocab=7)
    args = tuple(t.clone().requires_grad_() for t in (hidden, proj, bias))
    assert torch.autograd.gradcheck(lambda h, w, b: dt.linear_sequence_logp(h, w, b, targets, weights, offsets), args)


def test_matches_sequence_logp_of_an_nn_linear_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50).double()
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    offsets = torch.tensor([0, 3, 10])
    fused = dt.linear_sequence_logp(hidden, head.weight, head.bias, targets, None, offsets)
    fused.sum().backward()
    g_fused = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = None
    head.zero_grad()
    plain = dt.sequence_logp(head(hidden), targets, None, offsets)
    plain.sum().backward()
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, [hidden.grad, head.weight.grad, head.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_only_requested_gradients_and_non_contiguous_inputs():
    hidden, proj, bias, targets, weights, offsets = problem(2)
    proj_t = proj.t().contiguous().t().requires_grad_()  # [V, d] column-major
    assert not proj_t.is_contiguous()
    out = dt.linear_sequence_logp(hidden, proj_t, bias, targets, weights, offsets)  # hidden, bias constants
    out.sum().backward()
    p = proj.clone().requires_grad_()
    dt.linear_sequence_logp(hidden, p, bias, targets, weights, offsets).sum().backward()
    assert torch.equal(proj_t.grad, p.grad) and hidden.grad is None and bias.grad is None


def test_second_derivative_raises():
    hidden, proj, bias, targets, weights, offsets = problem(3)
    h = hidden.clone().requires_grad_()
    (g,) = torch.autograd.grad(dt.linear_sequence_logp(h, proj, bias, targets, weights, offsets).sum(), h,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        torch.autograd.grad(g.pow(2).sum(), h)


def bad_calls():
    hidden, proj, bias, targets, weights, offsets = problem(0)
    r = int((weights != 0).nonzero()[0])
    t_big = targets.clone()
    t_big[r] = 29
    return [
        (dict(hidden=hidden[None]), r"^hidden: got shape \[1, 13, 6\], expected a 2-D tensor \[N, d\]$"),
        (dict(hidden=hidden.half()), r"^hidden: got dtype torch.float16, expected float32, float64 or bfloat16"),
        (dict(proj=proj.float()), r"^proj: got dtype torch.float32, expected torch.float64 \(the dtype of hidden\)$"),
        (dict(proj=proj[:, :5]), r"^proj: got shape \[29, 5\], expected shape \[29, 6\] \(\[V, d\], d = hidden.size\(1\)\)$"),
        (dict(bias=bias[:5]), r"^bias: got shape \[5\], expected shape \[29\]"),
        (dict(bias=bias.float()), r"^bias: got dtype torch.float32, expected torch.float64 \(the dtype of hidden\)$"),
        (dict(targets=t_big), rf"^targets\[{r}\]: got 29, expected in \[0, vocab = 29\)$"),
        (dict(offsets=torch.tensor([0, 4, 12])), r"^offsets\[2\]: got 12, expected N = 13$"),
        (dict(hidden=hidden[:, :0], proj=proj[:, :0]), r"^dim: got 0, expected at least 1$"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_raises_the_library_message(case):
    hidden, proj, bias, targets, weights, offsets = problem(0)
    args = dict(hidden=hidden, proj=proj, bias=bias, targets=targets, weights=weights, offsets=offsets)
    override, message = bad_calls()[case]
    args.update(override)
    with pytest.raises(dt.Error, match=message):
        dt.linear_sequence_logp(**args)
