"""scikit-learn style estimators: the thin, stateful shell around the pure model functions.

* :class:`CapsulePoE` -- Model P, the capsule product of experts (MODEL.md sec. 3);
* :class:`RoutedCapsuleRBM` -- Model R, the routed capsule RBM (MODEL.md sec. 4);
* :class:`BernoulliRBM` -- the baseline (MODEL.md sec. 5), a drop-in for scikit-learn's.

All three are unsupervised transformers (``TransformerMixin``, ``BaseEstimator``): ``fit``,
``partial_fit``, ``transform``, ``score_samples``, ``score``, ``free_energy``, ``sample``,
``evaluate`` and ``save``; :func:`load_estimator` rebuilds a fitted estimator from its file.
The constructors store their arguments unchanged; they are checked when ``fit`` or
``partial_fit`` is called.

Input: ``X`` of shape (n_samples, n_features), values in [0, 1] -- binary images (binarise grey
levels first, e.g. with :func:`capsnp.datasets.binarize`); grey values are accepted and used as
they are (as probabilities). Any real dtype (bool, integer, float, object arrays of numbers) is
converted to the estimator's ``dtype``; ``X`` is never modified in place. Refused, with a message
naming the problem and the expected form: sparse matrices and non-numeric entries
(``TypeError``); complex numbers, arrays that are not 2-D, no rows or no columns, NaN or
infinity, values outside [0, 1], a different number of features than seen in ``fit``, and image
shapes or patch sizes that do not tile (``ValueError``). A ``batch_size`` larger than the data
is clipped to it (one minibatch per epoch, as scikit-learn's BernoulliRBM does).

Training is minibatch stochastic gradient ascent on the log-likelihood (``capsnp.training``),
with CD-k (chains restart at the minibatch, ``persistent=False``) or PCD-k (``persistent=True``,
chains carried from one minibatch to the next). Everything random comes from one
``np.random.Generator`` created from ``random_state`` at the start of ``fit``; ``partial_fit``
continues that stream, so the same ``random_state`` gives the same model. The per-epoch metrics
use a second, independent stream spawned from it, so monitoring never changes the fitted model.
No global random state is used.

Backends: ``backend="numba"`` (the default) runs every model computation (training steps,
samplers, monitoring, ``transform``, ``free_energy``, ``score_samples``, ``sample``) on the
compiled kernels of :mod:`capsnp.kernels`; ``backend="numpy"`` runs the NumPy reference
modules. Both compute the same equations and draw the same random numbers in the same order, so
a fit gives the same model on either, up to rounding (about 1e-15 relative per operation in
float64). Without Numba, ``"numba"`` falls back to the reference with a one-time warning.

Checkpoints and resuming (``checkpoint_path``, ``checkpoint_every``, ``resume``; see
:meth:`CapsulePoE.fit`): a checkpoint is a model file (:mod:`capsnp.io`, no pickle) that also
records the position inside an unfinished epoch, the held-out rows and a SHA-256 of the
training data. Written atomically, it survives the process being killed mid-write. A fit that
is interrupted (Ctrl-C, or killed after a checkpoint) and then resumed with ``resume=True`` gives
exactly, bit for bit, the model of the uninterrupted fit, provided both run with the same number
of threads: BLAS (and Numba) reductions may sum in a different order with another number of
threads, which changes the last bits. For bitwise reproducibility pin them, e.g.
``threadpoolctl.threadpool_limits(1)`` and ``NUMBA_NUM_THREADS=1``.
"""

import contextlib
import hashlib
import math
import numbers
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _kernels_jit as _jit
from . import kernels
from .capsules import capsule_layout, from_capsules, predictions, to_capsules
from .io import load_model, remove_temporary_files, save_model
from .ops import sigmoid, softplus
from .model_p import PARAMS_TYPES as _P_PARAMS_TYPES
from . import model_r as _model_r_ref
from . import model_rs as _model_rs
from . import rbm as _rbm_ref
from .params import CentringOffsets, PParams, RBMParams, RBParams, RParams, RSParams
from .ais import annealing_path
from .tempering import default_temperatures, parallel_tempering
from .training import (Objective, TrainingState, initial_state, moving_average, run_epochs,
                       sparsity_gradient)

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    _sk_validate_data = None

__all__ = ["CapsulePoE", "RoutedCapsuleRBM", "BernoulliRBM", "load_estimator"]

# Visible biases start at log(p / (1 - p)) of the data's pixel means, p clipped to this range.
_BIAS_CLIP = 1e-3
# Rows per chunk when a whole data set goes through routing (bounds memory to tens of MB).
_CHUNK = 500
# With no held-out slice, metrics are computed on at most this many training rows.
_MAX_IN_SAMPLE_MONITOR = 1000
# Hyper-parameters that may differ between a checkpointed run and its resumption.
# ``backend`` is not among them: the two backends may differ in the last bits, so a resumed run
# must use the backend of the checkpoint to continue it exactly.
_RESUME_FREE_PARAMETERS = frozenset({"verbose", "checkpoint_path", "checkpoint_every", "resume"})
# Checkpoints written before the ``backend`` hyper-parameter existed ran the NumPy reference.
_BACKEND_OF_OLD_FILES = "numpy"


# ----------------------------------------------------------------------------- small helpers

_EXPECTED_X = "a dense array of shape (n_samples, n_features) with values in [0, 1]"


def _validate(estimator, X, reset, dtype, what="X"):
    """Validated data: a 2-D float array of ``dtype`` with values in [0, 1].

    ``X`` itself is never modified; the result is ``X`` itself when it already has that form,
    otherwise a converted copy. Bad input raises, naming the problem and the expected form:

    * ``TypeError``: a sparse matrix or array; non-numeric entries (strings, dates, objects
      that are not numbers);
    * ``ValueError``: complex numbers; an array that is not 2-D; no rows or no columns; a
      number of columns other than ``n_features_in_`` (when ``reset=False``); NaN or
      infinity; values outside [0, 1].

    ``reset=True`` (``fit``) records ``n_features_in_`` (and ``feature_names_in_`` for a
    DataFrame); ``reset=False`` checks against them.
    """
    name = type(estimator).__name__
    if sp.issparse(X):
        raise TypeError(f"{name} does not accept sparse input (got a {type(X).__name__}); pass "
                        f"{_EXPECTED_X}, e.g. X.toarray()")
    array = _numeric_array(X, what)
    if array.ndim != 2:
        raise ValueError(_ndim_message(array, what))
    kwargs = dict(reset=reset, dtype=np.dtype(dtype).type, accept_sparse=False, ensure_2d=True)
    try:
        if _sk_validate_data is not None:
            X = _sk_validate_data(estimator, X, ensure_all_finite=False, **kwargs)
        else:  # pragma: no cover - scikit-learn < 1.6
            X = estimator._validate_data(X, force_all_finite=False, **kwargs)
    except ValueError as exc:
        message = str(exc)
        if what != "X" and message.startswith("X "):  # name the argument, e.g. sample's init
            raise ValueError(what + message[1:]) from None
        raise
    _check_values(array, name, what)  # on the values as given, before any rounding to dtype
    return X


def _numeric_array(X, what):
    """``np.asarray(X)``, with object arrays of numbers converted to float64; else TypeError.

    ``None`` entries of an object array become NaN (and are then refused as NaN).
    """
    if X is None:
        raise TypeError(f"{what} is None; pass {_EXPECTED_X}")
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not an array of equal-length rows ({exc}); pass "
                         f"{_EXPECTED_X}") from None
    kind = array.dtype.kind
    if kind == "c":
        raise ValueError(f"Complex data not supported: {what} has dtype {array.dtype}; pass "
                         f"{_EXPECTED_X}")
    if kind == "O":
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what} has dtype object and not all its entries are real numbers "
                            f"({exc}); pass {_EXPECTED_X}") from None
    if kind not in "biuf":
        raise TypeError(f"{what} has dtype {array.dtype}, which is not numeric; pass "
                        f"{_EXPECTED_X}")
    return array


def _ndim_message(array, what):
    if array.ndim == 0:
        hint = "Reshape your data: a single value is not a data set."
    elif array.ndim == 1:
        hint = ("Reshape your data: X.reshape(1, -1) for a single image, X.reshape(-1, 1) for "
                "a single feature.")
    else:
        hint = "Reshape your data: flatten each image, e.g. X.reshape(len(X), -1)."
    return (f"{what} must be 2-D, {_EXPECTED_X}; got a {array.ndim}-D array of shape "
            f"{array.shape}. {hint}")


def _check_values(array, name, what):
    """ValueError for NaN, infinity or values outside [0, 1] in a numeric 2-D array."""
    if array.size == 0 or array.dtype.kind == "b":
        return
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            problem = "NaN" if np.isnan(array[row, col]) else "infinity"
            raise ValueError(f"{what} contains {problem} (first at row {row}, column {col}); "
                             f"{name} expects finite values in [0, 1]")
    low, high = array.min(), array.max()
    if low < 0 or high > 1:
        raise ValueError(
            f"{'Negative values in data: ' if low < 0 else ''}{name} expects values in [0, 1] "
            f"(binary images or pixel probabilities), got values in [{float(low):g}, "
            f"{float(high):g}]; scale grey levels with capsnp.datasets.to_unit_interval or "
            f"binarize them with capsnp.datasets.binarize"
        )


def _float_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _data_logits(X, dtype):
    """Visible biases from the data: ``log(p / (1 - p))`` of the pixel means, p clipped.

    Parameters
    ----------
    X : ndarray of shape (n, ...)

    Returns
    -------
    ndarray of shape X.shape[1:]
    """
    p = np.clip(X.mean(axis=0, dtype=np.float64), _BIAS_CLIP, 1.0 - _BIAS_CLIP)
    return np.log(p / (1.0 - p)).astype(dtype)


def _bernoulli(p, rng, dtype):
    """Binary sample ``x = (u < p)`` from one ``rng.random(p.shape)`` call."""
    return (rng.random(np.shape(p)) < p).astype(dtype)


def _chunked(fn, X, *args):
    """Apply ``fn(X_chunk, *args)`` to chunks of rows and concatenate the results along axis 0."""
    if X.shape[0] <= _CHUNK:
        return fn(X, *args)
    return np.concatenate([fn(X[s:s + _CHUNK], *args) for s in range(0, X.shape[0], _CHUNK)])


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_number(name, value, low=None, high=None, integer=False, low_open=False, high_open=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def _check_pair(name, value):
    """``(height, width)`` from an int or a pair of ints, all >= 1; else ValueError."""
    def positive_int(t):
        return isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 1

    pair = (value, value) if positive_int(value) else value
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2 \
            or not all(positive_int(t) for t in pair):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of positive "
                         f"ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_sparsity(estimator):
    """The sparsity hyperparameters (4b.11): a target in (0, 1) and a cost >= 0."""
    _check_number("sparsity_target", estimator.sparsity_target, 0, 1, low_open=True, high_open=True)
    _check_number("sparsity_cost", estimator.sparsity_cost, 0)
    _check_choice("sparsity_on", estimator.sparsity_on, ("biases", "inputs"))


def _check_centring_average(estimator, centring, needs):
    """``centring_average`` >= 0; an average (>= 1) only with centred steps (``centring``,
    named ``needs`` in the message) and persistent chains, which carry it."""
    _check_number("centring_average", estimator.centring_average, 0, integer=True)
    if int(estimator.centring_average) and not (centring and estimator.persistent):
        raise ValueError(f"centring_average={estimator.centring_average!r} needs {needs} and "
                         f"persistent=True: it averages the centred steps' offsets and is "
                         f"carried with the persistent chains")


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_log_z(log_z):
    """``log_z`` as a Python float; ValueError unless it is a finite real number."""
    if not isinstance(log_z, numbers.Real) or not math.isfinite(log_z):
        raise ValueError(f"log_z must be a finite number, e.g. capsnp.exact_log_partition(model) "
                         f"or capsnp.ais_log_partition(model).log_z; got {log_z!r}")
    return float(log_z)


def _jsonable(obj):
    """Hyper-parameters, histories and generator states as JSON values.

    Arrays are tagged with their dtype, and NaN and infinities (not valid JSON) are tagged
    strings, so that :func:`_from_jsonable` gives back equal values.
    """
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}  # 'nan', 'inf' or '-inf'
    return obj


