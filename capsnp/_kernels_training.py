"""Numba twin of the training loop's checked momentum step, as ``capsnp.kernels.training``.

* :func:`checked_sgd_update`: :func:`capsnp.training.checked_sgd_update` (gradient checked,
  momentum step, new parameters checked) in one compiled pass per parameter
  (:func:`capsnp._kernels_jit.sgd_momentum_step`). The same arithmetic in the same order, so
  the new parameters and velocities equal the reference's bit for bit; the same errors.

Any other name resolves to :mod:`capsnp.training` (the loop itself, ``sgd_update``, ...).
"""

import numpy as np

from . import _kernels_jit as _jit
from . import training as _ref

__all__ = ["checked_sgd_update"]


def __getattr__(name):
    """Names without a compiled twin are the NumPy reference's (``capsnp.training``)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_ref, name)


def checked_sgd_update(params, velocity, grad, learning_rate, momentum, weight_decay, epoch):
    """The momentum step between two finiteness checks (twin of the reference of that name).

    For every parameter ``theta`` (weight decay on ``W`` only)::

        velocity <- momentum * velocity + lr * (g - weight_decay * W)
        theta    <- theta + velocity

    Parameters
    ----------
    params, velocity, grad : NamedTuples of ndarrays, same type and shapes
    learning_rate, momentum, weight_decay : float
    epoch : int, 1-based, for the error message

    Returns
    -------
    params, velocity : NamedTuples, new arrays (the inputs are not modified)

    Raises
    ------
    FloatingPointError
        If a gradient entry, or a new parameter, is NaN or infinite (the reference's message).
    """
    dt = _jit.kernel_dtype(*params)
    same = all(np.asarray(x).dtype == dt for c in (params, velocity, grad) for x in c)
    if dt is None or not same:
        return _ref.checked_sgd_update(params, velocity, grad, learning_rate, momentum,
                                       weight_decay, epoch)
    new_params, new_velocity, grad_ok, params_ok = [], [], True, True
    for name, theta, vel, g in zip(params._fields, params, velocity, grad):
        theta, vel, g = (_jit.as_c(x, dt) for x in (theta, vel, g))
        wd = weight_decay if name == "W" else 0.0
        new_theta, new_vel = np.empty_like(theta), np.empty_like(vel)
        with np.errstate(over="ignore"):  # a rate beyond float32's range: caught by the check
            lr, mom, wd = dt.type(learning_rate), dt.type(momentum), dt.type(wd)
        g_ok, t_ok = _jit.sgd_momentum_step(theta, vel, g, lr, mom, wd, new_theta, new_vel)
        grad_ok, params_ok = grad_ok and g_ok, params_ok and t_ok
        new_params.append(new_theta)
        new_velocity.append(new_vel)
    if not grad_ok:
        _ref.check_finite(grad, "gradient", epoch, learning_rate)  # raises, naming the array
    params = type(params)(*new_params)
    if not params_ok:
        _ref.check_finite(params, "parameters", epoch, learning_rate)
    return params, type(velocity)(*new_velocity)
