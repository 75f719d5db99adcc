"""Parameter containers, named as in MODEL.md section 0.

Each is an immutable ``NamedTuple`` of arrays. Gradients are returned in the same container
(one field per parameter), so ``params._replace(W=params.W - lr * grad.W)`` reads like the math.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["PParams", "RParams", "RBMParams"]


class PParams(NamedTuple):
    """Model P (MODEL.md sec. 3).

    W : (I, J, d_h, d_v) transformation matrices; alpha : (I, d_v) visible biases;
    rho : (J,) hidden-capsule log-gains; beta : (I, J) prior routing logits.
    """

    W: np.ndarray
    alpha: np.ndarray
    rho: np.ndarray
    beta: np.ndarray


class RParams(NamedTuple):
    """Model R (MODEL.md sec. 4).

    W : (I, J, d_h, d_v); alpha : (I, d_v); gamma : (J, d_h) hidden-neuron biases;
    beta : (I, J) prior routing logits.
    """

    W: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray


class RBMParams(NamedTuple):
    """Bernoulli RBM (MODEL.md sec. 5), ``E(v, h) = -a.v - b.h - v^T W h``.

    W : (D, H) weights; a : (D,) visible biases; b : (H,) hidden biases.
    """

    W: np.ndarray
    a: np.ndarray
    b: np.ndarray
