"""Parameter containers, named as in MODEL.md section 0.

Each is an immutable ``NamedTuple`` of arrays. Gradients are returned in the same container
(one field per parameter), so ``params._replace(W=params.W - lr * grad.W)`` reads like the math.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["PParams", "GParams", "SParams", "RParams", "RBParams", "RSParams", "RBMParams",
           "CentringOffsets"]


class PParams(NamedTuple):
    """Model P (MODEL.md sec. 3).

    W : (I, J, d_h, d_v) transformation matrices; alpha : (I, d_v) visible biases;
    rho : (J,) hidden-capsule log-gains; beta : (I, J) prior routing logits.
    """

    W: np.ndarray
    alpha: np.ndarray
    rho: np.ndarray
    beta: np.ndarray


class GParams(NamedTuple):
    """Model G, Model P with Gaussian capsule poses (docs/MODEL_G.md).

    The container's type selects the expert: every function of :mod:`capsnp.model_p` given
    GParams uses the firing logit ``rho_j + m_j . s_j + |s_j|^2 / 2`` (G.2) in place of
    ``rho_j + log |s_j|^2`` (3.2).
    W : (I, J, d_h, d_v); alpha : (I, d_v); rho : (J,) firing biases; beta : (I, J);
    m : (J, d_h) means of the capsule poses' prior.
    """

    W: np.ndarray
    alpha: np.ndarray
    rho: np.ndarray
    beta: np.ndarray
    m: np.ndarray


class SParams(NamedTuple):
    """Model S, Model P with a pose of d_h binary (+1/-1) units (docs/MODEL_G.md, S.1-S.5).

    Firing logit ``rho_j + sum_k [log cosh(s_jk + m_jk) - log cosh(m_jk)]`` (S.2).
    W : (I, J, d_h, d_v); alpha : (I, d_v); rho : (J,); beta : (I, J); m : (J, d_h) the pose
    units' biases.
    """

    W: np.ndarray
    alpha: np.ndarray
    rho: np.ndarray
    beta: np.ndarray
    m: np.ndarray


class RParams(NamedTuple):
    """Model R (MODEL.md sec. 4).

    W : (I, J, d_h, d_v); alpha : (I, d_v); gamma : (J, d_h) hidden-neuron biases;
    beta : (I, J) prior routing logits.
    """

    W: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray


class RBParams(NamedTuple):
    """Model R with assignment biases (docs/MODEL_RB.md, (4b.1)): RParams plus

    C : (I, J, d_h) prediction biases, ``u_hat_{j|i} = W_ij v_i + C_ij``;
    A : (I, J, d_v) visible biases of child i when parent j explains it.
    """

    W: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    C: np.ndarray
    A: np.ndarray


class RSParams(NamedTuple):
    """Model R with assignment biases and a shared capsule (docs/MODEL_RB.md, (4c.1)): RBParams plus

    V : (H0, I, d_v) the shared capsule's weights, which every child reaches;
    delta : (H0,) its hidden biases.
    """

    W: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    C: np.ndarray
    A: np.ndarray
    V: np.ndarray
    delta: np.ndarray


class RBMParams(NamedTuple):
    """Bernoulli RBM (MODEL.md sec. 5), ``E(v, h) = -a.v - b.h - v^T W h``.

    W : (D, H) weights; a : (D,) visible biases; b : (H,) hidden biases.
    """

    W: np.ndarray
    a: np.ndarray
    b: np.ndarray


class CentringOffsets(NamedTuple):
    """The offsets of centred steps (docs/MODEL_RB.md, "Centring", (5.9), (4c.8)).

    m : visible offsets, the layout of v ((D,) for the RBM, (I, d_v) for a capsule model);
    l : hidden offsets ((H,), or (H0,) for a shared capsule).
    """

    m: np.ndarray
    l: np.ndarray

