"""Parameter averaging (``average=K``): the moving average of the training path, exactly.

The fitted attributes become ``theta_avg <- theta_avg + (theta - theta_avg) / K`` over the
updates (capsnp.training), while training itself (steps, chains, draws, history) is unchanged.
The comparisons are bit for bit, so BLAS and Numba run on one thread (test_checkpoints.py).
"""

from collections import namedtuple
from dataclasses import replace

import numpy as np
import pytest
from test_checkpoints import TIMING, digits, interrupt_on_call, make, one_thread  # noqa: F401

from capsnp.estimators import load_estimator
from capsnp.training import moving_average

KINDS = ["p", "rb", "rbm"]  # Model P, Model R with assignment biases, the RBM
HORIZON = 4  # updates; an epoch of make()'s estimators is 5 minibatches


def recording_updates(est):
    """``est`` with its loop's update unchanged but every new parameter container appended to
    the returned list (in update order)."""
    seen = []
    make_objective = est._objective

    def objective():
        base = make_objective()

        def update(*args):
            params, velocity = base.update(*args)
            seen.append(params)
            return params, velocity

        return replace(base, update=update)

    est._objective = objective
    return est, seen


def assert_bitwise_equal(containers_a, containers_b):
    for a, b in zip(containers_a, containers_b, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def test_moving_average_follows_its_recurrence():
    Pair = namedtuple("Pair", ["W", "b"])
    rng = np.random.default_rng(0)
    first = Pair(rng.normal(size=(3, 2)), rng.normal(size=4).astype(np.float32))
    second = Pair(rng.normal(size=(3, 2)), rng.normal(size=4).astype(np.float32))
    before = [p.copy() for p in first + second]

    start = moving_average(None, first, 10)  # the average starts at the first parameters
    assert type(start) is Pair
    assert all(s is not p and np.array_equal(s, p) for s, p in zip(start, first))

    step = moving_average(start, second, 10)
    np.testing.assert_allclose(step.W, 0.9 * first.W + 0.1 * second.W, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(step.b, 0.9 * first.b + 0.1 * second.b, rtol=1e-6, atol=1e-7)
    assert step.W.dtype == np.float64 and step.b.dtype == np.float32
    assert all(np.array_equal(p, q) for p, q in zip(first + second, before))  # inputs untouched
    assert all(np.array_equal(s, p) for s, p in zip(start, first))  # the old average too
    for new, a, p in zip(step, start, second):  # the recurrence's own operations, bit for bit
        np.testing.assert_array_equal(new, (a + (p - a) / 10.0).astype(p.dtype))

    # a long run of one value converges to it; horizon 1 follows the parameters at once
    avg = start
    for _ in range(400):
        avg = moving_average(avg, second, 10)
    np.testing.assert_allclose(avg.W, second.W, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moving_average(start, second, 1).W, second.W, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_averaging_reads_the_training_path_without_changing_it(kind, digits):
    plain, path = recording_updates(make(kind))
    plain.fit(digits)
    averaged = make(kind, average=HORIZON).fit(digits)

    # training is unchanged: current parameters, velocities, chains and history, bit for bit
    state, reference = averaged._state, plain._state
    assert_bitwise_equal(state.params, reference.params)
    assert_bitwise_equal(state.velocity, reference.velocity)
    assert_bitwise_equal(averaged._chain_arrays(state.chains).values(),
                         plain._chain_arrays(reference.chains).values())
    assert without_timing(averaged.history_) == without_timing(plain.history_)

    # the fitted attributes are the moving average of every update's parameters, by definition
    assert len(path) == 3 * 5
    expected = [np.array(p) for p in path[0]]
    for params in path[1:]:
        expected = [e + (p - e) / HORIZON for e, p in zip(expected, params)]
    assert_bitwise_equal(averaged._params(), expected)
    # ... which is not the last update
    assert not np.array_equal(averaged._params()[0], plain._params()[0])
    # every method reads the fitted attributes: the free energies are the average's
    assert not np.array_equal(averaged.free_energy(digits), plain.free_energy(digits))


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_averaged_model_holds_both_and_continues_exactly(kind, digits, tmp_path):
    est = make(kind, average=HORIZON, n_iter=2).fit(digits)
    path = tmp_path / "model.npz"
    est.save(path)
    with np.load(path, allow_pickle=False) as npz:
        current = {name for name in npz.files if name.startswith("current_")}
    assert current == {f"current_{f}" for f in est._state.params._fields}

    loaded = load_estimator(path)
    assert_bitwise_equal(loaded._params(), est._params())  # the average
    assert_bitwise_equal(loaded._state.params, est._state.params)  # the current parameters
    np.testing.assert_array_equal(loaded.free_energy(digits), est.free_energy(digits))

    est.partial_fit(digits)
    loaded.partial_fit(digits)
    assert_bitwise_equal(loaded._params(), est._params())
    assert_bitwise_equal(loaded._state.params, est._state.params)

    # without averaging the file holds no second set of parameters
    make(kind, n_iter=1).fit(digits).save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as npz:
        assert not [name for name in npz.files if name.startswith("current_")]


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_averaged_fit_resumes_to_the_uninterrupted_one(kind, digits, tmp_path,
                                                                      monkeypatch):
    checkpoint = tmp_path / "ckpt.npz"
    est = make(kind, average=HORIZON, checkpoint_path=checkpoint)
    interrupt_on_call(monkeypatch, est, "_step", call=8)  # epoch 2, third minibatch
    with pytest.raises(KeyboardInterrupt):
        est.fit(digits)
    monkeypatch.undo()
    resumed = make(kind, average=HORIZON, checkpoint_path=checkpoint, resume=True).fit(digits)
    uninterrupted = make(kind, average=HORIZON).fit(digits)
    assert_bitwise_equal(resumed._params(), uninterrupted._params())
    assert_bitwise_equal(resumed._state.params, uninterrupted._state.params)
    assert_bitwise_equal(resumed._state.velocity, uninterrupted._state.velocity)


def test_switching_averaging_off_goes_on_from_the_current_parameters(digits):
    est = make("rbm", average=HORIZON, n_iter=2).fit(digits)
    est.components_ = est.components_ + 1.0  # while averaging, edits do not reach training
    est.set_params(average=0)
    est.partial_fit(digits)
    plain = make("rbm", n_iter=2).fit(digits)
    plain.partial_fit(digits)
    assert est._state.average is None
    assert_bitwise_equal(est._params(), plain._params())


@pytest.mark.parametrize("value", [-1, 2.5, True, "1000"])
def test_average_must_be_a_nonnegative_integer(value, digits):
    with pytest.raises(ValueError, match="average"):
        make("rbm", average=value).fit(digits)
