"""Model R: the routed capsule RBM of MODEL.md section 4.

Visible capsules v_i in {0,1}^{d_v} (i = 1..I), hidden capsules h_j in {0,1}^{d_h}
(j = 1..J), and a routing variable a_i in {0..J-1} per child saying which parent explains it.
Parameters ``RParams(W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J))``;
predictions ``u_hat_{j|i} = W_ij v_i`` (B, I, J, d_h). Equation labels:

* (4.1) energy ``E(v, h, a) = -alpha.v - gamma.h - sum_i [beta_{i a_i} + h_{a_i} . u_hat_{a_i|i}]``
* (4.2) ``p(v, h) ~ e^{alpha.v + gamma.h} prod_i sum_j exp(beta_ij + u_hat_{j|i} . h_j)`` (a summed out)
* (4.3) routing posterior ``R: p(a_i = j | v, h) = softmax_j(beta_ij + u_hat_{j|i} . h_j)``
* (4.4) hidden conditional ``U: p(h_jk = 1 | v, a) = sigmoid(gamma_jk + sum_{i: a_i = j} u_hat_{j|i,k})``
* (4.5) visible conditional ``D: p(v_il = 1 | h, a) = sigmoid(alpha_il + (W_{i a_i}^T h_{a_i})_l)``
* (4.6) mean-field routing: ``s_j = sum_i c_ij u_hat_{j|i}``, ``mu_j = sigmoid(gamma_j + s_j)``,
  ``c_ij = softmax_j(beta_ij + u_hat_{j|i} . mu_j)``
* (4.7) 3-block Gibbs sweep ``h ~ U(v, a)``, ``a ~ R(v, h)``, ``v ~ D(h, a)``
* (4.8) PCD statistics: data ``c_ij mu_j v_i^T, v, mu, c``; model (Rao-Blackwellised over a)
  ``P(a_i=j|v,h) h_j v_i^T, v, h, P(a_i=j|v,h)``
* (4.9) ``log p~(v, a) = alpha.v + sum_i beta_{i a_i} + sum_{j,k} softplus(gamma_jk + sum_{i: a_i=j} u_hat_{j|i,k})``
  (h summed out in closed form)
* (4.10) importance-sampling estimate ``log p~(v) ~ log (1/S) sum_s p~(v, a^s) / q(a^s)``,
  ``q(a) = prod_i c_{i a_i}``.

Assignment biases (docs/MODEL_RB.md, sec. 4b). Every function also takes an ``RBParams``, which
adds ``C`` (I, J, d_h) and ``A`` (I, J, d_v); the energy becomes

* (4b.1) ``E = -alpha.v - gamma.h - sum_i [beta_{i a_i} + A_{i a_i}.v_i + h_{a_i}.(W_{i a_i} v_i + C_{i a_i})]``

and every function above holds with two substitutions: the prediction
``u_hat_{j|i} = W_ij v_i + C_ij`` (4b.2, :func:`prediction`) and the per-image prior routing
logit ``b_ij(v) = beta_ij + A_ij.v_i`` (4b.3, :func:`prior_logits`) in place of beta_ij; the
visible conditional (4.5) gains ``A_{i a_i}`` (4b.4). With ``C = A = 0`` (or an RParams) this
is Model R exactly.

Centring (docs/MODEL_RB.md, "Centring"): the same model written with offsets m (I, d_v) and
l (J, d_h), each child's interaction ``(h_{a_i} - l_{a_i})^T W_{i a_i} (v_i - m_i)`` (4b.8,
:func:`to_centred`, :func:`from_centred`), and the gradient in those coordinates (4b.9,
:func:`centred_gradient`).

Every function is pure and keeps the floating dtype of its inputs. Routing assignments are
int64 arrays with values 0..J-1. Samplers take an explicit ``np.random.Generator`` and say in
which order they call ``rng.random``; a binary unit is ``x = (u < p)`` (compared in float64).

State ordering of the exact tools: visible states ``v = enumerate_binary(I * d_v)[iv]`` reshaped
to (I, d_v) (flat bit ``i * d_v + l``), hidden states ``h = enumerate_binary(J * d_h)[ih]``
reshaped to (J, d_h), assignments ``a = enumerate_assignments(I, J)[ia]`` (child 0 fastest).
A (v, a) state has index ``iv * J**I + ia``; a (v, h, a) state has index
``(iv * 2**(J d_h) + ih) * J**I + ia``.
"""

import math

import numpy as np

from .capsules import predictions
from .exact import MAX_ENUMERATED_BITS, enumerate_assignments, enumerate_binary
from .ops import sigmoid, softmax, softplus
from .params import RBMParams, RParams
from .rbm import _bernoulli_draw, _bernoulli_pmf, _float_dtype, _logsumexp

__all__ = [
    "energy",
    "prediction",
    "prior_logits",
    "routed_prediction",
    "assigned_input",
    "top_down",
    "tied_gradient",
    "sparsity_gradient",
    "input_pull",
    "to_centred",
    "from_centred",
    "centred_gradient",
    "bias_statistics",
    "routing_posterior",
    "hidden_probability",
    "visible_probability",
    "mean_field",
    "gibbs_sweep",
    "data_statistics",
    "model_statistics",
    "pcd_gradient",
    "log_joint_vh",
    "log_joint_va",
    "log_marginal_is",
    "exact_log_unnormalised_marginal",
    "exact_log_partition",
    "exact_log_marginal",
    "exact_probability_va",
    "exact_probability_vha",
    "exact_transition_matrix",
    "exact_block_kernels",
    "as_rbm",
]

# Largest number of enumerated states (or table entries) the exact tools accept.
_MAX_STATES = 2**24


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _one_hot(a, J, dtype):
    """Indicator ``[a_i = j]``: (..., I) int -> (..., I, J)."""
    return (np.asarray(a)[..., None] == np.arange(J)).astype(dtype)  # (..., I, J)


def _agreement(u_hat, h):
    """Agreement ``u_hat_{j|i} . h_j``: (B, I, J, d_h), (B, J, d_h) -> (B, I, J)."""
    return np.einsum("bijk,bjk->bij", u_hat, h, optimize=True)  # (B, I, J)


def _routed_input(u_hat, weights):
    """Routed input ``s_j = sum_i w_ij u_hat_{j|i}``: (B, I, J, d_h), (..., B, I, J) -> (..., B, J, d_h).

    One batched matrix product per (image, parent): the weights of every leading index (N rows)
    times that image's predictions ``u_hat_{j|.}`` (I, d_h).
    """
    weights = np.asarray(weights)
    lead = weights.shape[:-3]
    B, I, J = weights.shape[-3:]
    w = np.moveaxis(weights.reshape((-1, B, I, J)), (1, 3), (0, 1))  # (B, J, N, I)
    s = np.matmul(w, np.moveaxis(u_hat, 2, 1))  # (B, J, N, I) @ (B, J, I, d_h) -> (B, J, N, d_h)
    return np.moveaxis(s, 2, 0).reshape(lead + (B, J, u_hat.shape[-1]))  # (..., B, J, d_h)


def _categorical_draw(p, u):
    """Inverse-CDF draw of one category per row.

    With cumulative sums ``C_j = (p_0 + ... + p_j) / (p_0 + ... + p_{J-1})``, the draw is the number
    of ``j < J-1`` with ``C_j <= u``: category j is chosen when ``C_{j-1} <= u < C_j``. (Dividing by
    the total makes ``C_{J-1} = 1`` exactly, so a category of probability zero is never chosen;
    otherwise this equals "number of C_j <= u, clipped to J-1".)

    Parameters
    ----------
    p : ndarray of shape (..., J), rows summing to one
    u : ndarray of shape (...), uniforms in [0, 1)

    Returns
    -------
    ndarray of int64, shape (...)
    """
    C = np.cumsum(p, axis=-1)  # (..., J)
    C = C / C[..., -1:]  # (..., J), last entry exactly 1
    return np.sum(C[..., :-1] <= u[..., None], axis=-1).astype(np.int64)  # (...)


