"""The likelihood API: ``capsnp.exact_log_partition``, the estimators' ``log_likelihood`` and
``python -m capsnp evaluate --ais / --exact`` (MODEL.md sec. 6), on tiny fitted models."""

import json

import numpy as np
import pytest
from conftest import random_pparams
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

import capsnp
from capsnp import model_p, model_r, rbm
from capsnp.capsules import to_capsules
from capsnp.cli import load_estimator, main
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM
from capsnp.exact import enumerate_binary
from capsnp.experiment import PRESETS, make_estimator
from capsnp.likelihood import MAX_EXACT_STATES, log_joint_h
from capsnp.params import PParams, RBMParams, RParams


@pytest.fixture(scope="module", autouse=True)
def single_blas_thread():
    with threadpool_limits(limits=1):
        yield


SHAPE, PATCH = (2, 4), 2  # 8 pixels: I = 2 visible capsules of d_v = 4
ALL_IMAGES = enumerate_binary(8)  # (256, 8): every binary image


def _data(seed, n=60):
    return (np.random.default_rng(seed).random((n, 8)) < 0.4).astype(np.float64)


def fit_rbm(seed=0, H=5):
    return BernoulliRBM(n_components=H, n_iter=3, batch_size=10, learning_rate=0.1,
                        random_state=seed, backend="numpy").fit(_data(seed))


def fit_p(seed=0):
    return CapsulePoE(n_capsules=2, capsule_dim=2, image_shape=SHAPE, patch=PATCH, n_iter=2,
                      batch_size=10, init_scale=1.0, random_state=seed, backend="numpy",
                      monitor_fraction=0.0).fit(_data(seed))


def fit_r(seed=0, J=2, d_h=2):
    return RoutedCapsuleRBM(n_capsules=J, capsule_dim=d_h, image_shape=SHAPE, patch=PATCH,
                            n_iter=2, batch_size=10, init_scale=1.0, random_state=seed,
                            backend="numpy", monitor_fraction=0.0).fit(_data(seed))


# ----------------------------------------------------------------------------- independent -F


def rbm_minus_free_energy(est, X):
    """-F(v) = a.v + sum_k log(1 + exp(b_k + (v W)_k)), from the fitted attributes."""
    W = est.components_.T  # (D, H)
    return X @ est.intercept_visible_ + np.sum(np.logaddexp(0.0, est.intercept_hidden_ + X @ W), axis=1)


def p_minus_free_energy(est, X):
    """-F(v) of Model P (3.3) with dynamic routing (MODEL.md sec. 2) written out here."""
    v = to_capsules(X, est.image_shape_, est.patch_)  # (B, I, d_v)
    u_hat = np.einsum("ijkl,bil->bijk", est.W_, v)  # (B, I, J, d_h)
    b = np.broadcast_to(est.beta_, u_hat.shape[:3])  # (B, I, J)
    for it in range(est.n_routing):
        c = np.exp(b - logsumexp(b, axis=2, keepdims=True))  # softmax over parents j
        s = np.einsum("bij,bijk->bjk", c, u_hat)  # (B, J, d_h)
        n2 = np.sum(s * s, axis=2, keepdims=True)  # (B, J, 1)
        if it < est.n_routing - 1:
            b = b + np.einsum("bijk,bjk->bij", u_hat, s * np.sqrt(n2) / (1.0 + n2))  # squash
    experts = np.log1p(np.exp(est.rho_) * np.sum(s * s, axis=2))  # (B, J)
    return np.sum(est.alpha_ * v, axis=(1, 2)) + experts.sum(axis=1)


# ----------------------------------------------------------------------------- exact_log_partition


def test_exact_log_partition_rbm_both_sides(seed):
    for H in (5, 12):  # H < D: hidden side enumerated; H > D: visible side
        est = fit_rbm(seed, H)
        log_z = capsnp.exact_log_partition(est)
        assert log_z == pytest.approx(rbm.exact_log_partition(est._params()), abs=1e-10)
        assert log_z == pytest.approx(logsumexp(rbm_minus_free_energy(est, ALL_IMAGES)), abs=1e-10)


