"""dftune_torch.sequence_logp (the CPU fast path as an autograd function) against torch's
log_softmax + gather + segment sums (reference.py) and finite differences; float32, float64,
bfloat16; masks, ignore-index targets, empty sequences; non-contiguous and other-dtype inputs; bad
inputs with the library's messages."""
import math

import pytest
import torch

import dftune_torch as dt
import reference as ref


def problem(seed, n=11, vocab=37, dtype=torch.float32, masked=True, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    weights = None
    if masked:
        weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        weights[torch.rand(n, generator=g) < 0.3] = 0
        weights[0] = 0
        targets[weights == 0] = -100  # torch's ignore_index: never read on a masked row
        weights = weights.to(torch.float64 if dtype == torch.float64 else torch.float32)
    # Sequences of lengths 3, 0 (empty), rest.
    offsets = torch.tensor([0, 3, 3, n])
    return logits, targets, weights, offsets


def tolerance(logits, weights, offsets, k):
    """Per-sequence bound k·Σ|w|(1 + |lse|) over the sequence's rows (the fast path's documented
    per-token tolerance, logprob/cpu/fast.hpp)."""
    z = logits.double()
    w = torch.ones(z.shape[0], dtype=torch.float64) if weights is None else weights.double().abs()
    per_row = k * w * (1 + torch.logsumexp(z, 1).abs())
    seq_of = torch.repeat_interleave(torch.arange(len(offsets) - 1), torch.diff(offsets))
    return torch.zeros(len(offsets) - 1, dtype=torch.float64).index_add(0, seq_of, per_row)


@pytest.mark.parametrize("dtype,k", [(torch.float32, 2e-6), (torch.float64, 1e-12), (torch.bfloat16, 2e-6)])
@pytest.mark.parametrize("vocab", [1, 7, 37, 2053])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_against_torch(dtype, k, vocab, masked):
    logits, targets, weights, offsets = problem(vocab, vocab=vocab, dtype=dtype, masked=masked)
    got = dt.sequence_logp(logits, targets, weights, offsets)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.shape == (3,)
    want = ref.sequence_logp(logits, targets, weights, offsets)  # bf16 widened exactly
    err = (got.double() - want).abs()
    assert (err <= tolerance(logits, weights, offsets, k) + 1e-300).all(), (got, want)
    assert got[1].item() == 0.0  # the empty sequence


@pytest.mark.parametrize("dtype,k", [(torch.float32, 4e-6), (torch.float64, 1e-12), (torch.bfloat16, 4e-6)])
@pytest.mark.parametrize("vocab", [7, 2053])
def test_backward_against_autograd(dtype, k, vocab):
    logits, targets, weights, offsets = problem(3 + vocab, vocab=vocab, dtype=dtype)
    d_seq = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    z = logits.clone().requires_grad_()
    got = dt.sequence_logp(z, targets, weights, offsets)
    (got * d_seq.to(got.dtype)).sum().backward()
    assert z.grad.dtype == dtype and z.grad.shape == logits.shape
    zr = logits.double().requires_grad_()
    (ref.sequence_logp(zr, targets, weights, offsets) * d_seq).sum().backward()
    want = zr.grad
    # |c|(1 + |lse|) per row, c = d_seq · w; bf16 adds one rounding of the gradient (2^-8 relative).
    seq_of = torch.repeat_interleave(torch.arange(3), torch.diff(offsets))
    c = d_seq[seq_of] * weights.double()
    bound = k * c.abs()[:, None] * (1 + torch.logsumexp(logits.double(), 1).abs()[:, None])
    if dtype == torch.bfloat16:
        bound = bound + 2.0**-8 * want.abs()
    assert ((z.grad.double() - want).abs() <= bound + 1e-300).all()
    assert (z.grad[weights == 0] == 0).all()  # masked rows: exactly zero


def test_gradcheck_float64():
    logits, targets, weights, offsets = problem(5, n=6, vocab=5, dtype=torch.float64)
    z = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: dt.sequence_logp(z, targets, weights, offsets), (z,))