def _weights_or_uniform(weights, B, dtype):
    """Batch weights (B,): the given ones, or 1/B each."""
    if weights is None:
        return np.full(B, 1.0 / B, dtype=dtype)
    return np.asarray(weights, dtype=dtype)


def assignment_biases(params):
    """``(C, A)`` of an RBParams (4b.1), ``(None, None)`` for the plain RParams (C = A = 0)."""
    return getattr(params, "C", None), getattr(params, "A", None)


def prediction(params, v):
    """Predictions (4b.2) ``u_hat_{j|i} = W_ij v_i + C_ij``: (B, I, d_v) -> (B, I, J, d_h).

    Without prediction biases (``params`` has no ``C``) this is (2.0), ``W_ij v_i``.
    """
    C, _ = assignment_biases(params)
    u_hat = predictions(params.W, v)  # (B, I, J, d_h)
    if C is not None:
        u_hat = u_hat + C  # (B, I, J, d_h)
    return u_hat


def routed_prediction(params, v, c):
    """Routed input (4.6) ``s_j = sum_i c_ij u_hat_{j|i}`` without forming u_hat (B, I, J, d_h).

    With (4b.2), ``s_jk = sum_{i,l} c_ij v_il W_ijkl + sum_i c_ij C_ijk``: for each parent j one
    matrix product of the routed pixels ``c_ij v_i`` (B, I d_v) with W_j (I d_v, d_h), and one of
    c_j (B, I) with C_j (I, d_h). Equal to ``_routed_input(prediction(params, v), c)``.

    Parameters
    ----------
    params : RParams or RBParams
    v : ndarray of shape (B, I, d_v)
    c : ndarray of shape (B, I, J)

    Returns
    -------
    ndarray of shape (B, J, d_h)
    """
    W = params.W  # (I, J, d_h, d_v)
    I, J, d_h, d_v = W.shape
    B = v.shape[0]
    routed = np.moveaxis(c[:, :, :, None] * v[:, :, None, :], 2, 0)  # (J, B, I, d_v)
    W_j = np.moveaxis(W, 1, 0).swapaxes(2, 3)  # (J, I, d_v, d_h)
    s = np.matmul(routed.reshape(J, B, I * d_v), W_j.reshape(J, I * d_v, d_h))  # (J, B, d_h)
    C, _ = assignment_biases(params)
    if C is not None:
        s = s + np.matmul(np.moveaxis(c, 2, 0), np.moveaxis(C, 1, 0))  # (J, B, I) @ (J, I, d_h)
    return np.moveaxis(s, 0, 1)  # (B, J, d_h)


def assigned_input(params, v, a):
    """Input of the hidden units under hard assignments (4.9): ``sum_{i: a_i = j} u_hat_{j|i}``.

    The routed input of :func:`routed_prediction` at the one-hot routing ``c_ij = [a_i = j]``,
    the sum in ``log p~(v, a)``'s softplus terms.

    Parameters
    ----------
    params : RParams or RBParams
    v : ndarray of shape (B, I, d_v)
    a : ndarray of int, shape (B, I), values in 0..J-1

    Returns
    -------
    ndarray of shape (B, J, d_h)
    """
    dt = _float_dtype(params.W, v)
    v = np.asarray(v, dtype=dt)
    return routed_prediction(params, v, _one_hot(a, params.W.shape[1], dt))  # (B, J, d_h)


def prior_logits(params, v):
    """Prior routing logits (4b.3) ``b_ij(v) = beta_ij + A_ij . v_i``: (B, I, d_v) -> (B, I, J).

    The routing posterior at h = 0. Without visible assignment biases (``params`` has no ``A``)
    it is beta for every image, broadcast to (B, I, J).
    """
    _, A = assignment_biases(params)
    B = np.shape(v)[0]
    if A is None:
        return np.broadcast_to(params.beta, (B,) + params.beta.shape)  # (B, I, J)
    Av = np.matmul(np.swapaxes(v, 0, 1), np.swapaxes(A, 1, 2))  # (I, B, d_v) @ (I, d_v, J) -> (I, B, J)
    return params.beta + np.swapaxes(Av, 0, 1)  # (B, I, J)


# --------------------------------------------------------------------------------------------
# (4.1), (4.3) - (4.5): energy and the three block conditionals
# --------------------------------------------------------------------------------------------


def energy(params, v, h, a):
    """Energy (4.1); with assignment biases (4b.1).

    .. math::
        E(v, h, a) = -\\alpha \\cdot v - \\gamma \\cdot h
                     - \\sum_i [\\beta_{i a_i} + h_{a_i}^T W_{i a_i} v_i]

    (4b.1) adds ``A_{i a_i} . v_i + h_{a_i} . C_{i a_i}`` inside the sum.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v), binary
    h : ndarray of shape (B, J, d_h), binary
    a : ndarray of int, shape (B, I), values in 0..J-1

    Returns
    -------
    ndarray of shape (B,)
    """
    dt = _float_dtype(params.W, v, h)
    v = np.asarray(v, dtype=dt)
    h = np.asarray(h, dtype=dt)
    logits = _routing_logits(params, v, h)  # (B, I, J)
    chosen = np.take_along_axis(logits, np.asarray(a)[..., None], axis=-1)[..., 0]  # (B, I)
    return (-np.sum(params.alpha * v, axis=(1, 2)) - np.sum(params.gamma * h, axis=(1, 2))
            - np.sum(chosen, axis=1))  # (B,)


def _routing_logits(params, v, h, u_hat=None):
    """``b_ij(v) + u_hat_{j|i} . h_j`` (B, I, J); ``b = beta`` without assignment biases."""
    dt = _float_dtype(params.W, v, h)
    v = np.asarray(v, dtype=dt)
    if u_hat is None:
        u_hat = prediction(params, v)  # (B, I, J, d_h)
    return prior_logits(params, v) + _agreement(u_hat, np.asarray(h, dtype=dt))  # (B, I, J)


def routing_posterior(params, v, h):
    """Routing posterior R (4.3): ``p(a_i = j | v, h) = softmax_j(beta_ij + u_hat_{j|i} . h_j)``.

    The children are conditionally independent given (v, h); the softmax runs over PARENTS j.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    h : ndarray of shape (B, J, d_h)

    Returns
    -------
    ndarray of shape (B, I, J), summing to one over j.
    """
    return softmax(_routing_logits(params, v, h), axis=-1)  # (B, I, J)


def _hidden_logits(params, v, a, u_hat=None):
    """``gamma_jk + sum_{i: a_i = j} u_hat_{j|i,k}``: (..., B, J, d_h) for a of shape (..., B, I)."""
    dt = _float_dtype(params.W, v)
    if u_hat is None:
        u_hat = prediction(params, np.asarray(v, dtype=dt))  # (B, I, J, d_h)
    onehot = _one_hot(a, params.W.shape[1], u_hat.dtype)  # (..., B, I, J)
    return params.gamma + _routed_input(u_hat, onehot)  # (..., B, J, d_h)


def hidden_probability(params, v, a):
    """Hidden conditional U (4.4).

    .. math::
        p(h_{jk} = 1 | v, a) = \\sigma(\\gamma_{jk} + \\sum_{i: a_i = j} \\hat u_{j|i,k})

    A parent that no child chose sees only its bias.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    a : ndarray of int, shape (B, I)

    Returns
    -------
    ndarray of shape (B, J, d_h)
    """
    return sigmoid(_hidden_logits(params, v, a))  # (B, J, d_h)


