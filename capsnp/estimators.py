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
they are (as probabilities). ``X`` is never modified in place. NaN or infinity, values outside
[0, 1], a different number of features than seen in ``fit``, or image shapes and patch sizes
that do not tile raise ``ValueError``; sparse input raises ``TypeError``.

Training is minibatch stochastic gradient ascent on the log-likelihood (``capsnp.training``),
with CD-k (chains restart at the minibatch, ``persistent=False``) or PCD-k (``persistent=True``,
chains carried from one minibatch to the next). Everything random comes from one
``np.random.Generator`` created from ``random_state`` at the start of ``fit``; ``partial_fit``
continues that stream, so the same ``random_state`` gives the same model. The per-epoch metrics
use a second, independent stream spawned from it, so monitoring never changes the fitted model.
"""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import model_p, model_r, rbm
from .capsules import capsule_layout, from_capsules, predictions, to_capsules
from .io import load_model, save_model
from .ops import sigmoid, softplus
from .params import PParams, RBMParams, RParams
from .routing import dynamic_routing
from .training import Objective, TrainingState, initial_state, run_epochs

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


# ----------------------------------------------------------------------------- small helpers


def _validate(estimator, X, reset, dtype):
    """scikit-learn's ``validate_data`` (or ``_validate_data``) plus the [0, 1] range check."""
    kwargs = dict(reset=reset, dtype=np.dtype(dtype).type, accept_sparse=False, ensure_2d=True)
    if _sk_validate_data is not None:
        X = _sk_validate_data(estimator, X, **kwargs)
    else:  # pragma: no cover
        X = estimator._validate_data(X, **kwargs)
    if X.size and (X.min() < 0 or X.max() > 1):
        raise ValueError(
            f"{type(estimator).__name__} expects values in [0, 1] (binary images or pixel "
            f"probabilities), got values in [{X.min():g}, {X.max():g}]; scale grey levels with "
            f"capsnp.datasets.to_unit_interval or binarize them with capsnp.datasets.binarize"
        )
    return X


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
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def _jsonable(obj):
    """Hyper-parameters and generator states as JSON values (arrays tagged with their dtype)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_jsonable(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_jsonable(v) for v in obj]
    return obj


def _generator_from_state(state):
    """A ``np.random.Generator`` whose bit generator is restored to ``state``."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


# ----------------------------------------------------------------------------- shared shell


