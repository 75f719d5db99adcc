"""The minibatch stochastic-gradient loop shared by every estimator.

An estimator describes its model by a :class:`Objective`, four small pure functions:

* ``init_params(X, rng) -> params``: the initial parameter container (``PParams``, ...);
* ``init_chains(params, X, rng) -> chains``: the persistent Markov chains;
* ``step(params, batch, chains, rng) -> (grad, chains, stats)``: the ascent direction of the
  log-likelihood estimated on one minibatch (a parameter container of the same type as
  ``params``), the advanced chains, and a dict of scalar statistics to average over the epoch
  (e.g. the Metropolis-Hastings acceptance rate);
* ``monitor(params, X_monitor, rng) -> dict``: scalar metrics computed once per epoch.

:func:`run_epochs` is the loop itself: shuffle, split into minibatches, step, update with
momentum and weight decay, check for non-finite numbers, time and monitor each epoch. All the
bookkeeping that must survive between calls (parameters, velocities, chains, epoch count) sits
in a :class:`TrainingState`, so ``partial_fit`` simply calls the loop again.

Update rule, for every parameter ``theta`` with ascent direction ``g`` (weight decay only on
the weights ``W``, as in Hinton's practical guide, section 10)::

    velocity <- momentum * velocity + lr * (g - weight_decay * W)
    theta    <- theta + velocity
"""

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = [
    "Objective",
    "TrainingState",
    "initial_state",
    "learning_rate_at",
    "momentum_at",
    "sgd_update",
    "check_finite",
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
    """

    params: tuple
    velocity: tuple
    chains: object = None
    epoch: int = 0
    history: list = field(default_factory=list)


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
            raise FloatingPointError(
                f"non-finite values in the {what} of {name} during epoch {epoch} "
                f"(learning rate {learning_rate:g}); training diverged: try a lower "
                f"learning_rate (e.g. {learning_rate / 10:g}) or a smaller init_scale"
            )


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


def run_epochs(state, objective, X, *, n_epochs, batch_size, rng, monitor_rng, X_monitor,
               learning_rate, schedule_epochs, lr_schedule="constant", lr_final_ratio=1.0,
               momentum=0.0, weight_decay=0.0, verbose=0, name="model"):
    """Train for ``n_epochs`` passes over ``X``, updating ``state`` in place.

    For each epoch: one ``rng.permutation`` (:func:`minibatches`), then for each minibatch
    ``objective.step`` (which draws from ``rng``), a finiteness check of the gradient, the
    momentum update (:func:`sgd_update`) and a finiteness check of the parameters. After the
    epoch, ``objective.monitor`` on ``X_monitor`` with ``monitor_rng`` (a separate stream, so
    that monitoring never changes the fitted model) and one record appended to
    ``state.history``.

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
    verbose : int
        > 0 prints one line per epoch (stdout) and shows a progress bar over minibatches when
        stderr is a terminal.
    name : str, shown in the progress bar and the printed lines

    Returns
    -------
    TrainingState, the same object, updated.

    Raises
    ------
    FloatingPointError
        If a gradient or the parameters become non-finite; the message names the epoch.
    """
    n = X.shape[0]
    for _ in range(int(n_epochs)):
        epoch = state.epoch
        lr = learning_rate_at(epoch, learning_rate, schedule_epochs, lr_schedule, lr_final_ratio)
        mom = momentum_at(epoch, momentum)
        batches = minibatches(n, batch_size, rng)
        bar = _progress_bar(len(batches), f"{name} epoch {epoch + 1}", verbose)
        sums, counts = {}, {}
        start = time.perf_counter()
        for index in batches:
            grad, state.chains, stats = objective.step(state.params, X[index], state.chains, rng)
            check_finite(grad, "gradient", epoch + 1, lr)
            state.params, state.velocity = sgd_update(state.params, state.velocity, grad, lr, mom,
                                                      weight_decay)
            check_finite(state.params, "parameters", epoch + 1, lr)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(index)
                counts[key] = counts.get(key, 0) + len(index)
            if bar is not None:
                bar.update(1)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        record = {"epoch": epoch + 1, "seconds": seconds, "images_per_second": n / max(seconds, 1e-12),
                  "learning_rate": lr, "momentum": mom}
        record.update({key: sums[key] / counts[key] for key in sums})
        if X_monitor is not None and len(X_monitor):
            record.update({key: float(value) for key, value in
                           objective.monitor(state.params, X_monitor, monitor_rng).items()})
        state.history.append(record)
        state.epoch += 1
        if verbose:
            print(f"[{name}] epoch {epoch + 1}: {_format_record(record)}", flush=True)
    return state