def test_exact_log_partition_p(seed):
    est = fit_p(seed)
    log_z = capsnp.exact_log_partition(est)
    assert log_z == pytest.approx(model_p.exact_log_partition(est._params(), est.n_routing), abs=1e-10)
    assert log_z == pytest.approx(logsumexp(p_minus_free_energy(est, ALL_IMAGES)), abs=1e-10)
    # P's enumeration depends on the routing passes: r = 1 is a different model
    one_pass = capsnp.exact_log_partition(est._params(), n_routing=1)
    assert one_pass == pytest.approx(model_p.exact_log_partition(est._params(), 1), abs=1e-10)
    assert abs(one_pass - log_z) > 1e-6


@pytest.mark.parametrize("J, d_h", [(2, 2), (3, 4)])
def test_exact_log_partition_r(seed, J, d_h):
    # (2, 2): 2**4 hidden states < 2**8 * 2**2 (v, a) states, so h is enumerated;
    # (3, 4): 2**8 * 3**2 (v, a) states < 2**12 hidden states, so (v, a) is.
    est = fit_r(seed, J, d_h)
    log_z = capsnp.exact_log_partition(est)
    assert log_z == pytest.approx(model_r.exact_log_partition(est._params()), abs=1e-10)


def test_hidden_side_of_model_r_sums_to_log_z(seed):
    rng = np.random.default_rng(seed)
    I, d_v, J, d_h = 3, 2, 2, 3
    params = RParams(rng.normal(0, 1, (I, J, d_h, d_v)), rng.normal(0, 1, (I, d_v)),
                     rng.normal(0, 1, (J, d_h)), rng.normal(0, 1, (I, J)))
    H = enumerate_binary(J * d_h).reshape(-1, J, d_h)  # (64, J, d_h)
    assert logsumexp(log_joint_h(params, H)) == pytest.approx(model_r.exact_log_partition(params), abs=1e-10)
    # log p~(h) is p~(v, h) (4.2) summed over every v
    V = enumerate_binary(I * d_v).reshape(-1, I, d_v)  # (64, I, d_v)
    for h in H[:5]:
        joint = model_r.log_joint_vh(params, V, np.broadcast_to(h, (len(V), J, d_h)))
        assert log_joint_h(params, h[None])[0] == pytest.approx(logsumexp(joint), abs=1e-10)


def test_exact_log_partition_takes_params_containers(seed):
    rng = np.random.default_rng(seed)
    r_params = RParams(rng.normal(0, 1, (2, 2, 2, 3)), rng.normal(0, 1, (2, 3)),
                       rng.normal(0, 1, (2, 2)), rng.normal(0, 1, (2, 2)))
    cases = [(RBMParams(rng.normal(0, 1, (7, 4)), rng.normal(0, 1, 7), rng.normal(0, 1, 4)),
              rbm.exact_log_partition), (random_pparams(rng), model_p.exact_log_partition),
             (r_params, model_r.exact_log_partition)]
    for params, module_fn in cases:
        assert capsnp.exact_log_partition(params) == pytest.approx(module_fn(params), abs=1e-10)
        # float32 parameters are enumerated in float64
        as32 = type(params)(*(x.astype(np.float32) for x in params))
        assert capsnp.exact_log_partition(as32) == pytest.approx(module_fn(params), abs=1e-4)


def test_refuses_large_enumerations_with_sizes_and_a_pointer_to_ais():
    zeros = np.zeros
    big = {
        "2**25": RBMParams(zeros((25, 30)), zeros(25), zeros(30)),
        "2**64": PParams(zeros((16, 2, 2, 4)), zeros((16, 4)), zeros(2), zeros((16, 2))),
        "2**784": RParams(zeros((49, 16, 8, 16)), zeros((49, 16)), zeros((16, 8)), zeros((49, 16))),
    }
    for size, params in big.items():
        with pytest.raises(ValueError, match="ais_log_partition") as info:
            capsnp.exact_log_partition(params)
        assert size in str(info.value) and "2**24" in str(info.value)
    # Model R with many pixels but a small hidden layer is enumerated over h
    rng = np.random.default_rng(0)
    wide = RParams(rng.normal(0, 0.1, (49, 2, 3, 16)), rng.normal(0, 1, (49, 16)),
                   rng.normal(0, 1, (2, 3)), rng.normal(0, 1, (49, 2)))
    assert np.isfinite(capsnp.exact_log_partition(wide))


