"""Exact log partition functions of fitted models (MODEL.md sec. 6, label (6.1)).

:func:`exact_log_partition` takes a fitted ``BernoulliRBM``, ``CapsulePoE`` or
``RoutedCapsuleRBM`` (or a ``RBMParams``/``PParams``/``RParams`` container) and returns the exact
``log Z`` by enumerating the smallest set of binary states that the model allows, the other
variables summed out in closed form:

* RBM (5.4): the smaller layer, ``2**min(D, H)`` states (the energy is symmetric in v and h);
* Model P (3.3): every visible state, ``2**(I d_v)`` (``F(v)`` routes v, so no other side exists);
* Model R: the smaller of the ``2**(I d_v) J**I`` states (v, a) with h summed out (4.9), and the
  ``2**(J d_h)`` hidden states with v and a summed out (:func:`log_joint_h`).

Enumerations above :data:`MAX_EXACT_STATES` (2**24) states are refused with a ``ValueError``
naming the sizes; use :func:`capsnp.ais_log_partition` (6.2-6.4) for those models. States are
processed in chunks, so memory stays bounded (tens of MB) whatever the number of states.

With ``log Z`` in hand, the estimators' ``log_likelihood(X, log_z)`` give ``log p(v)`` per image.
"""

import numpy as np
from scipy.special import logsumexp

from . import model_p, model_r, model_rs, rbm
from .ais import _as_params
from .exact import MAX_ENUMERATED_BITS
from .ops import softplus
from .params import RBMParams, RBParams, RParams, RSParams
from .rbm import _binary_block

__all__ = ["MAX_EXACT_STATES", "exact_log_partition", "log_joint_h"]

# Largest number of enumerated states exact_log_partition accepts (MODEL.md sec. 6: "up to
# about 20 binary variables on the summed side"; 2**24 takes seconds to minutes).
MAX_EXACT_STATES = 2**24
# Floats per chunk of enumerated states (32 MB in float64).
_CHUNK_ENTRIES = 2**22


