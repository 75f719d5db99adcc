"""Cross-check vectors: a small versioned set of inputs and outputs of the math core.

A researcher with another implementation (PyTorch, JAX, ...) loads ``golden/capsnp_golden_v1.npz``
(every array float64) and compares each output with their own, reading the conventions from the
JSON description beside it. Regenerate with::

    python -m capsnp.golden --out golden

The test ``tests/test_golden.py`` checks that the package reproduces the committed file.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from . import model_p, model_r
from .capsules import predictions
from .ops import squash, squash_vjp
from .params import PParams, RParams
from .routing import dynamic_routing, dynamic_routing_trace, dynamic_routing_vjp

VERSION = 1
SEED = 20261124
SHAPES = {"B": 3, "I": 4, "d_v": 4, "J": 3, "d_h": 5, "n_routing": 3}

CONVENTIONS = {
    "dtype": "float64 everywhere; binary states are stored as 0.0/1.0",
    "squash": "squash(s) = s |s| / (1 + |s|^2) over the last axis (MODEL.md sec. 1)",
    "routing": (
        "Sabour Procedure 1, b = beta, then n_routing passes of c = softmax over PARENTS (axis J) of b, "
        "s_j = sum_i c_ij u_hat_ji, v = squash(s), b += u_hat . v (no update after the last pass). "
        "Outputs are the last pass's c, s, v."
    ),
    "routing_vjp": (
        "routing_g_u_hat, routing_g_beta = gradients of sum(routing_g_s * s) + sum(routing_g_v * v) "
        "with respect to u_hat and beta (beta shared over the batch, shape (I, J))"
    ),
    "predictions": "u_hat[b, i, j] = W[i, j] @ v[b, i], W of shape (I, J, d_h, d_v)",
    "p_free_energy": "F(v) = -sum(alpha * v) - sum_j log(1 + exp(rho_j) |s_j|^2), routing with prior beta",
    "p_grad": "gradients of mean_b F(v_b); full = through the routing passes; frozen = c held constant",
    "r_conditionals": (
        "routing_posterior = softmax_j(beta_ij + u_hat_ji . h_j); hidden_probability = "
        "sigmoid(gamma_jk + sum_{i: a_i = j} u_hat_jik); visible_probability = "
        "sigmoid(alpha_il + (W[i, a_i].T @ h[a_i])_l); a holds parent indices 0..J-1"
    ),
    "r_mean_field": (
        "c = softmax(beta); repeat: s_j = sum_i c_ij u_hat_ji, mu = sigmoid(gamma + s), "
        "c_new = softmax_j(beta + u_hat . mu); per image stop when max |c_new - c| < tol "
        "(tol and max_iter in the description); outputs c, mu and the iterations used"
    ),
    "r_log_joint_va": "log p(v, a) up to log Z, h summed out in closed form (MODEL.md sec. 4)",
}


def make_golden():
    """Compute every golden array from one seeded generator.

    Returns
    -------
    arrays : dict of name -> float64 ndarray
    description : dict (JSON-serialisable) with version, seed, shapes, conventions and keys
    """
    rng = np.random.default_rng(SEED)
    B, I, d_v, J, d_h, r = (SHAPES[k] for k in ("B", "I", "d_v", "J", "d_h", "n_routing"))
    a = {}
    # squash: include the zero vector and a large one
    a["squash_s"] = np.concatenate([np.zeros((1, d_h)), rng.normal(size=(4, d_h)), 1e3 * rng.normal(size=(1, d_h))])
    a["squash_g"] = rng.normal(size=a["squash_s"].shape)
    a["squash_v"] = squash(a["squash_s"])
    a["squash_vjp"] = squash_vjp(a["squash_s"], a["squash_g"])
    # routing and its VJP
    a["routing_u_hat"] = rng.normal(size=(B, I, J, d_h))
    a["routing_beta"] = rng.normal(size=(I, J))
    a["routing_c"], a["routing_s"], a["routing_v"] = dynamic_routing(a["routing_u_hat"], r, a["routing_beta"])
    a["routing_g_s"] = rng.normal(size=(B, J, d_h))
    a["routing_g_v"] = rng.normal(size=(B, J, d_h))
    trace = dynamic_routing_trace(a["routing_u_hat"], r, a["routing_beta"])
    a["routing_g_u_hat"], a["routing_g_beta"] = dynamic_routing_vjp(
        a["routing_u_hat"], trace, a["routing_g_s"], a["routing_g_v"], prior_shape=(I, J)
    )
    # Model P
    pp = PParams(
        W=rng.normal(0, 0.5, (I, J, d_h, d_v)), alpha=rng.normal(0, 1, (I, d_v)),
        rho=rng.normal(0, 1, J), beta=rng.normal(0, 1, (I, J)),
    )
    v = (rng.random((B, I, d_v)) < 0.5).astype(np.float64)
    for name, x in pp._asdict().items():
        a[f"p_{name}"] = x
    a["p_v"] = v
    a["p_u_hat"] = predictions(pp.W, v)
    a["p_firing_probability"] = model_p.firing_probability(pp, v, r)
    F, g_full = model_p.free_energy_grad(pp, v, r, mode="full")
    _, g_frozen = model_p.free_energy_grad(pp, v, r, mode="frozen")
    a["p_free_energy"] = F
    for name in pp._fields:
        a[f"p_grad_full_{name}"] = getattr(g_full, name)
        a[f"p_grad_frozen_{name}"] = getattr(g_frozen, name)
    # Model R
    rp = RParams(
        W=rng.normal(0, 0.5, (I, J, d_h, d_v)), alpha=rng.normal(0, 1, (I, d_v)),
        gamma=rng.normal(0, 1, (J, d_h)), beta=rng.normal(0, 1, (I, J)),
    )
    for name, x in rp._asdict().items():
        a[f"r_{name}"] = x
    v = (rng.random((B, I, d_v)) < 0.5).astype(np.float64)
    h = (rng.random((B, J, d_h)) < 0.5).astype(np.float64)
    assign = rng.integers(0, J, size=(B, I))
    a["r_v"], a["r_h"], a["r_a"] = v, h, assign.astype(np.float64)
    a["r_routing_posterior"] = model_r.routing_posterior(rp, v, h)
    a["r_hidden_probability"] = model_r.hidden_probability(rp, v, assign)
    a["r_visible_probability"] = model_r.visible_probability(rp, h, assign)
    c, mu, n_it = model_r.mean_field(rp, v, tol=1e-10, max_iter=200)
    a["r_mean_field_c"], a["r_mean_field_mu"], a["r_mean_field_n_iter"] = c, mu, n_it.astype(np.float64)
    a["r_log_joint_va"] = model_r.log_joint_va(rp, v, assign)

    description = {
        "name": "capsnp cross-check vectors",
        "version": VERSION,
        "seed": SEED,
        "generator": "numpy.random.default_rng(seed); the order of draws is that of capsnp/golden.py",
        "shapes": SHAPES,
        "mean_field": {"tol": 1e-10, "max_iter": 200},
        "conventions": CONVENTIONS,
        "keys": {k: list(x.shape) for k, x in a.items()},
        "tolerance": "float64 results should agree to about 1e-10 relative",
    }
    return {k: np.asarray(x, dtype=np.float64) for k, x in a.items()}, description


def write_golden(out_dir):
    """Write ``capsnp_golden_v{VERSION}.npz`` and ``.json`` into ``out_dir``; return the npz path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays, description = make_golden()
    npz = out / f"capsnp_golden_v{VERSION}.npz"
    np.savez_compressed(npz, **arrays)
    (out / f"capsnp_golden_v{VERSION}.json").write_text(json.dumps(description, indent=2) + "\n")
    return npz


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the capsnp cross-check vectors.")
    parser.add_argument("--out", default="golden", help="output directory (default: golden)")
    args = parser.parse_args(argv)
    print(write_golden(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
