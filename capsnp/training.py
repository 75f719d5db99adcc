"""The minibatch stochastic-gradient loop shared by every estimator.

An estimator describes its model by a :class:`Objective`, four small pure functions:

* ``init_params(X, rng) -> params``: the initial parameter container (``PParams``, ...);
* ``init_chains(params, X, rng) -> chains``: the persistent Markov chains;
* ``step(params, batch, chains, rng) -> (grad, chains, stats)``: the ascent direction of the
  log-likelihood estimated on one minibatch (a parameter container of the same type as
  ``params``), the advanced chains, and a dict of scalar statistics to average over the epoch
  (e.g. the Metropolis-Hastings acceptance rate);
* ``monitor(params, X_monitor, rng) -> dict``: scalar metrics computed once per epoch;
* ``update`` (optional): the checked momentum step, :func:`checked_sgd_update` by default (the
  estimators pass the compiled twin, ``capsnp.kernels.training.checked_sgd_update``, which does
  the step and both finiteness checks in one pass over each parameter).

:func:`run_epochs` is the loop itself: shuffle, split into minibatches, step, update with
momentum and weight decay, check for non-finite numbers, time and monitor each epoch. All the
bookkeeping that must survive between calls (parameters, velocities, chains, epoch count, and
the position inside an unfinished epoch) sits in a :class:`TrainingState`, so ``partial_fit``
simply calls the loop again and a checkpoint is the state plus the random generators' states.

Interruptions. The loop changes the state only at consistent points: after a minibatch whose
gradient and new parameters are finite, and at the end of an epoch. If anything interrupts it
(``KeyboardInterrupt`` from Ctrl-C, ``FloatingPointError`` from a diverging update, any other
exception) the state and both generators are put back to the last consistent point before the
exception propagates. Resuming from there (the same state, the same generator states, the same
data) continues the run exactly as if it had not been interrupted.

Update rule, for every parameter ``theta`` with ascent direction ``g`` (weight decay only on
the weights ``W``, as in Hinton's practical guide, section 10)::

    velocity <- momentum * velocity + lr * (g - weight_decay * W)
    theta    <- theta + velocity

Sparsity targets (optional, ``sparsity_cost > 0`` in the RBM and Model R estimators): the
hidden biases' ascent direction gains ``cost * (target - q)``, q being the minibatch's mean
data-side firing probability of each hidden unit (docs/MODEL_RB.md (4b.11), Lee, Ekanadham and
Ng 2008; Hinton's practical guide, section 11): the gradient of a penalty that pulls every
unit's firing probability on the data towards the target.

Parameter averaging (optional, ``average=K`` in the loop and the estimators): after every
update, an exponential moving average of the parameters with a horizon of ``K`` updates,

    theta_avg <- theta_avg + (theta - theta_avg) / K     (theta_avg = theta after the first update)

It only reads the path of ``theta``: the steps, the chains and the draws are those of training
without it. At the end of a noisy stochastic ascent the average sits closer to the optimum than
the last iterate (Polyak and Juditsky 1992; docs/results.md sections 21 and 22 measure it).
"""

import math
import sys
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np

__all__ = [
    "Objective",
    "TrainingState",
    "initial_state",
    "learning_rate_at",
    "momentum_at",
    "moving_average",
    "sparsity_penalty",
    "sparsity_gradient",
    "sgd_update",
    "checked_sgd_update",
    "check_finite",
    "check_finite_statistics",
    "minibatches",
    "run_epochs",
]

# Epochs at the start of training during which momentum is capped at 0.5 (Hinton's guide).
MOMENTUM_WARMUP_EPOCHS = 5
WARMUP_MOMENTUM = 0.5


@dataclass(frozen=True)
class Objective:
    """The model-specific functions the training loop calls (see the module docstring)."""

    init_params: Callable
    init_chains: Callable
    step: Callable
    monitor: Callable
    update: Callable = None  # None: checked_sgd_update