def test_limit_is_2_to_the_24_states(monkeypatch):
    """A 24-bit side is enumerated, 25 bits are refused (the enumeration itself stubbed out)."""
    import capsnp.likelihood as lk

    assert MAX_EXACT_STATES == 2**24
    monkeypatch.setattr(lk, "_logsumexp_over_binary", lambda n_bits, log_f, width: float(n_bits))
    z = np.zeros
    assert capsnp.exact_log_partition(RBMParams(z((24, 30)), z(24), z(30))) == 24.0
    assert capsnp.exact_log_partition(RBMParams(z((40, 24)), z(40), z(24))) == 24.0
    assert capsnp.exact_log_partition(PParams(z((6, 2, 2, 4)), z((6, 4)), z(2), z((6, 2)))) == 24.0
    assert capsnp.exact_log_partition(RParams(z((49, 4, 6, 16)), z((49, 16)), z((4, 6)), z((49, 4)))) == 24.0
    with pytest.raises(ValueError, match="2\\*\\*25"):
        capsnp.exact_log_partition(RBMParams(z((25, 30)), z(25), z(30)))
    with pytest.raises(ValueError, match="2\\*\\*25"):
        capsnp.exact_log_partition(RParams(z((49, 5, 5, 16)), z((49, 16)), z((5, 5)), z((49, 5))))


def test_unfitted_estimator_is_refused():
    with pytest.raises(TypeError, match="fitted"):
        capsnp.exact_log_partition(CapsulePoE())


# ----------------------------------------------------------------------------- log_likelihood


@pytest.mark.parametrize("fit", [fit_rbm, fit_p], ids=["rbm", "p"])
def test_log_likelihood_normalises_over_every_image(fit, seed):
    est = fit(seed)
    log_z = capsnp.exact_log_partition(est)
    log_p = est.log_likelihood(ALL_IMAGES, log_z)
    assert log_p.shape == (256,) and np.all(log_p < 0)
    assert logsumexp(log_p) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(log_p, -est.free_energy(ALL_IMAGES) - log_z, rtol=0, atol=1e-12)


def test_log_likelihood_r_is_within_its_standard_errors_of_exact(seed):
    est = fit_r(seed)
    log_z = capsnp.exact_log_partition(est)
    exact = model_r.exact_log_marginal(est._params(), to_capsules(ALL_IMAGES, SHAPE, PATCH), log_z)
    assert logsumexp(exact) == pytest.approx(0.0, abs=1e-10)
    log_p, se = est.log_likelihood(ALL_IMAGES, log_z, n_samples=1000, random_state=seed,
                                   return_std=True)
    assert log_p.shape == se.shape == (256,) and np.all(se >= 0)
    # v = 0 (row 0): u_hat = 0, so the mean-field proposal softmax(beta) is the exact routing
    # posterior, every weight is equal and the estimate is exact with zero standard error
    assert se[0] == 0.0 and log_p[0] == pytest.approx(exact[0], abs=1e-12)
    err = log_p - exact  # (256,)
    # The delta-method error is itself an estimate and too small where the proposal misses part
    # of the posterior: over 100 seeds, 96% to 100% of the images were within 4 standard errors
    # (a Gaussian error would give 99.99%), the mean error within 0.004 nats, the IS
    # log-likelihoods normalised to within 0.0025.
    assert np.mean(np.abs(err) <= 4 * se + 1e-9) >= 0.9
    assert abs(np.mean(err)) < 0.01
    assert logsumexp(log_p) == pytest.approx(0.0, abs=0.01)
    # 20 times fewer samples: a typical error about sqrt(20) times larger (medians: the means
    # are at the mercy of a rare large weight); a fixed seed: the same numbers
    few, se_few = est.log_likelihood(ALL_IMAGES, log_z, n_samples=50, random_state=seed,
                                     return_std=True)
    assert np.median(se_few) > 2 * np.median(se)
    np.testing.assert_array_equal(est.log_likelihood(ALL_IMAGES, log_z, n_samples=50,
                                                     random_state=seed), few)