def _from_jsonable(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_jsonable(v) for v in obj]
    return obj


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _generator_from_state(state):
    """A ``np.random.Generator`` whose bit generator is restored to ``state`` (a dict)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown random generator state {name!r}; expected one of "
                         f"{', '.join(_BIT_GENERATORS)}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _fingerprint(X):
    """SHA-256 of an array's shape, dtype and bytes: names a checkpoint's training data."""
    X = np.ascontiguousarray(X)
    digest = hashlib.sha256(f"{X.shape} {X.dtype.str} ".encode())
    digest.update(memoryview(X).cast("B"))
    return digest.hexdigest()


# ----------------------------------------------------------------------------- shared shell


class _EnergyEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What every capsnp estimator shares: validation, the fit driver, sampling and files.

    Subclasses provide the model through a handful of hooks:

    * ``_setup(n_features)``: check hyper-parameters and set the layout attributes;
    * ``_to_layout(X)`` (n, D) -> model layout, ``_from_layout(V)`` back to images (n, D);
    * ``_init_params(X, rng)`` -> parameter container, ``_params()`` / ``_set_params(p)``
      between the container and the public fitted attributes, ``_attribute_shapes()`` their
      shapes (to check files);
    * ``_start_chains(params, v, rng)`` -> chain state from binary visible states,
      ``_chain_visible(chains)``, ``_sweep(params, chains, rng)`` -> (chains, stats);
    * ``_step(params, batch, chains, rng)`` and ``_monitor(params, X, rng)`` for the loop.
    """

    # Names of the fitted parameter attributes, in the order of the parameter container.
    _param_attributes = ()
    # Sweeps that alternate Numba kernels and BLAS products (Model R's, the RBM's) train faster
    # on 2 cores with BLAS on one thread (docs/results.md sections 19 and 35)
    _single_threaded_blas = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True  # values must lie in [0, 1]
        return tags

    # ------------------------------------------------------------------ hyper-parameters

    def _check_training_hyperparameters(self):
        _check_number("learning_rate", self.learning_rate, 0, low_open=True)
        _check_number("batch_size", self.batch_size, 1, integer=True)
        _check_number("n_iter", self.n_iter, 0, integer=True)
        _check_number("cd_k", self.cd_k, 1, integer=True)
        _check_number("momentum", self.momentum, 0, 1, high_open=True)
        _check_number("weight_decay", self.weight_decay, 0)
        _check_number("average", self.average, 0, integer=True)
        _check_bool("persistent", self.persistent)
        if self.n_chains is not None:
            _check_number("n_chains", self.n_chains, 1, integer=True)
        _check_choice("chain_init", self.chain_init, ("data", "noise"))
        _check_number("chain_restart", self.chain_restart, 0, 1, high_open=True)
        if float(self.chain_restart) and not self.persistent:
            raise ValueError(f"chain_restart={self.chain_restart!r} restarts persistent chains; "
                             f"CD-k (persistent=False) has none")
        _check_number("monitor_fraction", self._monitor_fraction(), 0, 1, high_open=True)
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path,
                                                               (str, os.PathLike)):
            raise ValueError(f"checkpoint_path must be None or a file path, got "
                             f"{self.checkpoint_path!r}")
        _check_number("checkpoint_every", self.checkpoint_every, 1, integer=True)
        _check_bool("resume", self.resume)
        _check_choice("backend", self.backend, kernels.BACKENDS)
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume=True continues from the file at checkpoint_path, which is "
                             "None; pass the checkpoint file as checkpoint_path")
        return _float_dtype(self.dtype)

    def _kernels(self, model):
        """The module of ``model`` ("model_p", "model_r", "rbm" or "routing") on ``backend``.

        ``kernels.get_backend(backend, model)``: the compiled namespace for "numba" (the NumPy
        reference where Numba is missing, with a one-time warning), the reference module for
        "numpy". Both have the same functions, names and signatures.
        """
        return kernels.get_backend(kernels.resolve_backend(self.backend), model)

    def _n_chains(self):
        return int(self.batch_size if self.n_chains is None else self.n_chains)

    def _blas_setting(self):
        """The BLAS threading to train and sample under: with ``_single_threaded_blas`` and the
        compiled kernels on several threads, one thread per BLAS call (the kernels' threads
        then have the cores); else unchanged."""
        if self._single_threaded_blas and kernels.resolve_backend(self.backend) == "numba":
            return _jit.single_threaded_blas()
        return contextlib.nullcontext()

    def _monitor_fraction(self):
        return getattr(self, "monitor_fraction", 0.0)

    def _schedule(self):
        """(lr_schedule, lr_final_ratio) of the estimator."""
        return getattr(self, "lr_schedule", "constant"), getattr(self, "lr_final_ratio", 1.0)

    def _hyperparameters_json(self):
        """``get_params()`` as JSON values: dtype by name, paths as strings, and a Generator
        ``random_state`` as None (its state is stored separately)."""
        hyper = {}
        for key, value in self.get_params().items():
            if key == "dtype":
                value = np.dtype(value).name
            elif key == "random_state" and not isinstance(value, (numbers.Integral, type(None))):
                value = None
            elif key == "checkpoint_path" and value is not None:
                value = os.fspath(value)
            hyper[key] = value
        return _jsonable(hyper)

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y=None):
        """Fit the model to X by ``n_iter`` epochs of minibatch stochastic gradient ascent.

        A held-out slice of ``round(monitor_fraction * n_samples)`` rows (drawn at random) is
        kept out of training and used for the per-epoch metrics in ``history_``; when it would
        be empty, the metrics use up to 1,000 training rows instead. A ``batch_size`` larger
        than the number of training rows is clipped to it (one minibatch per epoch, as in
        scikit-learn's BernoulliRBM); the number of persistent chains is not.

        Checkpoints: with ``checkpoint_path`` set, the whole training state (parameters,
        momentum buffers, persistent chains, the random generators' states, epoch count,
        history, hyper-parameters, the held-out rows and a SHA-256 of X) is written to that
        file after every ``checkpoint_every`` epochs and after the last one, atomically (a
        killed process leaves the previous checkpoint intact). With ``resume=True``, fit
        continues from that file instead of starting over; X and the hyper-parameters (all but
        ``verbose`` and the checkpoint settings) must be those of the checkpointed run. The
        result equals the uninterrupted fit bit for bit, at a fixed number of threads (see the
        module notes).

        Ctrl-C: a ``KeyboardInterrupt`` stops training at the last consistent point (after the
        last completed minibatch), keeps that state in the estimator (its fitted attributes
        are usable), writes it as a checkpoint when ``checkpoint_path`` is set, and is
        re-raised with a message naming the checkpoint.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), values in [0, 1]
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        ValueError
            For bad X or hyper-parameters; with ``resume=True``, for a file that is not a
            readable checkpoint of this class or was written with other hyper-parameters or
            for other data.
        FileNotFoundError
            With ``resume=True`` and no file at ``checkpoint_path``, or a ``checkpoint_path``
            whose directory does not exist.
        FloatingPointError
            If training diverges (non-finite gradient, statistic or parameters; usually a
            learning rate that is too high). The message names the epoch. The estimator keeps
            the parameters of the last finite minibatch; the checkpoint file keeps the last
            checkpointed epoch.
        """
        X = self._start(X)
        self._n_samples, self._data_sha256, self._checkpoint_epoch = X.shape[0], None, None
        if self.checkpoint_path is not None:
            self._prepare_checkpoint_path()
            self._data_sha256 = _fingerprint(X)
        if self.resume:
            X_train, X_monitor = self._resume_from_checkpoint(X)
        else:
            X_train, X_monitor = self._hold_out(X)
            self._initialise(X_train)
        n_epochs = max(int(self.n_iter) - self._state.epoch, 0)
        self._train(X_train, X_monitor, n_epochs, checkpoints=True)
        return self

    def partial_fit(self, X, y=None):
        """One more epoch over X (in minibatches of ``batch_size``), continuing the training.

        The first call initialises the model from X as :meth:`fit` does (without a held-out
        slice). ``partial_fit(X)`` on a fresh estimator therefore gives exactly the model of
        ``fit(X)`` with ``n_iter=1`` and ``monitor_fraction=0``. The learning-rate schedule and
        the momentum warm-up count the epochs of all calls. ``partial_fit`` writes no
        checkpoints (use :meth:`save`); an unfinished epoch left by an interrupted ``fit`` is
        not completed: the epoch starts afresh from the current parameters.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), values in [0, 1]
        y : ignored

        Returns
        -------
        self
        """
        if not hasattr(self, "_state"):
            X = self._start(X)
            self._monitor_rows = None
            self._initialise(X)
        else:
            dtype = self._check_training_hyperparameters()
            X = self._to_layout(_validate(self, X, reset=False, dtype=dtype))
            self._state.end_epoch()
        self._train(X, X[:_MAX_IN_SAMPLE_MONITOR], 1)
        return self

    def _start(self, X):
        """Validate X for a fresh fit, set the layout, create the random streams."""
        dtype = self._check_training_hyperparameters()
        X = _validate(self, X, reset=True, dtype=dtype)
        self._setup(X.shape[1])
        self._rng = np.random.default_rng(self.random_state)
        self._monitor_rng = self._rng.spawn(1)[0]
        return self._to_layout(X)

    def _hold_out(self, X):
        """Draw fit's held-out rows from the monitoring stream; return (X_train, X_monitor)."""
        n = X.shape[0]
        n_monitor = int(round(self._monitor_fraction() * n))
        rows = None
        if 1 <= n_monitor < n:
            rows = np.sort(self._monitor_rng.permutation(n)[:n_monitor])
        return self._split_rows(X, rows)

    def _split_rows(self, X, monitor_rows):
        """(X_train, X_monitor) for the held-out rows ``monitor_rows`` (None: no held-out rows)."""
        self._monitor_rows = monitor_rows
        if monitor_rows is None:
            return X, X[:_MAX_IN_SAMPLE_MONITOR]
        train_rows = np.setdiff1d(np.arange(X.shape[0]), monitor_rows)  # sorted
        return X[train_rows], X[monitor_rows]

    def _objective(self):
        step = self._restarting_step if float(self.chain_restart) else self._step
        return Objective(init_params=self._init_params, init_chains=self._init_chains,
                         step=step, monitor=self._monitor,
                         update=self._kernels("training").checked_sgd_update)

    def _restarting_step(self, params, batch, chains, rng):
        """``_step`` after :meth:`_restart_chains` (docs/MODEL_RB.md (5.12))."""
        return self._step(params, batch, self._restart_chains(params, chains, rng), rng)

    def _restart_chains(self, params, chains, rng):
        """Chain restarts (docs/MODEL_RB.md (5.12)): each persistent chain, independently with
        probability ``chain_restart``, replaced by a fresh chain at visible-bias noise.

        Draws one ``rng.random(n_chains)``, then, when some chain restarts, the noise (one
        ``rng.random``) and whatever ``_start_chains`` draws for the restarted rows only.
        """
        v = self._chain_visible(chains)  # (n_chains, ...) in the model's layout
        rows = np.flatnonzero(rng.random(v.shape[0]) < float(self.chain_restart))  # (R,)
        if rows.size == 0:
            return chains
        p = np.broadcast_to(self._visible_noise_probability(params), (rows.size,) + v.shape[1:])
        fresh = self._start_chains(params, _bernoulli(p, rng, v.dtype), rng)  # R chains
        return self._with_chain_rows(params, chains, rows, fresh)

    def _initialise(self, X):
        """Parameters, zero velocities and persistent chains (drawn from ``self._rng``)."""
        self._state = initial_state(self._objective(), X, self._rng, bool(self.persistent))
        self._publish()

    def _init_chains(self, params, X, rng):
        """``n_chains`` persistent chains from random training rows or from visible-bias noise.

        ``chain_init="data"``: rows drawn with ``rng.choice`` (without replacement when there
        are enough rows), then binarised by one ``rng.random`` call (binary rows are unchanged).
        ``"noise"``: independent pixels with ``p = sigmoid(visible biases)``.
        """
        n_chains = self._n_chains()
        if self.chain_init == "data":
            rows = rng.choice(X.shape[0], size=n_chains, replace=n_chains > X.shape[0])
            p = X[rows]
        else:
            p = np.broadcast_to(self._visible_noise_probability(params), (n_chains,) + X.shape[1:])
        return self._start_chains(params, _bernoulli(p, rng, X.dtype), rng)

    def _train(self, X, X_monitor, n_epochs, checkpoints=False):
        """Run the shared loop; with ``checkpoints``, write them (and one on Ctrl-C)."""
        state = self._state
        if state.average is None:
            state.params = self._params()  # edits of the public attributes take effect
        if not int(self.average):
            state.average = None  # averaging switched off: go on from the current parameters
        schedule, final_ratio = self._schedule()
        writing = checkpoints and self.checkpoint_path is not None
        try:
            with self._blas_setting():
                run_epochs(state, self._objective(), X, n_epochs=n_epochs,
                           batch_size=int(self.batch_size), rng=self._rng,
                           monitor_rng=self._monitor_rng, X_monitor=X_monitor,
                           learning_rate=float(self.learning_rate),
                           schedule_epochs=max(int(self.n_iter), 1), lr_schedule=schedule,
                           lr_final_ratio=final_ratio, momentum=float(self.momentum),
                           weight_decay=float(self.weight_decay), average=int(self.average),
                           verbose=self.verbose,
                           name=type(self).__name__,
                           on_epoch_end=self._checkpoint_due if writing else None)
        except KeyboardInterrupt as exc:
            # run_epochs has put the state back to its last consistent point
            if writing:
                self._write_checkpoint()
                exc.args = (f"training interrupted after {self._position()}; checkpoint "
                            f"saved to {self.checkpoint_path}; continue with resume=True",)
            raise
        except FloatingPointError as exc:
            if writing:
                kept = ("no checkpoint was written before" if self._checkpoint_epoch is None
                        else f"the checkpoint {self.checkpoint_path} of epoch "
                             f"{self._checkpoint_epoch} is kept")
                exc.args = (f"{exc.args[0]}; {kept}",)
            raise
        finally:
            self._publish()

    def _position(self):
        """Where training stands, in words: "3 epochs" or "3 epochs and 5 of 10 minibatches"."""
        state = self._state
        text = f"{state.epoch} epoch{'s' * (state.epoch != 1)}"
        if state.in_epoch:
            n_batches = max(1, math.ceil(len(state.order) / int(self.batch_size)))
            text += f" and {state.batches_done} of {n_batches} minibatches"
        return text

    def _publish(self):
        """Copy the training state into the public fitted attributes (the parameters' moving
        average when training keeps one, else the current parameters)."""
        state = self._state
        self._set_params(state.params if state.average is None else state.average)
        self.history_ = state.history
        self.n_iter_ = state.epoch
        if state.chains is None:
            self.persistent_chains_ = None
        else:
            self.persistent_chains_ = self._from_layout(self._chain_visible(state.chains))

    # ------------------------------------------------------------------ checkpoints

    def _prepare_checkpoint_path(self):
        """Refuse a checkpoint path in a missing directory; remove leftover temporary files."""
        path = Path(self.checkpoint_path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"checkpoint_path={os.fspath(self.checkpoint_path)!r}: the "
                                    f"directory {path.parent} does not exist")
        remove_temporary_files(path)

    def _checkpoint_due(self, state):
        """``run_epochs``' end-of-epoch hook: write every ``checkpoint_every`` epochs and last."""
        if state.epoch % int(self.checkpoint_every) == 0 or state.epoch >= int(self.n_iter):
            self._write_checkpoint()

    def _write_checkpoint(self):
        """Write the training state to ``checkpoint_path`` (atomically, see capsnp.io)."""
        self._publish()
        arrays, meta = self._file_contents()
        if self._monitor_rows is not None:
            arrays["monitor_rows"] = self._monitor_rows
        meta["checkpoint"] = {"n_samples": int(self._n_samples), "data_sha256": self._data_sha256}
        save_model(self.checkpoint_path, arrays, meta)
        self._checkpoint_epoch = self._state.epoch

    def _resume_from_checkpoint(self, X):
        """Restore the state of the checkpoint at ``checkpoint_path``; return its data split."""
        path = Path(self.checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}; set "
                                    f"resume=False to start a new fit")
        arrays, meta = load_model(path)
        info = meta.get("checkpoint")
        if not isinstance(info, dict):
            raise ValueError(f"{path} is a model file, not a checkpoint (it does not record the "
                             f"training data); continue training a saved model with "
                             f"load_estimator(path).partial_fit(X)")
        if meta.get("model") != type(self).__name__:
            raise ValueError(f"{path} is a checkpoint of a {meta.get('model')}, not of a "
                             f"{type(self).__name__}")
        changed = _changed_hyperparameters(self._hyperparameters_json(),
                                           meta.get("hyperparameters"),
                                           type(self)()._hyperparameters_json())
        if changed:
            raise ValueError(f"{path} was written with other hyper-parameters ({changed}); resume "
                             f"with the same ones, or set resume=False to start over")
        if info.get("data_sha256") != self._data_sha256:
            raise ValueError(f"{path} was written for other training data ({info.get('n_samples')} "
                             f"rows) than X ({X.shape[0]} rows, different SHA-256); resume with "
                             f"the same X, or set resume=False to start over")
        self._restore(arrays, meta, source=path)
        self._checkpoint_epoch = self._state.epoch
        rows = arrays.get("monitor_rows")
        if rows is not None and (rows.ndim != 1 or rows.dtype.kind not in "iu" or rows.size == 0
                                 or rows.min() < 0 or rows.max() >= X.shape[0]):
            raise ValueError(f"{path}: malformed 'monitor_rows' (shape {rows.shape}, dtype "
                             f"{rows.dtype}); the checkpoint is corrupted")
        return self._split_rows(X, rows)

    # ------------------------------------------------------------------ inference

    def _checked(self, X, what="X"):
        """Validated X in the model layout, for a fitted estimator."""
        check_is_fitted(self)
        return self._to_layout(_validate(self, X, reset=False, dtype=_float_dtype(self.dtype),
                                         what=what))

    def evaluate(self, X, random_state=None):
        """The per-epoch metrics of ``history_``, computed on X with the fitted model.

        CapsulePoE and BernoulliRBM: free_energy, pseudo_log_likelihood (one-flip estimate,
        per image) and reconstruction_error (per image: sum over pixels of the squared
        difference between X and its deterministic mean reconstruction). RoutedCapsuleRBM:
        mean_field_iterations, elbo and reconstruction_error. All are means over the rows of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        random_state : int, Generator or None
            Seed of the pseudo-likelihood's random pixels; by default ``random_state``.

        Returns
        -------
        dict of str -> float
        """
        V = self._checked(X)
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        return self._monitor(self._params(), V, rng)

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over X (for model selection, e.g. ``GridSearchCV``)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=None, n_steps=1000, init="noise", random_state=None,
               return_probabilities=False, n_temperatures=1):
        """Draw images by running fresh Markov chains of the fitted model.

        Parameters
        ----------
        n_samples : int, optional
            Number of chains; 100 by default with ``init="noise"``, ``len(init)`` for an array.
        n_steps : int
            Sweeps of the model's sampler (MODEL.md advises judging samples after 1,000 or more).
        init : "noise" or array-like of shape (n_samples, n_features)
            Start from independent pixels with ``p = sigmoid(visible biases)``, or from the given
            images (values in [0, 1], binarised by one ``rng.random`` draw).
        random_state : int, Generator or None
            Seed of the sampling stream; by default the estimator's ``random_state`` (a fixed
            seed then gives the same samples on every call).

        return_probabilities : bool
            Return, instead of the binary last state, the probabilities of the next visible
            draw given it (RBM: ``p(v | h)`` with ``h ~ p(h | v)``; Model R: ``p(v | h, a)`` with
            ``h ~ p(h | v, a)``), the usual way to show an RBM's samples. Model P has no
            factorised visible conditional; it returns the binary state.
        n_temperatures : int, default=1
            With more than one, run parallel-tempering ladders (:mod:`capsnp.tempering`, 6.6)
            of this many inverse temperatures on the AIS path from independent pixels
            (``p = sigmoid(visible biases)``, the "noise" start) to the model, and return the
            ``beta = 1`` chains. Each sweep costs ``n_temperatures`` plain sweeps. Only with
            ``init="noise"``.

        Returns
        -------
        ndarray of shape (n_samples, n_features), in the estimator's dtype: binary, or
        probabilities in [0, 1] with ``return_probabilities``.
        """
        check_is_fitted(self)
        _check_number("n_steps", n_steps, 0, integer=True)
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        params = self._params()
        dtype = _float_dtype(self.dtype)
        if isinstance(init, str):
            _check_choice("init", init, ("noise",))
            n = 100 if n_samples is None else n_samples
            _check_number("n_samples", n, 1, integer=True)
            shape = (n,) + self._layout_shape()
            p = np.broadcast_to(self._visible_noise_probability(params), shape)
        else:
            p = self._checked(init, what="init")
            if n_samples is not None and n_samples != p.shape[0]:
                raise ValueError(f"n_samples={n_samples} but init has {p.shape[0]} rows")
        _check_number("n_temperatures", n_temperatures, 1, integer=True)
        with self._blas_setting():  # the chains' kernels have the cores
            if int(n_temperatures) > 1:
                if not isinstance(init, str):
                    raise ValueError("n_temperatures > 1 runs tempering ladders, which start at noise: "
                                     "use init='noise'")
                path = annealing_path(self, backend=self.backend)  # base: W = 0, the "noise" model
                states, _ = parallel_tempering(path, default_temperatures(n_temperatures), p.shape[0],
                                               int(n_steps), rng)
                chains = self._chains_from_path_state(states[-1], dtype)
            else:
                chains = self._start_chains(params, _bernoulli(p, rng, dtype), rng)
                for _ in range(int(n_steps)):
                    chains, _ = self._sweep(params, chains, rng)
        if return_probabilities:
            return self._from_layout(self._visible_mean(params, chains, rng))
        return self._from_layout(self._chain_visible(chains))

    def _visible_mean(self, params, chains, rng):
        """Probabilities of the next visible draw (layout shape); default: the state itself."""
        return self._chain_visible(chains)

    def _chains_from_path_state(self, state, dtype):
        """Chains in this estimator's format from a state of its annealing path (default: v)."""
        return np.asarray(state, dtype=dtype)

    # ------------------------------------------------------------------ files

    def save(self, path, metadata=None):
        """Save the fitted model to ``path`` (``.npz``, written atomically, no pickle).

        The file holds the fitted parameter arrays, the momentum buffers and persistent chains
        (so training can continue), and JSON metadata: the class, the hyper-parameters, the
        training history, the state of the random streams and anything in ``metadata``.
        :func:`load_estimator` rebuilds the estimator; its free energies equal this one's
        exactly.

        Parameters
        ----------
        path : str or os.PathLike
        metadata : dict, optional
            Extra JSON-serialisable entries (e.g. the data set and final metrics).
        """
        check_is_fitted(self)
        arrays, meta = self._file_contents()
        save_model(path, arrays, {**(metadata or {}), **meta})

    def _file_contents(self):
        """(arrays, metadata) of a model file: parameters, velocities, chains, position, RNGs.

        The fitted attributes are stored under their names; with averaging, they hold the
        average and the current parameters (those training continues from) are stored as
        ``current_<field>`` of the container, as the velocities are.
        """
        state = self._state
        arrays = {name: getattr(self, name) for name in self._param_attributes}
        arrays.update({f"velocity_{f}": v for f, v in zip(state.velocity._fields, state.velocity)})
        if state.average is not None:
            arrays.update({f"current_{f}": p for f, p in zip(state.params._fields, state.params)})
        if state.chains is not None:
            arrays.update(self._chain_arrays(state.chains))
        meta = {
            "model": type(self).__name__,
            "hyperparameters": self._hyperparameters_json(),
            "n_features_in_": int(self.n_features_in_),
            "epochs": int(state.epoch),
            "history": _jsonable(state.history),
            "rng_state": _jsonable(self._rng.bit_generator.state),
            "monitor_rng_state": _jsonable(self._monitor_rng.bit_generator.state),
        }
        if state.in_epoch:
            arrays["epoch_order"] = state.order
            meta["position"] = {"batches_done": int(state.batches_done),
                                "partial": _jsonable(state.partial)}
        return arrays, meta

    def _restore(self, arrays, meta, source="model file"):
        """Rebuild the fitted state from :func:`load_model` output, checking every array.

        Raises ValueError, naming ``source``, for missing or malformed metadata and for arrays
        that are missing or whose shape, dtype or values do not fit the hyper-parameters.
        """
        dtype = self._check_training_hyperparameters()
        try:
            n_features = int(meta["n_features_in_"])
            epoch = int(meta.get("epochs", 0))
            history = _from_jsonable(meta.get("history", []))
            rng = _generator_from_state(_from_jsonable(meta["rng_state"]))
            monitor_rng = _generator_from_state(_from_jsonable(meta["monitor_rng_state"]))
            position = meta.get("position") or {}
            batches_done = int(position.get("batches_done", 0))
            partial = _from_jsonable(position.get("partial", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source}: missing or malformed metadata ({type(exc).__name__}: "
                             f"{exc})") from None
        if n_features < 1 or epoch < 0 or not isinstance(history, list):
            raise ValueError(f"{source}: malformed metadata (n_features_in_={n_features}, "
                             f"epochs={epoch})")
        self.n_features_in_ = n_features
        self._setup(n_features)
        for name, shape in self._attribute_shapes().items():
            _check_stored_array(arrays, name, shape, dtype, source)
        params = self._params_kind()(*(arrays[name] for name in self._param_attributes))
        params = self._container_from_attributes(params)
        for field_name, p in zip(params._fields, params):
            _check_stored_array(arrays, f"velocity_{field_name}", p.shape, dtype, source)
        velocity = type(params)(*(arrays[f"velocity_{f}"] for f in params._fields))
        average = None
        if any(f"current_{f}" in arrays for f in params._fields):  # saved while averaging
            for field_name, p in zip(params._fields, params):
                _check_stored_array(arrays, f"current_{field_name}", p.shape, dtype, source)
            average = params
            params = type(params)(*(arrays[f"current_{f}"] for f in params._fields))
        chains = self._restored_chains(arrays, source) if self.persistent else None
        order = arrays.get("epoch_order")
        if order is None:
            batches_done, partial = 0, {}
        elif order.ndim != 1 or order.dtype.kind not in "iu" or not 0 <= batches_done:
            raise ValueError(f"{source}: malformed 'epoch_order' (shape {order.shape}, dtype "
                             f"{order.dtype}) or position")
        self._state = TrainingState(params=params, velocity=velocity, chains=chains, epoch=epoch,
                                    history=history, order=order, batches_done=batches_done,
                                    partial=partial, average=average)
        self._rng, self._monitor_rng = rng, monitor_rng
        self._monitor_rows = None
        self._publish()
        return self

    def _restored_chains(self, arrays, source):
        """Persistent chains from a file, with their shapes checked against the layout."""
        expected = (self._n_chains(),) + self._layout_shape()
        if "chains_v" not in arrays:
            raise ValueError(f"{source}: no array 'chains_v' although persistent=True; the file "
                             f"is incomplete")
        if arrays["chains_v"].shape != expected:
            raise ValueError(f"{source}: array 'chains_v' has shape {arrays['chains_v'].shape}, "
                             f"but the hyper-parameters give {expected}")
        return self._chains_from_arrays(arrays)

    def _container_from_attributes(self, params):
        return params

    def _params_kind(self):
        """The parameter container's type (a subclass may choose it from hyper-parameters)."""
        return self._params_type

    def _chain_arrays(self, chains):
        return {"chains_v": chains}

    def _chains_from_arrays(self, arrays):
        return arrays["chains_v"]

    def _chain_visible(self, chains):
        return chains

    def _with_chain_rows(self, params, chains, rows, fresh):
        """``chains`` (B, I, d_v) with the rows ``rows`` (R,) replaced by ``fresh`` (R, I, d_v)."""
        v = chains.copy()
        v[rows] = fresh
        return v


def _changed_hyperparameters(current, stored, defaults):
    """Hyper-parameters (JSON forms) that differ from a checkpoint's, as readable text. One the
    checkpoint does not record (it was written before the hyper-parameter existed) had its
    default, ``defaults`` (the class's, JSON forms), except ``backend`` (the NumPy reference)."""
    if not isinstance(stored, dict):
        return "the checkpoint records none"
    stored = {**defaults, "backend": _BACKEND_OF_OLD_FILES, **stored}
    keys = sorted((set(current) | set(stored)) - _RESUME_FREE_PARAMETERS)
    return ", ".join(f"{key}={current.get(key)!r} here, {stored.get(key)!r} in the checkpoint"
                     for key in keys if current.get(key) != stored.get(key))


def _check_stored_array(arrays, name, shape, dtype, source):
    """ValueError unless ``arrays[name]`` exists with this shape and dtype and is finite."""
    if name not in arrays:
        raise ValueError(f"{source}: no array {name!r}; the file is incomplete or not written "
                         f"by this estimator class")
    a = arrays[name]
    if a.shape != tuple(shape):
        raise ValueError(f"{source}: array {name!r} has shape {a.shape}, but the "
                         f"hyper-parameters give {tuple(shape)}")
    if a.dtype != dtype:
        raise ValueError(f"{source}: array {name!r} has dtype {a.dtype}, expected the "
                         f"estimator's dtype {dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{source}: array {name!r} holds NaN or infinity; the file holds a "
                         f"diverged or corrupted model")


def _offset_arrays(extra):
    """The arrays of a checkpoint for the offsets' average carried with the chains (``extra``:
    the chains' items after their own; empty before the first centred step)."""
    if not extra:
        return {}
    return {"centring_m": extra[0].m, "centring_l": extra[0].l}


def _offsets_from_arrays(arrays):
    """``(CentringOffsets,)`` when a file stores the offsets' average, else ``()``."""
    if "centring_m" not in arrays and "centring_l" not in arrays:
        return ()
    return (CentringOffsets(arrays.get("centring_m"), arrays.get("centring_l")),)


def _check_offsets(extra, m_shape, l_shape, source):
    """ValueError unless the stored offsets' average (if any) has these shapes, finite values."""
    if not extra:
        return
    for name, a, shape in (("centring_m", extra[0].m, m_shape), ("centring_l", extra[0].l, l_shape)):
        if a is None or a.shape != tuple(shape) or not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: array {name!r} is missing, malformed or not finite "
                             f"(expected shape {tuple(shape)}); the checkpoint is corrupted")