class _EnergyEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What every capsnp estimator shares: validation, the fit driver, sampling and files.

    Subclasses provide the model through a handful of hooks:

    * ``_setup(n_features)``: check hyper-parameters and set the layout attributes;
    * ``_to_layout(X)`` (n, D) -> model layout, ``_from_layout(V)`` back to images (n, D);
    * ``_init_params(X, rng)`` -> parameter container, ``_params()`` / ``_set_params(p)``
      between the container and the public fitted attributes;
    * ``_start_chains(params, v, rng)`` -> chain state from binary visible states,
      ``_chain_visible(chains)``, ``_sweep(params, chains, rng)`` -> (chains, stats);
    * ``_step(params, batch, chains, rng)`` and ``_monitor(params, X, rng)`` for the loop.
    """

    # Names of the fitted parameter attributes, in the order of the parameter container.
    _param_attributes = ()

    # ------------------------------------------------------------------ hyper-parameters

    def _check_training_hyperparameters(self):
        _check_number("learning_rate", self.learning_rate, 0, low_open=True)
        _check_number("batch_size", self.batch_size, 1, integer=True)
        _check_number("n_iter", self.n_iter, 0, integer=True)
        _check_number("cd_k", self.cd_k, 1, integer=True)
        _check_number("momentum", self.momentum, 0, 1, high_open=True)
        _check_number("weight_decay", self.weight_decay, 0)
        if self._n_chains_param() is not None:
            _check_number("n_chains", self._n_chains_param(), 1, integer=True)
        _check_choice("chain_init", self.chain_init, ("data", "noise"))
        _check_number("monitor_fraction", self._monitor_fraction(), 0, 1, high_open=True)
        return _float_dtype(self.dtype)

    def _n_chains_param(self):
        return getattr(self, "n_chains", None)

    def _n_chains(self):
        n = self._n_chains_param()
        return int(self.batch_size if n is None else n)

    def _monitor_fraction(self):
        return getattr(self, "monitor_fraction", 0.0)

    def _schedule(self):
        """(lr_schedule, lr_final_ratio) of the estimator."""
        return getattr(self, "lr_schedule", "constant"), getattr(self, "lr_final_ratio", 1.0)

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y=None):
        """Fit the model to X by ``n_iter`` epochs of minibatch stochastic gradient ascent.

        A held-out slice of ``round(monitor_fraction * n_samples)`` rows (drawn at random) is
        kept out of training and used for the per-epoch metrics in ``history_``; when it would
        be empty, the metrics use up to 1,000 training rows instead.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), values in [0, 1]
        y : ignored

        Returns
        -------
        self
        """
        X = self._start(X)
        n = X.shape[0]
        n_monitor = int(round(self._monitor_fraction() * n))
        if 1 <= n_monitor < n:
            order = self._monitor_rng.permutation(n)
            X_train, X_monitor = X[np.sort(order[n_monitor:])], X[np.sort(order[:n_monitor])]
        else:
            X_train, X_monitor = X, X[:_MAX_IN_SAMPLE_MONITOR]
        self._initialise(X_train)
        self._train(X_train, X_monitor, self.n_iter)
        return self

    def partial_fit(self, X, y=None):
        """One more epoch over X (in minibatches of ``batch_size``), continuing the training.

        The first call initialises the model from X as :meth:`fit` does (without a held-out
        slice). ``partial_fit(X)`` on a fresh estimator therefore gives exactly the model of
        ``fit(X)`` with ``n_iter=1`` and ``monitor_fraction=0``. The learning-rate schedule and
        the momentum warm-up count the epochs of all calls.

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
            self._initialise(X)
        else:
            dtype = self._check_training_hyperparameters()
            X = self._to_layout(_validate(self, X, reset=False, dtype=dtype))
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

    def _objective(self):
        return Objective(init_params=self._init_params, init_chains=self._init_chains,
                         step=self._step, monitor=self._monitor)

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

    def _train(self, X, X_monitor, n_epochs):
        state = self._state
        state.params = self._params()  # edits of the public attributes take effect
        schedule, final_ratio = self._schedule()
        run_epochs(state, self._objective(), X, n_epochs=n_epochs, batch_size=int(self.batch_size),
                   rng=self._rng, monitor_rng=self._monitor_rng, X_monitor=X_monitor,
                   learning_rate=float(self.learning_rate), schedule_epochs=max(int(self.n_iter), 1),
                   lr_schedule=schedule, lr_final_ratio=final_ratio,
                   momentum=float(self.momentum), weight_decay=float(self.weight_decay),
                   verbose=self.verbose, name=type(self).__name__)
        self._publish()

    def _publish(self):
        """Copy the training state into the public fitted attributes."""
        state = self._state
        self._set_params(state.params)
        self.history_ = state.history
        self.n_iter_ = state.epoch
        if state.chains is None:
            self.persistent_chains_ = None
        else:
            self.persistent_chains_ = self._from_layout(self._chain_visible(state.chains))

    # ------------------------------------------------------------------ inference

    def _checked(self, X):
        """Validated X in the model layout, for a fitted estimator."""
        check_is_fitted(self)
        return self._to_layout(_validate(self, X, reset=False, dtype=_float_dtype(self.dtype)))

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
               return_probabilities=False):
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
            p = self._checked(init)
            if n_samples is not None and n_samples != p.shape[0]:
                raise ValueError(f"n_samples={n_samples} but init has {p.shape[0]} rows")
        chains = self._start_chains(params, _bernoulli(p, rng, dtype), rng)
        for _ in range(int(n_steps)):
            chains, _ = self._sweep(params, chains, rng)
        if return_probabilities:
            return self._from_layout(self._visible_mean(params, chains, rng))
        return self._from_layout(self._chain_visible(chains))

    def _visible_mean(self, params, chains, rng):
        """Probabilities of the next visible draw (layout shape); default: the state itself."""
        return self._chain_visible(chains)

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
        state = self._state
        arrays = {name: getattr(self, name) for name in self._param_attributes}
        arrays.update({f"velocity_{f}": v for f, v in zip(state.velocity._fields, state.velocity)})
        if state.chains is not None:
            arrays.update(self._chain_arrays(state.chains))
        hyper = {k: (np.dtype(v).name if k == "dtype" else v) for k, v in self.get_params().items()}
        if not isinstance(hyper.get("random_state"), (int, type(None))):
            hyper["random_state"] = None  # a Generator cannot be stored; its state is below
        meta = dict(metadata or {})
        meta.update({
            "model": type(self).__name__,
            "hyperparameters": _jsonable(hyper),
            "n_features_in_": int(self.n_features_in_),
            "epochs": int(state.epoch),
            "history": _jsonable(state.history),
            "rng_state": _jsonable(self._rng.bit_generator.state),
            "monitor_rng_state": _jsonable(self._monitor_rng.bit_generator.state),
        })
        save_model(path, arrays, meta)

    def _restore(self, arrays, meta):
        """Rebuild the fitted state from :func:`load_model` output (see :func:`load_estimator`)."""
        self._check_training_hyperparameters()
        self.n_features_in_ = int(meta["n_features_in_"])
        self._setup(self.n_features_in_)
        params = self._params_type(*(arrays[name] for name in self._param_attributes_for_container()))
        params = self._container_from_attributes(params)
        velocity = type(params)(*(arrays[f"velocity_{f}"] for f in params._fields))
        chains = self._chains_from_arrays(arrays) if self.persistent else None
        history = _from_jsonable(meta.get("history", []))
        self._state = TrainingState(params=params, velocity=velocity, chains=chains,
                                    epoch=int(meta.get("epochs", 0)), history=history)
        self._rng = _generator_from_state(_from_jsonable(meta["rng_state"]))
        self._monitor_rng = _generator_from_state(_from_jsonable(meta["monitor_rng_state"]))
        self._publish()
        return self

    def _param_attributes_for_container(self):
        return self._param_attributes

    def _container_from_attributes(self, params):
        return params

    def _chain_arrays(self, chains):
        return {"chains_v": chains}

    def _chains_from_arrays(self, arrays):
        return arrays["chains_v"]

    def _chain_visible(self, chains):
        return chains


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
            side = int(round(np.sqrt(n_features)))
            if side * side != n_features:
                raise ValueError(f"image_shape=None means square images, but n_features="
                                 f"{n_features} is not a square; pass image_shape=(H, W)")
            shape = (side, side)
        else:
            shape = tuple(int(t) for t in np.broadcast_to(self.image_shape, (2,)))
            if shape[0] * shape[1] != n_features:
                raise ValueError(f"image_shape={self.image_shape!r} has {shape[0] * shape[1]} "
                                 f"pixels but X has {n_features} features")
        patch = tuple(int(t) for t in np.broadcast_to(self.patch, (2,)))
        if min(shape) < 1 or min(patch) < 1:
            raise ValueError(f"image_shape and patch must be positive, got {shape} and {patch}")
        if shape[0] % patch[0] or shape[1] % patch[1]:
            raise ValueError(f"patch={self.patch!r} does not tile image_shape={shape}: the image "
                             f"height and width must be multiples of the patch height and width")
        self.image_shape_, self.patch_ = shape, patch
        self.n_visible_capsules_, self.visible_capsule_dim_ = capsule_layout(shape, patch)
        self._n_features_out = int(self.n_capsules)

    def _layout_shape(self):
        return (self.n_visible_capsules_, self.visible_capsule_dim_)

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
    sampler : {"mh", "reconstruct"}, default="mh"
        ``"mh"``: the exact Metropolis-Hastings sweep over visible capsules; ``"reconstruct"``:
        the fast paper-literal step, which leaves no stated distribution invariant.
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
    batch_size : int, default=100
    n_iter : int, default=10
        Epochs of :meth:`fit`.
    init_scale : float, default=0.1
        Standard deviation of the initial W. W = 0 is a stationary point of P's likelihood, so
        this is larger than the usual 0.01.
    rho_init : "auto" or float, default="auto"
        Initial log-gains. ``"auto"`` sets ``rho_j = -median log |s_j|^2`` over (up to 500)
        training images at the initial W, so that each capsule's firing probability starts with
        median 0.5 (MODEL.md sec. 3: with rho = 0 the experts start nearly silent).
    learn_prior : bool, default=False
        Learn the prior routing logits beta (only possible with ``grad="full"``).
    dtype : float64 or float32, default=np.float64
        Dtype of data and parameters throughout.
    random_state : int, Generator or None, default=None
    verbose : int, default=0
        Print one line per epoch; show a progress bar when stderr is a terminal.
    monitor_fraction : float, default=0.05
        Fraction of ``fit``'s data held out for the per-epoch metrics.

    Attributes
    ----------
    W_ : ndarray of shape (I, J, d_h, d_v)
    alpha_ : ndarray of shape (I, d_v)
        Visible biases, initialised to the data's log-odds.
    rho_ : ndarray of shape (J,)
    beta_ : ndarray of shape (I, J)
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

    _param_attributes = ("W_", "alpha_", "rho_", "beta_")
    _params_type = PParams

    def __init__(self, n_capsules=16, capsule_dim=8, *, image_shape=None, patch=4, n_routing=3,
                 sampler="mh", grad="full", cd_k=1, persistent=True, n_chains=None,
                 chain_init="data", learning_rate=0.05, lr_schedule="constant",
                 lr_final_ratio=0.04, momentum=0.9, weight_decay=1e-4, batch_size=100,
                 n_iter=10, init_scale=0.1, rho_init="auto", learn_prior=False,
                 dtype=np.float64, random_state=None, verbose=0, monitor_fraction=0.05):
        self.n_capsules = n_capsules
        self.capsule_dim = capsule_dim
        self.image_shape = image_shape
        self.patch = patch
        self.n_routing = n_routing
        self.sampler = sampler
        self.grad = grad
        self.cd_k = cd_k
        self.persistent = persistent
        self.n_chains = n_chains
        self.chain_init = chain_init
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.lr_final_ratio = lr_final_ratio
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.init_scale = init_scale
        self.rho_init = rho_init
        self.learn_prior = learn_prior
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.monitor_fraction = monitor_fraction

    # ------------------------------------------------------------------ setup and parameters

    def _setup(self, n_features):
        super()._setup(n_features)
        _check_number("n_routing", self.n_routing, 1, integer=True)
        _check_choice("sampler", self.sampler, ("mh", "reconstruct"))
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
        J = W.shape[1]
        beta = np.zeros(W.shape[:2], dtype=dt)  # (I, J)
        if isinstance(self.rho_init, str):
            u_hat = predictions(W, X[:500])  # (n, I, J, d_h)
            _, s, _ = dynamic_routing(u_hat, int(self.n_routing), beta)  # s: (n, J, d_h)
            with np.errstate(divide="ignore"):
                log_s2 = np.log(np.sum(s.astype(np.float64) ** 2, axis=-1))  # (n, J)
            median = np.median(log_s2, axis=0)  # (J,)
            rho = np.where(np.isfinite(median), -median, 0.0).astype(dt)  # (J,)
        else:
            rho = np.full(J, float(self.rho_init), dtype=dt)
        return PParams(W=W, alpha=_data_logits(X, dt), rho=rho, beta=beta)

    def _params(self):
        return PParams(self.W_, self.alpha_, self.rho_, self.beta_)

    def _set_params(self, p):
        self.W_, self.alpha_, self.rho_, self.beta_ = p

    # ------------------------------------------------------------------ sampling and training

    def _start_chains(self, params, v, rng):
        return v

    def _sweep(self, params, v, rng):
        """One sweep of the chosen sampler: (B, I, d_v) -> (B, I, d_v), stats."""
        if self.sampler == "mh":
            v, acceptance = model_p.mh_sweep(params, v, rng, int(self.n_routing))
            return v, {"acceptance": float(np.mean(acceptance))}
        v, _ = model_p.reconstruct_step(params, v, rng, int(self.n_routing))
        return v, {}

    def _step(self, params, batch, chains, rng):
        """Ascent direction ``-<dF/dtheta>_data + <dF/dtheta>_chains`` (MODEL.md sec. 3)."""
        r, mode = int(self.n_routing), self.grad
        _, grad_data = model_p.free_energy_grad(params, batch, r, mode)
        v = batch if chains is None else chains
        acceptance = []
        for _ in range(int(self.cd_k)):
            v, stats = self._sweep(params, v, rng)
            acceptance.append(stats.get("acceptance", np.nan))
        stats = {"acceptance": float(np.mean(acceptance))} if self.sampler == "mh" else {}
        _, grad_model = model_p.free_energy_grad(params, v, r, mode)
        grad = PParams(*(gm - gd for gd, gm in zip(grad_data, grad_model)))
        if not self.learn_prior:
            grad = grad._replace(beta=np.zeros_like(params.beta))
        return grad, (v if self.persistent else None), stats

    def _monitor(self, params, X, rng):
        r = int(self.n_routing)
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
        replaced by their probabilities p_j; deterministic.

        Returns
        -------
        ndarray of shape (B, I, d_v)
        """
        c, s, _ = dynamic_routing(predictions(params.W, v), int(self.n_routing), params.beta)
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
        params, r = self._params(), int(self.n_routing)
        return _chunked(lambda x: model_p.firing_probability(params, x, r), V)  # (n, J)

    def free_energy(self, X):
        """Free energy (3.3) ``F(v) = -alpha.v - sum_j log(1 + e^{rho_j} |s_j|^2)``, closed form.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        params, r = self._params(), int(self.n_routing)
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
        params, r = self._params(), int(self.n_routing)
        rng = np.random.default_rng(self.random_state)
        return _chunked(lambda x: model_p.pseudo_log_likelihood(params, x, rng, r), V)


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
    u_hat = predictions(params.W, v)  # (B, I, J, d_h)
    s = np.einsum("bij,bijk->bjk", c, u_hat, optimize=True)  # (B, J, d_h)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_log_c = np.where(c > 0, c * np.log(c), 0.0)  # (B, I, J), 0 log 0 = 0
    routing = np.sum(c * params.beta - c_log_c, axis=(1, 2))  # (B,)
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
    cd_k : int, default=1
    persistent : bool, default=True
    n_chains : int or None, default=None
        ``batch_size`` when None. MODEL.md sec. 8 found 500 chains much better than 100.
    chain_init : {"data", "noise"}, default="data"
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
    batch_size : int, default=100
    n_iter : int, default=10
    init_scale : float, default=0.01
    learn_prior : bool, default=False
        Learn the prior routing logits beta.
    dtype : float64 or float32, default=np.float64
    random_state : int, Generator or None, default=None
    verbose : int, default=0
    monitor_fraction : float, default=0.05

    Attributes
    ----------
    W_ : ndarray of shape (I, J, d_h, d_v)
    alpha_ : ndarray of shape (I, d_v)
    gamma_ : ndarray of shape (J, d_h)
    beta_ : ndarray of shape (I, J)
    n_features_in_, image_shape_, patch_, n_visible_capsules_, visible_capsule_dim_
    persistent_chains_ : ndarray of shape (n_chains, n_features) or None
        Visible states of the chains (their routing states are kept internally).
    history_ : list of dict
        Per epoch: epoch, seconds, images_per_second, learning_rate, momentum,
        train_mean_field_iterations, and on the monitoring rows mean_field_iterations, elbo
        (:func:`mean_field_elbo`) and reconstruction_error.
    n_iter_ : int
    """

    _param_attributes = ("W_", "alpha_", "gamma_", "beta_")
    _params_type = RParams

    def __init__(self, n_capsules=16, capsule_dim=8, *, image_shape=None, patch=4,
                 routing_tol=1e-3, max_routing=30, cd_k=1, persistent=True, n_chains=None,
                 chain_init="data", learning_rate=0.05, lr_schedule="linear",
                 lr_final_ratio=0.04, momentum=0.9, weight_decay=1e-4, batch_size=100,
                 n_iter=10, init_scale=0.01, learn_prior=False, dtype=np.float64,
                 random_state=None, verbose=0, monitor_fraction=0.05):
        self.n_capsules = n_capsules
        self.capsule_dim = capsule_dim
        self.image_shape = image_shape
        self.patch = patch
        self.routing_tol = routing_tol
        self.max_routing = max_routing
        self.cd_k = cd_k
        self.persistent = persistent
        self.n_chains = n_chains
        self.chain_init = chain_init
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.lr_final_ratio = lr_final_ratio
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.init_scale = init_scale
        self.learn_prior = learn_prior
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.monitor_fraction = monitor_fraction

    def _setup(self, n_features):
        super()._setup(n_features)
        _check_number("routing_tol", self.routing_tol, 0)
        _check_number("max_routing", self.max_routing, 1, integer=True)

    def _init_params(self, X, rng):
        """W ~ N(0, init_scale^2); alpha = data log-odds; gamma = 0; beta = 0."""
        W = self._init_weights(X, rng)  # (I, J, d_h, d_v)
        dt = X.dtype
        return RParams(W=W, alpha=_data_logits(X, dt), gamma=np.zeros(W.shape[1:3], dtype=dt),
                       beta=np.zeros(W.shape[:2], dtype=dt))

    def _params(self):
        return RParams(self.W_, self.alpha_, self.gamma_, self.beta_)

    def _set_params(self, p):
        self.W_, self.alpha_, self.gamma_, self.beta_ = p

    def _mean_field(self, params, v):
        return model_r.mean_field(params, v, tol=float(self.routing_tol),
                                  max_iter=int(self.max_routing))

    # ------------------------------------------------------------------ chains: (v, a)

    def _start_chains(self, params, v, rng):
        """Chain state (v, a) with ``a_i ~ c_i``, the mean-field routing of v (one rng.random)."""
        c, _, _ = self._mean_field(params, v)  # (B, I, J)
        return v, model_r._categorical_draw(c, rng.random(c.shape[:2]))  # (B, I, d_v), (B, I)

    def _chain_visible(self, chains):
        return chains[0]

    def _chain_arrays(self, chains):
        return {"chains_v": chains[0], "chains_a": chains[1]}

    def _chains_from_arrays(self, arrays):
        return arrays["chains_v"], arrays["chains_a"]

    def _sweep(self, params, chains, rng):
        v_new, _, a_new, _ = model_r.gibbs_sweep(params, chains[0], chains[1], rng)
        return (v_new, a_new), {}

    def _visible_mean(self, params, chains, rng):
        """``p(v | h, a)`` (4.5) with ``h ~ p(h | v, a)`` (4.4): (B, I, d_v)."""
        v, a = chains
        ph = model_r.hidden_probability(params, v, a)  # (B, J, d_h)
        h = (rng.random(ph.shape) < ph).astype(ph.dtype)
        return model_r.visible_probability(params, h, a)  # (B, I, d_v)

    def _step(self, params, batch, chains, rng):
        """PCD gradient (4.8): mean-field data statistics minus Rao-Blackwellised chain ones."""
        c, mu, n_mf = self._mean_field(params, batch)  # (B, I, J), (B, J, d_h), (B,)
        positive = model_r.data_statistics(params, batch, c, mu)
        if chains is None:  # CD-k: start at the batch, routes drawn from its mean field
            chains = (batch, model_r._categorical_draw(c, rng.random(c.shape[:2])))
        v, a = chains
        for _ in range(int(self.cd_k)):
            v_in = v
            v, h, a, resp = model_r.gibbs_sweep(params, v_in, a, rng)
        # resp belongs to the pair (v_in, h) of the last sweep (see model_r.gibbs_sweep)
        negative = model_r.model_statistics(params, v_in, h, resp)
        grad = RParams(*(p - n for p, n in zip(positive, negative)))
        if not self.learn_prior:
            grad = grad._replace(beta=np.zeros_like(params.beta))
        return grad, ((v, a) if self.persistent else None), {
            "train_mean_field_iterations": float(np.mean(n_mf))}

    def _monitor(self, params, X, rng):
        iters, elbo, error = [], [], []
        for s in range(0, X.shape[0], _CHUNK):
            v = X[s:s + _CHUNK]
            c, mu, n_mf = self._mean_field(params, v)
            iters.append(n_mf)
            elbo.append(mean_field_elbo(params, v, c))
            error.append(_squared_error(v, self._reconstruction(params, c, mu)))
        return {"mean_field_iterations": float(np.mean(np.concatenate(iters))),
                "elbo": float(np.mean(np.concatenate(elbo))),
                "reconstruction_error": float(np.mean(np.concatenate(error)))}

    @staticmethod
    def _reconstruction(params, c, mu):
        """Mean-field reconstruction ``sigmoid(alpha_i + sum_j c_ij W_ij^T mu_j)``: (B, I, d_v)."""
        field = params.alpha + np.einsum("bij,ijkl,bjk->bil", c, params.W, mu, optimize=True)
        return sigmoid(field)

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
        has its own Z). For log-likelihoods use importance sampling (``model_r.log_marginal_is``)
        with an AIS estimate of log Z.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        params = self._params()
        return _chunked(lambda v: mean_field_elbo(params, v, self._mean_field(params, v)[0]), V)

    def free_energy(self, X):
        """Variational free energy ``-L(v)``, an UPPER bound on ``F(v) = -log p~(v)``.

        See :meth:`score_samples`; the exact F is not in closed form for Model R.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return -self.score_samples(X)