def _visible_logits(params, h, a):
    """``alpha_il + A_{i a_i l} + (W_{i a_i}^T h_{a_i})_l`` (B, I, d_v) (4.5, 4b.4)."""
    W, alpha = params.W, params.alpha
    h = np.asarray(h, dtype=_float_dtype(W, h))
    a = np.asarray(a)
    B, I = a.shape
    W_chosen = W[np.arange(I)[None, :], a]  # (B, I, d_h, d_v): W_{i a_i}
    h_chosen = h[np.arange(B)[:, None], a]  # (B, I, d_h): h_{a_i}
    field = alpha + np.einsum("bikl,bik->bil", W_chosen, h_chosen, optimize=True)  # (B, I, d_v)
    _, A = assignment_biases(params)
    if A is not None:
        field = field + A[np.arange(I)[None, :], a]  # (B, I, d_v): + A_{i a_i}
    return field


def top_down(params, h):
    """Top-down fields of (4.5) for every child and parent, ``W_ij^T h_j``: (B, J, d_h) -> (J, B, I, d_v).

    One matrix product per parent, (B, d_h) @ (d_h, I d_v). The visible logit of child i
    routed to j is ``alpha_i + A_ij + top_down[j, :, i]`` (4b.4), and the routing logit's
    agreement term is ``u_hat_{j|i} . h_j = v_i . top_down[j, :, i] + C_ij . h_j``.
    """
    W = params.W  # (I, J, d_h, d_v)
    I, J, d_h, d_v = W.shape
    fields = np.matmul(np.moveaxis(np.asarray(h, dtype=W.dtype), 1, 0), _weights_by_parent(W))  # (J, B, I d_v)
    return fields.reshape(J, -1, I, d_v)  # (J, B, I, d_v)


def _weights_by_parent(W):
    """W (I, J, d_h, d_v) as one (d_h, I d_v) matrix per parent: (J, d_h, I d_v), a copy."""
    I, J, d_h, d_v = W.shape
    return np.moveaxis(W, 1, 0).swapaxes(1, 2).reshape(J, d_h, I * d_v)


def visible_probability(params, h, a):
    """Visible conditional D (4.5): ``p(v_il = 1 | h, a) = sigmoid(alpha_il + (W_{i a_i}^T h_{a_i})_l)``.

    With assignment biases (4b.4) the logit gains ``A_{i a_i l}``.

    Parameters
    ----------
    params : RParams
    h : ndarray of shape (B, J, d_h)
    a : ndarray of int, shape (B, I)

    Returns
    -------
    ndarray of shape (B, I, d_v)
    """
    return sigmoid(_visible_logits(params, h, a))  # (B, I, d_v)


# --------------------------------------------------------------------------------------------
# (4.6): mean-field routing
# --------------------------------------------------------------------------------------------


def _checked_start(start, shape, dtype):
    """A copy of the routing ``start`` to iterate from, checked to be of ``shape`` (B, I, J)."""
    start = np.array(start, dtype=dtype)
    if start.shape != tuple(shape):
        raise ValueError(f"start must have the routing's shape {tuple(shape)}, got {start.shape}")
    return start


def mean_field(params, v, tol=1e-3, max_iter=30, damping=0.0, start=None):
    """Mean-field routing (4.6): dynamic routing with a sigmoid and "replace".

    The factorised posterior ``q(a_i = j) = c_ij``, ``q(h_jk = 1) = mu_jk`` is found by
    iterating, from ``c = softmax_j(beta)`` for every image unless ``start`` is given (with
    assignment biases, beta reads ``b(v)`` (4b.3) here and below, and the start is the routing
    at h = 0),

    .. math::
        s_j = \\sum_i c_{ij} \\hat u_{j|i}, \\quad \\mu_j = \\sigma(\\gamma_j + s_j), \\quad
        c^{new}_{ij} = \\mathrm{softmax}_j(\\beta_{ij} + \\hat u_{j|i} \\cdot \\mu_j),

    then ``c <- (1 - damping) c_new + damping c``. Stopping is per image: after an update
    with ``max_ij |c_new - c| < tol`` (the change an undamped step makes; with damping = 0 it is
    the change of c) the image is frozen and its number of updates recorded in ``n_iter``; the
    others go on, up to ``max_iter`` updates. The returned ``mu = sigmoid(gamma + s(c))`` is
    recomputed from the returned c.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    tol : float
    max_iter : int
    damping : float in [0, 1)
    start : ndarray of shape (B, I, J), optional
        The routing to iterate from (rows summing to one): another start can reach another
        fixed point when the mean field has several.

    Returns
    -------
    c : ndarray of shape (B, I, J), sums to one over parents j
    mu : ndarray of shape (B, J, d_h)
    n_iter : ndarray of int64, shape (B,), updates made per image (``max_iter`` if not converged)
    """
    gamma = params.gamma
    dt = _float_dtype(params.W, v)
    v = np.asarray(v, dtype=dt)
    u_hat = prediction(params, v)  # (B, I, J, d_h)
    B = u_hat.shape[0]
    prior = np.asarray(prior_logits(params, v), dtype=dt)  # (B, I, J)
    c = softmax(prior, axis=-1) if start is None else _checked_start(start, prior.shape, dt)  # (B, I, J)
    n_iter = np.full(B, max_iter, dtype=np.int64)
    active = np.arange(B)
    for t in range(1, max_iter + 1):
        if active.size == 0:
            break
        u_a, c_a = u_hat[active], c[active]  # (b, I, J, d_h), (b, I, J)
        mu_a = sigmoid(gamma + _routed_input(u_a, c_a))  # (b, J, d_h)
        c_new = softmax(prior[active] + _agreement(u_a, mu_a), axis=-1)  # (b, I, J)
        delta = np.max(np.abs(c_new - c_a), axis=(1, 2))  # (b,)
        c[active] = (1.0 - damping) * c_new + damping * c_a
        done = delta < tol  # (b,)
        n_iter[active[done]] = t
        active = active[~done]
    mu = sigmoid(gamma + _routed_input(u_hat, c))  # (B, J, d_h)
    return c, mu.astype(dt, copy=False), n_iter


# --------------------------------------------------------------------------------------------
# (4.7): 3-block Gibbs sweep
# --------------------------------------------------------------------------------------------


