"""The package reproduces the committed cross-check vectors (golden/capsnp_golden_v1.*).

Outputs are recomputed from the stored INPUTS, so the check does not depend on the random
stream that made them; a second test checks that the generator script reproduces the file.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from capsnp import golden, model_p, model_r
from capsnp.ops import squash, squash_vjp
from capsnp.params import PParams, RParams
from capsnp.routing import dynamic_routing, dynamic_routing_trace, dynamic_routing_vjp

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
RTOL = 1e-10


@pytest.fixture(scope="module")
def g():
    with np.load(GOLDEN / f"capsnp_golden_v{golden.VERSION}.npz", allow_pickle=False) as z:
        return dict(z)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-13)


def test_description_lists_every_array(g):
    desc = json.loads((GOLDEN / f"capsnp_golden_v{golden.VERSION}.json").read_text())
    assert desc["version"] == golden.VERSION
    assert set(desc["keys"]) == set(g)
    assert all(list(g[k].shape) == desc["keys"][k] for k in g)


def test_squash_and_routing(g):
    close(squash(g["squash_s"]), g["squash_v"])
    close(squash_vjp(g["squash_s"], g["squash_g"]), g["squash_vjp"])
    r = golden.SHAPES["n_routing"]
    c, s, v = dynamic_routing(g["routing_u_hat"], r, g["routing_beta"])
    close(c, g["routing_c"]), close(s, g["routing_s"]), close(v, g["routing_v"])
    tr = dynamic_routing_trace(g["routing_u_hat"], r, g["routing_beta"])
    gu, gb = dynamic_routing_vjp(g["routing_u_hat"], tr, g["routing_g_s"], g["routing_g_v"],
                                 prior_shape=g["routing_beta"].shape)
    close(gu, g["routing_g_u_hat"]), close(gb, g["routing_g_beta"])


def test_model_p(g):
    p = PParams(*(g[f"p_{k}"] for k in PParams._fields))
    r = golden.SHAPES["n_routing"]
    close(model_p.firing_probability(p, g["p_v"], r), g["p_firing_probability"])
    for mode in ("full", "frozen"):
        F, grad = model_p.free_energy_grad(p, g["p_v"], r, mode=mode)
        close(F, g["p_free_energy"])
        for k in PParams._fields:
            close(getattr(grad, k), g[f"p_grad_{mode}_{k}"])


def test_model_r(g):
    p = RParams(*(g[f"r_{k}"] for k in RParams._fields))
    a = g["r_a"].astype(np.int64)
    close(model_r.routing_posterior(p, g["r_v"], g["r_h"]), g["r_routing_posterior"])
    close(model_r.hidden_probability(p, g["r_v"], a), g["r_hidden_probability"])
    close(model_r.visible_probability(p, g["r_h"], a), g["r_visible_probability"])
    c, mu, n_it = model_r.mean_field(p, g["r_v"], tol=1e-10, max_iter=200)
    close(c, g["r_mean_field_c"]), close(mu, g["r_mean_field_mu"])
    np.testing.assert_array_equal(n_it, g["r_mean_field_n_iter"])
    close(model_r.log_joint_va(p, g["r_v"], a), g["r_log_joint_va"])


def test_generator_reproduces_the_committed_file(g):
    arrays, _ = golden.make_golden()
    assert set(arrays) == set(g)
    for k in g:
        close(arrays[k], g[k])