# ----------------------------------------------------------------------------- capsule shell


class _CapsuleEstimator(_EnergyEstimator):
    """Layout and initialisation shared by the capsule models P and R."""

    def _setup(self, n_features):
        _check_number("n_capsules", self.n_capsules, 1, integer=True)
        _check_number("capsule_dim", self.capsule_dim, 1, integer=True)
        _check_number("init_scale", self.init_scale, 0)
        _check_choice("lr_schedule", self.lr_schedule, ("constant", "linear"))
        _check_number("lr_final_ratio", self.lr_final_ratio, 0)
        if self.image_shape is None:
            side = math.isqrt(n_features)
            if side * side != n_features:
                raise ValueError(f"image_shape=None means square images, but n_features="
                                 f"{n_features} is not a square; pass image_shape=(H, W)")
            shape = (side, side)
        else:
            shape = _check_pair("image_shape", self.image_shape)
            if shape[0] * shape[1] != n_features:
                raise ValueError(f"image_shape={self.image_shape!r} has {shape[0] * shape[1]} "
                                 f"pixels but X has {n_features} features")
        patch = _check_pair("patch", self.patch)
        if shape[0] % patch[0] or shape[1] % patch[1]:
            raise ValueError(f"patch={self.patch!r} does not tile image_shape={shape}: the image "
                             f"height and width must be multiples of the patch height and width")
        self.image_shape_, self.patch_ = shape, patch
        self.n_visible_capsules_, self.visible_capsule_dim_ = capsule_layout(shape, patch)
        self._n_features_out = int(self.n_capsules)

    def _layout_shape(self):
        return (self.n_visible_capsules_, self.visible_capsule_dim_)

    def _attribute_shapes(self):
        """Shapes of the fitted parameter attributes for the current layout."""
        (I, d_v), J, d_h = self._layout_shape(), int(self.n_capsules), int(self.capsule_dim)
        H0 = int(getattr(self, "shared_units", 0))
        shapes = {"W_": (I, J, d_h, d_v), "alpha_": (I, d_v), "beta_": (I, J), "rho_": (J,),
                  "gamma_": (J, d_h), "m_": (J, d_h), "C_": (I, J, d_h), "A_": (I, J, d_v),
                  "V_": (H0, I, d_v), "delta_": (H0,)}
        return {name: shapes[name] for name in self._param_attributes}

    def _to_layout(self, X):
        return to_capsules(X, self.image_shape_, self.patch_)  # (n, I, d_v)

    def _from_layout(self, V):
        return from_capsules(V, self.image_shape_, self.patch_)  # (n, H*W)

    def _init_weights(self, X, rng):
        """W ~ N(0, init_scale^2) of shape (I, J, d_h, d_v), drawn in float64 then cast."""
        I, d_v = self._layout_shape()
        shape = (I, int(self.n_capsules), int(self.capsule_dim), d_v)
        return (rng.normal(0.0, 1.0, shape) * float(self.init_scale)).astype(X.dtype)

    def _visible_noise_probability(self, params):
        return sigmoid(params.alpha)  # (I, d_v)