def gibbs_sweep(params, v, a, rng, return_probability=False, field=None):
    """One 3-block Gibbs sweep (4.7) on the chain state (v, a).

    1. ``h ~ U(v, a)`` (4.4), from ``rng.random((B, J, d_h))``, ``h = (u < p)``;
    2. ``a_new ~ R(v, h)`` (4.3), from ``rng.random((B, I))`` by inverse CDF over parents
       (``a_i`` = number of ``j < J-1`` whose normalised cumulative probability is ``<= u_i``);
    3. ``v_new ~ D(h, a_new)`` (4.5), from ``rng.random((B, I, d_v))``, ``v = (u < p)``.

    Each block leaves ``p(v, h, a)`` invariant, hence so does the sweep. Because h is redrawn
    first, the sweep is a Markov chain on (v, a) alone (:func:`exact_transition_matrix`).

    ``resp = R(v, h)`` is returned for the Rao-Blackwellised model statistics (4.8): it belongs
    to the pair (v, h) of the INPUT v and the drawn h. If (v, a) ~ p then (v, h) ~ p(v, h), so
    ``model_statistics(params, v, h, resp)`` (with the input v, not ``v_new``) is unbiased.
    ``p_h = U(v, a)`` at the input (v, a), returned with ``return_probability``, gives the
    statistics Rao-Blackwellised over h instead (4b.10, :func:`hidden_model_statistics`).

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v), binary
    a : ndarray of int, shape (B, I)
    rng : np.random.Generator
    return_probability : bool, also return ``p_h``
    field : ndarray of shape (B, I, d_v), optional
        Added to every visible logit of step 3, ``p(v_il = 1 | h, a) = sigmoid((4.5) + field_il)``:
        the top-down input of units outside the routing (the shared capsule of
        docs/MODEL_RB.md, (4c.4)), drawn before the sweep. Steps 1 and 2 do not see it.

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    h : ndarray of shape (B, J, d_h)
    a_new : ndarray of int64, shape (B, I)
    resp : ndarray of shape (B, I, J), ``p(a_i = j | v, h)``
    p_h : ndarray of shape (B, J, d_h), ``p(h = 1 | v, a)``, only with ``return_probability``
    """
    dt = _float_dtype(params.W, v)
    v = np.asarray(v, dtype=dt)
    u_hat = prediction(params, v)  # (B, I, J, d_h)
    p_h = sigmoid(_hidden_logits(params, v, a, u_hat))  # (B, J, d_h)
    h = _bernoulli_draw(p_h, rng.random(p_h.shape))  # (B, J, d_h)
    resp = softmax(_routing_logits(params, v, h, u_hat), axis=-1)  # (B, I, J)
    a_new = _categorical_draw(resp, rng.random(resp.shape[:2]))  # (B, I)
    logits_v = _visible_logits(params, h, a_new)  # (B, I, d_v)
    if field is not None:
        logits_v = logits_v + field  # (B, I, d_v)
    v_new = _bernoulli_draw(sigmoid(logits_v), rng.random(logits_v.shape))  # (B, I, d_v)
    return (v_new, h, a_new, resp, p_h) if return_probability else (v_new, h, a_new, resp)


# --------------------------------------------------------------------------------------------
# (4.8): PCD statistics and gradient
# --------------------------------------------------------------------------------------------


def data_statistics(params, v, c, mu, weights=None):
    """Mean-field data statistics (4.8), averaged over the batch.

    ``W: c_ij mu_j v_i^T``, ``alpha: v``, ``gamma: mu``, ``beta: c``. They approximate the
    posterior expectations ``E_{p(h, a | v)}[[a_i = j] h_j v_i^T]``, ... by the factorised q.

    Parameters
    ----------
    params : RParams or RBParams (its type and dtype are used)
    v : ndarray of shape (B, I, d_v)
    c : ndarray of shape (B, I, J)
    mu : ndarray of shape (B, J, d_h)
    weights : ndarray of shape (B,), optional (uniform 1/B if omitted)

    Returns
    -------
    the type of ``params``: W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J),
    and for RBParams C (I, J, d_h), A (I, J, d_v)
    """
    dt = _float_dtype(params.W, v, c, mu)
    v, c, mu = (np.asarray(x, dtype=dt) for x in (v, c, mu))
    w = _weights_or_uniform(weights, v.shape[0], dt)  # (B,)
    return type(params)(
        W=np.einsum("b,bij,bjk,bil->ijkl", w, c, mu, v, optimize=True),  # (I, J, d_h, d_v)
        alpha=np.einsum("b,bil->il", w, v),  # (I, d_v)
        gamma=np.einsum("b,bjk->jk", w, mu),  # (J, d_h)
        beta=np.einsum("b,bij->ij", w, c),  # (I, J)
        **bias_statistics(params, v, c, mu, w),
    )


def bias_statistics(params, v, c, mu, w):
    """Statistics (4b.5) of the assignment biases: ``C: c_ij mu_j``, ``A: c_ij v_i``.

    ``-dE/dC_ij = [a_i = j] h_j`` and ``-dE/dA_ij = [a_i = j] v_i``, averaged with batch weights
    w (B,) under c (B, I, J) and mu (B, J, d_h) as in (4.8). Returns a dict with the keys of
    the biases ``params`` has (empty for the plain Model R).
    """
    C, A = assignment_biases(params)
    wc = w[:, None, None] * c  # (B, I, J)
    out = {}
    if C is not None:  # sum_b wc_bij mu_bjk as a batch of J products (I, B) @ (B, d_h)
        wc_t, mu_t = np.ascontiguousarray(wc.transpose(2, 1, 0)), np.ascontiguousarray(np.swapaxes(mu, 0, 1))
        out["C"] = np.swapaxes(np.matmul(wc_t, mu_t), 0, 1)  # (J, I, d_h) -> (I, J, d_h)
    if A is not None:  # sum_b wc_bij v_bil as a batch of I products (J, B) @ (B, d_v)
        wc_t, v_t = np.ascontiguousarray(wc.transpose(1, 2, 0)), np.ascontiguousarray(np.swapaxes(v, 0, 1))
        out["A"] = np.matmul(wc_t, v_t)  # (I, J, d_v)
    return out


def sparsity_gradient(params, v, c, mu, target, cost):
    """Ascent direction of the sparsity penalty (4b.11) in every parameter of the hidden inputs.

    The mean-field input of h_jk on image n is ``x_njk = gamma_jk + sum_i c_nij (W_ij v_ni +
    C_ij)_k`` (sigmoid(x) = mu). With the routing c held as it is, ``-dOmega/dtheta = lambda
    (1/B) sum_n (p - mu_n) dx_n/dtheta``: the data statistics (4.8), (4b.5) of W, gamma and C
    with ``p - mu`` in place of mu, times lambda,

        W: lambda <c_ij (p - mu_j) v_i^T>,   gamma: lambda <p - mu_j>,   C: lambda <c_ij (p - mu_j)>,

    and zero for alpha, beta and A, which do not reach h.

    Parameters
    ----------
    params : RParams or RBParams (its type and dtype are used)
    v : ndarray of shape (B, I, d_v)
    c : ndarray of shape (B, I, J), the batch's mean-field routing
    mu : ndarray of shape (B, J, d_h), its mean-field hidden probabilities
    target : float in (0, 1), p
    cost : float >= 0, lambda

    Returns
    -------
    the type of ``params``, shapes as ``params``
    """
    return input_pull(data_statistics(params, v, c, target - np.asarray(mu)), cost)


def input_pull(statistics, cost):
    """``cost`` times the W, gamma and C parts of data statistics taken with ``p - mu`` (linear
    in mu), zero for alpha, beta and A: the last step of :func:`sparsity_gradient`, shared
    with its compiled twin."""
    return type(statistics)(**{name: (cost * x if name in ("W", "gamma", "C") else np.zeros_like(x))
                               for name, x in statistics._asdict().items()})


def tied_gradient(dW):
    """Gradient of weights shared by the parents (4b.6): ``sum_j dW_ij``, the same for every j.

    With ``W_ij = theta_i`` for all j the chain rule gives ``d/dtheta_i = sum_j d/dW_ij``; an
    update that adds it to every copy keeps the copies equal.

    Parameters
    ----------
    dW : ndarray of shape (I, J, d_h, d_v), the gradient as if the copies were free

    Returns
    -------
    ndarray of shape (I, J, d_h, d_v)
    """
    return np.broadcast_to(dW.sum(axis=1, keepdims=True), dW.shape).copy()  # (I, J, d_h, d_v)


def model_statistics(params, v, h, resp, weights=None):
    """Rao-Blackwellised model statistics (4.8), averaged over the batch.

    ``W: resp_ij h_j v_i^T``, ``alpha: v``, ``gamma: h``, ``beta: resp`` with
    ``resp = p(a | v, h)`` computed at this very (v, h). Since ``-dE/dW_ij = [a_i = j] h_j v_i^T``
    and ``E[[a_i = j] | v, h] = resp_ij``, averaging over (v, h) ~ p(v, h) gives exactly
    ``E_p[-dE/dtheta]``.

    Parameters
    ----------
    params : RParams (used for the dtype)
    v : ndarray of shape (B, I, d_v)
    h : ndarray of shape (B, J, d_h)
    resp : ndarray of shape (B, I, J), ``routing_posterior(params, v, h)``
    weights : ndarray of shape (B,), optional (uniform 1/B if omitted)

    Returns
    -------
    RParams of W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J)
    """
    return data_statistics(params, v, resp, h, weights)  # same algebra with c -> resp, mu -> h


