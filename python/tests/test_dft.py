"""dftune_torch.dft_loss and Estimator against the plain-torch DFT of reference.py: values,
gradients, the estimator's state over several steps, its state_dict round trip, bad inputs (the
library's messages, nothing changed), dtypes and non-contiguous tensors."""
import io
import math

import pytest
import torch

import dftune_torch as dt
from reference import DftReference

B, M, N_EXAMPLES = 4, 3, 10


def batch(seed, dtype=torch.float64, B=B, M=M):
    g = torch.Generator().manual_seed(seed)
    pos = (-torch.rand(B, generator=g, dtype=torch.float64) * 6 - 0.5).to(dtype)
    neg = (-torch.rand(B, M, generator=g, dtype=torch.float64) * 8 - 0.5).to(dtype)
    ref = -torch.rand(B, M, generator=g, dtype=torch.float64) * 8 - 0.5
    ids = torch.randperm(N_EXAMPLES, generator=g)[:B]
    pos_len = torch.randint(1, 9, (B,), generator=g)
    neg_len = torch.randint(1, 9, (B, M), generator=g)
    return pos, neg, ref, ids, pos_len, neg_len


def both(variant, init, dtype=torch.float64, steps=4, tau=None, gamma=0.85, log_u0=0.0):
    """Runs `steps` batches (ids repeat across them) through dftune_torch and the reference;
    yields (loss, grads, reference loss, reference grads) per step."""
    tau = tau if tau is not None else (1.0 if variant == "dft" else 0.3)
    est = dt.Estimator(N_EXAMPLES, init=init, log_u0=log_u0)
    ref_est = DftReference(N_EXAMPLES, init=init, log_u0=log_u0)
    for step in range(steps):
        pos, neg, ref, ids, pos_len, neg_len = batch(step % 2, dtype)  # ids of step 2 = step 0's
        p1, n1 = pos.clone().requires_grad_(), neg.clone().requires_grad_()
        loss = dt.dft_step(p1, n1, ids, est, variant=variant, tau=tau, gamma=gamma, ref_neg_logp=ref,
                           pos_len=pos_len, neg_len=neg_len)
        loss.backward()
        p2, n2 = pos.clone().double().requires_grad_(), neg.clone().double().requires_grad_()
        want = ref_est.loss(p2, n2, ids, variant, tau, gamma, ref, pos_len, neg_len)
        want.backward()
        yield est, ref_est, loss, p1.grad, n1.grad, want, p2.grad, n2.grad


