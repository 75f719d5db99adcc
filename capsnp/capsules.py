"""Images as visible capsules, and the predictions of parents by children.

* (0.1) patching: a (H, W) image cut into non-overlapping p x p patches, one visible capsule
  each, I = (H/p_h)(W/p_w), d_v = p_h p_w; capsules are ordered row-major over the patch grid
  and pixels row-major inside a patch.
* (2.0) predictions ``u_hat_{j|i} = W_ij v_i``.
"""

import numpy as np

__all__ = ["capsule_layout", "to_capsules", "from_capsules", "predictions", "predictions_vjp_W"]


def _as_pair(x, name):
    if np.ndim(x) == 0:
        x = (int(x), int(x))
    x = tuple(int(t) for t in x)
    if len(x) != 2 or min(x) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {x!r}")
    return x


def capsule_layout(image_shape, patch):
    """Number and size of visible capsules for an image layout (0.1).

    Parameters
    ----------
    image_shape : int or (H, W)
    patch : int or (p_h, p_w)

    Returns
    -------
    (I, d_v) : tuple of int

    Raises
    ------
    ValueError
        If the patches do not tile the image exactly.
    """
    (H, Wd), (ph, pw) = _as_pair(image_shape, "image_shape"), _as_pair(patch, "patch")
    if H % ph or Wd % pw:
        raise ValueError(
            f"patch {ph}x{pw} does not tile an image of shape {H}x{Wd}: "
            f"image height and width must be multiples of the patch height and width"
        )
    return (H // ph) * (Wd // pw), ph * pw


def to_capsules(X, image_shape, patch):
    """Cut flat images into visible capsules (0.1).

    Parameters
    ----------
    X : ndarray of shape (B, H*W)
    image_shape : int or (H, W)
    patch : int or (p_h, p_w)

    Returns
    -------
    v : ndarray of shape (B, I, d_v), a copy in X's dtype.
    """
    (H, Wd), (ph, pw) = _as_pair(image_shape, "image_shape"), _as_pair(patch, "patch")
    I, d_v = capsule_layout((H, Wd), (ph, pw))
    X = np.asarray(X)
    B = X.shape[0]
    x = X.reshape(B, H // ph, ph, Wd // pw, pw)  # (B, gh, p_h, gw, p_w)
    x = x.transpose(0, 1, 3, 2, 4)  # (B, gh, gw, p_h, p_w)
    return np.ascontiguousarray(x).reshape(B, I, d_v)  # (B, I, d_v)


def from_capsules(v, image_shape, patch):
    """Inverse of :func:`to_capsules`.

    Parameters
    ----------
    v : ndarray of shape (B, I, d_v)

    Returns
    -------
    X : ndarray of shape (B, H*W)
    """
    (H, Wd), (ph, pw) = _as_pair(image_shape, "image_shape"), _as_pair(patch, "patch")
    capsule_layout((H, Wd), (ph, pw))
    v = np.asarray(v)
    B = v.shape[0]
    x = v.reshape(B, H // ph, Wd // pw, ph, pw)  # (B, gh, gw, p_h, p_w)
    x = x.transpose(0, 1, 3, 2, 4)  # (B, gh, p_h, gw, p_w)
    return np.ascontiguousarray(x).reshape(B, H * Wd)  # (B, H*W)


def predictions(W, v):
    """Predictions of every parent by every child (2.0): ``u_hat_{j|i} = W_ij v_i``.

    Parameters
    ----------
    W : ndarray of shape (I, J, d_h, d_v)
    v : ndarray of shape (B, I, d_v)

    Returns
    -------
    u_hat : ndarray of shape (B, I, J, d_h)
    """
    return np.einsum("ijhd,bid->bijh", W, v, optimize=True)  # (B, I, J, d_h)


def predictions_vjp_W(g_u_hat, v):
    """``dL/dW`` from ``dL/du_hat``: ``dL/dW_ij = sum_b g_{b,ij} v_{b,i}^T``.

    Parameters
    ----------
    g_u_hat : ndarray of shape (B, I, J, d_h)
    v : ndarray of shape (B, I, d_v)

    Returns
    -------
    ndarray of shape (I, J, d_h, d_v)
    """
    return np.einsum("bijh,bid->ijhd", g_u_hat, v, optimize=True)  # (I, J, d_h, d_v)