def hidden_model_statistics(params, v, a, p_h, resp, weights=None):
    """Model statistics Rao-Blackwellised over h where they involve h (4b.10), batch-averaged.

    ``W: [a_i = j] p_j v_i^T``, ``gamma: p``, ``C: [a_i = j] p_j`` with ``p = p(h | v, a)``
    (4.4) at the chain state (v, a) that entered the sweep; ``beta: resp``, ``A: resp_ij v_i``,
    ``alpha: v`` as in :func:`model_statistics`, with ``resp = p(a | v, h)`` at that v and the
    h drawn from p. If (v, a) ~ p then (v, h) ~ p too, so each statistic is the conditional
    expectation of ``-dE/dtheta`` given one of the two pairs, and unbiased; the statistics of
    h lose the noise of the d_h binary draws, those of a alone keep their routing average.

    Parameters
    ----------
    params : RParams or RBParams (its type and dtype are used)
    v : ndarray of shape (B, I, d_v)
    a : ndarray of int, shape (B, I), the routes that entered the sweep
    p_h : ndarray of shape (B, J, d_h), ``p(h = 1 | v, a)``
    resp : ndarray of shape (B, I, J), ``routing_posterior(params, v, h)``
    weights : ndarray of shape (B,), optional (uniform 1/B if omitted)

    Returns
    -------
    the type of ``params``: W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J),
    and for RBParams C (I, J, d_h), A (I, J, d_v)
    """
    dt = _float_dtype(params.W, v, p_h, resp)
    routed = data_statistics(params, v, _one_hot(np.asarray(a), params.W.shape[1], dt), p_h, weights)
    return _with_routing_statistics(params, routed, v, resp, weights)


def _with_routing_statistics(params, stats, v, resp, weights):
    """``stats`` with beta and A replaced by their routing-averaged statistics (4.8), (4b.5)."""
    dt = _float_dtype(params.W, v, resp)
    v, resp = np.asarray(v, dtype=dt), np.asarray(resp, dtype=dt)
    w = _weights_or_uniform(weights, v.shape[0], dt)  # (B,)
    beta = np.einsum("b,bij->ij", w, resp)  # (I, J)
    if assignment_biases(params)[1] is None:
        return stats._replace(beta=beta)
    A = np.einsum("b,bij,bil->ijl", w, resp, v, optimize=True)  # (I, J, d_v)
    return stats._replace(beta=beta, A=A)


def pcd_gradient(params, v_data, v_chain, h_chain, resp_chain, c=None, mu=None, tol=1e-3,
                 max_iter=30, data_weights=None, model_weights=None):
    """PCD estimate of the mean log-likelihood gradient (4.8): data statistics minus model statistics.

    .. math::
        \\nabla_\\theta \\frac1B \\sum_b \\log p(v_b)
          = \\langle -\\partial_\\theta E \\rangle_{p(h,a|v_b)} - \\langle -\\partial_\\theta E \\rangle_{p(v,h,a)}

    The data term uses the mean-field (c, mu) of ``v_data`` (computed with ``tol`` and
    ``max_iter`` unless given), an approximation of the exact posterior term. The model term uses
    chain states: pass the v that ENTERED :func:`gibbs_sweep` with the h and resp it returned.
    Sign: the result is the ASCENT direction; a step is ``params + lr * grad``.

    Parameters
    ----------
    params : RParams
    v_data : ndarray of shape (B, I, d_v)
    v_chain : ndarray of shape (B', I, d_v)
    h_chain : ndarray of shape (B', J, d_h)
    resp_chain : ndarray of shape (B', I, J)
    c, mu : ndarrays of shape (B, I, J) and (B, J, d_h), optional mean-field result for v_data
    tol, max_iter : mean-field settings used when c, mu are not given
    data_weights, model_weights : ndarrays of shape (B,) and (B',), optional

    Returns
    -------
    RParams, same shapes as ``params``.
    """
    if c is None or mu is None:
        c, mu, _ = mean_field(params, v_data, tol=tol, max_iter=max_iter)
    pos = data_statistics(params, v_data, c, mu, data_weights)
    neg = model_statistics(params, v_chain, h_chain, resp_chain, model_weights)
    return type(pos)(*(p - n for p, n in zip(pos, neg)))


# --------------------------------------------------------------------------------------------
# (4b.8), (4b.9): centring
# --------------------------------------------------------------------------------------------


def to_centred(params, m, l, biases=False):
    """Centred coordinates (4b.8) of an RBParams, with offsets m (I, d_v) and l (J, d_h).

    The centred energy measures v and h from their offsets in each child's interaction
    (``j = a_i``)::

        beta'_ij + A'_ij . v_i + h_j . C'_ij + (h_j - l_j)^T W_ij (v_i - m_i) - l_j^T W_ij m_i

    and equals (4b.1) when ``C' = C + W m``, ``A' = A + W^T l`` (W, alpha, gamma, beta unchanged).
    The last term keeps the routing prior at beta, so that the map leaves beta alone; with one
    parent it is a constant and this is the centred RBM (:func:`capsnp.rbm.to_centred`).

    ``biases=True`` centres the assignment biases as well, ``beta'_ij + A'_ij . (v_i - m_i)
    + (h_j - l_j) . (W_ij (v_i - m_i) + C'_ij)``; then beta absorbs the constants:
    ``beta' = beta + A'.m + l.C' - l^T W m``.

    Parameters
    ----------
    params : RBParams
    m : ndarray of shape (I, d_v), visible offsets
    l : ndarray of shape (J, d_h), hidden offsets
    biases : bool, default=False

    Returns
    -------
    RBParams, the centred parameters
    """
    # The inverse of from_centred is from_centred with the offsets negated: C + W m, A + W^T l,
    # and beta + A.m + l.(C + W m), which is beta + A'.m + l.C' - l^T W m as above.
    return from_centred(params, -m, -l, biases)


def from_centred(centred, m, l, biases=False):
    """Plain parameters (4b.1) of centred ones (4b.8): ``W = W'``, ``C = C' - W' m``,
    ``A = A' - W'^T l``; beta unchanged, or with ``biases=True``
    ``beta = beta' - A'.m - l.C' + l^T W' m``; alpha, gamma unchanged.

    The map is linear in the centred parameters, so it also turns a step taken in centred
    coordinates into the step of the plain parameters.

    Parameters
    ----------
    centred : RBParams, parameters or a step in centred coordinates
    m : ndarray of shape (I, d_v)
    l : ndarray of shape (J, d_h)
    biases : bool, default=False (see :func:`to_centred`)

    Returns
    -------
    RBParams
    """
    Wm = np.einsum("ijkl,il->ijk", centred.W, m)  # (I, J, d_h)
    C = centred.C - Wm  # (I, J, d_h)
    A = centred.A - np.einsum("ijkl,jk->ijl", centred.W, l)  # (I, J, d_v)
    if not biases:
        return centred._replace(C=C, A=A)
    beta = centred.beta - np.einsum("ijl,il->ij", centred.A, m) - np.einsum("ijk,jk->ij", C, l)  # (I, J)
    return centred._replace(C=C, A=A, beta=beta)


