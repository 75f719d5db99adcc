"""Shared fixtures: tiny random models in float64, several seeds (``CAPSNP_TEST_SEEDS``)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MPLBACKEND", "Agg")

from capsnp.params import PParams  # noqa: E402



def seeds_from_environment(default="0,1,2"):
    """Seeds of the statistical tests: ``CAPSNP_TEST_SEEDS`` ("0,1,2", "0-19", ...) or ``default``.

    Comma-separated integers and inclusive ranges ``a-b``; CI can sweep many seeds with
    ``CAPSNP_TEST_SEEDS=0-99 pytest``.
    """
    text = os.environ.get("CAPSNP_TEST_SEEDS", "").strip() or default
    seeds = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"CAPSNP_TEST_SEEDS={text!r}: expected comma-separated "
                             f"non-negative integers or ranges like 0-9, got {part!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"CAPSNP_TEST_SEEDS={text!r}: expected at least one non-negative seed")
    return seeds


SEEDS = seeds_from_environment()


def random_pparams(rng, I=3, d_v=2, J=2, d_h=3, scale=1.0, dtype=np.float64):
    """A tiny Model P with every parameter random (beta too)."""
    return PParams(
        W=rng.normal(0.0, scale, (I, J, d_h, d_v)).astype(dtype),
        alpha=rng.normal(0.0, 1.0, (I, d_v)).astype(dtype),
        rho=rng.normal(0.0, 1.0, J).astype(dtype),
        beta=rng.normal(0.0, 1.0, (I, J)).astype(dtype),
    )


def binary(rng, shape, dtype=np.float64):
    return (rng.random(shape) < 0.5).astype(dtype)


def central_difference(f, x, eps=1e-6):
    """Numerical gradient of a scalar function f at the array x (float64), same shape as x."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def params_central_difference(f, params, eps=1e-5):
    """Central differences of a scalar function of a parameter container, one entry at a time;
    returns a container of the same type."""
    grads = []
    for name, x in params._asdict().items():
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[idx] += eps
            down[idx] -= eps
            g[idx] = (f(params._replace(**{name: up})) - f(params._replace(**{name: down}))) / (2 * eps)
        grads.append(g)
    return type(params)(*grads)


def chi_square_pvalue(counts, probs, min_expected=5.0):
    """Chi-square goodness of fit, bins with small expected counts pooled into one."""
    from scipy import stats

    expected = counts.sum() * probs
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


def rel_error(a, b):
    """max |a - b| / max(|b|, tiny): the relative error used by every gradient check."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(params=SEEDS)
def seed(request):
    return request.param