def test_log_likelihood_r_with_several_starts(seed):
    """``n_starts``: several starts put a mixture of mean-field fixed points under the draws
    (``model_r.log_marginal_is`` with K routings, tested there). On a model whose routing posterior has
    several modes (a fitted model's weights times 5) the single-mode proposal misses mass that
    its standard errors do not show (most draws hit one routing, se = 0); the mixture's
    estimates are close to exact with many draws and less biased than the single-mode ones with
    few (mean error over 20 seeds at S = 5)."""
    est = fit_r(seed, J=3, d_h=3)
    est.W_ = est.W_ * 5.0
    log_z = capsnp.exact_log_partition(est)
    exact = model_r.exact_log_marginal(est._params(), to_capsules(ALL_IMAGES, SHAPE, PATCH), log_z)
    log_p, se = est.log_likelihood(ALL_IMAGES, log_z, n_samples=1000, random_state=seed,
                                   return_std=True, n_starts=8)
    assert np.all(np.isfinite(se)) and np.all(se >= 0)
    assert abs(np.mean(log_p - exact)) < 0.1  # at most about 0.05 on seeds 0-29
    single = np.mean([est.log_likelihood(ALL_IMAGES, log_z, n_samples=5, random_state=r) - exact
                      for r in range(20)])
    mixture = np.mean([est.log_likelihood(ALL_IMAGES, log_z, n_samples=5, random_state=r, n_starts=6)
                       - exact for r in range(20)])
    assert single < mixture < 0 and abs(mixture) < 0.75 * abs(single)
    again = est.log_likelihood(ALL_IMAGES, log_z, n_samples=5, random_state=1, n_starts=6)
    np.testing.assert_array_equal(again, est.log_likelihood(ALL_IMAGES, log_z, n_samples=5,
                                                            random_state=1, n_starts=6))


def test_log_likelihood_checks_its_arguments():
    est = fit_rbm()
    for bad in (float("nan"), float("inf"), "12", None):
        with pytest.raises(ValueError, match="log_z"):
            est.log_likelihood(ALL_IMAGES[:3], bad)
    with pytest.raises(ValueError, match="n_samples"):
        fit_r().log_likelihood(ALL_IMAGES[:3], 1.0, n_samples=0)
    with pytest.raises(ValueError, match="n_starts"):
        fit_r().log_likelihood(ALL_IMAGES[:3], 1.0, n_starts=0)


def test_experiment_uses_the_estimator_method():
    from capsnp.experiment import test_log_likelihood as experiment_ll

    est = fit_r()
    ll, se = experiment_ll(est, ALL_IMAGES[:10], 3.0, np.random.default_rng(4), n_is=20)
    ref = est.log_likelihood(ALL_IMAGES[:10], 3.0, n_samples=20, random_state=np.random.default_rng(4),
                             return_std=True)
    np.testing.assert_array_equal(ll, ref[0])
    np.testing.assert_array_equal(se, ref[1])
    est = fit_p()
    ll, se = experiment_ll(est, ALL_IMAGES[:10], 3.0, np.random.default_rng(4))
    assert se is None
    np.testing.assert_array_equal(ll, est.log_likelihood(ALL_IMAGES[:10], 3.0))


# ----------------------------------------------------------------------------- evaluate --ais / --exact