@dataclass
class TrainingState:
    """Everything the loop carries from one minibatch (and one ``partial_fit`` call) to the next.

    Attributes
    ----------
    params : NamedTuple of ndarrays
        The model parameters (``PParams``, ``RParams`` or ``RBMParams``).
    velocity : NamedTuple of ndarrays
        Momentum buffers, same container and shapes as ``params``.
    chains : object
        The persistent chains as returned by ``Objective.init_chains`` (``None`` for CD-k).
    epoch : int
        Number of completed epochs.
    history : list of dict
        One record per completed epoch.
    order : ndarray of shape (n,) or None
        Row permutation of the unfinished epoch (None between epochs).
    batches_done : int
        Minibatches of the unfinished epoch already applied.
    partial : dict
        Running sums of the unfinished epoch: ``{"seconds": float, "sums": {...},
        "counts": {...}}`` (empty between epochs). Replaced, never modified in place.
    average : NamedTuple of ndarrays or None
        The moving average of ``params`` when the loop averages (:func:`moving_average`), same
        container and shapes; None before the first averaged update and without averaging.
    """

    params: tuple
    velocity: tuple
    chains: object = None
    epoch: int = 0
    history: list = field(default_factory=list)
    order: object = None
    batches_done: int = 0
    partial: dict = field(default_factory=dict)
    average: tuple = None

    @property
    def in_epoch(self):
        """True while an epoch is unfinished (e.g. after an interrupted run)."""
        return self.order is not None

    def end_epoch(self):
        """Forget the position inside an unfinished epoch (the parameters are kept)."""
        self.order, self.batches_done, self.partial = None, 0, {}


def initial_state(objective, X, rng, persistent=True):
    """A fresh :class:`TrainingState`: initial parameters, zero velocities, chains.

    Draws from ``rng`` in this order: ``objective.init_params``, then (if ``persistent``)
    ``objective.init_chains``.

    Parameters
    ----------
    objective : Objective
    X : ndarray of shape (n, ...), training data in the model's layout
    rng : np.random.Generator
    persistent : bool
        False for CD-k: no persistent chains (the step starts its chains at the minibatch).

    Returns
    -------
    TrainingState
    """
    params = objective.init_params(X, rng)
    velocity = type(params)(*(np.zeros_like(p) for p in params))
    chains = objective.init_chains(params, X, rng) if persistent else None
    return TrainingState(params=params, velocity=velocity, chains=chains)


def learning_rate_at(epoch, learning_rate, n_epochs, schedule="constant", final_ratio=1.0):
    """Learning rate of a (0-based) epoch.

    ``"constant"`` keeps ``learning_rate``. ``"linear"`` decays it linearly from
    ``learning_rate`` in the first epoch to ``learning_rate * final_ratio`` in epoch
    ``n_epochs - 1`` and stays there afterwards (e.g. in later ``partial_fit`` calls).

    Parameters
    ----------
    epoch : int
    learning_rate : float
    n_epochs : int, length of the schedule
    schedule : {"constant", "linear"}
    final_ratio : float

    Returns
    -------
    float
    """
    if schedule == "constant":
        return float(learning_rate)
    if schedule != "linear":
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {schedule!r}")
    progress = min(epoch, n_epochs - 1) / max(n_epochs - 1, 1)  # in [0, 1]
    return float(learning_rate) * (1.0 + (float(final_ratio) - 1.0) * progress)


def momentum_at(epoch, momentum):
    """Momentum of a (0-based) epoch: at most 0.5 for the first 5 epochs, then ``momentum``.

    ``momentum = 0`` therefore stays plain SGD throughout.
    """
    if epoch < MOMENTUM_WARMUP_EPOCHS:
        return min(float(momentum), WARMUP_MOMENTUM)
    return float(momentum)


def moving_average(average, params, horizon):
    """The parameters' exponential moving average after one more update (module docstring).

    Parameters
    ----------
    average : NamedTuple of ndarrays or None
        The average so far; None before the first update (the average then starts at ``params``).
    params : NamedTuple of ndarrays, the parameters after the update, same container and shapes
    horizon : int >= 1, K: each update moves the average by 1/K of its distance to ``params``

    Returns
    -------
    NamedTuple of new arrays (the inputs are not modified), dtypes those of ``params``
    """
    if average is None:
        return type(params)(*(np.array(p, copy=True) for p in params))
    horizon = float(horizon)
    return type(params)(*(_moved_towards(a, p, horizon) for a, p in zip(average, params)))


def _moved_towards(a, p, horizon):
    """``a + (p - a) / horizon`` in p's dtype, built in one new array where a and p share a
    dtype (the expression written out allocates three; the same operations, the same bits)."""
    out = np.subtract(p, a)  # p - a, in the promoted dtype
    out /= horizon
    out += a
    return out.astype(p.dtype, copy=False)