def test_in_a_graph_matches_torch_end_to_end():
    # A linear head before the reduction: autograd chains through the binding's backward.
    g = torch.Generator().manual_seed(9)
    h = torch.randn(11, 8, generator=g, dtype=torch.float64)
    w1 = torch.randn(8, 37, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    _, targets, weights, offsets = problem(1, dtype=torch.float64)
    dt.sequence_logp(h @ w1, targets, weights, offsets).sum().backward()
    ref.sequence_logp(h @ w2, targets, weights, offsets).sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_contiguous_logits_are_copied(dtype):
    logits, targets, weights, offsets = problem(2, dtype=dtype)
    strided = logits.t().contiguous().t()  # same values, column-major
    assert not strided.is_contiguous()
    a = strided.detach().requires_grad_()
    b = logits.clone().requires_grad_()
    sa = dt.sequence_logp(a, targets, weights, offsets)
    sb = dt.sequence_logp(b, targets, weights, offsets)
    assert torch.equal(sa, sb)
    sa.sum().backward()
    sb.sum().backward()
    assert torch.equal(a.grad, b.grad)
    # A slice of a wider tensor too (row stride != V).
    wide = torch.cat([logits, logits], 1)[:, : logits.shape[1]]
    assert not wide.is_contiguous() and torch.equal(dt.sequence_logp(wide, targets, weights, offsets), sb)


def test_other_integer_and_mask_dtypes_give_the_same_result():
    logits, targets, weights, offsets = problem(4)
    mask = weights != 0
    want = dt.sequence_logp(logits, targets, mask.float(), offsets)
    for t, w, o in [(targets.int(), mask, offsets.int()), (targets, mask.to(torch.uint8), offsets),
                    (targets.short(), mask.double(), offsets.short())]:
        assert torch.equal(dt.sequence_logp(logits, t, w, o), want)
    # None is all ones.
    assert torch.equal(dt.sequence_logp(logits, targets.clamp(min=0), None, offsets),
                       dt.sequence_logp(logits, targets.clamp(min=0), torch.ones(11), offsets))


def test_masked_rows_never_read_even_with_targets_beyond_int32():
    logits, targets, weights, offsets = problem(6)
    t = targets.clone()
    t[weights == 0] = 2**40  # would wrap to 0 in int32: never read since the row is masked
    assert torch.equal(dt.sequence_logp(logits, t, weights, offsets), dt.sequence_logp(logits, targets, weights, offsets))


def test_upstream_nan_is_refused_in_backward():
    # The library's check, raised inside torch's autograd engine, reaches Python as dftune_torch.Error.
    logits, targets, weights, offsets = problem(7)
    z = logits.clone().requires_grad_()
    s = dt.sequence_logp(z, targets, weights, offsets)
    with pytest.raises(dt.Error, match=r"^d_seq\[0\]: got nan, expected a finite number$"):
        (s * torch.tensor([math.nan, 1.0, 1.0])).sum().backward()
    assert z.grad is None


def test_second_derivative_raises():
    logits, targets, weights, offsets = problem(8, dtype=torch.float64)
    z = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(dt.sequence_logp(z, targets, weights, offsets).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        torch.autograd.grad(g.pow(2).sum(), z)


def bad_calls():
    logits, targets, weights, offsets = problem(0)
    r = int((weights != 0).nonzero()[0])  # a weighted row: its target is read
    t_big = targets.clone()
    t_big[r] = 2**40
    t_37 = targets.clone()
    t_37[r] = 37
    nan_w = weights.clone()
    nan_w[4] = math.nan
    return [
        (dict(logits=logits[None]), r"^logits: got shape \[1, 11, 37\], expected a 2-D tensor \[N, V\]$"),
        (dict(logits=logits.half()), r"^logits: got dtype torch.float16, expected float32, float64 or bfloat16"),
        (dict(logits=logits.long()), r"^logits: got dtype torch.int64, expected float32, float64 or bfloat16"),
        (dict(logits=logits[:, :0]), r"^vocab: got 0, expected at least 1$"),
        (dict(targets=t_big), rf"^targets\[{r}\]: got 1099511627776, expected in \[0, vocab = 37\)$"),
        (dict(targets=t_37), rf"^targets\[{r}\]: got 37, expected in \[0, vocab = 37\)$"),
        (dict(targets=targets[:10]), r"^targets: got shape \[10\], expected shape \[11\]"),
        (dict(targets=targets.float()), r"^targets: got dtype torch.float32, expected an integer tensor"),
        (dict(weights=nan_w), r"^weights\[4\]: got nan, expected a finite number$"),
        (dict(weights=weights[:3]), r"^weights: got shape \[3\], expected shape \[11\]"),
        (dict(weights=weights.clone().requires_grad_()), r"^weights: got a tensor that requires grad, expected a constant"),
        (dict(offsets=torch.tensor([1, 3, 11])), r"^offsets\[0\]: got 1, expected 0$"),
        (dict(offsets=torch.tensor([0, 5, 3, 11])), r"^offsets\[2\]: got 3, expected >= offsets\[1\] \(non-decreasing\)$"),
        (dict(offsets=torch.tensor([0, 3, 10])), r"^offsets\[2\]: got 10, expected N = 11$"),
        (dict(offsets=torch.tensor([], dtype=torch.long)), r"^offsets: got size 0, expected size S \+ 1 >= 1$"),
        (dict(offsets=torch.tensor([0.0, 11.0])), r"^offsets: got dtype torch.float32, expected an integer tensor"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_raises_the_library_message(case):
    logits, targets, weights, offsets = problem(0)
    args = dict(logits=logits.clone().requires_grad_(), targets=targets, weights=weights, offsets=offsets)
    override, message = bad_calls()[case]
    args.update(override)
    with pytest.raises(dt.Error, match=message):
        dt.sequence_logp(**args)