TINY = {"rbm": ["--hidden", "8"], "r": ["--capsules", "2", "--capsule-dim", "4"],
        "p": ["--capsules", "2", "--capsule-dim", "2"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run per model (as in test_cli.py): {model: model file}."""
    files = {}
    for model, extra in TINY.items():
        out = tmp_path_factory.mktemp(f"run_{model}")
        code = main(["train", "--model", model, "--epochs", "1", "--max-images", "60",
                     "--batch-size", "30", "--sample-steps", "1", "--seed", "3",
                     "--out", str(out), *extra])
        assert code == 0
        files[model] = str(out / "model.npz")
    return files


@pytest.mark.parametrize("model", ["rbm", "r"])
def test_evaluate_ais_agrees_with_exact(model, trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model-file", trained[model], "--max-images", "30", "--ais",
                 "--fast-ais", "--ais-runs", "30", "--exact", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    est = load_estimator(trained[model])
    assert report["exact_log_z"] == pytest.approx(capsnp.exact_log_partition(est), abs=1e-12)
    assert report["ais_runs"] == 30 and report["ais_temperatures"] == 1451
    assert report["ais_log_z_std_error"] > 0
    assert abs(report["ais_log_z"] - report["exact_log_z"]) < 5 * report["ais_log_z_std_error"] + 0.02
    assert report["log_z_source"] == "exact" and report["log_z"] == report["exact_log_z"]
    assert "training images" in report["ais_base_rate"]
    X = binarize(load_dataset("embedded", "test")[0][:30], random_state=0)
    if model == "rbm":
        ll = est.log_likelihood(X, report["exact_log_z"])
        assert report["log_likelihood"] == pytest.approx(np.mean(ll), abs=1e-9)
        assert report["log_likelihood_sem"] == pytest.approx(np.std(ll) / np.sqrt(30), abs=1e-9)
    else:
        # (exact log p(v) would sum over 2**49 routings: compare with the method, same seed)
        ll, se = est.log_likelihood(X, report["exact_log_z"], n_samples=100, random_state=0,
                                    return_std=True)
        assert report["importance_samples"] == 100
        assert report["log_likelihood"] == pytest.approx(np.mean(ll), abs=1e-9)
        assert report["importance_sampling_mean_se"] == pytest.approx(np.mean(se), abs=1e-12)
        assert report["importance_starts"] == 1
        capsys.readouterr()
        assert main(["evaluate", "--model-file", trained[model], "--max-images", "30", "--exact",
                     "--is-samples", "50", "--is-starts", "3", "--json"]) == 0
        mixed = json.loads(capsys.readouterr().out)
        ll3 = est.log_likelihood(X, report["exact_log_z"], n_samples=50, random_state=0, n_starts=3)
        assert mixed["importance_starts"] == 3 and mixed["importance_samples"] == 50
        assert mixed["log_likelihood"] == pytest.approx(np.mean(ll3), abs=1e-9)


def test_evaluate_ais_prints_log_z_and_log_likelihood(trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model-file", trained["rbm"], "--max-images", "20", "--ais",
                 "--fast-ais", "--ais-runs", "10"]) == 0
    out = capsys.readouterr().out
    assert "log Z (AIS, 10 runs, 1,451 temperatures" in out and "+-" in out
    assert "log-likelihood (nats per image, ais log Z)" in out and "20 images" in out


def test_evaluate_exact_refuses_model_p_on_full_images(trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model-file", trained["p"], "--max-images", "5", "--exact"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("capsnp evaluate: error:") and "2**784" in err and "ais_log_partition" in err


def test_evaluate_likelihood_options_need_their_flag(trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model-file", trained["rbm"], "--fast-ais"]) == 1
    assert "--ais" in capsys.readouterr().err
    assert main(["evaluate", "--model-file", trained["rbm"], "--is-samples", "5"]) == 1
    assert main(["evaluate", "--model-file", trained["rbm"], "--is-starts", "5"]) == 1
    assert "--is-starts" in capsys.readouterr().err
    assert main(["evaluate", "--model-file", trained["rbm"], "--ais", "--ais-runs", "0"]) == 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_estimator_within_the_weight_budget(name):
    """Each likelihood-table preset validates, lays out MNIST, and has at most the RBM-500's
    784 x 500 = 392,000 weights (the budget every row is compared at), a shared capsule's
    weights V counted with the routed ones."""
    est = make_estimator(name, 1)
    est._check_training_hyperparameters()
    if hasattr(est, "n_components"):
        n_weights = 784 * est.n_components
    else:
        est._setup(784)
        n_parents = 1 if getattr(est, "tie_weights", False) else est.n_capsules  # tied: one tensor
        n_hidden = n_parents * est.capsule_dim + getattr(est, "shared_units", 0)  # (4c.1): + V
        n_weights = est.n_visible_capsules_ * est.visible_capsule_dim_ * n_hidden
        assert est.n_visible_capsules_ * est.visible_capsule_dim_ == 784
    assert 0 < n_weights <= 392_000