def sparsity_penalty(x, target, cost):
    """The sparsity penalty (4b.11) of hidden units whose total inputs on B data images are x.

        Omega = lambda (1/B) sum_n sum_k CE(p, sigmoid(x_nk))
              = lambda (1/B) sum_n sum_k [softplus(x_nk) - p x_nk],

    the cross-entropy between the target p and each unit's firing probability, summed over the
    units and averaged over the images (``CE(p, s) = -p log s - (1 - p) log(1 - s)``).

    Parameters
    ----------
    x : ndarray of shape (B, H) or (B, J, d_h), total inputs of the hidden units
    target : float in (0, 1), p
    cost : float >= 0, lambda

    Returns
    -------
    float, the penalty (to be minimised)
    """
    x = np.asarray(x, dtype=np.float64)  # (B, ...)
    return float(cost * (np.logaddexp(0.0, x) - target * x).sum() / x.shape[0])


def sparsity_gradient(q, target, cost):
    """Ascent direction of the hidden biases under the sparsity penalty (4b.11).

    A hidden bias adds to its unit's input on every image, so ``-dOmega/db_k = lambda (p -
    q_k)`` with ``q_k = (1/B) sum_n sigmoid(x_nk)``, the minibatch's mean firing probability of
    unit k on the data (Lee, Ekanadham and Ng 2008 use this step on the biases alone; Hinton's
    guide keeps a running mean of q, here the minibatch's own).

    Parameters
    ----------
    q : ndarray of shape (H,) or (J, d_h), mean data-side firing probabilities
    target : float in (0, 1), p
    cost : float >= 0, lambda

    Returns
    -------
    ndarray of the shape and dtype of q, to add to the hidden biases' ascent direction
    """
    q = np.asarray(q)
    return (cost * (target - q)).astype(q.dtype, copy=False)  # (H,) or (J, d_h)


def sgd_update(params, velocity, grad, learning_rate, momentum, weight_decay=0.0):
    """One momentum step in the ASCENT direction ``grad``, with L2 weight decay on ``W`` only.

    Parameters
    ----------
    params, velocity, grad : NamedTuples of the same type and shapes
    learning_rate, momentum, weight_decay : float

    Returns
    -------
    params, velocity : NamedTuples, new arrays (the inputs are not modified)
    """
    new_velocity = []
    for name, theta, vel, g in zip(params._fields, params, velocity, grad):
        step = g - weight_decay * theta if (name == "W" and weight_decay) else g
        new_velocity.append(momentum * vel + learning_rate * step)
    velocity = type(velocity)(*(v.astype(p.dtype, copy=False) for v, p in zip(new_velocity, params)))
    params = type(params)(*(p + v for p, v in zip(params, velocity)))
    return params, velocity


def checked_sgd_update(params, velocity, grad, learning_rate, momentum, weight_decay, epoch):
    """:func:`sgd_update` between two finiteness checks, as the training loop applies it.

    Raises ``FloatingPointError`` (:func:`check_finite`) if the gradient holds NaN or infinity,
    or if the new parameters do; ``epoch`` (1-based) and the rate go into the message.

    Returns
    -------
    params, velocity : NamedTuples, new arrays (the inputs are not modified)
    """
    check_finite(grad, "gradient", epoch, learning_rate)
    with np.errstate(over="ignore", invalid="ignore"):  # checked right below
        params, velocity = sgd_update(params, velocity, grad, learning_rate, momentum, weight_decay)
    check_finite(params, "parameters", epoch, learning_rate)
    return params, velocity


def _divergence_message(where, epoch, learning_rate):
    return (f"non-finite values in the {where} during epoch {epoch} (learning rate "
            f"{learning_rate:g}); training diverged, most likely because the learning rate is "
            f"too high: try a lower learning_rate (e.g. {learning_rate / 10:g}) or a smaller "
            f"init_scale")


def check_finite(arrays, what, epoch, learning_rate):
    """Raise ``FloatingPointError`` if any array of the container holds NaN or infinity.

    Parameters
    ----------
    arrays : NamedTuple of ndarrays
    what : str, e.g. "gradient" or "parameters"
    epoch : int, 1-based epoch number for the message
    learning_rate : float, the learning rate in use, for the message
    """
    for name, a in zip(arrays._fields, arrays):
        if not np.all(np.isfinite(a)):
            raise FloatingPointError(_divergence_message(f"{what} of {name}", epoch, learning_rate))


