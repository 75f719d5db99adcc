"""Numba twins of the hot loops, and the backend switch (``design.md``, layer "kernels").

Every public kernel has the same name, signature and results as its NumPy reference and lives
in a namespace named after the reference module:

========================  ==========================================================
``kernels.routing``       ``dynamic_routing``, ``routing_forward_vjp`` (fused 2.1 + 2.2)
``kernels.model_p``       ``free_energy``, ``free_energy_grad``, ``mh_sweep``, ``reconstruct_step``,
                          ``firing_probability``, ``pseudo_log_likelihood``
``kernels.model_r``       ``mean_field``, ``gibbs_sweep``, ``data_statistics``, ``model_statistics``
``kernels.rbm``           ``gibbs_sweep``, ``cd_gradient``, ``free_energy``, the layer conditionals
``kernels.training``      ``checked_sgd_update`` (the momentum step with its finiteness checks)
========================  ==========================================================

(``free_energy`` and ``gibbs_sweep`` exist for several models, hence the namespaces.) The
routing functions are also exported here. A name of the reference module that has no compiled
twin (e.g. ``kernels.model_r.hidden_probability``) resolves to the reference function itself,
so each namespace offers the whole API of its reference module; functions built on a compiled
twin (``kernels.model_p.pseudo_log_likelihood`` on the compiled ``free_energy``) are defined
in the namespace. :func:`get_backend` returns either these namespaces
or the reference modules, so code written as ``get_backend(backend).model_p.mh_sweep(...)``
runs on either backend.

Threads and determinism: batch kernels split the batch into contiguous ranges run on
``numba.get_num_threads()`` threads (set with ``numba.set_num_threads``); each image is
processed by one thread in a fixed order and batch sums run over the images in a fixed order,
so results are the same for any number of threads. Samplers draw their uniforms from the
``np.random.Generator`` in the reference's order and shapes and pass them to the kernel, so a
kernel and its reference fed the same generator state return the same samples (barring a
uniform that falls within rounding error of a probability).

The compiled code is in ``capsnp/_kernels_jit.py`` (compiled on the first call per dtype,
then loaded from Numba's on-disk cache). When Numba cannot be imported, :func:`available` is
False and every wrapper calls the NumPy reference.
"""

import sys
import warnings

from . import _kernels_jit as _jit
from . import _kernels_p as model_p
from . import _kernels_r as model_r
from . import _kernels_rbm as rbm
from . import _kernels_routing as routing
from . import _kernels_training as training
from ._kernels_routing import dynamic_routing, routing_forward_vjp

__all__ = ["available", "get_backend", "resolve_backend", "routing", "model_p", "model_r", "rbm",
           "training", "dynamic_routing", "routing_forward_vjp", "BACKENDS", "MODELS"]

BACKENDS = ("numba", "numpy")
MODELS = ("routing", "model_p", "model_r", "rbm", "training")


def available():
    """True when Numba imported, i.e. the kernels are compiled rather than falling back to NumPy."""
    return _jit.NUMBA_AVAILABLE


_warned_fallback = False


def resolve_backend(name):
    """The backend that will actually run: ``name`` checked, "numba" -> "numpy" without Numba.

    Parameters
    ----------
    name : {"numba", "numpy", "auto"}

    Returns
    -------
    str, "numba" or "numpy". Asking for "numba" where Numba cannot be imported gives "numpy"
    and a ``RuntimeWarning`` (once per process).

    Raises
    ------
    ValueError
        For any other name.
    """
    global _warned_fallback
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    if name == "numpy" or available():
        return "numpy" if name == "numpy" else "numba"
    if name == "numba" and not _warned_fallback:
        _warned_fallback = True
        warnings.warn("backend='numba' but numba cannot be imported; running the NumPy "
                      "reference instead (install numba for the compiled kernels)",
                      RuntimeWarning, stacklevel=3)
    return "numpy"


def get_backend(name="numba", model=None):
    """The module that implements a backend.

    Parameters
    ----------
    name : {"numba", "numpy", "auto"}
        ``"numba"``: this module (its wrappers fall back to NumPy when :func:`available` is
        False); ``"numpy"``: the reference package ``capsnp``; ``"auto"``: numba if available.
    model : {"routing", "model_p", "model_r", "rbm", "training"}, optional
        Return that module instead of the namespace holding them all.

    Returns
    -------
    module
        E.g. ``get_backend("numba", "model_p")`` is ``capsnp.kernels.model_p`` and
        ``get_backend("numpy", "model_p")`` is ``capsnp.model_p``; both have
        ``free_energy_grad(params, v, n_iter, mode)``.
    """
    if name == "auto":
        name = "numba" if available() else "numpy"
    if name == "numba":
        namespace = sys.modules[__name__]
    elif name == "numpy":
        from . import model_p as _p, model_r as _r, rbm as _rbm, routing as _routing, training as _t  # noqa: F401

        namespace = sys.modules[__package__]
    else:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")
    if model is None:
        return namespace
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return getattr(namespace, model)