@pytest.mark.parametrize("variant", ["dft", "dft2"])
@pytest.mark.parametrize("init", ["first_visit", "constant", "fixed"])
def test_values_gradients_and_state_against_reference(variant, init):
    for est, ref_est, loss, gp, gn, want, wp, wn in both(variant, init, log_u0=-0.7):
        assert loss.dtype == torch.float64 and loss.shape == ()
        torch.testing.assert_close(loss, want, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(gp, wp, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(gn, wn, rtol=1e-13, atol=1e-15)
        sd = est.state_dict()
        torch.testing.assert_close(sd["log_u"], ref_est.log_u, rtol=1e-13, atol=1e-13)
        assert torch.equal(sd["seen"], ref_est.seen)
    if init == "fixed":
        assert not est.state_dict()["seen"].any()


def test_gamma_one_keeps_no_memory():
    for _, ref_est_state, loss, gp, gn, want, wp, wn in both("dft", "first_visit", gamma=1.0):
        torch.testing.assert_close(loss, want, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(gn, wn, rtol=1e-13, atol=1e-15)


def test_closed_form_first_visit_m1():
    # m = 1, first visit: log u = d, so the weight is exactly 1 and L = mean(-pos + neg).
    est = dt.Estimator(3)
    pos = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    neg = torch.tensor([[-3.0], [-0.5]], dtype=torch.float64, requires_grad=True)
    loss = dt.dft_step(pos, neg, torch.tensor([2, 0]), est, ref_neg_logp=torch.tensor([[-7.0], [-1.0]]))
    loss.backward()
    assert loss.item() == ((1.0 - 3.0) + (2.0 - 0.5)) / 2
    assert pos.grad.tolist() == [-0.5, -0.5] and neg.grad.tolist() == [[0.5], [0.5]]
    assert est.log_u(2) == -3.0 + 7.0 and est.log_u(0) == -0.5 + 1.0 and est.log_u(1) is None


def test_update_once_per_call_never_in_backward():
    pos, neg, ref, ids, _, _ = batch(0)
    est = dt.Estimator(N_EXAMPLES, init="constant")
    p = pos.clone().requires_grad_()
    loss = dt.dft_step(p, neg, ids, est, ref_neg_logp=ref)
    after_forward = est.state_dict()
    loss.backward(retain_graph=True)
    loss.backward()
    assert torch.equal(est.state_dict()["log_u"], after_forward["log_u"])
    # A second call on the same batch moves log u again (the moving average), once.
    dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    assert not torch.equal(est.state_dict()["log_u"], after_forward["log_u"])


def test_update_false_evaluates_without_touching_the_estimator():
    est, ref_est = dt.Estimator(N_EXAMPLES), DftReference(N_EXAMPLES)
    pos, neg, ref, ids, _, _ = batch(0)
    dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    ref_est.loss(pos, neg, ids, ref=ref)
    before = est.state_dict()
    pos1, neg1, ref1, ids1, _, _ = batch(1)
    got = dt.dft_loss(pos1, neg1, ids1, est, ref_neg_logp=ref1, update=False)
    want = ref_est.loss(pos1, neg1, ids1, ref=ref1, update=False)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    after = est.state_dict()
    assert torch.equal(after["log_u"], before["log_u"]) and torch.equal(after["seen"], before["seen"])


def test_loss_without_grad_and_under_no_grad():
    pos, neg, ref, ids, _, _ = batch(0)
    with torch.no_grad():
        loss = dt.dft_step(pos.requires_grad_(), neg, ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    assert not loss.requires_grad
    loss = dt.dft_step(pos.detach(), neg, ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    assert not loss.requires_grad and loss.grad_fn is None


def test_only_neg_requires_grad():
    pos, neg, ref, ids, _, _ = batch(0)
    n = neg.clone().requires_grad_()
    dt.dft_step(pos, n, ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref).backward()
    assert n.grad is not None and n.grad.shape == (B, M)


def test_gradient_flows_through_a_graph():
    # Log-probs computed from parameters: the chain rule through the binding's node.
    theta = torch.randn(B, M + 1, dtype=torch.float64, requires_grad=True)
    _, _, ref, ids, _, _ = batch(0)
    lp = torch.log_softmax(theta, dim=1)
    loss = dt.dft_step(lp[:, 0], lp[:, 1:], ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    (g,) = torch.autograd.grad(loss, theta)
    theta2 = theta.detach().clone().requires_grad_()
    lp2 = torch.log_softmax(theta2, dim=1)
    DftReference(N_EXAMPLES).loss(lp2[:, 0], lp2[:, 1:], ids, ref=ref).backward()
    torch.testing.assert_close(g, theta2.grad, rtol=1e-12, atol=1e-14)


def test_second_derivative_raises():
    pos, neg, ref, ids, _, _ = batch(0)
    p = pos.clone().requires_grad_()
    loss = dt.dft_step(p, neg, ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    (g,) = torch.autograd.grad(loss, p, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        g.sum().backward()
    # Through a graph: the gradient at theta depends on theta through log_softmax's backward and
    # through the binding's; the second must raise, not drop out of the Hessian.
    theta = torch.randn(B, M + 1, dtype=torch.float64, requires_grad=True)
    lp = torch.log_softmax(theta, dim=1)
    loss = dt.dft_step(lp[:, 0], lp[:, 1:], ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    (g,) = torch.autograd.grad(loss, theta, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        torch.autograd.grad(g.pow(2).sum(), theta)
    # Without create_graph the gradient is a plain tensor.
    loss = dt.dft_step(pos.clone().requires_grad_(), neg, ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    loss.backward()


# ---- dtypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2.0**-23), (torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-10)])
def test_low_precision_inputs_compute_in_double_and_round_once(dtype, rtol):
    for est, ref_est, loss, gp, gn, want, wp, wn in both("dft2", "first_visit", dtype=dtype, steps=3):
        assert loss.dtype == dtype and gp.dtype == dtype and gn.dtype == dtype
        # The reference ran in float64 on the same (exactly widened) inputs: one rounding apart.
        # atol: the smallest subnormal, which a float16 gradient of 2e-8 rounds to 0 against.
        atol = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
        torch.testing.assert_close(loss.double(), want, rtol=rtol, atol=atol)
        torch.testing.assert_close(gn.double(), wn, rtol=rtol, atol=atol)
        torch.testing.assert_close(gp.double(), wp, rtol=rtol, atol=atol)
        torch.testing.assert_close(est.state_dict()["log_u"], ref_est.log_u, rtol=1e-13, atol=1e-13)


def test_float32_loss_overflowing_float_is_an_error_and_changes_nothing():
    # Finite float32 log-probs whose loss (computed in float64) exceeds float32's range: refused,
    # and the estimator (first visit: it would be initialised by this batch) is left as it was.
    est = dt.Estimator(3)
    pos = torch.tensor([-3.0e38])
    neg = torch.tensor([[3.0e38]])
    ref = torch.tensor([[-1.0]])
    with pytest.raises(dt.Error, match=r"^loss: got 6.*e\+38, expected a value torch.float32 can hold"):
        dt.dft_step(pos, neg, torch.tensor([2]), est, ref_neg_logp=ref)
    assert not est.state_dict()["seen"].any()
    dt.dft_step(pos.double(), neg.double(), torch.tensor([2]), est, ref_neg_logp=ref)  # float64 holds it
    assert est.state_dict()["seen"].tolist() == [False, False, True]


def test_float32_gradients_overflowing_float_are_an_error():
    # A fixed normaliser far below the d_ij: the weight exp(d - log u) exceeds float32's range.
    est = dt.Estimator(2, init="fixed", log_u0=-200.0)
    pos = torch.tensor([-1.0])
    neg = torch.tensor([[-1.0]])
    with pytest.raises(dt.Error, match=r"^grad_neg\[0\]: got .*, expected a value torch.float32 can hold"):
        dt.dft_step(pos, neg, torch.tensor([0]), est, ref_neg_logp=torch.tensor([[-1.0]]))
    # float64 holds it.
    assert dt.dft_step(pos.double(), neg.double(), torch.tensor([0]), est, ref_neg_logp=torch.tensor([[-1.0]])).abs().item() > 1e80


def test_ids_and_lengths_of_any_integer_dtype():
    pos, neg, ref, ids, pos_len, neg_len = batch(0)
    want = dt.dft_step(pos, neg, ids, dt.Estimator(N_EXAMPLES), variant="dft2", pos_len=pos_len, neg_len=neg_len)
    for itype in (torch.int32, torch.int16, torch.uint8):
        got = dt.dft_step(pos, neg, ids.to(itype), dt.Estimator(N_EXAMPLES), variant="dft2",
                          pos_len=pos_len.to(itype), neg_len=neg_len.to(itype))
        assert got.item() == want.item()


def test_non_contiguous_inputs_are_copied():
    pos, neg, ref, ids, pos_len, neg_len = batch(0)
    neg_t = neg.t().contiguous().t().requires_grad_()   # [B, M], column-major
    ref_t = ref.t().contiguous().t()
    pos_s = torch.stack([pos, pos], dim=1)[:, 0].requires_grad_()  # stride 2
    assert not neg_t.is_contiguous() and not ref_t.is_contiguous()
    loss = dt.dft_step(pos_s, neg_t, ids.flip(0).flip(0), dt.Estimator(N_EXAMPLES), ref_neg_logp=ref_t)
    loss.backward()
    p, n = pos.clone().requires_grad_(), neg.clone().requires_grad_()
    want = dt.dft_step(p, n, ids, dt.Estimator(N_EXAMPLES), ref_neg_logp=ref)
    want.backward()
    assert loss.item() == want.item()
    assert torch.equal(neg_t.grad, n.grad) and torch.equal(pos_s.grad, p.grad)


# ---- bad inputs: the library's messages, nothing changed ------------------------------------------
def bad_calls():
    pos, neg, ref, ids, pos_len, neg_len = batch(0)
    dup = ids.clone()
    dup[1] = dup[0]
    nan = neg.clone()
    nan[1, 2] = math.nan
    return [
        (dict(ids=dup), rf"^ids: got id {int(dup[0])} twice, expected distinct ids within a batch$"),
        (dict(ids=torch.tensor([0, 1, 2, 10])), r"^ids\[3\]: got 10, expected an example id in \[0, num_examples = 10\)$"),
        (dict(ids=ids.double()), r"^ids: got dtype torch.float64, expected an integer tensor"),
        (dict(ids=ids[:3]), r"^pos_logp: got size 4, expected size 3$"),
        (dict(neg_logp=nan), r"^neg_logp\[5\]: got nan, expected a finite number$"),
        (dict(neg_logp=neg.reshape(-1)), r"^neg_logp: got shape \[12\], expected a 2-D tensor \[B, m\]$"),
        (dict(neg_logp=neg[:3]), r"^neg_logp: got size 9, expected size 12"),
        (dict(neg_logp=neg.float()), r"^neg_logp: got dtype torch.float32, expected torch.float64 \(the dtype of pos_logp\)$"),
        (dict(pos_logp=pos.long()), r"^pos_logp: got dtype torch.int64, expected a floating tensor"),
        (dict(ref_neg_logp=None), r"^ref_neg_logp: got size 0, expected size B·m = 12 \(DFT needs log π_ref of the negatives\)$"),
        (dict(ref_neg_logp=ref.clone().requires_grad_()),
         r"^ref_neg_logp: got a tensor that requires grad, expected a constant \(no gradient flows to the reference"),
        (dict(ref_neg_logp=ref.t()), r"^ref_neg_logp: got shape \[3, 4\], expected shape \[4, 3\] \(the shape of neg_logp\)$"),
        (dict(variant="dft2", pos_len=None), r"^pos_len: .*DFT2 needs completion lengths"),
        (dict(variant="dft2", neg_len=neg_len.double()), r"^neg_len: got dtype torch.float64, expected an integer tensor"),
        (dict(variant="dpo"), r"^variant: got 'dpo', expected 'dft' or 'dft2'$"),
        (dict(tau=0.0), r"^tau: got 0, expected"),
        (dict(gamma=1.5), r"^gamma: got 1.5, expected a number in \(0, 1\]$"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_raises_library_message_and_changes_nothing(case):
    pos, neg, ref, ids, pos_len, neg_len = batch(0)
    est = dt.Estimator(N_EXAMPLES, init="constant")
    dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)  # some state to keep
    before = est.state_dict()
    args = dict(pos_logp=pos.clone().requires_grad_(), neg_logp=neg.clone().requires_grad_(), ids=ids,
                ref_neg_logp=ref, pos_len=pos_len, neg_len=neg_len)
    override, message = bad_calls()[case]
    args.update(override)
    with pytest.raises(dt.Error, match=message):
        dt.dft_step(args.pop("pos_logp"), args.pop("neg_logp"), args.pop("ids"), est, **args)
    after = est.state_dict()
    assert torch.equal(after["log_u"], before["log_u"]) and torch.equal(after["seen"], before["seen"])


def test_error_is_a_value_error():
    assert issubclass(dt.Error, ValueError)
    with pytest.raises(ValueError):
        dt.Estimator(0)


# ---- Estimator: construction and state_dict -------------------------------------------------------
def test_estimator_construction_and_errors():
    e = dt.Estimator(5, init="constant", log_u0=-1.5)
    assert (len(e), e.num_examples, e.init, e.log_u0) == (5, 5, "constant", -1.5)
    assert e.log_u(4) is None
    assert repr(e) == "dftune_torch.Estimator(num_examples=5, init='constant', log_u0=-1.5)"
    with pytest.raises(dt.Error, match=r"^num_examples: got 0, expected at least 1$"):
        dt.Estimator(0)
    with pytest.raises(dt.Error, match=r"^init: got 'warm', expected 'first_visit', 'constant' or 'fixed'$"):
        dt.Estimator(3, init="warm")
    with pytest.raises(dt.Error, match=r"^log_u0: got inf, expected a finite number$"):
        dt.Estimator(3, log_u0=math.inf)
    with pytest.raises(dt.Error, match=r"^id: got 5, expected an example id in \[0, num_examples = 5\)$"):
        e.log_u(5)


def trained_estimator():
    est = dt.Estimator(N_EXAMPLES, init="constant", log_u0=0.25)
    for seed in range(3):
        pos, neg, ref, ids, _, _ = batch(seed)
        dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    return est


def test_state_dict_round_trip_continues_bit_for_bit():
    est = trained_estimator()
    sd = est.state_dict()
    assert set(sd) == {"init", "log_u0", "log_u", "seen"}
    assert sd["log_u"].dtype == torch.float64 and sd["seen"].dtype == torch.bool
    assert sd["seen"].sum() > 0 and (sd["log_u"][~sd["seen"]] == 0).all()
    # Through torch.save / torch.load, as a training checkpoint would.
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    restored = dt.Estimator(N_EXAMPLES, init="constant", log_u0=0.25)
    restored.load_state_dict(torch.load(buf))
    assert torch.equal(restored.state_dict()["log_u"], sd["log_u"])
    assert torch.equal(restored.state_dict()["seen"], sd["seen"])
    # The same next step from both.
    pos, neg, ref, ids, _, _ = batch(7)
    a = dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    b = dt.dft_step(pos, neg, ids, restored, ref_neg_logp=ref)
    assert a.item() == b.item()
    assert torch.equal(est.state_dict()["log_u"], restored.state_dict()["log_u"])
    # The state_dict is a copy, not a view of the estimator.
    assert not torch.equal(est.state_dict()["log_u"], sd["log_u"])


def test_state_dict_accepts_integer_seen_and_an_integer_log_u0():
    est = trained_estimator()
    sd = est.state_dict()
    other = dt.Estimator(N_EXAMPLES, init="constant", log_u0=0.25)
    other.load_state_dict({**sd, "seen": sd["seen"].to(torch.uint8)})
    assert torch.equal(other.state_dict()["log_u"], sd["log_u"])
    zero = dt.Estimator(N_EXAMPLES, init="constant")
    zero.load_state_dict({**zero.state_dict(), "log_u0": 0})


def bad_state_dicts():
    sd = trained_estimator().state_dict()
    seen2 = sd["seen"].to(torch.int64)
    seen2[0] = 2
    unseen = int((~sd["seen"]).nonzero()[0])
    nonzero_unseen = sd["log_u"].clone()
    nonzero_unseen[unseen] = 1.0
    inf = sd["log_u"].clone()
    inf[int(sd["seen"].nonzero()[0])] = math.inf
    return [
        ({**sd, "extra": 1}, r"^state_dict: got unexpected key 'extra', expected the keys"),
        ({k: v for k, v in sd.items() if k != "seen"}, r"^state_dict: got no key 'seen', expected the keys"),
        ({**sd, "init": "fixed"}, r"^init: got 'fixed', expected 'constant' \(this estimator's\)$"),
        ({**sd, "log_u0": 0.5}, r"^log_u0: got 0.5, expected 0.25 \(this estimator's\)$"),
        ({**sd, "log_u": sd["log_u"][:5]}, r"^log_u: got shape \[5\], expected shape \[10\] \(num_examples\)$"),
        ({**sd, "log_u": [0.0] * 10}, r"^log_u: got list, expected a torch.Tensor$"),
        ({**sd, "log_u0": "0.25"}, r"^log_u0: got str, expected a float$"),
        ({**sd, "log_u0": True}, r"^log_u0: got bool, expected a float$"),
        ({**sd, "log_u": sd["log_u"].long()}, r"^log_u: got dtype torch.int64, expected dtype torch.float64"),
        ({**sd, "log_u": sd["log_u"].float()}, r"^log_u: got dtype torch.float32, expected dtype torch.float64 \(the estimator's state\)$"),
        ({**sd, "log_u": sd["log_u"].half()}, r"^log_u: got dtype torch.float16, expected dtype torch.float64"),
        ({**sd, "seen": sd["seen"].float()}, r"^seen: got dtype torch.float32, expected a bool or integer tensor$"),
        ({**sd, "seen": seen2}, r"^seen\[0\]: got 2, expected 0 or 1$"),
        ({**sd, "log_u": nonzero_unseen}, rf"^log_u\[{unseen}\]: got 1, expected 0 for an example never updated$"),
        ({**sd, "log_u": inf}, r"^log_u\[\d+\]: got inf, expected a finite number$"),
    ]


@pytest.mark.parametrize("case", range(len(bad_state_dicts())))
def test_bad_state_dict_is_refused_and_changes_nothing(case):
    est = dt.Estimator(N_EXAMPLES, init="constant", log_u0=0.25)
    pos, neg, ref, ids, _, _ = batch(5)
    dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    before = est.state_dict()
    sd, message = bad_state_dicts()[case]
    with pytest.raises(dt.Error, match=message):
        est.load_state_dict(sd)
    after = est.state_dict()
    assert torch.equal(after["log_u"], before["log_u"]) and torch.equal(after["seen"], before["seen"])


def test_state_dict_of_another_size_is_refused():
    with pytest.raises(dt.Error, match=r"^log_u: got shape \[10\], expected shape \[11\] \(num_examples\)$"):
        dt.Estimator(11, init="constant", log_u0=0.25).load_state_dict(trained_estimator().state_dict())
