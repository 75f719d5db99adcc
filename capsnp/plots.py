"""Figures saved as PNG files: sample grids, learned filters, training curves.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), never
through ``pyplot``: nothing is displayed, no global backend is changed, and no figure is left
open, so these functions are safe in scripts, tests and on machines without a display.
"""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .capsules import from_capsules

__all__ = ["tile_images", "image_grid", "image_grids", "plot_filters", "plot_history"]


def _pair(x):
    return tuple(int(t) for t in np.broadcast_to(x, (2,)))


def tile_images(X, image_shape, n_cols, pad=1, pad_value=np.nan):
    """Arrange flat images in one 2-D array, row-major, with ``pad`` pixels between them.

    Parameters
    ----------
    X : ndarray of shape (n, H*W)
    image_shape : int or (H, W)
    n_cols : int
    pad : int
    pad_value : float, drawn as the background (NaN: the colormap's "bad" colour)

    Returns
    -------
    ndarray of shape (rows * (H + pad) - pad, n_cols * (W + pad) - pad)
    """
    H, W = _pair(image_shape)
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    n_cols = max(1, min(int(n_cols), n))
    n_rows = max(1, -(-n // n_cols))
    canvas = np.full((n_rows * (H + pad) - pad, n_cols * (W + pad) - pad), pad_value)
    for k in range(n):
        r, c = divmod(k, n_cols)
        canvas[r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = X[k].reshape(H, W)
    return canvas


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _show_grid(ax, canvas, title, vmin=0.0, vmax=1.0, cmap="gray"):
    import matplotlib

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#808080")
    ax.imshow(canvas, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def image_grid(X, image_shape, n_cols, path, title=None):
    """Save a grid of images (e.g. samples) as a PNG.

    Parameters
    ----------
    X : ndarray of shape (n, H*W), values in [0, 1] (black 0 to white 1)
    image_shape : int or (H, W)
    n_cols : int, images per row
    path : str or os.PathLike
    title : str, optional

    Returns
    -------
    pathlib.Path of the written file
    """
    return image_grids([(title, X)], image_shape, n_cols, path)


def image_grids(panels, image_shape, n_cols, path):
    """Save several image grids side by side in one PNG.

    Parameters
    ----------
    panels : list of (title, X) with X of shape (n, H*W), values in [0, 1]
    image_shape : int or (H, W)
    n_cols : int, images per row in each panel
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path
    """
    canvases = [(title, tile_images(X, image_shape, n_cols)) for title, X in panels]
    height = max(c.shape[0] for _, c in canvases)
    width = sum(c.shape[1] for _, c in canvases)
    scale = 6.0 / max(height, width) * max(1.0, len(canvases) * 0.8)
    fig = Figure(figsize=(max(3.0, width * scale) + 0.4, max(3.0, height * scale) + 0.6))
    for k, (title, canvas) in enumerate(canvases):
        _show_grid(fig.add_subplot(1, len(canvases), k + 1), canvas, title)
    fig.tight_layout()
    return _save(fig, path)


def _receptive_fields(estimator, n_neurons):
    """Filters as images: (rows, cols, H*W) for a capsule model, or (n, H*W) for the RBM."""
    if hasattr(estimator, "W_"):
        W = np.asarray(estimator.W_)  # (I, J, d_h, d_v)
        I, J, d_h, d_v = W.shape
        k = min(d_h, n_neurons)
        # W[:, j, k, :] (I, d_v) is the receptive field of neuron k of capsule j, patch by patch
        fields = W[:, :, :k, :].transpose(1, 2, 0, 3).reshape(J * k, I, d_v)  # (J k, I, d_v)
        images = from_capsules(fields, estimator.image_shape_, estimator.patch_)  # (J k, H*W)
        return images, k, estimator.image_shape_
    components = np.asarray(estimator.components_)  # (H, D)
    side = int(round(np.sqrt(components.shape[1])))
    if side * side != components.shape[1]:
        raise ValueError(f"cannot draw filters of {components.shape[1]} features as square images")
    return components, None, (side, side)


def plot_filters(estimator, path, n_neurons=8, max_filters=100):
    """Save the learned weights of a fitted estimator, drawn as images.

    Capsule models (``W_`` of shape (I, J, d_h, d_v)): one row per hidden capsule j, one column
    per neuron k (the first ``n_neurons``); the image assembles ``W[:, j, k, :]``, the weights of
    that neuron from every visible capsule, each placed at its patch. RBM: the first
    ``max_filters`` rows of ``components_``. Each filter is scaled to its own maximum absolute
    value, zero is mid-grey.

    Parameters
    ----------
    estimator : fitted CapsulePoE, RoutedCapsuleRBM or BernoulliRBM
    path : str or os.PathLike
    n_neurons : int
    max_filters : int, for the RBM

    Returns
    -------
    pathlib.Path
    """
    images, n_cols, shape = _receptive_fields(estimator, n_neurons)
    if n_cols is None:
        images = images[:max_filters]
        n_cols = int(np.ceil(np.sqrt(images.shape[0])))
    scale = np.max(np.abs(images), axis=1, keepdims=True)  # (n, 1)
    images = 0.5 + 0.5 * images / np.where(scale > 0, scale, 1.0)  # zero -> 0.5
    canvas = tile_images(images, shape, n_cols)
    H, W = canvas.shape
    fig = Figure(figsize=(max(3.0, 8.0 * W / max(H, W)), max(3.0, 8.0 * H / max(H, W))))
    ax = fig.add_subplot(1, 1, 1)
    title = type(estimator).__name__ + (" filters: rows = capsules, columns = neurons"
                                        if hasattr(estimator, "W_") else " filters")
    _show_grid(ax, canvas, title)
    fig.tight_layout()
    return _save(fig, path)


def plot_history(history, path):
    """Save training curves: one panel per numeric metric of ``history_`` against the epoch.

    Parameters
    ----------
    history : list of dict, each with an "epoch" key (an estimator's ``history_``)
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path
    """
    keys = []
    for record in history:
        for key, value in record.items():
            if key != "epoch" and key not in keys and isinstance(value, (int, float)):
                keys.append(key)
    n_cols = 3
    n_rows = max(1, -(-len(keys) // n_cols))
    fig = Figure(figsize=(4.0 * n_cols, 2.8 * n_rows))
    for k, key in enumerate(keys):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        points = [(r["epoch"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not keys:
        fig.text(0.5, 0.5, "no history", ha="center")
    fig.tight_layout()
    return _save(fig, path)