def _logsumexp_over_binary(n_bits, log_f, width):
    """``logsumexp_x log_f(x)`` over all ``2**n_bits`` binary vectors x, in chunks.

    Parameters
    ----------
    n_bits : int
    log_f : callable, ndarray (B, n_bits) -> ndarray (B,)
    width : int, floats ``log_f`` allocates per state (sets the chunk size)

    Returns
    -------
    float
    """
    n = 2**n_bits
    chunk = max(1, _CHUNK_ENTRIES // max(int(width), 1))
    parts = [logsumexp(log_f(_binary_block(n_bits, s, min(s + chunk, n), np.float64)))
             for s in range(0, n, chunk)]
    return float(logsumexp(parts))


def _refuse(model, states):
    raise ValueError(f"exact log Z of {model} would enumerate {states}, more than "
                     f"2**24 = {MAX_EXACT_STATES:,}; use capsnp.ais_log_partition(model) for an "
                     f"AIS estimate instead")


def _log_z_rbm(params):
    """RBM (5.4): enumerate the smaller layer, the other summed out by ``free_energy``."""
    W, a, b = params
    D, H = W.shape
    if 2 ** min(D, H) > MAX_EXACT_STATES:
        _refuse("a Bernoulli RBM", f"2**{min(D, H)} states of its smaller layer "
                f"(D = {D} visible, H = {H} hidden units)")
    # The energy is symmetric in the layers: (v, a) <-> (h, b) with W -> W^T is the same model.
    side = params if D <= H else RBMParams(W=W.T, a=b, b=a)
    n, other = side.W.shape
    return _logsumexp_over_binary(n, lambda x: -rbm.free_energy(side, x), width=n + 2 * other)


def _log_z_p(params, n_routing):
    """Model P (3.3): enumerate the 2**(I d_v) visible states, ``log Z = logsumexp_v -F(v)``.

    ``model_p.free_energy`` chooses the expert from the type of ``params``.
    """
    I, J, d_h, d_v = params.W.shape
    if 2 ** (I * d_v) > MAX_EXACT_STATES:
        _refuse(f"a CapsulePoE ({type(params).__name__})", f"its 2**{I * d_v} visible states "
                f"(I = {I} capsules of d_v = {d_v}; P has no other side to sum over)")
    width = I * J * max(d_h, d_v) * (n_routing + 2)  # routing trace: u_hat, c, s per pass
    return _logsumexp_over_binary(
        I * d_v, lambda x: -model_p.free_energy(params, x.reshape(-1, I, d_v), n_routing), width)


def log_joint_h(params, h):
    """Model R's unnormalised ``log p~(h)`` with v and a summed out in closed form.

    Summing (4.1) over a gives (4.2), a product over children i of terms that depend on v only
    through v_i; summing each v_i over its 2**d_v states then factorises over its pixels:

    .. math::
        \\log \\tilde p(h) = \\gamma \\cdot h + \\sum_i \\operatorname{logsumexp}_j \\Big[
          \\beta_{ij} + \\sum_l \\mathrm{softplus}(\\alpha_{il} + (W_{ij}^T h_j)_l) \\Big],

    so ``log Z = logsumexp_h log p~(h)``. With assignment biases (4b.1) the bracket reads
    ``beta_ij + h_j . C_ij + sum_l softplus(alpha_il + A_ijl + (W_ij^T h_j)_l)``.

    Parameters
    ----------
    params : RParams
    h : ndarray of shape (B, J, d_h)

    Returns
    -------
    ndarray of shape (B,)
    """
    field = params.alpha[None, :, None, :] + np.einsum("ijkl,bjk->bijl", params.W, h,
                                                       optimize=True)  # (B, I, J, d_v)
    per_parent = params.beta[None]  # (1, I, J)
    C, A = model_r.assignment_biases(params)
    if A is not None:  # (4b.1): A_ij adds to the visible field of child i under parent j
        field = field + A  # (B, I, J, d_v)
    if C is not None:  # (4b.1): h_j . C_ij adds to the routing term
        per_parent = per_parent + np.einsum("ijk,bjk->bij", C, h, optimize=True)  # (B, I, J)
    per_parent = per_parent + np.sum(softplus(field), axis=-1)  # (B, I, J)
    children = np.sum(logsumexp(per_parent, axis=-1), axis=-1)  # (B,)
    return np.sum(params.gamma * h, axis=(1, 2)) + children  # (B,)


def _log_z_r(params):
    """Model R: the smaller of the (v, a) enumeration (4.9) and the h enumeration (log_joint_h)."""
    I, J, d_h, d_v = params.W.shape
    n_va, n_h = 2 ** (I * d_v) * J**I, 2 ** (J * d_h)
    if min(n_va, n_h) > MAX_EXACT_STATES:
        _refuse("a RoutedCapsuleRBM (Model R)",
                f"min(2**(I d_v) J**I, 2**(J d_h)) states: 2**{I * d_v} x {J}**{I} (v, a) "
                f"states (I = {I}, d_v = {d_v}, J = {J}) or 2**{J * d_h} hidden states "
                f"(J = {J}, d_h = {d_h})")
    if n_va <= n_h and I * d_v <= MAX_ENUMERATED_BITS:
        return model_r.exact_log_partition(params)
    return _logsumexp_over_binary(J * d_h, lambda x: log_joint_h(params, x.reshape(-1, J, d_h)),
                                  width=I * J * d_v * 3)


def exact_log_partition(model, n_routing=None):
    """Exact ``log Z`` of a tiny model by enumeration (MODEL.md sec. 6, (6.1)).

    Sums over the smallest side the model allows: ``2**min(D, H)`` states for the RBM, the
    ``2**(I d_v)`` visible states for Model P, and for Model R the smaller of the
    ``2**(I d_v) J**I`` (v, a) states and the ``2**(J d_h)`` hidden states. Computed in float64
    whatever the estimator's dtype.

    Parameters
    ----------
    model : fitted BernoulliRBM, CapsulePoE or RoutedCapsuleRBM, or an RBMParams, PParams or
        RParams (or RBParams) container
    n_routing : int, optional
        Routing passes r of Model P; default the estimator's ``n_routing`` (3 for a PParams).
        Ignored for the RBM and Model R.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the enumeration would exceed :data:`MAX_EXACT_STATES` (2**24) states; the message
        names the sizes. Use :func:`capsnp.ais_log_partition` for such models.
    TypeError
        If ``model`` is neither a fitted capsnp estimator nor a params container.

    Examples
    --------
    >>> log_z = exact_log_partition(est)                   # doctest: +SKIP
    >>> log_p = est.log_likelihood(X, log_z)               # doctest: +SKIP
    """
    params, r = _as_params(model)
    params = type(params)(*(np.asarray(x, dtype=np.float64) for x in params))
    if isinstance(params, RBMParams):
        return _log_z_rbm(params)
    if isinstance(params, RSParams):  # (4c.5): over the (v, a) states
        return model_rs.exact_log_partition(params)
    if isinstance(params, (RParams, RBParams)):
        return _log_z_r(params)
    # PParams, or another container of model_p's routed experts (model_p picks the expert
    # from the container's type)
    return _log_z_p(params, int(r if n_routing is None else n_routing))