def check_finite_statistics(stats, epoch, learning_rate):
    """Raise ``FloatingPointError`` if a minibatch statistic (e.g. acceptance) is not finite."""
    for key, value in stats.items():
        if not math.isfinite(float(value)):
            raise FloatingPointError(_divergence_message(f"training statistic {key!r}", epoch,
                                                         learning_rate))


def minibatches(n, batch_size, rng):
    """Shuffled index arrays covering ``range(n)``, in ``ceil(n / batch_size)`` near-equal parts.

    One ``rng.permutation(n)`` call; the parts differ in size by at most one (no tiny last
    batch), like scikit-learn's ``gen_even_slices``.

    Returns
    -------
    list of int ndarrays
    """
    n_batches = max(1, math.ceil(n / batch_size))
    return np.array_split(rng.permutation(n), n_batches)


def _progress_bar(total, desc, verbose):
    """A tqdm bar over minibatches, or ``None`` when silent or stderr is not a terminal."""
    if not verbose or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr)


def _format_record(record):
    parts = []
    for key, value in record.items():
        if key == "epoch":
            continue
        parts.append(f"{key} = {value:.4g}" if isinstance(value, float) else f"{key} = {value}")
    return ", ".join(parts)


def _snapshot(state, rng, monitor_rng):
    """A consistent point to return to: a shallow copy of the state and both generator states.

    Shallow is enough because the loop replaces arrays and dicts instead of modifying them; the
    history is only appended to, so its length is recorded.
    """
    return (replace(state), len(state.history), rng.bit_generator.state,
            monitor_rng.bit_generator.state)


def _restore(state, snapshot, rng, monitor_rng):
    """Put ``state`` and the generators back to a :func:`_snapshot`."""
    saved, n_history, rng_state, monitor_state = snapshot
    for f in fields(state):
        if f.name != "history":
            setattr(state, f.name, getattr(saved, f.name))
    del state.history[n_history:]
    rng.bit_generator.state = rng_state
    monitor_rng.bit_generator.state = monitor_state


def _accumulate(partial, stats, n_rows, seconds):
    """The running sums of an epoch after one more minibatch, as a new dict."""
    sums, counts = dict(partial.get("sums", {})), dict(partial.get("counts", {}))
    for key, value in stats.items():
        sums[key] = sums.get(key, 0.0) + float(value) * n_rows
        counts[key] = counts.get(key, 0) + n_rows
    return {"seconds": partial.get("seconds", 0.0) + seconds, "sums": sums, "counts": counts}


