"""The Python face of dftune_torch: signatures (inspect), pickling and deep copies of the
estimator, the GIL released during the reductions, errors from backward as dftune_torch.Error,
and dft_loss reading the estimator (as C++'s dft_loss) while dft_step updates it."""
import copy
import inspect
import pickle
import threading
import time
import warnings

import pytest
import torch

import dftune_torch as dt


def batch(seed=0, B=4, m=3):
    g = torch.Generator().manual_seed(seed)
    pos = -torch.rand(B, generator=g, dtype=torch.float64) * 5
    neg = -torch.rand(B, m, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(B, m, generator=g, dtype=torch.float64) * 5
    return pos, neg, ref, torch.arange(B)


def test_every_function_has_a_python_signature():
    names = [n for n in dt.__all__ if n not in ("Error", "__version__")]
    for name in names:
        sig = inspect.signature(getattr(dt, name))
        assert all(p.name != "args" for p in sig.parameters.values()), name
    sig = inspect.signature(dt.dft_loss)
    assert list(sig.parameters)[:4] == ["pos_logp", "neg_logp", "ids", "estimator"]
    assert sig.parameters["update"].default is None and sig.parameters["tau"].default == 1.0
    assert "update" not in inspect.signature(dt.dft_step).parameters
    assert list(inspect.signature(dt.Estimator).parameters) == ["num_examples", "init", "log_u0", "shard"]
    assert inspect.signature(dt.Estimator).parameters["shard"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(dt.dft_step).parameters)[-2:] == ["group", "grad_reduction"]
    assert "L = (1/B)" in dt.dft_loss.__doc__ and not dt.dft_loss.__doc__.startswith("dft_loss(")


def test_error_names_the_package():
    assert dt.Error.__module__ == "dftune_torch" and issubclass(dt.Error, ValueError)


def trained(init="constant", log_u0=0.25):
    est = dt.Estimator(10, init=init, log_u0=log_u0)
    pos, neg, ref, ids = batch()
    dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    return est


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return (sa["init"], sa["log_u0"]) == (sb["init"], sb["log_u0"]) and torch.equal(sa["log_u"], sb["log_u"]) and \
        torch.equal(sa["seen"], sb["seen"])


def test_estimator_pickles_and_copies():
    est = trained()
    for other in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est), copy.copy(est)):
        assert type(other) is dt.Estimator and other is not est
        assert same_state(est, other)
    # A deep copy is independent: stepping it leaves the original as it was.
    other = copy.deepcopy(est)
    before = est.state_dict()
    pos, neg, ref, _ = batch(1)
    dt.dft_step(pos, neg, torch.tensor([5, 6, 7, 8]), other, ref_neg_logp=ref)
    assert torch.equal(est.state_dict()["seen"], before["seen"])
    assert not torch.equal(other.state_dict()["seen"], before["seen"])


def test_dft_loss_reads_and_dft_step_updates_the_estimator():
    pos, neg, ref, ids = batch()
    est = dt.Estimator(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without grad, nor with update given
        a = dt.dft_loss(pos, neg, ids, est, ref_neg_logp=ref)
        dt.dft_loss(pos.requires_grad_(), neg, ids, est, ref_neg_logp=ref, update=False)
    assert not est.state_dict()["seen"].any()
    # A training-looking call without `update` is told that the default changed.
    with pytest.warns(FutureWarning, match="no longer updates the estimator by default"):
        dt.dft_loss(pos, neg, ids, est, ref_neg_logp=ref)
    assert not est.state_dict()["seen"].any()
    b = dt.dft_step(pos, neg, ids, est, ref_neg_logp=ref)
    assert torch.equal(a, b.detach())  # the same loss; only dft_step stores
    assert est.state_dict()["seen"][:4].all()
    other = dt.Estimator(10)
    dt.dft_loss(pos, neg, ids, other, ref_neg_logp=ref, update=True)
    assert same_state(est, other)


def test_errors_raised_in_backward_are_dftune_errors():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (6,), generator=g)
    offsets = torch.tensor([0, 2, 6])
    seq = dt.sequence_logp(logits, targets, None, offsets)
    with pytest.raises(dt.Error, match=r"^d_seq\[1\]: got nan"):
        (seq * torch.tensor([1.0, float("nan")], dtype=torch.float64)).sum().backward()
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    seq = dt.linear_sequence_logp(hidden, proj, None, targets, None, offsets)
    with pytest.raises(dt.Error, match=r"^d_seq\[0\]: got inf"):
        (seq * torch.tensor([float("inf"), 1.0], dtype=torch.float64)).sum().backward()


def ticks_during(f):
    """How often a Python thread ran (1 ms sleeps) while f ran in this one, and how long f took."""
    ticks, stop = [0], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.02)
    start_ticks, start = ticks[0], time.perf_counter()
    f()
    elapsed, n = time.perf_counter() - start, ticks[0] - start_ticks
    stop.set()
    t.join()
    return n, elapsed


def test_reductions_release_the_gil():
    g = torch.Generator().manual_seed(4)
    N, V = 2048, 8192
    logits = torch.randn(N, V, generator=g, dtype=torch.float32)
    targets = torch.randint(0, V, (N,), generator=g)
    offsets = torch.arange(0, N + 1, 64)
    calls = lambda: [dt.sequence_logp(logits, targets, None, offsets) for _ in range(4)]  # noqa: E731
    n, elapsed = ticks_during(calls)
    # Holding the GIL, the ticker would get at most a tick or two (measured before the release:
    # 3 ticks in 0.43 s); released, it ticks about once a millisecond, less on a loaded machine.
    assert elapsed < 0.02 or n >= 10, (n, elapsed)
    hidden = torch.randn(512, 64, generator=g)
    proj = torch.randn(V, 64, generator=g)
    targets = torch.randint(0, V, (512,), generator=g)
    n, elapsed = ticks_during(lambda: dt.linear_sequence_logp(hidden, proj, None, targets, None, torch.tensor([0, 512])))
    assert elapsed < 0.02 or n >= 5, (n, elapsed)
