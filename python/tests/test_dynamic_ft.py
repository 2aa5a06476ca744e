"""dftune_torch.dynamic_ft_loss (Dynamic Fine-Tuning, objective/dynamic_ft.hpp) against a plain-torch
version (reference.py) and closed forms: values, autograd gradients through log_softmax, masks,
dtypes, non-contiguous inputs, bad inputs with the library's messages."""
import math

import pytest
import torch

import dftune_torch as dt
import reference as ref

REDUCTIONS = ["token_mean", "sequence_mean", "length_normalized"]


def tokens(seed=0, n=9, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(n, generator=g, dtype=torch.float64) * 4).to(dtype)
    mask = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)[:n]
    logp[~mask] = math.nan  # a masked row is never read
    offsets = torch.tensor([0, 3, 6, n])
    return logp, mask, offsets


def test_closed_form():
    # p = 1/2, 1/4 in one sequence, 1/8 in another; token_mean over 3 tokens.
    lp = torch.log(torch.tensor([0.5, 0.25, 0.125], dtype=torch.float64)).requires_grad_()
    loss = dt.dynamic_ft_loss(lp, None, torch.tensor([0, 2, 3]))
    want = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.125 * math.log(0.125)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-15)
    loss.backward()
    torch.testing.assert_close(lp.grad, -torch.tensor([0.5, 0.25, 0.125], dtype=torch.float64) / 3, rtol=1e-15, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradient_through_log_softmax(reduction, seed):
    # Token log-probs from logits, as a trainer has them: autograd chains through the binding.
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(9, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 7, (9,), generator=g)
    _, mask, offsets = tokens(seed)
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    lp1 = torch.log_softmax(z1, -1).gather(1, targets[:, None]).squeeze(1)
    lp2 = torch.log_softmax(z2, -1).gather(1, targets[:, None]).squeeze(1)
    got = dt.dynamic_ft_loss(lp1, mask, offsets, reduction=reduction)
    want = ref.dynamic_ft(lp2, mask, offsets, reduction)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    got.backward()
    want.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_rows_get_zero_gradient_and_are_never_read(reduction):
    logp, mask, offsets = tokens(3)
    x = logp.clone().requires_grad_()
    loss = dt.dynamic_ft_loss(x, mask, offsets, reduction=reduction)
    assert math.isfinite(loss.item())  # the NaNs on masked rows were not read
    loss.backward()
    assert (x.grad[~mask] == 0).all() and (x.grad[mask] < 0).all()
    # The same with a float 0/1 mask and int32 offsets.
    assert dt.dynamic_ft_loss(logp, mask.float(), offsets.int(), reduction=reduction).item() == loss.item()


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2.0**-23), (torch.bfloat16, 2.0**-8)])
def test_low_precision_returns_in_input_dtype(dtype, rtol):
    logp, mask, offsets = tokens(4, dtype=dtype)
    x = logp.clone().requires_grad_()
    y = logp.double().clone().requires_grad_()
    got = dt.dynamic_ft_loss(x, mask, offsets)
    want = ref.dynamic_ft(y, mask, offsets)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=0)
    got.backward()
    want.backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=rtol, atol=0)


def test_non_contiguous_token_logp():
    logp, mask, offsets = tokens(5)
    strided = torch.stack([logp, logp], 1)[:, 0].requires_grad_()
    assert not strided.is_contiguous()
    x = logp.clone().requires_grad_()
    a = dt.dynamic_ft_loss(strided, mask, offsets)
    b = dt.dynamic_ft_loss(x, mask, offsets)
    a.backward()
    b.backward()
    assert a.item() == b.item() and torch.equal(strided.grad.nan_to_num(), x.grad.nan_to_num())


def bad_calls():
    logp, mask, offsets = tokens(0)
    half = mask.double()
    half[1] = 0.5
    nan_on_token = logp.clone()
    nan_on_token[1] = math.nan
    no_tokens = torch.zeros(9, dtype=torch.bool)
    return [
        (lambda: dt.dynamic_ft_loss(logp, half, offsets), r"^weights\[1\]: got 0.5, expected 0 or 1 \(a completion mask\)$"),
        (lambda: dt.dynamic_ft_loss(nan_on_token, mask, offsets), r"^token_logp\[1\]: got nan, expected a finite log-prob$"),
        (lambda: dt.dynamic_ft_loss(logp, no_tokens, offsets), r"^weights: got no completion token, expected at least one row with weight 1$"),
        (lambda: dt.dynamic_ft_loss(logp, mask, torch.tensor([0, 3, 8])), r"^offsets\[2\]: got 8, expected N = 9 \(the size of token_logp\)$"),
        (lambda: dt.dynamic_ft_loss(logp, mask, offsets, reduction="sum"), r"^reduction: got 'sum', expected"),
        (lambda: dt.dynamic_ft_loss(logp, mask[:5], offsets), r"^weights: got shape \[5\], expected shape \[9\] \(the shape of token_logp\)$"),
        (lambda: dt.dynamic_ft_loss(logp.view(3, 3), mask, offsets), r"^token_logp: got shape \[3, 3\], expected a 1-D tensor \[N\]$"),
        (lambda: dt.dynamic_ft_loss(logp, mask, offsets.double()), r"^offsets: got dtype torch.float64, expected an integer tensor"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_raises_the_library_message(case):
    call, message = bad_calls()[case]
    with pytest.raises(dt.Error, match=message):
        call()