def run_epochs(state, objective, X, *, n_epochs, batch_size, rng, monitor_rng, X_monitor,
               learning_rate, schedule_epochs, lr_schedule="constant", lr_final_ratio=1.0,
               momentum=0.0, weight_decay=0.0, average=0, verbose=0, name="model",
               on_epoch_end=None):
    """Train for ``n_epochs`` passes over ``X``, updating ``state`` in place.

    For each epoch: one ``rng.permutation(n)`` split into ``ceil(n / batch_size)`` near-equal
    minibatches (as :func:`minibatches`), then for each minibatch ``objective.step`` (which
    draws from ``rng``), a finiteness check of its statistics, then ``objective.update``
    (:func:`checked_sgd_update`: the gradient checked, the momentum update, the new parameters
    checked), then, with ``average``, :func:`moving_average` into ``state.average``. After the
    epoch,
    ``objective.monitor`` on ``X_monitor`` with ``monitor_rng`` (a separate stream, so that
    monitoring never changes the fitted model), one record appended to ``state.history``, and
    ``on_epoch_end(state)``.

    A ``batch_size`` larger than ``n`` gives one minibatch of all ``n`` rows per epoch.

    An unfinished epoch in ``state`` (``state.in_epoch``, left by an interrupted run) is
    completed first, with its stored row order, and counts as one of the ``n_epochs``.

    Parameters
    ----------
    state : TrainingState
    objective : Objective
    X : ndarray of shape (n, ...)
        Training data in the model's layout (e.g. (n, I, d_v)); minibatches index axis 0.
    n_epochs : int
    batch_size : int
    rng : np.random.Generator
        The training stream.
    monitor_rng : np.random.Generator
    X_monitor : ndarray of shape (m, ...) or None
        Data for the per-epoch metrics; no model metrics when None or empty.
    learning_rate : float
    schedule_epochs : int
        Length of the learning-rate schedule (the estimator's ``n_iter``).
    lr_schedule : {"constant", "linear"}
    lr_final_ratio : float
    momentum, weight_decay : float
    average : int
        0: no averaging; K >= 1: keep the moving average of the parameters with a horizon of K
        updates in ``state.average`` (it never feeds back into training).
    verbose : int
        > 0 prints one line per epoch (stdout) and shows a progress bar over minibatches when
        stderr is a terminal.
    name : str, shown in the progress bar and the printed lines
    on_epoch_end : callable or None
        ``on_epoch_end(state)`` after every completed epoch, at a consistent point (e.g. to
        write a checkpoint together with the generators' states).

    Returns
    -------
    TrainingState, the same object, updated.

    Raises
    ------
    FloatingPointError
        If a gradient, a statistic or the parameters become non-finite; the message names the
        epoch. ``state`` then holds the parameters after the last finite minibatch.
    ValueError
        If the unfinished epoch in ``state`` was for a different number of rows.

    Any exception (``KeyboardInterrupt`` included) leaves ``state``, ``rng`` and
    ``monitor_rng`` at the last consistent point: after the last applied minibatch, or the
    last completed epoch.
    """
    n = X.shape[0]
    if state.in_epoch and len(state.order) != n:
        raise ValueError(f"the unfinished epoch of this training state covers "
                         f"{len(state.order)} rows but X has {n}; continue it with the same data")
    n_batches = max(1, math.ceil(n / batch_size))
    update = objective.update or checked_sgd_update
    snapshot = _snapshot(state, rng, monitor_rng)
    try:
        for _ in range(int(n_epochs)):
            epoch = state.epoch
            lr = learning_rate_at(epoch, learning_rate, schedule_epochs, lr_schedule,
                                  lr_final_ratio)
            mom = momentum_at(epoch, momentum)
            if not state.in_epoch:
                state.order = rng.permutation(n)
            bar = _progress_bar(n_batches, f"{name} epoch {epoch + 1}", verbose)
            try:
                if bar is not None:
                    bar.update(state.batches_done)
                for index in np.array_split(state.order, n_batches)[state.batches_done:]:
                    snapshot = _snapshot(state, rng, monitor_rng)
                    start = time.perf_counter()
                    grad, chains, stats = objective.step(state.params, X[index], state.chains, rng)
                    check_finite_statistics(stats, epoch + 1, lr)
                    params, velocity = update(state.params, state.velocity, grad, lr, mom,
                                              weight_decay, epoch + 1)
                    if average:
                        state.average = moving_average(state.average, params, average)
                    partial = _accumulate(state.partial, stats, len(index),
                                          time.perf_counter() - start)
                    state.params, state.velocity, state.chains = params, velocity, chains
                    state.batches_done, state.partial = state.batches_done + 1, partial
                    if bar is not None:
                        bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
            snapshot = _snapshot(state, rng, monitor_rng)
            record = _epoch_record(state.partial, epoch, n, lr, mom)
            if X_monitor is not None and len(X_monitor):
                record.update({key: float(value) for key, value in
                               objective.monitor(state.params, X_monitor, monitor_rng).items()})
            state.history.append(record)
            state.epoch += 1
            state.end_epoch()
            snapshot = _snapshot(state, rng, monitor_rng)
            if verbose:
                print(f"[{name}] epoch {epoch + 1}: {_format_record(record)}", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(state)
    except BaseException:
        _restore(state, snapshot, rng, monitor_rng)
        raise
    return state


def _epoch_record(partial, epoch, n, lr, mom):
    """The history record of a finished epoch from its running sums (metrics added later)."""
    seconds = partial.get("seconds", 0.0)
    record = {"epoch": epoch + 1, "seconds": seconds,
              "images_per_second": n / max(seconds, 1e-12), "learning_rate": lr, "momentum": mom}
    sums, counts = partial.get("sums", {}), partial.get("counts", {})
    record.update({key: sums[key] / counts[key] for key in sums})
    return record