# ----------------------------------------------------------------------------- Bernoulli RBM


class BernoulliRBM(_EnergyEstimator):
    """Bernoulli restricted Boltzmann machine (MODEL.md sec. 5), the baseline.

    ``E(v, h) = -a.v - b.h - v^T W h``. Parameters and fitted attributes follow
    ``sklearn.neural_network.BernoulliRBM``, and with the default settings training follows the
    same algorithm: PCD-1 with ``batch_size`` persistent chains, plain SGD (no momentum, no
    weight decay), positive and negative statistics from the hidden probabilities, W initialised
    from N(0, 0.01^2) and the hidden biases at zero, so the two can be compared. Two
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
    momentum : float, default=0.0
    weight_decay : float, default=0.0
    dtype : float64 or float32, default=np.float64
    chain_init : {"noise", "data"}, default="noise"

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    intercept_hidden_ : ndarray of shape (n_components,)
    intercept_visible_ : ndarray of shape (n_features,)
    n_features_in_ : int
    persistent_chains_ : ndarray of shape (batch_size, n_features) or None
    history_ : list of dict
        Per epoch: epoch, seconds, images_per_second, learning_rate, momentum, and on the
        monitoring rows (up to 1,000 training rows) free_energy, pseudo_log_likelihood (one
        random pixel per image, scaled by the number of pixels) and reconstruction_error.
    n_iter_ : int
    """

    _param_attributes = ("components_", "intercept_visible_", "intercept_hidden_")
    _params_type = RBMParams

    def __init__(self, n_components=256, *, learning_rate=0.1, batch_size=10, n_iter=10,
                 verbose=0, random_state=None, cd_k=1, persistent=True, momentum=0.0,
                 weight_decay=0.0, dtype=np.float64, chain_init="noise"):
        self.n_components = n_components
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.verbose = verbose
        self.random_state = random_state
        self.cd_k = cd_k
        self.persistent = persistent
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.chain_init = chain_init

    def _setup(self, n_features):
        _check_number("n_components", self.n_components, 1, integer=True)
        self.n_features_ = n_features
        self._n_features_out = int(self.n_components)

    def _layout_shape(self):
        return (self.n_features_,)

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

    def _start_chains(self, params, v, rng):
        return v

    def _sweep(self, params, v, rng):
        v_new, _ = rbm.gibbs_sweep(params, v, rng)  # (B, D)
        return v_new, {}

    def _visible_mean(self, params, v, rng):
        """``p(v | h)`` with ``h ~ p(h | v)`` (5.x): (B, D)."""
        h = rbm.sample_hidden(params, v, rng)  # (B, H)
        return rbm.visible_probability(params, h)  # (B, D)

    def _step(self, params, batch, chains, rng):
        """CD/PCD gradient (5.6): ``<v p(h|v)^T>_data - <v p(h|v)^T>_chains`` and the biases."""
        v = batch if chains is None else chains
        for _ in range(int(self.cd_k)):
            v, _ = self._sweep(params, v, rng)
        ph_data = rbm.hidden_probability(params, batch)  # (B, H)
        ph_model = rbm.hidden_probability(params, v)  # (n_chains, H)
        grad = RBMParams(
            W=batch.T @ ph_data / batch.shape[0] - v.T @ ph_model / v.shape[0],  # (D, H)
            a=batch.mean(axis=0) - v.mean(axis=0),  # (D,)
            b=ph_data.mean(axis=0) - ph_model.mean(axis=0),  # (H,)
        )
        return grad, (v if self.persistent else None), {}

    def _monitor(self, params, X, rng):
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
        return rbm.hidden_probability(self._params(), V)  # (n, H)

    def free_energy(self, X):
        """Free energy (5.4) ``F(v) = -v.a - sum_k softplus(b_k + (v W)_k)``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        return rbm.free_energy(self._params(), V)

    def score_samples(self, X):
        """Pseudo-log-likelihood, scikit-learn's stochastic one-flip estimate (5.7).

        One pixel per image is flipped at random (a generator seeded by ``random_state``, fresh
        at each call) and ``D log sigmoid(F(v~) - F(v))`` returned.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        V = self._checked(X)
        return rbm.pseudo_log_likelihood(self._params(), V, np.random.default_rng(self.random_state))

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
        return self._sweep(self._params(), V, self._gibbs_rng)[0]


# ----------------------------------------------------------------------------- helpers, files


def _squared_error(v, p):
    """Per-image sum of squared differences: (B, ...) x (B, ...) -> (B,)."""
    d = (v - p).reshape(v.shape[0], -1)  # (B, D)
    return np.sum(d * d, axis=1)


_ESTIMATORS = {cls.__name__: cls for cls in (CapsulePoE, RoutedCapsuleRBM, BernoulliRBM)}


def load_estimator(path):
    """Rebuild a fitted estimator from a file written by its ``save`` method.

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
    ValueError
        If the file is not a capsnp model file or names an unknown model class.
    """
    arrays, meta = load_model(path)
    name = meta.get("model")
    if name not in _ESTIMATORS:
        raise ValueError(f"{path}: unknown model class {name!r}; expected one of "
                         f"{', '.join(sorted(_ESTIMATORS))}")
    hyper = _from_jsonable(meta["hyperparameters"])
    hyper["dtype"] = np.dtype(hyper["dtype"]).type
    for key in ("image_shape", "patch"):
        if isinstance(hyper.get(key), list):
            hyper[key] = tuple(hyper[key])
    estimator = _ESTIMATORS[name](**hyper)
    return estimator._restore(arrays, meta)