def centred_gradient(grad, m, l, biases=False):
    """The log-likelihood gradient in centred coordinates (4b.9), from the plain one (4.8, 4b.5).

    By the chain rule through :func:`from_centred`,
    ``g_W'_ij = g_W_ij - g_C_ij m_i^T - l_j g_A_ij^T``, every other part unchanged: with
    statistics, ``<[a_i = j](h_j - l_j)(v_i - m_i)^T>_data - <.>_model`` less its
    ``[a_i = j] l_j m_i^T`` term. With ``biases=True``:

    * ``g_W'_ij = g_W_ij - g_C_ij m_i^T - l_j g_A_ij^T + g_beta_ij l_j m_i^T``
    * ``g_C'_ij = g_C_ij - g_beta_ij l_j``, ``g_A'_ij = g_A_ij - g_beta_ij m_i``

    For tied weights (4b.6) sum ``g_W'`` over the parents afterwards.

    Parameters
    ----------
    grad : RBParams, data minus model statistics
    m : ndarray of shape (I, d_v)
    l : ndarray of shape (J, d_h)
    biases : bool, default=False (see :func:`to_centred`)

    Returns
    -------
    RBParams
    """
    C, A = grad.C, grad.A  # (I, J, d_h), (I, J, d_v)
    if biases:
        C = grad.C - grad.beta[..., None] * l  # (I, J, d_h)
        A = grad.A - grad.beta[..., None] * m[:, None, :]  # (I, J, d_v)
    W = grad.W - C[..., None] * m[:, None, None, :] - l[None, :, :, None] * grad.A[:, :, None, :]  # (I, J, d_h, d_v)
    return grad._replace(W=W, C=C, A=A)


# --------------------------------------------------------------------------------------------
# (4.9), (4.10): marginals
# --------------------------------------------------------------------------------------------


def log_joint_vh(params, v, h):
    """Unnormalised ``log p~(v, h)`` with the routing a summed out (4.2).

    .. math::
        \\log \\tilde p(v, h) = \\alpha \\cdot v + \\gamma \\cdot h
          + \\sum_i \\log \\sum_j \\exp(\\beta_{ij} + \\hat u_{j|i} \\cdot h_j)

    (the energy is a sum of one term per child, so the sum over a factorises over children).

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    h : ndarray of shape (B, J, d_h)

    Returns
    -------
    ndarray of shape (B,)
    """
    dt = _float_dtype(params.W, v, h)
    v = np.asarray(v, dtype=dt)
    h = np.asarray(h, dtype=dt)
    mixture = np.sum(_logsumexp(_routing_logits(params, v, h), axis=-1), axis=-1)  # (B,)
    return np.sum(params.alpha * v, axis=(1, 2)) + np.sum(params.gamma * h, axis=(1, 2)) + mixture


def _log_joint_from_routed(params, v, a, routed):
    """(4.9) from the routed inputs ``routed_j = sum_{i: a_i = j} u_hat_{j|i}`` (..., B, J, d_h) of
    assignments a (..., B, I) sharing v (B, I, d_v): returns (..., B)."""
    prior = prior_logits(params, v)  # (B, I, J)
    beta_chosen = np.take_along_axis(
        np.broadcast_to(prior, np.shape(a) + prior.shape[-1:]), a[..., None], axis=-1
    )[..., 0]  # (..., B, I): b_{i a_i}(v)
    hidden_term = np.sum(softplus(params.gamma + routed), axis=(-2, -1))  # (..., B)
    return np.sum(params.alpha * v, axis=(-2, -1)) + np.sum(beta_chosen, axis=-1) + hidden_term


def _log_joint_va(params, v, u_hat, a):
    """(4.9) for assignments a of shape (..., B, I) sharing v and its predictions u_hat."""
    onehot = _one_hot(a, params.W.shape[1], u_hat.dtype)  # (..., B, I, J)
    return _log_joint_from_routed(params, v, a, _routed_input(u_hat, onehot))  # (..., B)


def log_joint_va(params, v, a):
    """Unnormalised ``log p~(v, a)`` with h summed out in closed form (4.9).

    .. math::
        \\log \\tilde p(v, a) = \\alpha \\cdot v + \\sum_i \\beta_{i a_i}
          + \\sum_{j,k} \\mathrm{softplus}(\\gamma_{jk} + \\sum_{i: a_i = j} \\hat u_{j|i,k})

    (each hidden unit appears linearly in the energy, so ``sum_{h_jk} e^{h_jk x} = 1 + e^x``).
    ``p(v, a) = exp(log p~(v, a)) / Z``.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    a : ndarray of int, shape (B, I)

    Returns
    -------
    ndarray of shape (B,)
    """
    dt = _float_dtype(params.W, v)
    v = np.asarray(v, dtype=dt)
    a = np.asarray(a)
    # routed inputs by one matrix product per parent, without forming u_hat (B, I, J, d_h)
    return _log_joint_from_routed(params, v, a, assigned_input(params, v, a))  # (B,)


