"""The workloads the benchmark times, and their analytic FLOP counts.

Shapes use the symbol table of MODEL.md: B (batch), I, d_v (visible capsules and their size),
J, d_h (hidden capsules and their size), r routing passes, D = I d_v pixels, H RBM hidden units.
A multiply-add counts as 2 FLOPs; terms of order B I J (softmax, squash) are left out.
"""

import numpy as np

from capsnp import kernels
from capsnp.params import PParams, RParams


def routing_flops(B, I, J, d_h, r):
    """Routing (2.1) and its VJP (2.2) with adjoints of the final s and v.

    Forward: per pass ``s = sum_i c u`` (2 B I J d_h), and ``b += u . v`` after every pass but
    the last: ``(4r - 2) B I J d_h``. Backward: the last pass makes ``gu += c gs`` and
    ``gc = u . gs`` (4 B I J d_h); each earlier pass adds ``gv = sum_i gb u``, ``gu += gb v``
    (4 B I J d_h more): ``(8r - 4) B I J d_h``. Total ``(12r - 6) B I J d_h``.
    """
    return (12 * r - 6) * B * I * J * d_h


def predictions_flops(B, I, J, d_h, d_v):
    """(2.0) ``u_hat = W v``: ``2 B I J d_h d_v`` (dense count; the kernel skips zero pixels)."""
    return 2 * B * I * J * d_h * d_v


def p_grad_flops(B, I, J, d_h, d_v, r):
    """Model P free-energy gradient, full mode (3.6): predictions, routing + VJP, ``dW = g v^T``."""
    return predictions_flops(B, I, J, d_h, d_v) + routing_flops(B, I, J, d_h, r) \
        + 2 * B * I * J * d_h * d_v


def p_mh_flops(B, I, J, d_h, d_v, r):
    """One exact MH sweep (3.9): predictions and a routing of the state, then per capsule i a
    forward local field, the new row of u_hat, a routing of the proposal and the reverse local
    field: ``I [(4r - 2) I J d_h + 6 J d_h d_v]`` per chain."""
    route = (4 * r - 2) * I * J * d_h
    return B * (2 * I * J * d_h * d_v + route + I * (route + 6 * J * d_h * d_v))


def p_reconstruct_flops(B, I, J, d_h, d_v, r):
    """The paper-literal step (3.10): predictions, routing, visible field ``2 I J d_h d_v``."""
    return B * (4 * I * J * d_h * d_v + (4 * r - 2) * I * J * d_h)


def p_step_flops(B, I, J, d_h, d_v, r, sampler):
    """A Model P training step, CD/PCD-1: two gradients (data, chains) and one sampler sweep."""
    sweep = p_mh_flops if sampler == "mh" else p_reconstruct_flops
    return 2 * p_grad_flops(B, I, J, d_h, d_v, r) + sweep(B, I, J, d_h, d_v, r)


def r_step_flops(B, I, J, d_h, d_v, n_mf):
    """A Model R training step, PCD-1 (4.6-4.8): mean field on the batch (predictions, then
    ``n_mf`` updates of ``4 I J d_h`` each), the data statistics ``2 I J d_h d_v``, one Gibbs
    sweep (predictions, ``2 I J d_h`` for the posterior over routes, ``2 I d_h (d_v + 1)`` for
    h and v) and the model statistics ``2 I J d_h d_v``. A nominal dense count, like
    :func:`rbm_step_flops`: the kernels touch only the pixels and hidden units that are on, and
    the sweep never forms the predictions."""
    per_image = (2 * I * J * d_h * d_v + n_mf * 4 * I * J * d_h + 2 * I * J * d_h * d_v
                 + 2 * I * J * d_h * d_v + 2 * I * J * d_h + 2 * I * d_h * (d_v + 1)
                 + 2 * I * J * d_h * d_v)
    return B * per_image


def rbm_step_flops(B, D, H):
    """An RBM PCD-1 step as dense products: sweep (2), both hidden probabilities (2), the W
    statistic (2): ``12 B D H`` (the kernels skip zero pixels, so they do fewer)."""
    return 12 * B * D * H


def random_u_hat(rng, B, I, J, d_h, dtype):
    """Predictions of a random model on random binary capsules: (B, I, J, d_h)."""
    return (rng.normal(0.0, 0.3, (B, I, J, d_h))).astype(dtype)


def routing_call(backend, u_hat, r, g_s, g_v):
    """Routing forward + VJP on ``backend`` ("numba" or "numpy")."""
    routing = kernels.get_backend(backend, "routing")
    return routing.routing_forward_vjp(u_hat, r, None, g_s=g_s, g_v=g_v)


def torch_routing(torch):
    """The same routing forward + VJP in torch ops, the VJP by autograd; None without torch."""

    def squash(s):
        n2 = (s * s).sum(-1, keepdim=True)  # (B, J, 1)
        return s * (n2.sqrt() / (1.0 + n2))

    def run(u_hat, r, g_s, g_v):
        u = u_hat.detach().requires_grad_(True)
        b = torch.zeros(u.shape[:3], dtype=u.dtype)  # (B, I, J)
        for t in range(r):
            c = torch.softmax(b, dim=2)  # (B, I, J)
            s = torch.einsum("bij,bijh->bjh", c, u)  # (B, J, d_h)
            v = squash(s)
            if t < r - 1:
                b = b + torch.einsum("bijh,bjh->bij", u, v)
        loss = (s * g_s).sum() + (v * g_v).sum()
        loss.backward()
        return c, s, v, u.grad

    return run


def random_p_params(rng, I, J, d_h, d_v, dtype, scale=0.1):
    return PParams(W=(rng.normal(0, scale, (I, J, d_h, d_v))).astype(dtype),
                   alpha=rng.normal(-1.0, 0.5, (I, d_v)).astype(dtype),
                   rho=np.zeros(J, dtype=dtype), beta=np.zeros((I, J), dtype=dtype))


def random_r_params(rng, I, J, d_h, d_v, dtype, scale=0.1):
    return RParams(W=(rng.normal(0, scale, (I, J, d_h, d_v))).astype(dtype),
                   alpha=rng.normal(-1.0, 0.5, (I, d_v)).astype(dtype),
                   gamma=np.zeros((J, d_h), dtype=dtype), beta=np.zeros((I, J), dtype=dtype))


def binary_capsules(rng, B, I, d_v, dtype, density=0.13):
    """Binary visible capsules with MNIST's mean pixel density: (B, I, d_v)."""
    return (rng.random((B, I, d_v)) < density).astype(dtype)