# ----------------------------------------------------------------------------- Model P


class CapsulePoE(_CapsuleEstimator):
    """Model P: the capsule product of experts (MODEL.md sec. 3), trained by CD-k or PCD-k.

    Images are cut into ``patch`` x ``patch`` visible capsules (I of them, of size d_v); each of
    ``n_capsules`` hidden capsules j routes them (``n_routing`` passes of dynamic routing) into
    ``s_j`` and fires with probability ``sigmoid(rho_j + log |s_j|^2)``. The free energy is

    .. math:: F(v) = -\\alpha \\cdot v - \\sum_j \\log(1 + e^{\\rho_j} |s_j(v)|^2).

    With ``expert="gaussian"`` it is Model G (docs/MODEL_G.md): a Gaussian pose under each
    capsule gives the firing probability ``sigmoid(rho_j + m_j . s_j + |s_j|^2 / 2)`` and the
    free energy ``F(v) = -alpha . v - sum_j softplus(rho_j + m_j . s_j + |s_j|^2 / 2)``. With
    ``expert="spin"`` it is Model S: a pose of d_h binary (+1/-1) units gives the firing logit
    ``rho_j + sum_k [log cosh(s_jk + m_jk) - log cosh(m_jk)]``.

    Parameters
    ----------
    n_capsules : int, default=16
        Number of hidden capsules J.
    capsule_dim : int, default=8
        Dimension d_h of a hidden capsule.
    image_shape : None, int or (H, W), default=None
        None: square images of side ``sqrt(n_features)``.
    patch : int or (p_h, p_w), default=4
        Visible capsule size; must tile the image.
    n_routing : int, default=3
        Routing passes r.
    expert : {"squash", "gaussian", "spin"}, default="squash"
        ``"squash"``: the paper's model P, firing logit ``rho_j + log |s_j|^2`` (3.2);
        ``"gaussian"``: Model G (G.2); ``"spin"``: Model S (S.2).
    sampler : {"mh", "reconstruct"}, default="mh"
        ``"mh"``: the exact Metropolis-Hastings sweep over visible capsules; ``"reconstruct"``:
        the fast paper-literal step, which leaves no stated distribution invariant (Model P
        only).
    grad : {"full", "frozen"}, default="full"
        Back-propagate through routing (exact) or hold the coupling coefficients fixed.
    cd_k : int, default=1
        Sampler sweeps per gradient step.
    persistent : bool, default=True
        PCD (chains persist across minibatches) or CD (chains restart at the minibatch).
    n_chains : int or None, default=None
        Number of persistent chains; ``batch_size`` when None.
    chain_init : {"data", "noise"}, default="data"
        Persistent chains start at random training rows or at visible-bias noise.
    chain_restart : float in [0, 1), default=0.0
        Before every persistent-chain step, each chain is replaced, independently with this
        probability, by a fresh chain at visible-bias noise (docs/MODEL_RB.md (5.12)): the
        chains then also visit the modes that chains from noise fall into, which persistent
        chains alone may never reach, and the negative phase pushes them down.
    learning_rate : float, default=0.05
        Stable on binarised MNIST for 8 epochs with the default momentum (0.01 learned about
        four times less in 3 epochs).
    lr_schedule : {"constant", "linear"}, default="constant"
        ``"linear"`` decays the rate to ``learning_rate * lr_final_ratio`` over ``n_iter`` epochs.
    lr_final_ratio : float, default=0.04
    momentum : float, default=0.9
        Capped at 0.5 during the first 5 epochs.
    weight_decay : float, default=1e-4
        L2 penalty on W only.
    average : int, default=0
        K >= 1: publish the moving average of the parameters over about K updates while
        training runs on the current ones (as :class:`RoutedCapsuleRBM` describes); 0: the
        last update's parameters.
    batch_size : int, default=100
    n_iter : int, default=10
        Epochs of :meth:`fit`.
    init_scale : float, default=0.1
        Standard deviation of the initial W. W = 0 is a stationary point of P's likelihood, so
        this is larger than the usual 0.01.
    rho_init : "auto" or float, default="auto"
        Initial log-gains. ``"auto"`` sets ``rho_j = -median log |s_j|^2`` over (up to 500)
        training images at the initial W, so that each capsule's firing probability starts with
        median 0.5 (MODEL.md sec. 3: with rho = 0 the experts start nearly silent); for Models
        G and S, minus the median of the logit's other terms, to the same end.
    learn_prior : bool, default=False
        Learn the prior routing logits beta (only possible with ``grad="full"``).
    dtype : float64 or float32, default=np.float64
        Dtype of data and parameters throughout. Input of any real dtype is converted to it,
        so with float32 every fitted array, transform, score and sample is float32. A float32
        fit agrees with the float64 fit of the same ``random_state`` to within 1e-3 (absolute
        and relative, every parameter, after an epoch on small data; tested). Longer runs drift
        further apart: a Bernoulli draw compares a uniform number with a probability whose
        float32 rounding can flip the outcome, after which the chains differ, so the two then
        agree only statistically.
    random_state : int, Generator or None, default=None
    verbose : int, default=0
        Print one line per epoch; show a progress bar when stderr is a terminal.
    monitor_fraction : float, default=0.05
        Fraction of ``fit``'s data held out for the per-epoch metrics.
    checkpoint_path : str, os.PathLike or None, default=None
        File to which :meth:`fit` writes checkpoints (see :meth:`fit`); its directory must
        exist. Not for use inside ``GridSearchCV`` and the like (every clone would write the
        same file).
    checkpoint_every : int, default=1
        Epochs between checkpoints; one is also written after the last epoch and on Ctrl-C.
    resume : bool, default=False
        Make :meth:`fit` continue from the checkpoint at ``checkpoint_path`` (which must
        exist) instead of starting over.
    backend : {"numba", "numpy"}, default="numba"
        Run the model computations on the compiled kernels (:mod:`capsnp.kernels`) or on the
        NumPy reference; the same equations and random draws, so the fitted models agree to
        rounding. "numba" falls back to NumPy, with a warning, where Numba is missing.

    Attributes
    ----------
    W_ : ndarray of shape (I, J, d_h, d_v)
    alpha_ : ndarray of shape (I, d_v)
        Visible biases, initialised to the data's log-odds.
    rho_ : ndarray of shape (J,)
    beta_ : ndarray of shape (I, J)
    m_ : ndarray of shape (J, d_h)
        Models G and S only: the means (G) or biases (S) of the capsule poses' prior.
    n_features_in_ : int
    image_shape_, patch_ : (int, int)
    n_visible_capsules_, visible_capsule_dim_ : int
        I and d_v.
    persistent_chains_ : ndarray of shape (n_chains, n_features) or None
    history_ : list of dict
        Per epoch: epoch, seconds, images_per_second, learning_rate, momentum, acceptance
        (``"mh"``), and on the monitoring rows free_energy, pseudo_log_likelihood (one random
        pixel per image, scaled by the number of pixels) and reconstruction_error.
    n_iter_ : int
        Epochs completed.
    """

    _params_type = PParams

    def __init__(self, n_capsules=16, capsule_dim=8, *, image_shape=None, patch=4, n_routing=3,
                 expert="squash", sampler="mh", grad="full", cd_k=1, persistent=True, n_chains=None,
                 chain_init="data", chain_restart=0.0, learning_rate=0.05, lr_schedule="constant",
                 lr_final_ratio=0.04, momentum=0.9, weight_decay=1e-4, average=0,
                 batch_size=100, n_iter=10, init_scale=0.1, rho_init="auto", learn_prior=False,
                 dtype=np.float64, random_state=None, verbose=0, monitor_fraction=0.05,
                 checkpoint_path=None, checkpoint_every=1, resume=False, backend="numba"):
        self.n_capsules = n_capsules
        self.capsule_dim = capsule_dim
        self.image_shape = image_shape
        self.patch = patch
        self.n_routing = n_routing
        self.expert = expert
        self.sampler = sampler
        self.grad = grad
        self.cd_k = cd_k
        self.persistent = persistent
        self.n_chains = n_chains
        self.chain_init = chain_init
        self.chain_restart = chain_restart
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.lr_final_ratio = lr_final_ratio
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.average = average
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.init_scale = init_scale
        self.rho_init = rho_init
        self.learn_prior = learn_prior
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.monitor_fraction = monitor_fraction
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.backend = backend

    # ------------------------------------------------------------------ setup and parameters

    def _setup(self, n_features):
        super()._setup(n_features)
        _check_number("n_routing", self.n_routing, 1, integer=True)
        _check_choice("expert", self.expert, ("squash", "gaussian", "spin"))
        _check_choice("sampler", self.sampler, ("mh", "reconstruct"))
        if self.expert != "squash" and self.sampler != "mh":
            raise ValueError("sampler='reconstruct' is the paper's heuristic for the squash expert; "
                             f"expert={self.expert!r} is sampled with sampler='mh'")
        _check_choice("grad", self.grad, ("full", "frozen"))
        if self.learn_prior and self.grad != "full":
            raise ValueError("learn_prior=True needs grad='full': with frozen routing the prior "
                             "logits beta get no gradient")
        if not (isinstance(self.rho_init, str) and self.rho_init == "auto"):
            _check_number("rho_init", self.rho_init)

    def _init_params(self, X, rng):
        """W ~ N(0, init_scale^2); alpha = data log-odds; beta = 0; rho = rho_init or "auto"."""
        dt = X.dtype
        W = self._init_weights(X, rng)  # (I, J, d_h, d_v)
        J, d_h = W.shape[1], W.shape[2]
        beta = np.zeros(W.shape[:2], dtype=dt)  # (I, J)
        # Models G and S: pose means/biases m ~ N(0, 1), so that the expert starts with a linear
        # term like an RBM hidden unit's input (docs/MODEL_G.md, G.6)
        m = rng.normal(0.0, 1.0, (J, d_h)).astype(dt) if self.expert != "squash" else None
        if isinstance(self.rho_init, str):
            u_hat = predictions(W, X[:500])  # (n, I, J, d_h)
            routing = self._kernels("routing")
            _, s, _ = routing.dynamic_routing(u_hat, int(self.n_routing), beta)  # s: (n, J, d_h)
            logit = self._kernels("model_p").firing_logit(np.zeros(J), s.astype(np.float64), self.expert,
                                                          m)  # (n, J)
            median = np.median(logit, axis=0)  # (J,)
            rho = np.where(np.isfinite(median), -median, 0.0).astype(dt)  # (J,)
        else:
            rho = np.full(J, float(self.rho_init), dtype=dt)
        extra = () if m is None else (m,)
        return self._params_kind()(W, _data_logits(X, dt), rho, beta, *extra)

    def _params_kind(self):
        """PParams (P), GParams (G) or SParams (S): the container's type selects the expert."""
        return _P_PARAMS_TYPES[self.expert]

    @property
    def _param_attributes(self):
        """Fitted parameter attributes: Models G and S add the pose parameters ``m_``."""
        base = ("W_", "alpha_", "rho_", "beta_")
        return base + ("m_",) if self.expert != "squash" else base

    def _params(self):
        return self._params_kind()(*(getattr(self, name) for name in self._param_attributes))

    def _set_params(self, p):
        for name, value in zip(self._param_attributes, p):
            setattr(self, name, value)

    # ------------------------------------------------------------------ sampling and training

    def _start_chains(self, params, v, rng):
        return v

    def _sweep(self, params, v, rng):
        """One sweep of the chosen sampler: (B, I, d_v) -> (B, I, d_v), stats."""
        model_p = self._kernels("model_p")
        if self.sampler == "mh":
            v, acceptance = model_p.mh_sweep(params, v, rng, int(self.n_routing))
            return v, {"acceptance": float(np.mean(acceptance))}
        v, _ = model_p.reconstruct_step(params, v, rng, int(self.n_routing))
        return v, {}

    def _step(self, params, batch, chains, rng):
        """Ascent direction ``-<dF/dtheta>_data + <dF/dtheta>_chains`` (MODEL.md sec. 3)."""
        r, mode = int(self.n_routing), self.grad
        model_p = self._kernels("model_p")
        _, grad_data = model_p.free_energy_grad(params, batch, r, mode)
        v = batch if chains is None else chains
        acceptance = []
        for _ in range(int(self.cd_k)):
            v, stats = self._sweep(params, v, rng)
            acceptance.append(stats.get("acceptance", np.nan))
        stats = {"acceptance": float(np.mean(acceptance))} if self.sampler == "mh" else {}
        _, grad_model = model_p.free_energy_grad(params, v, r, mode)
        grad = type(params)(*(gm - gd for gd, gm in zip(grad_data, grad_model)))
        if not self.learn_prior:
            grad = grad._replace(beta=np.zeros_like(params.beta))
        return grad, (v if self.persistent else None), stats

    def _monitor(self, params, X, rng):
        r = int(self.n_routing)
        model_p = self._kernels("model_p")
        return {
            "free_energy": float(np.mean(_chunked(lambda x: model_p.free_energy(params, x, r), X))),
            "pseudo_log_likelihood": float(np.mean(_chunked(
                lambda x: model_p.pseudo_log_likelihood(params, x, rng, r), X))),
            "reconstruction_error": float(np.mean(_chunked(
                lambda x: _squared_error(x, self._reconstruction(params, x)), X))),
        }

    def _reconstruction(self, params, v):
        """Mean reconstruction: ``sigmoid(alpha_i + sum_j c_ij p_j W_ij^T s_j / |s_j|)``.

        The visible logits of the paper-literal step (3.10) with the firing indicators z_j
        replaced by their probabilities p_j; deterministic. For Model G, the mean of the MH
        proposal: ``sigmoid`` of the local field (3.8) with G.4's or S.4's ``g_j``.

        Returns
        -------
        ndarray of shape (B, I, d_v)
        """
        routing = self._kernels("routing")
        c, s, _ = routing.dynamic_routing(predictions(params.W, v), int(self.n_routing), params.beta)
        model_p = self._kernels("model_p")
        if self.expert != "squash":
            return sigmoid(model_p.local_field(params, c, s))  # (B, I, d_v)
        p = sigmoid(model_p.firing_logit(params.rho, s))  # (B, J)
        norm = np.sqrt(np.sum(s * s, axis=-1, keepdims=True))  # (B, J, 1)
        s_unit = s / np.where(norm > 0, norm, 1.0)  # (B, J, d_h)
        field = params.alpha + np.einsum("bij,bj,ijhd,bjh->bid", c, p, params.W, s_unit,
                                         optimize=True)  # (B, I, d_v)
        return sigmoid(field)

    # ------------------------------------------------------------------ public inference

    def transform(self, X):
        """Capsule firing probabilities ``p(z_j = 1 | v)`` (3.2).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_capsules)
        """
        V = self._checked(X)
        params, r, model_p = self._params(), int(self.n_routing), self._kernels("model_p")
        return _chunked(lambda x: model_p.firing_probability(params, x, r), V)  # (n, J)

    def free_energy(self, X):
        """Free energy (3.3) ``F(v) = -alpha.v - sum_j log(1 + e^{rho_j} |s_j|^2)``, closed form.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        params, r, model_p = self._params(), int(self.n_routing), self._kernels("model_p")
        return _chunked(lambda x: model_p.free_energy(params, x, r), V)

    def score_samples(self, X):
        """Pseudo-log-likelihood (3.11), scikit-learn's stochastic one-flip estimate.

        For each image one pixel k is drawn at random (from a generator seeded by
        ``random_state``, fresh at each call) and ``D log sigmoid(F(v with k flipped) - F(v))``
        is returned: an unbiased estimate of ``sum_k log p(v_k | v_-k)``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        params, r, model_p = self._params(), int(self.n_routing), self._kernels("model_p")
        rng = np.random.default_rng(self.random_state)
        return _chunked(lambda x: model_p.pseudo_log_likelihood(params, x, rng, r), V)

    def log_likelihood(self, X, log_z):
        """Normalised log-likelihood ``log p(v) = -F(v) - log Z`` in nats per image (MODEL.md sec. 6).

        Exact given ``log Z``: F is in closed form (3.3). With an AIS estimate of log Z the
        values inherit its error (AIS is biased low, so they are then biased high).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        log_z : float
            ``capsnp.exact_log_partition(self)`` (tiny models) or
            ``capsnp.ais_log_partition(self).log_z``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        log_z = _check_log_z(log_z)
        return -self.free_energy(X) - log_z  # (n,)


# ----------------------------------------------------------------------------- Model R


def mean_field_elbo(params, v, c):
    """Mean-field lower bound on ``log p~(v)`` of Model R, the hidden factor optimised exactly.

    With ``q(a, h) = prod_i c_{i a_i} prod_jk Bernoulli(h_jk; mu_jk)``,
    ``log p~(v) = log sum_{h,a} e^{-E(v,h,a)} >= E_q[-E] + H(q)`` (Jensen). By (4.1),

    .. math::
        E_q[-E] + H(q) = \\alpha \\cdot v + \\sum_{ij} c_{ij} (\\beta_{ij} - \\log c_{ij})
          + \\sum_{jk} [\\mu_{jk} x_{jk} + H(\\mu_{jk})],
        \\quad x_j = \\gamma_j + s_j, \\; s_j = \\sum_i c_{ij} \\hat u_{j|i},

    because a and h are independent under q, so ``E_q[h_{a_i} . u_hat_{a_i|i}] = sum_j c_ij
    mu_j . u_hat_{j|i}``. For fixed c the maximum over mu is at ``mu = sigmoid(x)`` (the
    mean-field update (4.6)), where ``mu x + H(mu) = softplus(x)``:

    .. math::
        L(v; c) = \\alpha \\cdot v + \\sum_{ij} c_{ij} (\\beta_{ij} - \\log c_{ij})
          + \\sum_{jk} \\mathrm{softplus}(\\gamma_{jk} + s_{jk}) \\le \\log \\tilde p(v).

    It is a bound for ANY routing distribution c. Mean-field routing (4.6) is coordinate ascent
    on ``L`` (the c-update maximises it for fixed mu, the mu-update for fixed c), so its fixed
    point is a stationary point of ``L(v; c)``. ``log p(v) >= L(v; c) - log Z``.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    c : ndarray of shape (B, I, J), rows summing to one over parents

    Returns
    -------
    ndarray of shape (B,)
    """
    s = _model_r_ref.routed_prediction(params, v, c)  # (B, J, d_h), from W v + C (4b.2)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_log_c = np.where(c > 0, c * np.log(c), 0.0)  # (B, I, J), 0 log 0 = 0
    prior = _model_r_ref.prior_logits(params, v)  # (B, I, J), beta + A.v with biases (4b.3)
    routing = np.sum(c * prior - c_log_c, axis=(1, 2))  # (B,)
    hidden = np.sum(softplus(params.gamma + s), axis=(1, 2))  # (B,)
    return (np.sum(params.alpha * v, axis=(1, 2)) + routing + hidden).astype(v.dtype)


class RoutedCapsuleRBM(_CapsuleEstimator):
    """Model R: the routed capsule RBM (MODEL.md sec. 4), trained by PCD-k or CD-k.

    Each visible capsule (a ``patch`` x ``patch`` patch) is explained by one hidden capsule
    chosen by a latent routing variable a_i; hidden capsules are binary vectors h_j of size
    ``capsule_dim``:

    .. math::
        E(v, h, a) = -\\alpha \\cdot v - \\gamma \\cdot h
                     - \\sum_i [\\beta_{i a_i} + h_{a_i}^T W_{i a_i} v_i].

    Inference is mean-field routing (dynamic routing with a sigmoid and "replace", stopped per
    image at ``routing_tol`` or ``max_routing`` iterations); chains are 3-block Gibbs samplers on
    (v, a); the model statistics are Rao-Blackwellised over a.

    Parameters
    ----------
    n_capsules : int, default=16
    capsule_dim : int, default=8
    image_shape : None, int or (H, W), default=None
    patch : int or (p_h, p_w), default=4
    routing_tol : float, default=1e-3
        Per-image stopping tolerance on ``max |delta c|`` of the mean-field iteration.
    max_routing : int, default=30
    routing_damping : float in [0, 1), default=0.0
        Each mean-field update keeps this share of the previous routing,
        ``c <- (1 - routing_damping) c_new + routing_damping c`` (4.6). Damping does not move
        the fixed points; with ``max_routing`` small it stops the routing nearer its start.
    cd_k : int, default=1
    persistent : bool, default=True
    n_chains : int or None, default=None
        ``batch_size`` when None. MODEL.md sec. 8 found 500 chains much better than 100.
    chain_init : {"data", "noise"}, default="data"
    chain_restart : float in [0, 1), default=0.0
        Before every persistent-chain step, each chain is replaced, independently with this
        probability, by a fresh chain at visible-bias noise (docs/MODEL_RB.md (5.12)): the
        chains then also visit the modes that chains from noise fall into, which persistent
        chains alone may never reach, and the negative phase pushes them down.
    learning_rate : float, default=0.05
    lr_schedule : {"constant", "linear"}, default="linear"
        The linear decay (to ``0.04 * learning_rate``) mattered most in MODEL.md sec. 8.
    lr_final_ratio : float, default=0.04
    momentum : float, default=0.9
        Capped at 0.5 during the first 5 epochs. The W gradient of Model R is about J times
        smaller than an RBM's at the start (each child splits its statistics over J parents),
        so the effective step ``learning_rate / (1 - momentum)`` matters: about 0.1 to 0.5
        learns on MNIST, 2 diverges.
    weight_decay : float, default=1e-4
    average : int, default=0
        K >= 1: the fitted parameter attributes are the moving average of the parameters over
        about K updates, ``theta_avg <- theta_avg + (theta - theta_avg) / K``
        (:mod:`capsnp.training`), while training (steps, chains, ``history_``) runs on the
        current parameters, kept in the training state and saved files; edits of the fitted
        attributes then do not reach training. 0: the last update's parameters. K = 1000 was
        worth 0.6 to 0.7 nats on MNIST (docs/results.md section 21).
    batch_size : int, default=100
    n_iter : int, default=10
    init_scale : float, default=0.01
    learn_prior : bool, default=False
        Learn the prior routing logits beta.
    first_parent_logit : float, default=0.0
        Initial prior logit of the first parent, ``beta_i1`` for every child (the others start
        at 0). A large value routes nearly every patch to parent 1 at the start: a tied model
        with J = 2 then begins as the RBM it contains. It stays fixed unless ``learn_prior``.
    posterior_sweeps : int, default=0
        Data statistics of the gradient. 0: the mean-field ones (4.8), the gradient of the
        bound ``L(v) - log Z``, which rewards models whose routing posterior mean field fits.
        k > 0: sampled ones, as the model statistics (Rao-Blackwellised over a) but at the data:
        routes drawn from the mean-field c, then k Gibbs sweeps on (h, a) with v clamped, which
        leave ``p(h, a | v)`` invariant (docs/MODEL_RB.md, sampled data statistics); the
        gradient of ``log p(v)`` as k grows.
    rao_blackwell : {"routes", "hidden", "hidden-redrawn"}, default="routes"
        Which conditional expectation the chain (model) statistics take; all are unbiased.
        "routes": every statistic averaged over a given the chain's (v, h), ``resp_ij h_j
        v_i^T`` (4.8). "hidden": the statistics that involve h (W, gamma, C) averaged over h
        given the chain's (v, a), ``[a_i = j] p(h_j | v, a) v_i^T``, and those of a alone
        (beta, A) over a as before (docs/MODEL_RB.md (4b.10)); the d_h binary draws then add
        no noise to the weight steps, as in an RBM's ``v p(h | v)^T``. Same draws, same cost.
        "hidden-redrawn": the same at the routes the sweep redraws under the current
        parameters, (v, a_new), instead of those that entered it; one more hidden pass.
    assignment_biases : bool, default=False
        Add and learn the assignment biases of docs/MODEL_RB.md (4b.1): prediction biases
        ``C_ij`` (I, J, d_h), ``u_hat_{j|i} = W_ij v_i + C_ij``, and visible biases ``A_ij``
        (I, J, d_v) of child i when parent j explains it. They are what a centred Model R
        needs, and they let a patch with no pixel on carry routing information. Both start at
        zero; weight decay does not apply to them.
    assignment_bias_rate : float, default=1.0
        Learning rate of C and A relative to the other parameters (their gradient is scaled by
        it). Every patch routed to parent j adds its C_ij to h_j's input, so with the whole image
        on one parent ``sum_i C_ij`` acts as a hidden bias that moves I times as fast as gamma;
        ``1 / I`` moves it at gamma's rate.
    tie_weights : bool, default=False
        Share one weight tensor between the parents, ``W_ij = W_i1`` for every j
        (docs/MODEL_RB.md, tied weights): J instances of one capsule type, each patch explained
        by one of them, with I d_v d_h weights rather than J times as many. The copies are
        updated by the summed gradient (4b.6) and stay equal. Needs ``assignment_biases``: the
        prediction biases C start at N(0, init_scale^2) so that the parents differ. With J = 2
        the model contains the RBM with d_h hidden units (every patch routed to one parent).
    centring : {False, True, "interaction", "shared", "visible", "all"}, default=False
        Take the gradient steps in centred coordinates (docs/MODEL_RB.md, centring; (4b.8),
        (4b.9)), the offsets m and l being the minibatch's data means of v and h (its data
        statistics of alpha and gamma). True or ``"interaction"``: each child's interaction is
        written ``(h_j - l_j)^T W_ij (v_i - m_i)``, the W step becomes a covariance and the plain
        C and A absorb the offsets; beta is untouched (with J = 1, the centred RBM).
        ``"all"``: the assignment biases are centred too, and beta absorbs the constants (it
        then moves even without ``learn_prior``, which holds the centred beta' fixed). The model
        is the same; only the update direction changes. On MNIST every form with a hidden
        offset let the routing collapse onto its prior when the momentum rose (docs/results.md
        section 12). ``"shared"``: the interaction form with one hidden offset
        for every parent, the mean of theirs; with ``tie_weights`` the offset's share of the A
        step, ``-W_i^T l``, is then the same for every parent, so it does not touch the routing
        (it is a step of alpha). ``"visible"``: the interaction form with l = 0 (only v centred;
        A is then untouched). Needs ``assignment_biases``. Weight decay acts on W.
    shared_units : int, default=0
        H0 > 0 adds a shared capsule of H0 binary units that every child reaches besides its
        routed parent (docs/MODEL_RB.md, (4c.1)): weights V (H0, I, d_v) and biases delta
        (H0,). Given v it is independent of the routing, so mean-field routing is unchanged,
        its units and the log-likelihood's share of it are exact (4c.2, 4c.5), and the chains
        draw it before each sweep (4c.7). V starts at N(0, init_scale^2) (drawn after every
        other parameter) and takes the weight decay; delta starts at 0. With J d_h + H0 hidden
        units of 784 weights each, J = 2, d_h = 125, H0 = 250 has the RBM-500's 392,000.
        Needs ``assignment_biases``; not with ``centring`` or a sparsity cost.
    shared_centring : bool, default=False
        Take the shared capsule's steps in centred coordinates (docs/MODEL_RB.md, (4c.8),
        (4c.9)): its interaction written ``(g - l0)^T V_i (v_i - m_i)``, the offsets the
        minibatch's data means of v and of p(g | v), so that the V step is a covariance; alpha
        and delta absorb the offsets. Neither enters a routing logit, so unlike ``centring``
        the offsets never steer the routing. The routed capsules' steps are plain. Needs
        ``shared_units``. Weight decay acts on V.
    centring_average : int, default=0
        0: the shared capsule's offsets are the minibatch's own means. K >= 1: their
        exponential moving average with a horizon of K updates (docs/MODEL_RB.md, (5.10)),
        starting at the first minibatch's means, carried with the persistent chains (and
        saved in checkpoints). Needs ``shared_centring`` and ``persistent=True``.
    sparsity_target : float in (0, 1), default=0.1
    sparsity_cost : float, default=0.0
        With a cost lambda > 0, the hidden biases gamma take the sparsity step (4b.11)
        ``lambda * (sparsity_target - q)``, q (J, d_h) being the minibatch's data statistic of
        h (its mean-field, or sampled, mean firing probability): the gradient of a penalty that
        pulls each hidden unit's firing probability on the data towards the target (Hinton's
        practical guide, section 11). 0: off.
    sparsity_on : {"biases", "inputs"}, default="biases"
        Which parameters take the sparsity step: gamma alone (Lee, Ekanadham and Ng 2008), or
        every parameter of the hidden units' mean-field input at the batch's routing, W, gamma
        and C (:func:`capsnp.model_r.sparsity_gradient`; Hinton's guide adjusts the bias and
        the incoming weights). On MNIST the capsule model escaped the step on gamma through
        its prediction biases C (docs/results.md section 24).
    dtype : float64 or float32, default=np.float64
        Dtype of data and parameters throughout. Input of any real dtype is converted to it,
        so with float32 every fitted array, transform, score and sample is float32. A float32
        fit agrees with the float64 fit of the same ``random_state`` to within 1e-3 (absolute
        and relative, every parameter, after an epoch on small data; tested). Longer runs drift
        further apart: a Bernoulli draw compares a uniform number with a probability whose
        float32 rounding can flip the outcome, after which the chains differ, so the two then
        agree only statistically.
    random_state : int, Generator or None, default=None
    verbose : int, default=0
    monitor_fraction : float, default=0.05
    checkpoint_path : str, os.PathLike or None, default=None
        File to which :meth:`fit` writes checkpoints (see :meth:`fit`); its directory must
        exist. Not for use inside ``GridSearchCV`` and the like (every clone would write the
        same file).
    checkpoint_every : int, default=1
        Epochs between checkpoints; one is also written after the last epoch and on Ctrl-C.
    resume : bool, default=False
        Make :meth:`fit` continue from the checkpoint at ``checkpoint_path`` (which must
        exist) instead of starting over.
    backend : {"numba", "numpy"}, default="numba"
        Run the model computations on the compiled kernels (:mod:`capsnp.kernels`) or on the
        NumPy reference; the same equations and random draws, so the fitted models agree to
        rounding. "numba" falls back to NumPy, with a warning, where Numba is missing.

    Attributes
    ----------
    W_ : ndarray of shape (I, J, d_h, d_v)
    alpha_ : ndarray of shape (I, d_v)
    gamma_ : ndarray of shape (J, d_h)
    beta_ : ndarray of shape (I, J)
    C_, A_ : ndarrays of shape (I, J, d_h) and (I, J, d_v), only with ``assignment_biases``
    V_, delta_ : ndarrays of shape (H0, I, d_v) and (H0,), only with ``shared_units``
    n_features_in_, image_shape_, patch_, n_visible_capsules_, visible_capsule_dim_
    persistent_chains_ : ndarray of shape (n_chains, n_features) or None
        Visible states of the chains (their routing states are kept internally).
    history_ : list of dict
        Per epoch: epoch, seconds, images_per_second, learning_rate, momentum,
        train_mean_field_iterations, and on the monitoring rows mean_field_iterations, elbo
        (:func:`mean_field_elbo`) and reconstruction_error.
    n_iter_ : int
    """

    _params_type = RParams
    _single_threaded_blas = True

    @property
    def _param_attributes(self):
        """Fitted parameter attributes: ``assignment_biases`` adds ``C_`` and ``A_`` (4b.1),
        ``shared_units`` ``V_`` and ``delta_`` (4c.1)."""
        base = ("W_", "alpha_", "gamma_", "beta_")
        if self.assignment_biases:
            base = base + ("C_", "A_")
        return base + ("V_", "delta_") if self.shared_units else base

    def __init__(self, n_capsules=16, capsule_dim=8, *, image_shape=None, patch=4,
                 routing_tol=1e-3, max_routing=30, routing_damping=0.0, cd_k=1, persistent=True,
                 n_chains=None, chain_init="data", chain_restart=0.0, learning_rate=0.05,
                 lr_schedule="linear", lr_final_ratio=0.04, momentum=0.9, weight_decay=1e-4, average=0,
                 batch_size=100, n_iter=10, init_scale=0.01, learn_prior=False,
                 first_parent_logit=0.0, posterior_sweeps=0, rao_blackwell="routes",
                 assignment_biases=False, assignment_bias_rate=1.0,
                 tie_weights=False, centring=False, shared_units=0, shared_centring=False,
                 centring_average=0, sparsity_target=0.1,
                 sparsity_cost=0.0, sparsity_on="biases", dtype=np.float64, random_state=None, verbose=0,
                 monitor_fraction=0.05, checkpoint_path=None, checkpoint_every=1, resume=False, backend="numba"):
        self.n_capsules = n_capsules
        self.capsule_dim = capsule_dim
        self.image_shape = image_shape
        self.patch = patch
        self.routing_tol = routing_tol
        self.max_routing = max_routing
        self.routing_damping = routing_damping
        self.cd_k = cd_k
        self.persistent = persistent
        self.n_chains = n_chains
        self.chain_init = chain_init
        self.chain_restart = chain_restart
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.lr_final_ratio = lr_final_ratio
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.average = average
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.init_scale = init_scale
        self.learn_prior = learn_prior
        self.first_parent_logit = first_parent_logit
        self.posterior_sweeps = posterior_sweeps
        self.rao_blackwell = rao_blackwell
        self.assignment_biases = assignment_biases
        self.assignment_bias_rate = assignment_bias_rate
        self.tie_weights = tie_weights
        self.centring = centring
        self.shared_units = shared_units
        self.shared_centring = shared_centring
        self.centring_average = centring_average
        self.sparsity_target = sparsity_target
        self.sparsity_cost = sparsity_cost
        self.sparsity_on = sparsity_on
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.monitor_fraction = monitor_fraction
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.backend = backend

    def _setup(self, n_features):
        super()._setup(n_features)
        _check_number("routing_tol", self.routing_tol, 0)
        _check_number("max_routing", self.max_routing, 1, integer=True)
        _check_number("routing_damping", self.routing_damping, 0, 1, high_open=True)
        _check_number("first_parent_logit", self.first_parent_logit)
        _check_number("posterior_sweeps", self.posterior_sweeps, 0, integer=True)
        _check_choice("rao_blackwell", self.rao_blackwell, ("routes", "hidden", "hidden-redrawn"))
        _check_number("assignment_bias_rate", self.assignment_bias_rate, 0)
        if self.tie_weights and not self.assignment_biases:
            raise ValueError("tie_weights=True needs assignment_biases=True: with one weight "
                             "tensor only the prediction biases C tell the parents apart")
        _check_choice("centring", self.centring, (False, True, "interaction", "shared", "visible", "all"))
        if self.centring and not self.assignment_biases:
            raise ValueError("centring=True needs assignment_biases=True: the centred energy "
                             "(4b.8) has prediction and assignment biases, which Model R lacks")
        _check_sparsity(self)
        _check_number("shared_units", self.shared_units, 0, integer=True)
        if self.shared_units and (not self.assignment_biases or self.centring or self.sparsity_cost):
            raise ValueError("shared_units > 0 needs assignment_biases=True and works without "
                             "centring and sparsity_cost (docs/MODEL_RB.md, (4c.1))")
        _check_choice("shared_centring", self.shared_centring, (False, True))
        if self.shared_centring and not self.shared_units:
            raise ValueError("shared_centring=True needs shared_units > 0: it centres the shared "
                             "capsule (docs/MODEL_RB.md, (4c.8))")
        _check_centring_average(self, self.shared_centring, "shared_centring")

    def _init_params(self, X, rng):
        """W ~ N(0, init_scale^2); alpha = data log-odds; gamma = 0; C = A = 0; beta = 0 but for
        ``beta_i1 = first_parent_logit``.

        With ``tie_weights`` every parent gets the first parent's weights, and C ~ N(0,
        init_scale^2) (drawn after W) so that the parents are not interchangeable.
        """
        W = self._init_weights(X, rng)  # (I, J, d_h, d_v)
        dt = X.dtype
        I, J, d_h, d_v = W.shape
        biases = dict(C=np.zeros((I, J, d_h), dtype=dt), A=np.zeros((I, J, d_v), dtype=dt)) \
            if self.assignment_biases else {}
        if self.tie_weights:
            W = np.ascontiguousarray(np.broadcast_to(W[:, :1], W.shape))  # (I, J, d_h, d_v)
            biases["C"] = (rng.normal(0.0, 1.0, (I, J, d_h)) * float(self.init_scale)).astype(dt)
        beta = np.zeros((I, J), dtype=dt)
        beta[:, 0] = self.first_parent_logit  # (I, J)
        if self.shared_units:  # (4c.1): V ~ N(0, init_scale^2), drawn after W (and C)
            H0 = int(self.shared_units)
            biases["V"] = (rng.normal(0.0, 1.0, (H0, I, d_v)) * float(self.init_scale)).astype(dt)
            biases["delta"] = np.zeros(H0, dtype=dt)
        return self._params_kind()(W=W, alpha=_data_logits(X, dt), gamma=np.zeros((J, d_h), dtype=dt),
                                   beta=beta, **biases)

    def _params(self):
        return self._params_kind()(*(getattr(self, name) for name in self._param_attributes))

    def _params_kind(self):
        """RParams, or RBParams (4b.1) with ``assignment_biases``, RSParams (4c.1) with ``shared_units``."""
        if self.shared_units:
            return RSParams
        return RBParams if self.assignment_biases else RParams

    @staticmethod
    def _routed(params):
        """The routed capsules' parameters: RParams or RBParams as they are, an RSParams'
        routed part (4c.3: routing, mean field and the capsules' statistics are the routed
        part's alone)."""
        return _model_rs.routed_part(params) if isinstance(params, RSParams) else params

    def _gibbs_sweep(self, params, v, a, rng, return_probability=False, p_g=None):
        """One sweep on (v, a), (4.7) or with a shared capsule (4c.7), whose g draw is dropped:
        (v_new, h, a_new, resp[, p_h]). ``p_g``: a shared capsule's ``p(g = 1 | v)``, if known."""
        model_r = self._kernels("model_r")
        if isinstance(params, RSParams):
            out = _model_rs.gibbs_sweep(params, v, a, rng, return_probability, model_r=model_r,
                                        rbm=self._kernels("rbm"), p_g=p_g)
            return (out[0],) + tuple(out[2:])
        return model_r.gibbs_sweep(params, v, a, rng, return_probability)

    @staticmethod
    def _elbo(params, v, c):
        """:func:`mean_field_elbo` of the routed part, plus the exact shared term (4c.5) if any."""
        if isinstance(params, RSParams):
            return (mean_field_elbo(_model_rs.routed_part(params), v, c)
                    + _model_rs.shared_log_factor(params, v))
        return mean_field_elbo(params, v, c)

    def _set_params(self, p):
        for name, value in zip(self._param_attributes, p):
            setattr(self, name, value)

    def _mean_field(self, params, v):
        return self._kernels("model_r").mean_field(self._routed(params), v, tol=float(self.routing_tol),
                                                   max_iter=int(self.max_routing),
                                                   damping=float(self.routing_damping))

    # ------------------------------------------------------------------ chains: (v, a)

    def _start_chains(self, params, v, rng):
        """Chain state (v, a) with ``a_i ~ c_i``, the mean-field routing of v (one rng.random)."""
        c, _, _ = self._mean_field(params, v)  # (B, I, J)
        draw = self._kernels("model_r")._categorical_draw
        return v, draw(c, rng.random(c.shape[:2]))  # (B, I, d_v), (B, I)

    def _chain_visible(self, chains):
        return chains[0]

    def _with_chain_rows(self, params, chains, rows, fresh):
        """Chains (v (B, I, d_v), a (B, I), offsets...) with the rows ``rows`` (R,) replaced
        by the fresh pair ``fresh`` (v (R, I, d_v), a (R, I)); the offsets are not per chain."""
        v, a = chains[0].copy(), chains[1].copy()
        v[rows], a[rows] = fresh
        return (v, a) + tuple(chains[2:])

    def _chains_from_path_state(self, state, dtype):
        return np.asarray(state[0], dtype=dtype), state[1]  # (B, I, d_v), (B, I)

    def _chain_arrays(self, chains):
        return {"chains_v": chains[0], "chains_a": chains[1], **_offset_arrays(chains[2:])}

    def _chains_from_arrays(self, arrays):
        return (arrays["chains_v"], arrays["chains_a"]) + _offsets_from_arrays(arrays)

    def _restored_chains(self, arrays, source):
        """(v, a) chains from a file; the routes must be parent indices in [0, n_capsules); the
        shared capsule's offsets' average, when stored, (I, d_v) and (H0,)."""
        chains = super()._restored_chains(arrays, source)
        v, a = chains[:2]
        if a is None or a.shape != v.shape[:2] or a.dtype.kind not in "iu" or \
                (a.size and (a.min() < 0 or a.max() >= int(self.n_capsules))):
            raise ValueError(f"{source}: array 'chains_a' is missing or is not an integer array "
                             f"of shape {v.shape[:2]} with values in [0, {self.n_capsules})")
        _check_offsets(chains[2:], v.shape[1:], (int(self.shared_units),), source)
        return chains

    def _sweep(self, params, chains, rng):
        v_new, _, a_new, _ = self._gibbs_sweep(params, chains[0], chains[1], rng)
        return (v_new, a_new), {}

    def _visible_mean(self, params, chains, rng):
        """``p(v | h, a)`` (4.5) with ``h ~ p(h | v, a)`` (4.4): (B, I, d_v). With a shared
        capsule, ``p(v | g, h, a)`` (4c.4) with g then drawn from ``p(g | v)`` (4c.2)."""
        v, a = chains[:2]
        model_r = self._kernels("model_r")
        ph = model_r.hidden_probability(self._routed(params), v, a)  # (B, J, d_h)
        h = (rng.random(ph.shape) < ph).astype(ph.dtype)
        if isinstance(params, RSParams):
            pg = _model_rs.shared_probability(params, v, rbm=self._kernels("rbm"))  # (B, H0)
            g = (rng.random(pg.shape) < pg).astype(pg.dtype)
            return _model_rs.visible_probability(params, g, h, a)  # (B, I, d_v)
        return model_r.visible_probability(params, h, a)  # (B, I, d_v)

    def _data_statistics(self, params, v, c, mu, rng):
        """Data statistics (4.8) of the batch v (B, I, d_v) with mean-field routing c (B, I, J),
        mu (B, J, d_h): the mean-field ones, or with ``posterior_sweeps`` = k > 0 sampled ones.

        Sampled: routes ``a ~ c``, then k sweeps ``h ~ p(h | v, a)``, ``a ~ p(a | v, h)`` with v
        clamped (the h and a blocks of :func:`model_r.gibbs_sweep`, whose v draw is dropped);
        statistics of the last (h, resp) pair, Rao-Blackwellised over a like the chains'.
        With a shared capsule these are the routed part's (4c.3); :meth:`_step` adds its own.
        """
        model_r = self._kernels("model_r")
        routed = self._routed(params)
        k = int(self.posterior_sweeps)
        if k == 0:
            return model_r.data_statistics(routed, v, c, mu)
        a = model_r._categorical_draw(c, rng.random(c.shape[:2]))  # (B, I)
        for _ in range(k):
            _, h, a, resp = model_r.gibbs_sweep(routed, v, a, rng)  # (B, J, d_h), (B, I), (B, I, J)
        return model_r.model_statistics(routed, v, h, resp)

    def _step(self, params, batch, chains, rng):
        """PCD gradient (4.8): data statistics (mean-field or sampled, see ``posterior_sweeps``)
        minus Rao-Blackwellised chain ones (over a, or over h where h enters: ``rao_blackwell``);
        a shared capsule's part (4c.6) is exact over g at the batch and at the chains."""
        model_r = self._kernels("model_r")
        c, mu, n_mf = self._mean_field(params, batch)  # (B, I, J), (B, J, d_h), (B,)
        positive = self._data_statistics(params, batch, c, mu, rng)
        if chains is None:  # CD-k: start at the batch, routes drawn from its mean field
            chains = (batch, model_r._categorical_draw(c, rng.random(c.shape[:2])))
        v, a = chains[:2]
        offsets = chains[2] if len(chains) > 2 else None  # the shared offsets' average (5.10)
        over_hidden = self.rao_blackwell == "hidden"
        shared = isinstance(params, RSParams)
        for _ in range(int(self.cd_k)):
            v_in, a_in = v, a
            # a shared capsule's p(g | v_in): the sweep draws g from it, (4c.6) averages over it
            p_g = _model_rs.shared_probability(params, v_in, rbm=self._kernels("rbm")) if shared else None
            v, h, a, resp, *p_h = self._gibbs_sweep(params, v_in, a_in, rng, over_hidden, p_g)
        # resp belongs to the pair (v_in, h) of the last sweep, p_h to (v_in, a_in) (see
        # model_r.gibbs_sweep); (v_in, a) with the new routes a is a third pair of law p
        routed = self._routed(params)
        if over_hidden:
            negative = model_r.hidden_model_statistics(routed, v_in, a_in, p_h[0], resp)  # (4b.10)
        elif self.rao_blackwell == "hidden-redrawn":
            p_new = model_r.hidden_probability(routed, v_in, a)  # (B, J, d_h) (4.4) at the new routes
            negative = model_r.hidden_model_statistics(routed, v_in, a, p_new, resp)  # (4b.10)
        else:
            negative = model_r.model_statistics(routed, v_in, h, resp)
        grad = type(positive)(*(p - n for p, n in zip(positive, negative)))
        if self.centring:  # (4b.9): offsets are the batch's data means of v and h
            m, l = positive.alpha, positive.gamma  # (I, d_v), (J, d_h)
            if self.centring == "visible":
                l = np.zeros_like(l)
            elif self.centring == "shared":
                l = np.broadcast_to(l.mean(axis=0), l.shape)  # (J, d_h): one offset for all
            centre_biases = self.centring == "all"
            grad = _model_r_ref.centred_gradient(grad, m, l, centre_biases)
        if not self.learn_prior:
            grad = grad._replace(beta=np.zeros_like(params.beta))
        if self.assignment_biases and self.assignment_bias_rate != 1.0:
            rate = float(self.assignment_bias_rate)
            grad = grad._replace(C=rate * grad.C, A=rate * grad.A)
        if self.tie_weights:  # (4b.6): one weight tensor shared by the parents
            grad = grad._replace(W=model_r.tied_gradient(grad.W))
        if self.centring:  # the plain parameters' step (4b.8 is linear)
            grad = _model_r_ref.from_centred(grad, m, l, centre_biases)
        if self.sparsity_cost:  # (4b.11)
            grad = self._sparse(params, grad, batch, c, mu, positive)
        if shared:  # (4c.6) at the batch minus at the chains' v_in
            d_V, d_delta = _model_rs.shared_gradient(params, batch, v_in, rbm=self._kernels("rbm"),
                                                     p_model=p_g)
            grad = _model_rs.with_shared(grad, d_V, d_delta)
            if self.shared_centring:  # (4c.9), then the plain step (4c.8 is linear)
                m = positive.alpha  # (I, d_v): the batch's mean of v
                l0 = d_delta + p_g.mean(axis=0)  # (H0,): d_delta is <p(g|v)>_batch - <p(g|v)>_chains
                if self.centring_average:  # (5.10)
                    offsets = moving_average(offsets, CentringOffsets(m, l0), int(self.centring_average))
                    m, l0 = offsets
                grad = _model_rs.from_centred(_model_rs.centred_gradient(grad, m, l0), m, l0)
            if self.weight_decay:  # the decay sgd_update gives W
                grad = grad._replace(V=grad.V - float(self.weight_decay) * params.V)
        if not self.persistent:
            chains = None
        else:
            chains = (v, a) if offsets is None else (v, a, offsets)
        return grad, chains, {"train_mean_field_iterations": float(np.mean(n_mf))}

    def _sparse(self, params, grad, batch, c, mu, positive):
        """``grad`` plus the sparsity step (4b.11): on gamma alone, with q the batch's data
        statistic of gamma (the mean of mu, or of the sampled h), or on every parameter of the
        hidden units' mean-field input at the batch's routing c (W, gamma, C; the tied W's
        share summed over the parents as in (4b.6))."""
        target, cost = float(self.sparsity_target), float(self.sparsity_cost)
        if self.sparsity_on == "biases":
            return grad._replace(gamma=grad.gamma + sparsity_gradient(positive.gamma, target, cost))
        pull = self._kernels("model_r").sparsity_gradient(params, batch, c, mu, target, cost)
        if self.tie_weights:
            pull = pull._replace(W=self._kernels("model_r").tied_gradient(pull.W))
        return type(grad)(*(g + x for g, x in zip(grad, pull)))

    def _monitor(self, params, X, rng):
        iters, elbo, error = [], [], []
        for s in range(0, X.shape[0], _CHUNK):
            v = X[s:s + _CHUNK]
            c, mu, n_mf = self._mean_field(params, v)
            iters.append(n_mf)
            elbo.append(self._elbo(params, v, c))
            error.append(_squared_error(v, self._reconstruction(params, c, mu, v)))
        return {"mean_field_iterations": float(np.mean(np.concatenate(iters))),
                "elbo": float(np.mean(np.concatenate(elbo))),
                "reconstruction_error": float(np.mean(np.concatenate(error)))}

    @staticmethod
    def _reconstruction(params, c, mu, v=None):
        """Mean-field reconstruction ``sigmoid(alpha_i + sum_j c_ij W_ij^T mu_j)``: (B, I, d_v)
        (with a shared capsule, ``+ V_i^T p(g | v)``, which needs the images v)."""
        top_down = _model_r_ref.top_down(params, mu)  # (J, B, I, d_v): W_ij^T mu_j
        field = params.alpha + np.einsum("bij,jbil->bil", c, top_down)  # (B, I, d_v)
        _, A = _model_r_ref.assignment_biases(params)
        if A is not None:  # (4b.4): + sum_j c_ij A_ij
            field = field + np.einsum("bij,ijl->bil", c, A, optimize=True)
        if isinstance(params, RSParams):  # (4c.4) at g's mean
            field = field + _model_rs.shared_field(params, _model_rs.shared_probability(params, v))
        return sigmoid(field)  # (B, I, d_v)

    # ------------------------------------------------------------------ public inference

    def transform(self, X):
        """Capsule existence probabilities under the mean-field posterior.

        ``P(h_j != 0) = 1 - prod_k (1 - mu_jk)``: the probability that hidden capsule j has at
        least one active neuron, with ``q(h_jk = 1) = mu_jk`` from mean-field routing (4.6).

        Returns
        -------
        ndarray of shape (n_samples, n_capsules)
        """
        V = self._checked(X)
        params = self._params()

        def existence(v):
            _, mu, _ = self._mean_field(params, v)  # (B, J, d_h)
            # 1 - prod_k (1 - mu_jk) = -expm1(sum_k log1p(-mu_jk)), accurate for small mu
            with np.errstate(divide="ignore"):
                return -np.expm1(np.sum(np.log1p(-mu), axis=-1))  # (B, J)

        return _chunked(existence, V)

    def score_samples(self, X):
        """Mean-field lower bound on the unnormalised log-probability, ``L(v) <= log p~(v)``.

        Model R's free energy ``-log sum_{h,a} e^{-E}`` sums over J^I routings and is not in
        closed form, and neither is a pseudo-likelihood built on it. The score is therefore the
        bound of :func:`mean_field_elbo` at the mean-field routing of each image: deterministic,
        cheap, and ``log p(v) >= L(v) - log Z`` with the unknown constant ``log Z``. Compare
        scores of images under one fitted model; across models they are not comparable (each
        has its own Z). For log-likelihoods use :meth:`log_likelihood` (importance sampling,
        ``model_r.log_marginal_is``) with an AIS estimate of log Z.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        params = self._params()
        return _chunked(lambda v: self._elbo(params, v, self._mean_field(params, v)[0]), V)

    def free_energy(self, X):
        """Variational free energy ``-L(v)``, an UPPER bound on ``F(v) = -log p~(v)``.

        See :meth:`score_samples`; the exact F is not in closed form for Model R.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return -self.score_samples(X)

    def log_likelihood(self, X, log_z, n_samples=100, random_state=None, return_std=False,
                       n_starts=1):
        """Importance-sampling estimate of ``log p(v) = log p~(v) - log Z`` in nats per image.

        ``log p~(v) = log sum_a p~(v, a)`` (h summed out in closed form, (4.9)) is estimated by
        importance sampling over the J**I routing assignments with the mean-field routing of
        each image as proposal, ``q(a) = prod_i c_{i a_i}`` (4.10,
        :func:`capsnp.model_r.log_marginal_is`). The estimate is biased LOW, by about
        ``se**2 / 2`` (Jensen; MODEL.md sec. 4), and by the mass of posterior modes the
        mean-field routing does not sit on (``n_starts``). The AIS estimate of log Z is biased
        low too, so with it the result is neither a lower nor an upper bound on the
        log-likelihood: report it as such, with the spread over reruns.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        log_z : float
            ``capsnp.exact_log_partition(self)`` (tiny models) or
            ``capsnp.ais_log_partition(self).log_z``.
        n_samples : int, default=100
            Importance samples S per image.
        random_state : int, Generator or None
            Seed of the assignment draws; by default the estimator's ``random_state``. A
            Generator is used (and advanced) as it is: one ``rng.random((S, B, I))`` call per
            chunk of B <= 500 rows, in row order.
        return_std : bool, default=False
            Also return the per-image standard errors of the estimates (delta method,
            ``sd(w) / (sqrt(S) mean(w))``, inf when S = 1). They are estimates too, and too
            small where the mean-field proposal misses part of the routing posterior (zero if
            every draw hit one assignment): on tiny fitted models with S = 1000, 1% to 4% of
            the images were more than 4 standard errors from the exact value.
        n_starts : int, default=1
            With K > 1 the proposal is the mixture of the mean-field routing and the fixed
            points the mean field reaches from K - 1 routings drawn uniformly on each patch's
            simplex (damping 0.5, tolerance 1e-8, up to 500 updates): it also covers posterior
            modes the usual start misses. The starts are drawn first, per chunk, from the same
            generator; the draws then go to the K components in turn, each weighted against the
            mixture with the shares used (:func:`model_r.log_marginal_is`, ``stratified=True``).
            On trained MNIST capsule models, a mixture of 8 fixed points (its first the converged
            mean field rather than the scored routing) with 1,000 to 10,000 draws scored 0.02 to
            0.3 nats per image above the default 100-draw estimate, of which more draws of the
            scored routing alone gave 0.01 to 0.13 (docs/results.md sec. 26).

        Returns
        -------
        log_p : ndarray of shape (n_samples,)
        std_errors : ndarray of shape (n_samples,), only with ``return_std=True``
        """
        V = self._checked(X)  # (n, I, d_v)
        log_z = _check_log_z(log_z)
        _check_number("n_samples", n_samples, 1, integer=True)
        _check_number("n_starts", n_starts, 1, integer=True)
        _check_bool("return_std", return_std)
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        params, model_r = self._params(), self._kernels("model_r")

        def estimate(v):
            c, _, _ = self._mean_field(params, v)  # (B, I, J)
            if n_starts > 1:
                starts = rng.dirichlet(np.ones(c.shape[-1]), size=(int(n_starts) - 1,) + c.shape[:2])
                fixed = [model_r.mean_field(self._routed(params), v, tol=1e-8, max_iter=500, damping=0.5,
                                            start=c0)[0] for c0 in starts]  # K - 1 of (B, I, J)
                c = np.stack([c] + fixed)  # (K, B, I, J)
            if isinstance(params, RSParams):  # (4c.5): the routed part's estimate + the exact shared term
                return _model_rs.log_marginal_is(params, v, int(n_samples), rng, c=c, log_z=log_z,
                                                 model_r=model_r)
            return model_r.log_marginal_is(params, v, int(n_samples), rng, c=c, log_z=log_z)

        parts = [estimate(V[s:s + _CHUNK]) for s in range(0, V.shape[0], _CHUNK)]
        log_p = np.concatenate([p[0] for p in parts])  # (n,)
        if return_std:
            return log_p, np.concatenate([p[1] for p in parts])  # (n,), (n,)
        return log_p


# ----------------------------------------------------------------------------- Bernoulli RBM


class BernoulliRBM(_EnergyEstimator):
    """Bernoulli restricted Boltzmann machine (MODEL.md sec. 5), the baseline.

    ``E(v, h) = -a.v - b.h - v^T W h``. Parameters and fitted attributes follow
    ``sklearn.neural_network.BernoulliRBM``, and with the default settings training follows the
    same algorithm: PCD-1 with ``batch_size`` persistent chains whose hidden units are drawn
    from the probabilities of the previous step (:func:`capsnp.rbm.pcd_step`; scikit-learn's
    ``h_samples_``), plain SGD (no momentum, no weight decay), positive and negative statistics
    from the hidden probabilities, W initialised from N(0, 0.01^2) and the hidden biases at
    zero, so the two can be compared. Two
    differences: minibatches are reshuffled every epoch (scikit-learn keeps a fixed order), and
    the visible biases start at the data's log-odds (scikit-learn: zero), as Hinton's practical
    guide advises. scikit-learn's first negative sample is drawn from ``p(v | h = 0)``; here the
    persistent chains likewise start as independent pixels from the initial visible biases
    (``chain_init="noise"``).

    Parameters
    ----------
    n_components : int, default=256
        Number of hidden units H.
    learning_rate : float, default=0.1
    batch_size : int, default=10
    n_iter : int, default=10
    verbose : int, default=0
    random_state : int, Generator or None, default=None
    cd_k : int, default=1
        Gibbs sweeps per gradient step.
    persistent : bool, default=True
        PCD; False gives CD-k (chains restart at the minibatch).
    n_chains : int or None, default=None
        Persistent chains; ``batch_size`` when None (scikit-learn's choice, which ties the two).
    momentum : float, default=0.0
    weight_decay : float, default=0.0
    average : int, default=0
        K >= 1: publish the moving average of the parameters over about K updates while
        training runs on the current ones (as :class:`RoutedCapsuleRBM` describes); 0: the
        last update's parameters.
    lr_schedule : {"constant", "linear"}, default="constant"
        ``"linear"`` decays the rate to ``learning_rate * lr_final_ratio`` over ``n_iter`` epochs.
    lr_final_ratio : float, default=0.04
    dtype : float64 or float32, default=np.float64
        Dtype of data and parameters throughout. Input of any real dtype is converted to it,
        so with float32 every fitted array, transform, score and sample is float32. A float32
        fit agrees with the float64 fit of the same ``random_state`` to within 1e-3 (absolute
        and relative, every parameter, after an epoch on small data; tested). Longer runs drift
        further apart: a Bernoulli draw compares a uniform number with a probability whose
        float32 rounding can flip the outcome, after which the chains differ, so the two then
        agree only statistically.
    chain_init : {"noise", "data"}, default="noise"
    chain_restart : float in [0, 1), default=0.0
        Before every persistent-chain step, each chain is replaced, independently with this
        probability, by a fresh chain at visible-bias noise (docs/MODEL_RB.md (5.12)): the
        chains then also visit the modes that chains from noise fall into, which persistent
        chains alone may never reach, and the negative phase pushes them down.
    centring : {False, True, "visible"}, default=False
        Take the gradient steps in centred coordinates (5.9), ``E = -a'.v - b'.h - (v - m)^T W
        (h - l)`` with the minibatch's data means as offsets m (of v) and l (of p(h = 1 | v)):
        the W step becomes ``<(v - m)(p(h|v) - l)^T>_data - <.>_model`` and the plain biases
        absorb the offsets. The model is the same; the update direction changes. With PCD the
        hidden offset is read off the gradient (no extra pass); CD-k costs one more hidden pass
        over the minibatch per step. ``"visible"``: l = 0 (only v centred).
    centring_average : int, default=0
        0: the offsets of each centred step are the minibatch's own means. K >= 1: their
        exponential moving average with a horizon of K updates (docs/MODEL_RB.md, (5.10)),
        starting at the first minibatch's means; Melchior, Fischer and Wiskott (2016) smooth
        the offsets so, with K = 100. The average is carried with the persistent chains (and
        saved in checkpoints), so it needs ``centring`` and ``persistent=True``.
    sparsity_target : float in (0, 1), default=0.1
    sparsity_cost : float, default=0.0
        With a cost lambda > 0, the hidden biases take the sparsity step (4b.11) ``lambda *
        (sparsity_target - q)``, q (H,) being the minibatch's mean of ``p(h = 1 | v)``: the
        gradient of a penalty that pulls each hidden unit's firing probability on the data
        towards the target (Hinton's practical guide, section 11). 0: off.
    sparsity_on : {"biases", "inputs"}, default="biases"
        Which parameters take the sparsity step: the hidden biases alone, or b and W
        (:func:`capsnp.rbm.sparsity_gradient`, one more hidden pass per step).
    checkpoint_path : str, os.PathLike or None, default=None
        File to which :meth:`fit` writes checkpoints (see :meth:`fit`); its directory must
        exist. Not for use inside ``GridSearchCV`` and the like (every clone would write the
        same file).
    checkpoint_every : int, default=1
        Epochs between checkpoints; one is also written after the last epoch and on Ctrl-C.
    resume : bool, default=False
        Make :meth:`fit` continue from the checkpoint at ``checkpoint_path`` (which must
        exist) instead of starting over.
    backend : {"numba", "numpy"}, default="numba"
        Run the model computations on the compiled kernels (:mod:`capsnp.kernels`) or on the
        NumPy reference; the same equations and random draws, so the fitted models agree to
        rounding. "numba" falls back to NumPy, with a warning, where Numba is missing.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    intercept_hidden_ : ndarray of shape (n_components,)
    intercept_visible_ : ndarray of shape (n_features,)
    n_features_in_ : int
    persistent_chains_ : ndarray of shape (n_chains, n_features) or None
    history_ : list of dict
        Per epoch: epoch, seconds, images_per_second, learning_rate, momentum, and on the
        monitoring rows (up to 1,000 training rows) free_energy, pseudo_log_likelihood (one
        random pixel per image, scaled by the number of pixels) and reconstruction_error.
    n_iter_ : int
    """

    _param_attributes = ("components_", "intercept_visible_", "intercept_hidden_")
    _params_type = RBMParams
    _single_threaded_blas = True  # the visible pass is BLAS (capsnp._kernels_rbm.visible_logits)

    def __init__(self, n_components=256, *, learning_rate=0.1, batch_size=10, n_iter=10,
                 verbose=0, random_state=None, cd_k=1, persistent=True, n_chains=None,
                 momentum=0.0, weight_decay=0.0, average=0, lr_schedule="constant",
                 lr_final_ratio=0.04, dtype=np.float64, chain_init="noise", chain_restart=0.0,
                 centring=False, centring_average=0, sparsity_target=0.1, sparsity_cost=0.0,
                 sparsity_on="biases", checkpoint_path=None, checkpoint_every=1, resume=False, backend="numba"):
        self.n_components = n_components
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.verbose = verbose
        self.random_state = random_state
        self.cd_k = cd_k
        self.persistent = persistent
        self.n_chains = n_chains
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.average = average
        self.lr_schedule = lr_schedule
        self.lr_final_ratio = lr_final_ratio
        self.dtype = dtype
        self.chain_init = chain_init
        self.chain_restart = chain_restart
        self.centring = centring
        self.centring_average = centring_average
        self.sparsity_target = sparsity_target
        self.sparsity_cost = sparsity_cost
        self.sparsity_on = sparsity_on
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.backend = backend

    def _setup(self, n_features):
        _check_number("n_components", self.n_components, 1, integer=True)
        _check_choice("centring", self.centring, (False, True, "visible"))
        _check_centring_average(self, self.centring, "centring")
        _check_sparsity(self)
        _check_choice("lr_schedule", self.lr_schedule, ("constant", "linear"))
        _check_number("lr_final_ratio", self.lr_final_ratio, 0)
        self.n_features_ = n_features
        self._n_features_out = int(self.n_components)

    def _layout_shape(self):
        return (self.n_features_,)

    def _attribute_shapes(self):
        H, D = int(self.n_components), self.n_features_
        return {"components_": (H, D), "intercept_visible_": (D,), "intercept_hidden_": (H,)}

    def _to_layout(self, X):
        return X  # (n, D)

    def _from_layout(self, V):
        return np.array(V, copy=True)  # (n, D)

    def _init_params(self, X, rng):
        """W ~ N(0, 0.01^2) of shape (D, H), drawn in float64 then cast; a = data log-odds; b = 0."""
        D, H = X.shape[1], int(self.n_components)
        W = (rng.normal(0.0, 1.0, (D, H)) * 0.01).astype(X.dtype)
        return RBMParams(W=W, a=_data_logits(X, X.dtype), b=np.zeros(H, dtype=X.dtype))

    def _params(self):
        return RBMParams(W=self.components_.T, a=self.intercept_visible_, b=self.intercept_hidden_)

    def _set_params(self, p):
        self.components_ = np.ascontiguousarray(p.W.T)  # (H, D)
        self.intercept_visible_, self.intercept_hidden_ = p.a, p.b

    def _container_from_attributes(self, params):
        """The file stores ``components_`` (H, D); the container holds W (D, H)."""
        return RBMParams(W=np.ascontiguousarray(params.W.T), a=params.a, b=params.b)

    def _visible_noise_probability(self, params):
        return sigmoid(params.a)  # (D,)

    # A chain is the pair (v (n, D), p (n, H) or None): its visible states and their hidden
    # probabilities from the last training step (None: not known yet, computed when needed).
    # With ``centring_average`` the training chains carry a third item from the first step on,
    # the offsets' moving average (CentringOffsets, m (D,), l (H,)).

    def _start_chains(self, params, v, rng):
        return v, None

    def _chain_visible(self, chains):
        return chains[0]

    def _with_chain_rows(self, params, chains, rows, fresh):
        """Chains (v (B, D), p (B, H) or None, offsets...) with the rows ``rows`` (R,) replaced
        by ``fresh`` (v (R, D), None); a known p gets the fresh rows' p(h = 1 | v) (5.2)."""
        v, p = chains[0].copy(), chains[1]
        v[rows] = fresh[0]
        if p is not None:
            p = p.copy()
            p[rows] = self._kernels("rbm").hidden_probability(params, fresh[0])  # (R, H)
        return (v, p) + tuple(chains[2:])

    def _chains_from_path_state(self, state, dtype):
        return np.asarray(state, dtype=dtype), None  # (B, D), hidden probabilities not known

    def _chain_arrays(self, chains):
        v, p = chains[:2]
        arrays = {"chains_v": v} if p is None else {"chains_v": v, "chains_p": p}
        return {**arrays, **_offset_arrays(chains[2:])}

    def _chains_from_arrays(self, arrays):
        return (arrays["chains_v"], arrays.get("chains_p")) + _offsets_from_arrays(arrays)

    def _restored_chains(self, arrays, source):
        """(v, p) chains from a file; p (absent in older files) must be (n_chains, H); the
        offsets' average, when stored, (D,) and (H,)."""
        chains = super()._restored_chains(arrays, source)
        v, p = chains[:2]
        if p is not None and p.shape != (v.shape[0], int(self.n_components)):
            raise ValueError(f"{source}: array 'chains_p' has shape {p.shape}, expected "
                             f"{(v.shape[0], int(self.n_components))}")
        _check_offsets(chains[2:], (self.n_features_,), (int(self.n_components),), source)
        return chains

    def _sweep(self, params, chains, rng):
        v_new, _ = self._kernels("rbm").gibbs_sweep(params, chains[0], rng)  # (B, D)
        return (v_new, None), {}

    def _visible_mean(self, params, chains, rng):
        """``p(v | h)`` with ``h ~ p(h | v)`` (5.x): (B, D)."""
        rbm = self._kernels("rbm")
        h = rbm.sample_hidden(params, chains[0], rng)  # (B, H)
        return rbm.visible_probability(params, h)  # (B, D)

    def _step(self, params, batch, chains, rng):
        """CD/PCD gradient (5.6): ``<v p(h|v)^T>_data - <v p(h|v)^T>_chains`` and the biases.

        PCD runs :func:`capsnp.rbm.pcd_step`, which draws the chains' first hidden units from
        the probabilities kept from the previous step; CD-k sweeps from the minibatch.
        """
        rbm = self._kernels("rbm")
        if chains is None:  # CD-k
            v = batch
            for _ in range(int(self.cd_k)):
                v, _ = rbm.gibbs_sweep(params, v, rng)  # (B, D)
            grad, _ = self._centred(params, batch, rbm.cd_gradient(params, batch, v))
            if self.sparsity_cost:
                grad = self._sparse(params, grad, batch, None)
            return grad, None, {}
        v, p = chains[:2]
        if p is None:
            p = rbm.hidden_probability(params, v)  # (n_chains, H)
        grad, v, p = rbm.pcd_step(params, batch, v, p, rng, int(self.cd_k))
        # grad.b = <p(h|v)>_batch - <p(h|v)>_chains, and p is the second at the new chain states
        # (with these parameters), so the batch's mean comes without another hidden pass
        data_mean = grad.b + p.mean(axis=0)  # (H,)
        grad, offsets = self._centred(params, batch, grad, data_mean, chains[2] if len(chains) > 2 else None)
        chains = (v, p) if offsets is None else (v, p, offsets)
        if not self.sparsity_cost:
            return grad, chains, {}
        return self._sparse(params, grad, batch, data_mean), chains, {}

    def _sparse(self, params, grad, batch, data_mean):
        """``grad`` plus the sparsity step (4b.11): on the hidden biases alone, q = ``data_mean``
        (H,), the batch's mean of p(h = 1 | v) (None: computed here), or on b and W
        (``sparsity_on="inputs"``, one more hidden pass over the batch)."""
        rbm = self._kernels("rbm")
        target, cost = float(self.sparsity_target), float(self.sparsity_cost)
        if self.sparsity_on == "inputs":
            pull = rbm.sparsity_gradient(params, batch, target, cost)
            return type(grad)(*(g + x for g, x in zip(grad, pull)))
        if data_mean is None:
            data_mean = rbm.hidden_probability(params, batch).mean(axis=0)  # (H,)
        return grad._replace(b=grad.b + sparsity_gradient(data_mean, target, cost))

    def _centred(self, params, batch, grad, data_mean=None, average=None):
        """With ``centring``, (the plain step of the centred gradient (5.9), the offsets); else
        (``grad``, None).

        The offsets are the batch's data means (``data_mean`` (H,): the hidden one when the
        caller has it, else computed here) or, with ``centring_average``, their moving average
        (5.10) after ``average`` (CentringOffsets, or None before the first step).
        """
        if not self.centring:
            return grad, None
        m = batch.mean(axis=0)  # (D,)
        if self.centring == "visible":
            l = np.zeros(params.b.shape, dtype=params.b.dtype)  # (H,)
        elif data_mean is not None:
            l = data_mean  # (H,)
        else:
            l = self._kernels("rbm").hidden_probability(params, batch).mean(axis=0)  # (H,)
        offsets = CentringOffsets(m, l)
        if self.centring_average:
            offsets = moving_average(average, offsets, int(self.centring_average))  # (5.10)
        step = _rbm_ref.from_centred(_rbm_ref.centred_gradient(grad, *offsets), *offsets)
        return step, (offsets if self.centring_average else None)

    def _monitor(self, params, X, rng):
        rbm = self._kernels("rbm")
        recon = rbm.visible_probability(params, rbm.hidden_probability(params, X))  # (n, D)
        return {"free_energy": float(np.mean(rbm.free_energy(params, X))),
                "pseudo_log_likelihood": float(np.mean(rbm.pseudo_log_likelihood(params, X, rng))),
                "reconstruction_error": float(np.mean(_squared_error(X, recon)))}

    def transform(self, X):
        """Hidden probabilities ``p(h = 1 | v)`` (5.2).

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        V = self._checked(X)
        return self._kernels("rbm").hidden_probability(self._params(), V)  # (n, H)

    def free_energy(self, X):
        """Free energy (5.4) ``F(v) = -v.a - sum_k softplus(b_k + (v W)_k)``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        return self._kernels("rbm").free_energy(self._params(), V)

    def score_samples(self, X):
        """Pseudo-log-likelihood, scikit-learn's stochastic one-flip estimate (5.7).

        One pixel per image is flipped at random (a generator seeded by ``random_state``, fresh
        at each call) and ``D log sigmoid(F(v~) - F(v))`` returned.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        rng = np.random.default_rng(self.random_state)
        return self._kernels("rbm").pseudo_log_likelihood(self._params(), V, rng)

    def log_likelihood(self, X, log_z):
        """Normalised log-likelihood ``log p(v) = -F(v) - log Z`` in nats per image (MODEL.md sec. 6).

        Exact given ``log Z``: F is in closed form (5.4). With an AIS estimate of log Z the
        values inherit its error (AIS is biased low, so they are then biased high).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        log_z : float
            ``capsnp.exact_log_partition(self)`` (small D or H) or
            ``capsnp.ais_log_partition(self).log_z``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        log_z = _check_log_z(log_z)
        return -self.free_energy(X) - log_z  # (n,)

    def gibbs(self, v):
        """One block Gibbs sweep from v (as scikit-learn's ``gibbs``), drawing from a generator
        seeded by ``random_state`` at the first call and continued afterwards.

        Parameters
        ----------
        v : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        V = self._checked(v)
        if not hasattr(self, "_gibbs_rng"):
            self._gibbs_rng = np.random.default_rng(self.random_state)
        return self._kernels("rbm").gibbs_sweep(self._params(), V, self._gibbs_rng)[0]  # (n, D)


# ----------------------------------------------------------------------------- helpers, files


def _squared_error(v, p):
    """Per-image sum of squared differences: (B, ...) x (B, ...) -> (B,)."""
    d = (v - p).reshape(v.shape[0], -1)  # (B, D)
    return np.sum(d * d, axis=1)


_ESTIMATORS = {cls.__name__: cls for cls in (CapsulePoE, RoutedCapsuleRBM, BernoulliRBM)}


def load_estimator(path):
    """Rebuild a fitted estimator from a file written by its ``save`` method (or a checkpoint).

    The parameters are bit-identical (so free energies, transforms and scores equal those of
    the saved estimator exactly); velocities, persistent chains, epoch count, history and the
    state of the random streams are restored too, so ``partial_fit`` continues the training
    exactly where it stopped.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    CapsulePoE, RoutedCapsuleRBM or BernoulliRBM

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not a readable capsnp model file (truncated, corrupted, another
        format_version), names an unknown model class or hyper-parameters, or holds arrays
        whose names, shapes, dtypes or values do not fit its hyper-parameters.
    """
    arrays, meta = load_model(path)
    name = meta.get("model")
    if name not in _ESTIMATORS:
        raise ValueError(f"{path}: unknown model class {name!r}; expected one of "
                         f"{', '.join(sorted(_ESTIMATORS))}")
    cls = _ESTIMATORS[name]
    hyper = _from_jsonable(meta.get("hyperparameters"))
    if not isinstance(hyper, dict):
        raise ValueError(f"{path}: no 'hyperparameters' object in the metadata")
    unknown = sorted(set(hyper) - set(cls._get_param_names()))
    if unknown:
        raise ValueError(f"{path}: unknown hyper-parameters {unknown} for {name}; the file may "
                         f"come from a newer capsnp")
    try:
        hyper["dtype"] = np.dtype(hyper.get("dtype", "float64")).type
    except TypeError as exc:
        raise ValueError(f"{path}: bad dtype in the hyper-parameters ({exc})") from None
    for key in ("image_shape", "patch"):
        if isinstance(hyper.get(key), list):
            hyper[key] = tuple(hyper[key])
    return cls(**hyper)._restore(arrays, meta, source=path)