def log_marginal_is(params, v, n_samples, rng, c=None, log_z=None, stratified=True):
    """Importance-sampling estimate of ``log p(v)`` (4.10).

    With proposal ``q(a) = prod_i c_{i a_i}`` (the mean-field routing of each image unless c is
    given), ``a^s ~ q`` and weights ``w_s = p~(v, a^s) / q(a^s)`` (4.9),

    .. math::
        \\widehat{\\log \\tilde p(v)} = \\log \\frac1S \\sum_s w_s .

    The mean of the weights is unbiased for ``p~(v)``, but by Jensen's inequality its logarithm is
    biased LOW (by about ``se^2 / 2``). The standard error is the delta method on the
    log-mean: ``se = sd(w) / (sqrt(S) mean(w))``, computed from ``w / max w``.

    Given K routings per image (c of shape (K, B, I, J)), the proposal is a mixture of them,
    which covers every mode of the routing posterior that one of them sits on (e.g. mean-field
    fixed points reached from several starts, ``mean_field(start=...)``). Two ways to draw
    from it, both unbiased in ``p~(v)``:

    - ``stratified=True`` (default): draw s comes from component ``s mod K``, so component k
      gives exactly ``n_k`` of the S draws, and every draw is weighted against the mixture
      with those shares, ``q(a) = sum_k (n_k / S) prod_i c^k_{i a_i}`` (the deterministic
      mixture, or balance heuristic, of multiple importance sampling):
      ``E[(1/S) sum_s p~(v, a^s) / q(a^s)] = sum_a p~(v, a) sum_k (n_k/S) c^k(a) / q(a)
      = p~(v)``. It removes the randomness of how many draws each component gets; the
      standard error is the stratified one, ``sqrt(sum_k n_k var_k(w)) / (S mean(w))``
      (pooled over all draws if some n_k < 2).
    - ``stratified=False``: each draw's component is drawn uniformly, and
      ``q(a) = (1/K) sum_k prod_i c^k_{i a_i}``.

    With K = 1 the two are the same estimator, number for number.

    Draw order: with K > 1 and ``stratified=False``, first ``rng.integers(0, K, (n_samples,
    B))`` (each draw's component); then the numbers of one call ``rng.random((n_samples, B,
    I))`` (drawn in chunks of draws, which gives the same numbers), turned into assignments by
    inverse CDF over parents as in :func:`gibbs_sweep`.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    n_samples : int, S
    rng : np.random.Generator
    c : ndarray of shape (B, I, J) or (K, B, I, J), optional proposal (rows summing to one). The
        proposal must be positive wherever ``p(a_i = j | v) > 0``; assignments it gives
        probability zero are never drawn and their mass is silently missing (a further
        downward bias).
    log_z : float, optional
        If given, the estimate is ``log p~(v) - log_z`` (a normalised log-likelihood); otherwise
        the unnormalised ``log p~(v) = log sum_a p~(v, a)``.
    stratified : bool, default=True
        With K > 1 routings: draws assigned to the components in turn (True) or at random.

    Returns
    -------
    log_p : ndarray of shape (B,)
    se : ndarray of shape (B,), standard error (inf if S = 1)
    """
    dt = _float_dtype(params.W, v)
    v = np.asarray(v, dtype=dt)
    if c is None:
        c, _, _ = mean_field(params, v)
    c = np.asarray(c, dtype=dt)
    cs = c if c.ndim == 4 else c[None]  # (K, B, I, J)
    K, B, I, J = cs.shape
    stratified = bool(stratified) and K > 1
    if stratified:
        turn = np.arange(n_samples) % K  # (S,) draw s from component s mod K
        k = np.broadcast_to(turn[:, None], (n_samples, B))  # (S, B)
        n_k = np.bincount(turn, minlength=K)  # (K,) draws per component
        with np.errstate(divide="ignore"):
            log_share = np.log(n_k / n_samples).astype(dt)  # (K,) mixture weights; -inf if n_k = 0
    elif K > 1:
        k = rng.integers(0, K, size=(n_samples, B))  # (S, B): each draw's component
    else:
        k = np.zeros((n_samples, B), dtype=np.int64)  # (S, B)
    u_hat = prediction(params, v)  # (B, I, J, d_h)
    with np.errstate(divide="ignore"):
        log_cs = np.log(cs)  # (K, B, I, J); -inf where a component gives a parent probability 0
    log_w = np.empty((n_samples, B), dtype=dt)  # (S, B)
    rows = np.arange(B)
    # draws per chunk: hidden inputs (chunk, B, J, d_h), proposals (chunk, B, I, J) and the
    # mixture's log-densities (K, chunk, B, I)
    chunk = max(1, 2**22 // max(B * J * u_hat.shape[-1], B * I * J, K * B * I, 1))
    for s in range(0, n_samples, chunk):
        u = rng.random((min(chunk, n_samples - s), B, I))  # (n, B, I)
        a = _categorical_draw(cs[k[s:s + chunk], rows], u)  # (n, B, I)
        # log prod_i c^k_{i a_i} for every component; the drawn one is > 0 (a parent of
        # probability zero is never drawn) and has a share > 0, so log q is finite
        log_c = np.take_along_axis(log_cs[:, None], a[None, ..., None], axis=-1)[..., 0]  # (K, n, B, I)
        if stratified:
            log_q = _logsumexp(np.sum(log_c, axis=-1) + log_share[:, None, None], axis=0)  # (n, B)
        elif K > 1:
            log_q = _logsumexp(np.sum(log_c, axis=-1), axis=0) - math.log(K)  # (n, B)
        else:
            log_q = np.sum(log_c[0], axis=-1)  # (n, B)
        log_w[s:s + chunk] = _log_joint_va(params, v, u_hat, a) - log_q
    m = np.max(log_w, axis=0)  # (B,)
    w = np.exp(log_w - m)  # (S, B), in (0, 1]
    mean_w = np.mean(w, axis=0)  # (B,)
    # log mean_s exp(log w_s) = m + log mean_s exp(log w_s - m)
    estimate = m + np.log(mean_w)  # (B,)
    if stratified and n_k.min() >= 2:
        # variance of the stratified mean: (1/S^2) sum_k n_k var_k(w)
        var_k = np.stack([np.var(w[j::K], axis=0, ddof=1) for j in range(K)])  # (K, B)
        se = np.sqrt(n_k @ var_k) / (n_samples * mean_w)  # (B,)
    elif n_samples > 1:
        se = np.std(w, axis=0, ddof=1) / (math.sqrt(n_samples) * mean_w)  # (B,)
    else:
        se = np.full_like(estimate, np.inf)
    if log_z is not None:
        estimate = estimate - log_z
    return estimate, se


# --------------------------------------------------------------------------------------------
# exact tools for tiny models (MODEL.md sec. 6, 7)
# --------------------------------------------------------------------------------------------


def _sizes(params):
    I, J, d_h, d_v = params.W.shape
    return I, J, d_h, d_v, 2 ** (I * d_v), 2 ** (J * d_h), J**I


def _check_states(n, what):
    if n > _MAX_STATES:
        raise ValueError(f"{what}: {n} enumerated states or entries is too large (at most {_MAX_STATES})")


def _all_visible(params):
    I, J, d_h, d_v = params.W.shape
    if I * d_v > MAX_ENUMERATED_BITS:
        raise ValueError(f"enumerating 2**{I * d_v} visible states is too large")
    return enumerate_binary(I * d_v, dtype=_float_dtype(params.W)).reshape(-1, I, d_v)  # (Nv, I, d_v)


def _all_hidden(params):
    I, J, d_h, d_v = params.W.shape
    if J * d_h > MAX_ENUMERATED_BITS:
        raise ValueError(f"enumerating 2**{J * d_h} hidden states is too large")
    return enumerate_binary(J * d_h, dtype=_float_dtype(params.W)).reshape(-1, J, d_h)  # (Nh, J, d_h)


def exact_log_unnormalised_marginal(params, v):
    """Exact ``log p~(v) = logsumexp_a log p~(v, a)`` (4.9 summed over all J**I assignments).

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)

    Returns
    -------
    ndarray of shape (B,), equal to ``log p(v) + log Z``.
    """
    I, J = params.W.shape[:2]
    _check_states(J**I, "routing assignments")
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    u_hat = prediction(params, v)  # (B, I, J, d_h)
    A = enumerate_assignments(I, J)  # (J^I, I)
    chunk = max(1, 2**22 // max(u_hat.size, 1))
    parts = []
    for s in range(0, A.shape[0], chunk):
        a = np.broadcast_to(A[s:s + chunk, None, :], (min(chunk, A.shape[0] - s),) + v.shape[:2])
        parts.append(_logsumexp(_log_joint_va(params, v, u_hat, a), axis=0))  # (B,)
    return _logsumexp(np.stack(parts), axis=0)  # (B,)


def exact_log_partition(params):
    """Exact ``log Z = logsumexp_{v, a} log p~(v, a)``: enumerates 2**(I d_v) x J**I states,
    h summed in closed form (4.9).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If there are more than 2**24 (v, a) states.
    """
    _, _, _, _, nv, _, na = _sizes(params)
    _check_states(nv * na, "exact log Z")
    V = _all_visible(params)  # (Nv, I, d_v)
    chunk = max(1, 2**16 // na)
    parts = [_logsumexp(exact_log_unnormalised_marginal(params, V[s:s + chunk]))
             for s in range(0, nv, chunk)]
    return float(_logsumexp(np.asarray(parts)))


def exact_log_marginal(params, v, log_z=None):
    """Exact normalised ``log p(v) = logsumexp_a log p~(v, a) - log Z``.

    Parameters
    ----------
    params : RParams
    v : ndarray of shape (B, I, d_v)
    log_z : float, optional, a precomputed :func:`exact_log_partition`

    Returns
    -------
    ndarray of shape (B,)
    """
    if log_z is None:
        log_z = exact_log_partition(params)
    return exact_log_unnormalised_marginal(params, v) - log_z  # (B,)


def _va_grid(params):
    """Every (v, a) pair in state order ``iv * J**I + ia``: (Nv Na, I, d_v), (Nv Na, I)."""
    I, J = params.W.shape[:2]
    V = _all_visible(params)  # (Nv, I, d_v)
    A = enumerate_assignments(I, J)  # (Na, I)
    return np.repeat(V, A.shape[0], axis=0), np.tile(A, (V.shape[0], 1))


def exact_probability_va(params):
    """``p(v, a)`` for every state, index ``iv * J**I + ia`` (4.9 normalised).

    Returns
    -------
    ndarray of shape (2**(I d_v) J**I,)
    """
    _, _, _, _, nv, _, na = _sizes(params)
    _check_states(nv * na, "p(v, a)")
    Vg, Ag = _va_grid(params)  # (Nv Na, I, d_v), (Nv Na, I)
    log_p = log_joint_va(params, Vg, Ag)  # (Nv Na,)
    return np.exp(log_p - _logsumexp(log_p))  # (Nv Na,)


def exact_probability_vha(params):
    """``p(v, h, a) = e^{-E(v, h, a)} / Z`` (4.1) for every state, index ``(iv * Nh + ih) * Na + ia``.

    Returns
    -------
    ndarray of shape (Nv Nh Na,)
    """
    _, _, _, _, nv, nh, na = _sizes(params)
    _check_states(nv * nh * na, "p(v, h, a)")
    V, Hs = _all_visible(params), _all_hidden(params)
    A = enumerate_assignments(*params.W.shape[:2])
    Vg = np.repeat(V, nh * na, axis=0)  # (Nv Nh Na, I, d_v)
    Hg = np.tile(np.repeat(Hs, na, axis=0), (nv, 1, 1))  # (Nv Nh Na, J, d_h)
    Ag = np.tile(A, (nv * nh, 1))  # (Nv Nh Na, I)
    log_p = -energy(params, Vg, Hg, Ag)  # (Nv Nh Na,)
    return np.exp(log_p - _logsumexp(log_p))


def _conditional_tables(params):
    """The three block conditionals as tables over all states.

    Returns
    -------
    P_h : (Nv, Na, Nh), ``p(h | v, a)`` (4.4)
    P_a : (Nv, Nh, Na), ``p(a | v, h) = prod_i R_{i a_i}`` (4.3)
    P_v : (Nh, Na, Nv), ``p(v | h, a)`` (4.5)
    """
    I, J, d_h, d_v, nv, nh, na = _sizes(params)
    _check_states(max(nv * na * nh, nh * na * nv), "conditional tables")
    V, Hs = _all_visible(params), _all_hidden(params)  # (Nv, I, d_v), (Nh, J, d_h)
    A = enumerate_assignments(I, J)  # (Na, I)
    Vg, Ag = _va_grid(params)  # (Nv Na, I, d_v), (Nv Na, I)
    P_h = _bernoulli_pmf(Hs.reshape(nh, -1),
                         _hidden_logits(params, Vg, Ag).reshape(nv * na, -1))  # (Nv Na, Nh)
    resp = routing_posterior(params, np.repeat(V, nh, axis=0),
                             np.tile(Hs, (nv, 1, 1)))  # (Nv Nh, I, J)
    P_a = np.prod(resp[:, np.arange(I)[None, :], A], axis=-1)  # (Nv Nh, Na)
    Hg, Ag2 = np.repeat(Hs, na, axis=0), np.tile(A, (nh, 1))  # (Nh Na, J, d_h), (Nh Na, I)
    P_v = _bernoulli_pmf(V.reshape(nv, -1),
                         _visible_logits(params, Hg, Ag2).reshape(nh * na, -1))  # (Nh Na, Nv)
    return P_h.reshape(nv, na, nh), P_a.reshape(nv, nh, na), P_v.reshape(nh, na, nv)


def exact_transition_matrix(params):
    """Exact kernel of :func:`gibbs_sweep` (4.7) as a chain on (v, a).

    .. math::
        K((v, a) \\to (v', a')) = \\sum_h p(h | v, a)\\, p(a' | v, h)\\, p(v' | h, a')

    States are indexed ``iv * J**I + ia`` (module docstring); ``p(v, a)``
    (:func:`exact_probability_va`) is invariant.

    Returns
    -------
    ndarray of shape (Nv Na, Nv Na), rows sum to one.
    """
    _, _, _, _, nv, nh, na = _sizes(params)
    _check_states(nv * na * nh * na * nv, "transition matrix")
    P_h, P_a, P_v = _conditional_tables(params)
    K = np.einsum("vah,vhb,hbw->vawb", P_h, P_a, P_v, optimize=True)  # (Nv, Na, Nv, Na)
    return K.reshape(nv * na, nv * na)


def exact_block_kernels(params):
    """The three single-block Gibbs kernels on the joint state (v, h, a), index ``(iv*Nh + ih)*Na + ia``.

    ``K_h``: h' ~ p(h' | v, a) with v, a kept; ``K_a``: a' ~ p(a' | v, h); ``K_v``: v' ~ p(v' | h, a).
    Each satisfies detailed balance with ``p(v, h, a)`` (:func:`exact_probability_vha`); the sweep
    (4.7) is ``K_h @ K_a @ K_v``.

    Returns
    -------
    K_h, K_a, K_v : ndarrays of shape (S, S), S = Nv Nh Na
    """
    _, _, _, _, nv, nh, na = _sizes(params)
    S = nv * nh * na
    _check_states(S * S, "block kernels")
    P_h, P_a, P_v = _conditional_tables(params)
    dt = P_h.dtype
    eye_v, eye_h, eye_a = (np.eye(n, dtype=dt) for n in (nv, nh, na))
    one_v, one_h, one_a = (np.ones(n, dtype=dt) for n in (nv, nh, na))
    # index letters: source (v, h, a) -> target (w, c, b)
    K_h = np.einsum("vw,ab,vac,h->vhawcb", eye_v, eye_a, P_h, one_h)  # (Nv, Nh, Na, Nv, Nh, Na)
    K_a = np.einsum("vw,hc,vhb,a->vhawcb", eye_v, eye_h, P_a, one_a)  # (Nv, Nh, Na, Nv, Nh, Na)
    K_v = np.einsum("hc,ab,haw,v->vhawcb", eye_h, eye_a, P_v, one_v)  # (Nv, Nh, Na, Nv, Nh, Na)
    return K_h.reshape(S, S), K_a.reshape(S, S), K_v.reshape(S, S)


# --------------------------------------------------------------------------------------------
# J = 1: a Bernoulli RBM
# --------------------------------------------------------------------------------------------


def as_rbm(params):
    """The Bernoulli RBM equal to Model R with a single parent (J = 1).

    With J = 1 every ``a_i = 0`` and (4.1) reads
    ``E = -alpha.v - gamma_0.h - sum_i h^T W_i0 v_i - sum_i beta_i0``, a Bernoulli RBM over the
    flattened visible vector (index ``i * d_v + l``) with ``W_rbm[i d_v + l, k] = W[i, 0, k, l]``,
    ``a = alpha.ravel()``, ``b = gamma[0]`` (with assignment biases (4b.1),
    ``a = (alpha + A[:, 0]).ravel()`` and ``b = gamma[0] + sum_i C_i0``), plus the CONSTANT
    ``-sum_i beta_i0``. The constant cancels in every conditional and in p(v), but shifts free energies and log Z:
    ``log p~_R(v) = -F_rbm(v) + sum_i beta_i0`` and ``log Z_R = log Z_rbm + sum_i beta_i0``.

    Parameters
    ----------
    params : RParams with J = 1

    Returns
    -------
    RBMParams with W (I d_v, d_h), a (I d_v,), b (d_h,)
    """
    I, J, d_h, d_v = params.W.shape
    if J != 1:
        raise ValueError(f"as_rbm needs J = 1 (a single parent), got J = {J}")
    W_rbm = params.W[:, 0].transpose(0, 2, 1).reshape(I * d_v, d_h)  # (I d_v, d_h)
    C, A = assignment_biases(params)
    a = params.alpha if A is None else params.alpha + A[:, 0]  # (I, d_v)
    b = params.gamma[0] if C is None else params.gamma[0] + C[:, 0].sum(axis=0)  # (d_h,)
    return RBMParams(W=W_rbm.copy(), a=a.reshape(I * d_v).copy(), b=b.copy())
