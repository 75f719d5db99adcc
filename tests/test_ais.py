"""AIS (6.2-6.4) against exact log Z on tiny models of all three classes."""

import numpy as np
import pytest
from conftest import random_pparams

from capsnp import model_p, model_r, rbm
from capsnp.ais import ais_log_partition, default_betas
from capsnp.params import RBMParams, RParams

BETAS = default_betas(fast=True)[::2]  # 726 temperatures: enough for models this small


def tiny_rbm(rng, D=8, H=5, scale=1.0):
    return RBMParams(rng.normal(0, scale, (D, H)), rng.normal(0, 1, D), rng.normal(0, 1, H))


def tiny_r(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0):
    return RParams(rng.normal(0, scale, (I, J, d_h, d_v)), rng.normal(0, 1, (I, d_v)),
                   rng.normal(0, 1, (J, d_h)), rng.normal(0, 1, (I, J)))


CASES = {
    "rbm": (tiny_rbm, rbm.exact_log_partition),
    "p": (random_pparams, model_p.exact_log_partition),
    "r": (tiny_r, model_r.exact_log_partition),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_ais_agrees_with_exact_log_partition(kind, seed):
    make, exact = CASES[kind]
    params = make(np.random.default_rng(seed))
    res = ais_log_partition(params, n_runs=64, betas=BETAS, random_state=seed)
    log_z = exact(params)
    assert np.isfinite(res.log_z) and res.std_error > 0
    # within 5 reported standard errors (plus a floor for a near-zero error)
    assert abs(res.log_z - log_z) < 5 * res.std_error + 0.02, (res.log_z, log_z, res.std_error)
    lo, hi = res.interval
    assert lo <= res.log_z <= hi
    assert res.log_weights.shape == (64,) and 1.0 <= res.effective_sample_size <= 64.0


@pytest.mark.parametrize("kind", sorted(CASES))
def test_zero_weights_give_the_base_log_partition_exactly(kind):
    make, exact = CASES[kind]
    params = make(np.random.default_rng(5))
    params = params._replace(W=np.zeros_like(params.W))
    res = ais_log_partition(params, n_runs=8, betas=np.linspace(0, 1, 20), random_state=0)
    assert np.max(np.abs(res.log_weights)) < 1e-12  # zero up to rounding of the interpolation
    assert res.log_z == pytest.approx(exact(params), abs=1e-12)


def test_ais_with_a_data_base_rate(seed):
    rng = np.random.default_rng(seed)
    params = tiny_rbm(rng)
    base = rng.uniform(0.1, 0.9, size=8)
    res = ais_log_partition(params, n_runs=64, betas=BETAS, random_state=seed, base_rate=base)
    assert abs(res.log_z - rbm.exact_log_partition(params)) < 5 * res.std_error + 0.02


def test_schedule_shape():
    b = default_betas()
    assert b[0] == 0.0 and b[-1] == 1.0 and np.all(np.diff(b) > 0) and len(b) == 14501
    with pytest.raises(ValueError):
        ais_log_partition(tiny_rbm(np.random.default_rng(0)), n_runs=2, betas=np.array([0.0, 0.5]))
