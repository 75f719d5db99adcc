"""The scripts of docs/results run on a small saved model and report what they promise."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from capsnp._kernels_jit import NUMBA_AVAILABLE
from capsnp.ais import ais_log_partition, default_betas
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import RoutedCapsuleRBM, load_estimator
from capsnp.exact import enumerate_binary

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "results"
sys.path.insert(0, str(SCRIPTS))  # as when a script runs: pruned_likelihood imports routing_usage


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved_r(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:400], "stochastic", random_state=0)
    RoutedCapsuleRBM(2, 6, n_iter=2, n_chains=50, momentum=0.5, random_state=0).fit(V).save(
        folder / "tiny_model.npz")
    (folder / "tiny.json").write_text(json.dumps({"test_log_likelihood": -150.0}))
    return folder


def test_routing_usage(saved_r, capsys):
    _script("routing_usage").main("tiny", "embedded", 60, saved_r)
    report = json.loads(capsys.readouterr().out)
    assert report["capsules"] == 2 and report["images"] == 60
    assert 0.0 <= report["blank_patch_share"] < 1.0
    assert 0.5 <= report["decisiveness_on_patches_with_ink"] <= 1.0  # max of 2 probabilities
    assert 0.5 <= report["image_purity"] <= 1.0
    shares = np.array(list(report["class_share"].values()))  # (classes, J)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=2e-3)  # rounded to 3 digits
    assert 0.0 <= report["no_data_weight_share"] <= 0.5  # with 2 capsules one of each pair gets >= 50%
    assert (saved_r / "tiny_routing.png").stat().st_size > 0
    assert report["blank_patch_routing_spread"] == 0.0  # Model R: blank patches route by beta alone


def test_routing_usage_with_assignment_biases(saved_r, capsys):
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:400], "stochastic", random_state=0)
    RoutedCapsuleRBM(2, 6, n_iter=2, n_chains=50, momentum=0.5, assignment_biases=True,
                     random_state=0).fit(V).save(saved_r / "tiny-rb_model.npz")
    _script("routing_usage").main("tiny-rb", "embedded", 60, saved_r)
    report = json.loads(capsys.readouterr().out)
    assert report["blank_patch_routing_spread"] > 0.0  # C_ij . h_j routes blank patches (4b.3)
    assert 0.5 <= report["positional_routing"] <= 1.0  # max of 2 shares


def test_positional_routing_counts_ink_patches_at_their_positions_majority():
    routing_usage = _script("routing_usage")
    v = np.zeros((4, 2, 1))
    v[:, 0] = 1.0  # position 0 has ink in all 4 images, position 1 in the first only
    v[0, 1] = 1.0
    c = np.zeros((4, 2, 2))
    c[:, 0, 0] = [0.9, 0.8, 0.2, 0.7]  # position 0: three of four to capsule 0
    c[:, 0, 1] = 1.0 - c[:, 0, 0]
    c[:, 1] = [0.3, 0.7]  # position 1: its one ink patch to capsule 1
    ink, _, position = routing_usage.ink_routing(c, v)
    np.testing.assert_allclose(position, [[0.75, 0.25], [0.0, 1.0]])
    assert routing_usage.positional_routing(ink, position) == pytest.approx((0.75 * 4 + 1.0 * 1) / 5)


def test_routing_usage_with_a_shared_capsule(saved_r, capsys):
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:400], "stochastic", random_state=0)
    RoutedCapsuleRBM(2, 6, n_iter=2, n_chains=50, momentum=0.5, assignment_biases=True, shared_units=5,
                     random_state=0).fit(V).save(saved_r / "tiny-rs_model.npz")
    _script("routing_usage").main("tiny-rs", "embedded", 60, saved_r)
    report = json.loads(capsys.readouterr().out)
    assert report["capsules"] == 2 and 0.5 <= report["positional_routing"] <= 1.0


def test_tempered_samples(saved_r, capsys):
    _script("tempered_samples").main("tiny", "embedded", 3, 2, saved_r)
    report = json.loads(capsys.readouterr().out)
    assert report["temperatures"] == 3 and len(report["swap_rates"]) == 2
    assert all(0.0 <= r <= 1.0 for r in report["swap_rates"])
    assert report["min_swap_rate"] == min(report["swap_rates"])
    assert (saved_r / "tiny_tempered.png").stat().st_size > 0


def test_ais_end_states_splits_the_weight_at_the_ink_threshold(saved_r, capsys):
    script = _script("ais_end_states")
    shares = []
    for threshold in (-1, 10**6):  # every end state above, then none
        script.main("tiny", "embedded", "fast", 8, saved_r, 1, threshold)
        report = json.loads(capsys.readouterr().out)
        assert report["temperatures"] == 1451 and report["runs"] == 8 and np.isfinite(report["log_z"])
        assert report["ink_quantiles"] == sorted(report["ink_quantiles"])
        shares.append((report["runs_above"], report["weight_share_above"]))
    assert shares == [(8, pytest.approx(1.0)), (0, 0.0)]
    assert report["max_log_w_above"] is None and np.isfinite(report["max_log_w_below"])
    assert (saved_r / "tiny_ais_end_states.png").stat().st_size > 0


def test_ais_end_states_weight_split():
    script = _script("ais_end_states")
    share, (top_above, top_below) = script.weight_split(np.log([1.0, 3.0, 4.0]), np.array([False, True, False]))
    assert share == pytest.approx(3.0 / 8.0)
    assert script.weight_split(np.zeros(2), np.zeros(2, bool)) == (0.0, [None, 0.0])
    assert (top_above, top_below) == (pytest.approx(np.log(3.0)), pytest.approx(np.log(4.0)))


def test_log_z_sandwich_brackets_log_z_with_either_set_being_everything(saved_r, capsys):
    script = _script("log_z_sandwich")
    # threshold 10**6: every chain from data is a "digit" and none from noise is in the box
    script.main("tiny", "embedded", "fast", 16, 20, saved_r, 1, 10**6)
    digits = json.loads(capsys.readouterr().out)
    assert (digits["chains_from_noise_in_box"], digits["chains_from_data_in_digits"]) == (0, 16)
    assert "box_upper_log_z" not in digits and "upper_log_z" not in digits
    # with B = every state, reverse AIS bounds log Z itself from above (6.7)
    se = np.hypot(digits["forward_std_error"], digits["reverse_digits_std_error"])
    assert digits["reverse_digits_log_z"] > digits["forward_log_z"] - 5 * se - 0.05
    assert digits["reverse_digits_log_z"] - digits["forward_log_z"] < 0.5
    # threshold -1: every chain from noise is in the box, whose own path then brackets log Z
    script.main("tiny", "embedded", "fast", 16, 20, saved_r, 1, -1, "box")
    box = json.loads(capsys.readouterr().out)
    assert (box["chains_from_noise_in_box"], box["chains_from_data_in_digits"]) == (16, 0)
    assert box["box_forward_runs_in_box"] == 16 and "forward_log_z" not in box
    assert abs(box["box_lower_log_z"] - digits["forward_log_z"]) < 0.5
    assert box["box_upper_log_z"] > box["box_lower_log_z"] - 5 * box["box_upper_std_error"] - 0.05
    assert box["box_upper_log_z"] - digits["forward_log_z"] < 0.5


def test_pruned_likelihood(saved_r, capsys):
    _script("pruned_likelihood").main("tiny", "embedded", 0.3, saved_r, n_ais_runs=4, fast=True)
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["pruned_weight_share"] <= 0.5
    assert np.isfinite(report["log_z"]) and np.isfinite(report["test_log_likelihood"])
    assert report["unpruned_test_log_likelihood"] == -150.0


def test_sample_diversity(saved_r, capsys):
    _script("sample_diversity").main("tiny", "embedded", 2, saved_r, n_reader=1000)
    report = json.loads(capsys.readouterr().out)
    assert sum(report["class_counts"]) == 100 and len(report["class_counts"]) == 10
    assert 0.0 <= report["class_entropy"] <= 1.0 and 0.0 <= report["confident_share"] <= 1.0
    assert report["classes_with_3_or_more"] == sum(c >= 3 for c in report["class_counts"])
    assert report["classifier_test_accuracy"] > 0.5


def test_as_rbm_log_z(tmp_path, capsys):
    """A one-capsule Model R's log Z on the RBM's path agrees with its exact value (tiny model)."""
    from capsnp.likelihood import exact_log_partition

    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:200], "stochastic", random_state=0)
    est = RoutedCapsuleRBM(1, 6, n_iter=1, n_chains=50, random_state=0).fit(V)
    est.save(tmp_path / "one_model.npz")
    _script("as_rbm_log_z").main("one", "embedded", tmp_path, 20, True)
    report = json.loads(capsys.readouterr().out)
    exact = exact_log_partition(est)  # 2**6 hidden states
    assert abs(report["log_z"] - exact) < 5 * report["log_z_std_error"] + 0.05
    assert report["test_log_likelihood"] < 0


def test_elbo_gap(saved_r, capsys):
    """The gap log p~(v) - L(v; c) is >= 0 up to importance-sampling error, and exactly 0 with one
    capsule (one routing; h factorises given v, so the mean-field bound is tight)."""
    _script("elbo_gap").main("tiny", "embedded", 60, saved_r)
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 60 and 0.5 <= report["decisiveness_on_patches_with_ink"] <= 1.0
    assert report["mean_gap"] > -3 * report["mean_is_se"]
    assert report["gap_quantiles_10_50_90"] == sorted(report["gap_quantiles_10_50_90"])
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:200], "stochastic", random_state=0)
    RoutedCapsuleRBM(1, 6, n_iter=1, n_chains=50, random_state=0).fit(V).save(saved_r / "one_model.npz")
    _script("elbo_gap").main("one", "embedded", 60, saved_r)
    one = json.loads(capsys.readouterr().out)
    assert abs(one["mean_gap"]) < 1e-6 and one["gap_quantiles_10_50_90"] == [0.0, 0.0, 0.0]
    assert one["decisiveness_on_patches_with_ink"] == 1.0


def test_as_rbm_log_z_of_one_parent(tmp_path, capsys):
    """``parent`` p: log Z of the J = 1 model of parent p of a two-capsule model (its W, gamma,
    beta, C, A at index p) against its exact value."""
    from capsnp import model_r, rbm

    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:200], "stochastic", random_state=0)
    est = RoutedCapsuleRBM(2, 3, n_iter=1, n_chains=50, assignment_biases=True, learn_prior=True,
                           first_parent_logit=3.0, random_state=0).fit(V)
    est.save(tmp_path / "two_model.npz")
    script = _script("as_rbm_log_z")
    script.main("two", "embedded", tmp_path, 20, True, 0)
    report = json.loads(capsys.readouterr().out)
    one = script.one_parent(est._params(), 0)
    assert one.W.shape[1] == 1 and np.array_equal(one.C[:, 0], est.C_[:, 0])
    exact = rbm.exact_log_partition(model_r.as_rbm(one)) + one.beta.sum()  # 2**3 hidden states
    assert report["parent"] == 0
    assert abs(report["log_z"] - exact) < 5 * report["log_z_std_error"] + 0.05
    # its test log-likelihood: with one parent the routing is fixed, log p(v) = log p~(v, a = 0) - log Z
    # (beta_i0 starts at 3, so a slip of sum_i beta_i0, about 147 nats, would show)
    V_test = to_capsules(binarize(load_dataset("embedded", "test")[0], "stochastic", random_state=1),
                         est.image_shape_, est.patch_)
    exact_ll = np.mean(model_r.log_joint_va(one, V_test, np.zeros(V_test.shape[:2], np.int64)) - exact)
    assert abs(report["test_log_likelihood"] - exact_ll) < 5 * report["log_z_std_error"] + 0.05


def test_chain_routing(saved_r, capsys):
    _script("chain_routing").main("tiny", "embedded", 3, saved_r)
    report = json.loads(capsys.readouterr().out)
    assert report["sweeps"] == 3 and report["chains"] == 50
    assert abs(sum(report["patch_share_per_parent"]) - 1.0) < 1e-4
    assert report["patch_share_per_parent"][-1] <= report["largest_share_of_last_parent"] <= 1.0


def _tiny_strong_rbm():
    """A BernoulliRBM on 8 pixels with strong random weights (4 hidden units), fitted one epoch so
    that it has persistent chains; returns (estimator, RBMParams)."""
    from capsnp.estimators import BernoulliRBM
    from capsnp.params import RBMParams
    rng = np.random.default_rng(0)
    V = (rng.random((200, 8)) < np.linspace(0.1, 0.9, 8)).astype(np.float64)  # (200, 8)
    est = BernoulliRBM(4, learning_rate=0.1, n_iter=1, random_state=0).partial_fit(V)
    est.components_ = 2.0 * rng.standard_normal((4, 8))  # (H, D), far from independent pixels
    est.intercept_visible_, est.intercept_hidden_ = rng.standard_normal(8), rng.standard_normal(4)
    return est, RBMParams(est.components_.T, est.intercept_visible_, est.intercept_hidden_)


def _exact_and_worst_chains(params, rng, n=4000):
    """For the 8-pixel RBM: n exact draws of the model (by enumeration) and n chains at its 4
    least probable states, each (n, 8)."""
    from capsnp import rbm
    from capsnp.exact import enumerate_binary
    states = enumerate_binary(8)  # (256, 8)
    log_p = -rbm.free_energy(params, states)  # (256,) unnormalised
    p = np.exp(log_p - log_p.max())
    exact = states[rng.choice(256, size=n, p=p / p.sum())]  # (n, 8)
    worst = np.repeat(states[np.argsort(log_p)[:4]], n // 4, axis=0)  # (n, 8)
    return exact, worst


def test_chain_lag_is_zero_for_model_samples_and_positive_below_the_typical_set():
    """Chains drawn exactly from the model do not rise in log f; chains at its least probable
    states do, by many standard errors."""
    lag = _script("chain_lag")
    est, params = _tiny_strong_rbm()
    rng = np.random.default_rng(1)
    exact, worst = _exact_and_worst_chains(params, rng)
    est._state.chains = (exact, None)
    row = lag.probe(est, rng)
    for k in lag.SWEEPS:
        assert abs(row[f"rise_{k}"]) < 4 * row[f"rise_{k}_se"], (k, row)
    est._state.chains = (worst, None)
    row = lag.probe(est, rng)
    assert row["rise_1"] > 10 * row["rise_1_se"] > 0
    assert row["pixels_changed_1"] > 0


def test_statistic_lag_chain_statistics_are_the_model_expectation_by_enumeration():
    """Weighted by the exact p(v, a), the Rao-Blackwellised statistics of chain states (4.8 with
    c = onehot(a), mu = p(h = 1 | v, a)) equal E_p(v, h, a)[-dE/dtheta], the model term of the
    likelihood gradient, in every field (assignment biases included)."""
    from capsnp import model_r
    from capsnp.exact import enumerate_assignments
    from test_model_rb import make_params

    lag = _script("statistic_lag")
    p = make_params(3, I=2, J=2, d_h=2, d_v=2)
    Vg, Ag = model_r._va_grid(p)  # (Nv Na, I, d_v), (Nv Na, I)
    ours = lag.chain_statistics(p, (Vg, Ag), weights=model_r.exact_probability_va(p))
    V, H, A = model_r._all_visible(p), model_r._all_hidden(p), enumerate_assignments(2, 2)
    nv, nh, na = len(V), len(H), len(A)
    Vx = np.repeat(V, nh * na, axis=0)  # (Nv Nh Na, I, d_v), the order of exact_probability_vha
    Hx = np.tile(np.repeat(H, na, axis=0), (nv, 1, 1))  # (Nv Nh Na, J, d_h)
    Ax = np.tile(A, (nv * nh, 1))  # (Nv Nh Na, I)
    exact = model_r.data_statistics(p, Vx, np.eye(2)[Ax], Hx, model_r.exact_probability_vha(p))
    for field in exact._fields:
        np.testing.assert_allclose(getattr(ours, field), getattr(exact, field), atol=1e-12, err_msg=field)


def test_statistic_lag_is_noise_for_model_samples_and_large_below_the_typical_set():
    """Chains drawn exactly from the model move their statistics no more than two caught-up
    copies differ (shift ~ noise, lag share ~ control); chains at its least probable states move
    them far more, in every parameter group."""
    lag = _script("statistic_lag")
    est, params = _tiny_strong_rbm()
    rng = np.random.default_rng(2)
    v_data = (rng.random((500, 8)) < 0.3).astype(np.float64)  # (500, 8), away from the model
    exact, worst = _exact_and_worst_chains(params, rng)
    est._state.chains = (exact, None)
    row = lag.lag_shares(est, v_data, rng, sweeps=5)
    assert set(row) == {"W", "a", "b"}
    for group in row.values():
        assert group["shift"] < 3 * group["noise"] + 0.01, row
        assert abs(group["lag_share"]) < 3 * abs(group["control"]) + 0.02, row
    est._state.chains = (worst, None)
    row = lag.lag_shares(est, v_data, rng, sweeps=5)
    for group in row.values():
        assert group["shift"] > 5 * group["noise"], row


def test_statistic_lag_groups_of_model_r_split_w_by_routing():
    """On a Model R with assignment biases, W is split into data-fed and chain-only pairs that
    together hold every weight, the biases are groups of their own, and every number is finite."""
    lag = _script("statistic_lag")
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:300], "stochastic", random_state=0)
    est = RoutedCapsuleRBM(2, 4, n_iter=1, n_chains=20, assignment_biases=True, random_state=0).fit(V)
    v = to_capsules(V[:200], est.image_shape_, est.patch_)  # (200, I, d_v)
    row = lag.lag_shares(est, v, np.random.default_rng(0), sweeps=2)
    assert set(row) == {"W data-fed", "W chain-only", "alpha", "gamma", "C", "A"}
    assert row["W data-fed"]["entries"] + row["W chain-only"]["entries"] == est.W_.size
    assert all(np.isfinite(x) for group in row.values() for x in group.values())


def test_ais_cost_variants_estimate_the_same_log_z(saved_r):
    """The three ways ais_cost.py times AIS draw the same states: the same log Z to rounding,
    and ``as_before`` puts the current functions back."""
    from capsnp import _kernels_r, ais
    module = _script("ais_cost")
    path = ais.annealing_path(load_estimator(saved_r / "tiny_model.npz"))
    betas = np.linspace(0.0, 1.0, 30)
    log_z = {v: module.timed_ais(path, betas, v)[1] for v in ("before", "two passes", "now")}
    assert log_z["before"] == pytest.approx(log_z["now"], abs=1e-9)
    assert log_z["two passes"] == pytest.approx(log_z["now"], abs=1e-9)
    assert ais._interpolate is not module._interpolate_every_field
    assert _kernels_r.log_joint_va is not _kernels_r._ref.log_joint_va


def test_revision_epoch_cost_times_an_epoch_with_the_capsnp_of_a_given_tree(saved_r, tmp_path, monkeypatch):
    """Each timed epoch runs in a fresh process on the capsnp of the tree it is given (the
    runner asserts it), here this checkout, on a model found under docs/results/<dataset>."""
    module = _script("revision_epoch_cost")
    folder = tmp_path / "docs" / "results" / "embedded"
    folder.mkdir(parents=True)
    (folder / "tiny_model.npz").write_bytes((saved_r / "tiny_model.npz").read_bytes())
    monkeypatch.chdir(tmp_path)
    seconds = module.epoch_seconds(SCRIPTS.parents[1], "tiny", "embedded", 400)
    assert 0 < seconds < 600


def _tiny_biased_training(n_iter):
    """300 embedded images and the settings of a tiny capsule model with assignment biases."""
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:300], "stochastic", random_state=0)
    return V, dict(n_capsules=2, capsule_dim=6, assignment_biases=True, n_iter=n_iter,
                   batch_size=100, n_chains=30, momentum=0.5, random_state=0)


def test_param_averaging_reads_the_updates_without_changing_training():
    """With the averages attached, training takes the same steps (same parameters at the end);
    the tail means are the plain means of the parameters after each update of the last epochs,
    and the moving averages follow ``avg <- avg + (theta - avg) / k`` from the first update."""
    module = _script("param_averaging")
    V, kw = _tiny_biased_training(n_iter=4)
    plain = RoutedCapsuleRBM(**kw).fit(V)
    averages = module.ParameterAverages(4)
    seen = []  # (1-based epoch, float64 copies of the parameters after each update)
    fold_in = averages.add

    def add(params, epoch):
        seen.append((epoch, [np.array(p, dtype=np.float64) for p in params]))
        fold_in(params, epoch)

    averages.add = add
    est = module.with_averages(RoutedCapsuleRBM(**kw), averages).fit(V)
    for a, b in zip(plain._params(), est._params()):
        np.testing.assert_array_equal(a, b)
    assert len(seen) == 4 * 3 and averages.tail_start(50) == 3 and averages.tail_start(25) == 4
    result = averages.averages(est._params())
    for q, first in ((50, 3), (25, 4)):
        tail = [s for e, s in seen if e >= first]
        for k, avg in enumerate(result[f"tail{q}"]):
            np.testing.assert_allclose(avg, np.mean([s[k] for s in tail], axis=0), rtol=1e-6, atol=1e-7)
    for horizon in module.EMA_HORIZONS:
        expected = [p.copy() for p in seen[0][1]]
        for _, s in seen[1:]:
            expected = [e + (p - e) / horizon for e, p in zip(expected, s)]
        for avg, e, p in zip(result[f"ema{horizon}"], expected, est._params()):
            assert avg.dtype == p.dtype
            np.testing.assert_allclose(avg, e, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(result["tail50"].W, est._params().W)  # the path moved
    # the estimators' own option keeps the same moving average (the rows of sec. 21 are its)
    for horizon in module.EMA_HORIZONS:
        option = RoutedCapsuleRBM(**kw, average=horizon).fit(V)
        for a, b in zip(option._params(), result[f"ema{horizon}"]):
            np.testing.assert_array_equal(a, b)


def test_fast_weights_with_rate_zero_is_plain_pcd_and_phi_follows_its_recurrence():
    """With a fast rate of 0 the capsule model trains exactly as without fast weights (the same
    draws); otherwise phi is the decayed sum of the steps' gradients and moves training."""
    module = _script("fast_weights")
    V, kw = _tiny_biased_training(n_iter=2)
    plain = RoutedCapsuleRBM(**kw).fit(V)
    est, fast = module.with_fast_weights(RoutedCapsuleRBM(**kw))
    fast.fast_rate = 0.0
    est.fit(V)
    for a, b in zip(plain._params(), est._params()):
        np.testing.assert_array_equal(a, b)
    assert all(not f.any() for f in fast.phi)

    est, fast = module.with_fast_weights(RoutedCapsuleRBM(**kw))
    grads = []
    fold_in = fast.add
    fast.add = lambda grad, like: (grads.append(grad), fold_in(grad, like))
    est.fit(V)
    n, rate = len(grads), est.learning_rate
    expected = sum(module.FAST_DECAY ** (n - 1 - t) * rate * g.W for t, g in enumerate(grads))
    np.testing.assert_allclose(fast.phi.W, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(fast.phi.W).max() > 0
    assert not np.array_equal(est._params().W, plain._params().W)


def test_fast_weights_rbm_chains_run_on_the_sum():
    """The RBM step's chains draw from theta + phi: with phi making every visible bias huge the
    chains come out all ones, while the gradient's negative term is taken with theta."""
    from capsnp.estimators import BernoulliRBM
    module = _script("fast_weights")
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:200], "stochastic", random_state=0)
    est, fast = module.with_fast_weights(BernoulliRBM(n_components=8, n_iter=1, batch_size=100,
                                                      persistent=True, random_state=0))
    est.fit(V)
    params = est._params()
    fast.phi = params._replace(W=np.zeros_like(params.W), a=np.full_like(params.a, 50.0),
                               b=np.zeros_like(params.b))
    step = module.rbm_step(est, fast)
    chains = (V[:10], None)
    grad, (v, p), _ = step(params, V[:10], chains, np.random.default_rng(0))
    assert v.all() and p is None
    np.testing.assert_allclose(grad.a, V[:10].mean(axis=0) - 1.0)  # data minus all-ones chains


def test_param_averaging_evaluates_the_variants_asked_for():
    module = _script("param_averaging")
    names = ["m", "m+ema1000", "m+ema5000", "m+tail50"]
    assert module.selected(names, "all") == names
    assert module.selected(names, "ema1000,last") == ["m", "m+ema1000"]
    assert module.selected(names, "tail50") == ["m+tail50"]
    assert module.ParameterAverages(1).tail_start(25) == 1  # a short run still has a tail


def _tempered_rbm_chains(module, params, n_temperatures, n_chains, n_steps, rng):
    """Run the tempered RBM step at fixed ``params``; returns the visited b = 1 states' counts
    over every visible state (after a burn-in of a third of the steps) and the swap rates."""
    from capsnp.estimators import BernoulliRBM
    D = params.W.shape[0]
    est = BernoulliRBM(params.W.shape[1], backend="numpy")
    step = module.rbm_step(est, module.Ladder(n_temperatures))
    chains = ((rng.random((n_chains, D)) < 0.5).astype(np.float64), None)
    counts, rates = np.zeros(2**D), []
    for t in range(n_steps):
        _, chains, stats = step(params, chains[0][:5], chains, rng)
        rates.extend(stats.values())
        if t >= n_steps // 3:
            counts += np.bincount((chains[0] @ 2 ** np.arange(D)).astype(int), minlength=2**D)
    return counts / counts.sum(), np.array(rates)


def test_tempered_chains_keep_the_model_distribution_at_fixed_parameters(monkeypatch):
    """With the parameters held fixed, the b = 1 chains of the ladders visit every visible state
    with the model's probability (exact, by enumeration): the sweeps, the statistics and the
    exchanges are wired in the right order. Accepting every exchange breaks it (the control)."""
    from capsnp.params import RBMParams
    from capsnp.rbm import exact_probability_v
    module = _script("tempered_training")
    rng = np.random.default_rng(0)
    D, H = 5, 3
    params = RBMParams(W=rng.normal(0.0, 1.5, (D, H)), a=rng.normal(0.0, 1.0, D),
                       b=rng.normal(0.0, 1.0, H))
    exact = exact_probability_v(params)  # (32,)
    visited, rates = _tempered_rbm_chains(module, params, 4, 300, 150, rng)
    assert 0.5 * np.abs(visited - exact).sum() < 0.03
    assert rates.min() >= 0.0 and rates.max() <= 1.0 and rates.mean() < 0.99  # some are refused

    real_swap = module.swap_step
    monkeypatch.setattr(module, "swap_step", lambda log_f, *args: real_swap(
        lambda beta, x: np.zeros(x.shape[0]), *args))  # Delta = 0: every exchange accepted
    visited, rates = _tempered_rbm_chains(module, params, 4, 300, 150, rng)
    assert rates.min() == 1.0 and 0.5 * np.abs(visited - exact).sum() > 0.06


def test_tempered_training_reports_swap_rates_and_keeps_the_model_chains():
    module = _script("tempered_training")
    V, kw = _tiny_biased_training(n_iter=1)
    est, ladder = module.with_tempered_chains(RoutedCapsuleRBM(**kw), 3, 10)
    est.fit(V)
    assert est.n_chains == 10 and est.persistent_chains_.shape == (10, V.shape[1])
    record = est.history_[-1]
    assert {"swap_rate_0", "swap_rate_1"} <= set(record)
    assert all(0.0 <= record[f"swap_rate_{k}"] <= 1.0 for k in range(2))
    assert len(ladder.states) == 3  # the model chains are the ladders' b = 1 chains
    np.testing.assert_array_equal(est._to_layout(est.persistent_chains_), ladder.states[-1][0])


def test_tempered_training_control_is_the_preset_with_fewer_plain_chains():
    module = _script("tempered_training")
    V, kw = _tiny_biased_training(n_iter=1)
    control = module.with_plain_chains(RoutedCapsuleRBM(**kw), 10).fit(V)
    direct = RoutedCapsuleRBM(**{**kw, "n_chains": 10}).fit(V)
    for a, b in zip(control._params(), direct._params()):
        np.testing.assert_array_equal(a, b)


def test_chain_statistics_variance_compares_two_unbiased_statistics(saved_r, capsys):
    """compare(): variances, correlation and the best mixture of known arrays; main() reports
    both chain statistics of every group of a saved biased model, their means agree with
    model_statistics and hidden_model_statistics of the same sweep, and the data side is there."""
    module = _script("chain_statistics_variance")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    y = x + rng.normal(size=(4000, 3))  # x plus independent noise: x alone is best
    row = module.compare(x, y)
    np.testing.assert_allclose([row["ratio"], row["correlation"]], [2.0, np.sqrt(0.5)], rtol=0.08)
    assert abs(row["best_lambda"] - 1.0) < 0.08 and abs(row["best_ratio"] - 1.0) < 0.01
    half = module.compare(x, -x)  # the mixture lam = 1/2 cancels: variance 0
    assert abs(half["best_lambda"] - 0.5) < 1e-12 and half["best_ratio"] < 1e-12
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:300], "stochastic", random_state=0)
    est = RoutedCapsuleRBM(2, 6, n_iter=2, n_chains=40, momentum=0.5, assignment_biases=True,
                           random_state=0).fit(V)
    est.save(saved_r / "tiny-var_model.npz")
    module.main("tiny-var", saved_r, 2, 3, "embedded")
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"W", "gamma", "beta", "C", "A", "largest_resp"}
    for group in ("W", "gamma", "beta", "C", "A"):
        assert report[group]["routes"] > 0 and report[group]["hidden"] > 0 and report[group]["data"] > 0
        assert report[group]["best_ratio"] <= min(1.0, report[group]["ratio"]) + 1e-9
        assert 0 < report[group]["routes_window"] <= report[group]["routes"] * 1.5
    assert 0.5 <= report["largest_resp"]["mean"] <= 1.0
    from capsnp import model_r
    params = est._params()
    chains = np.load(saved_r / "tiny-var_model.npz")
    v, a = chains["chains_v"], chains["chains_a"]
    _, h, _, resp, p_h = model_r.gibbs_sweep(params, v, a, np.random.default_rng(1), return_probability=True)
    onehot = (a[..., None] == np.arange(2)).astype(float)
    routes, hidden = module.per_chain_statistics(params, v, (resp, h), (onehot, p_h))
    for stats, name in ((model_r.model_statistics(params, v, h, resp), routes),
                        (model_r.hidden_model_statistics(params, v, a, p_h, resp), hidden)):
        for group in ("W", "gamma", "C"):
            np.testing.assert_allclose(name[group].mean(axis=0), getattr(stats, group).ravel(), rtol=1e-10)
    np.testing.assert_allclose(routes["beta"].mean(axis=0), model_r.model_statistics(params, v, h, resp).beta.ravel(),
                               rtol=1e-10)
    np.testing.assert_allclose(hidden["beta"].mean(axis=0), onehot.mean(axis=0).ravel(), rtol=1e-12)


def test_sparsity_parameters_reports_where_the_hidden_units_sit(saved_r, capsys):
    """main() reports the firing probabilities and biases of saved models; its firing mean is
    the models' own data-side mean, and a strong sparsity target lowers it."""
    from capsnp.estimators import BernoulliRBM
    module = _script("sparsity_parameters")
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:300], "stochastic", random_state=0)
    kw = dict(n_iter=2, n_chains=40, momentum=0.5, assignment_biases=True, random_state=0)
    RoutedCapsuleRBM(2, 6, **kw).fit(V).save(saved_r / "tiny-sp0_model.npz")
    RoutedCapsuleRBM(2, 6, **kw, sparsity_cost=2.0, sparsity_target=0.05).fit(V).save(saved_r / "tiny-sp2_model.npz")
    rbm = BernoulliRBM(8, n_iter=2, batch_size=20, learning_rate=0.05, random_state=0).fit(V)
    rbm.save(saved_r / "tiny-rbm_model.npz")
    module.main("tiny-sp0,tiny-sp2,tiny-rbm", "embedded", 50, saved_r)
    plain, sparse, r = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert sparse["firing"]["mean"] < plain["firing"]["mean"] - 0.05
    for row in (plain, sparse):
        assert 0.5 <= row["largest_c_mean"] <= 1.0 and 0.0 <= row["parent_0_share"] <= 1.0
        assert "routed_C_mean" in row and row["images"] == 50
        assert row["firing"]["quantiles"] == sorted(row["firing"]["quantiles"])
    Xt, _ = load_dataset("embedded", "test")
    Vt = binarize(Xt[:50], "stochastic", random_state=0)
    assert r["firing"]["mean"] == pytest.approx(rbm.transform(Vt).mean(), abs=1e-4)
    assert r["hidden_bias_mean"] == pytest.approx(rbm.intercept_hidden_.mean(), abs=1e-4)
    assert "shared_firing" not in plain


def test_sparsity_parameters_reports_the_shared_capsules_firing(saved_r, capsys):
    """With a shared capsule the report adds its units' firing, the exact p(g = 1 | v) (4c.2)
    averaged over the images, and its biases and weights."""
    from capsnp import model_rs
    module = _script("sparsity_parameters")
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:300], "stochastic", random_state=0)
    est = RoutedCapsuleRBM(2, 6, n_iter=2, n_chains=40, momentum=0.5, assignment_biases=True, shared_units=5,
                           random_state=0).fit(V)
    est.save(saved_r / "tiny-shared_model.npz")
    module.main("tiny-shared", "embedded", 50, saved_r)
    row = json.loads(capsys.readouterr().out)
    Xt, _ = load_dataset("embedded", "test")
    Vt = binarize(Xt[:50], "stochastic", random_state=0)
    p_g = model_rs.shared_probability(est._params(), est._checked(Vt))  # (50, 5)
    assert row["shared_firing"]["mean"] == pytest.approx(p_g.mean(), abs=1e-4)
    assert row["shared_firing"]["quantiles"] == sorted(row["shared_firing"]["quantiles"])
    assert row["shared_bias_mean"] == pytest.approx(est.delta_.mean(), abs=1e-4)
    assert row["shared_weight_abs_mean"] == pytest.approx(np.abs(est.V_).mean(), abs=1e-4)


def test_offset_bias_reports_the_pull_of_minibatch_offsets_and_the_decay(saved_r, capsys):
    """main() reports |Sigma| (the covariance of v and p(h = 1 | v), or of p(g = 1 | v) for a
    shared capsule) over the training images, the pull 2 |Sigma| / B of (5.11) and the weight
    decay's |lambda W|, each equal to an independent computation."""
    from capsnp import model_rs
    from capsnp.estimators import BernoulliRBM
    module = _script("offset_bias")
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:300], "stochastic", random_state=0)
    rbm = BernoulliRBM(8, n_iter=2, batch_size=20, learning_rate=0.05, weight_decay=1e-3,
                       random_state=0).fit(V)
    rbm.save(saved_r / "tiny-ob-rbm_model.npz")
    shared = RoutedCapsuleRBM(2, 6, n_iter=2, n_chains=40, momentum=0.5, assignment_biases=True,
                              shared_units=5, random_state=0).fit(V)
    shared.save(saved_r / "tiny-ob-shared_model.npz")
    module.main("tiny-ob-rbm,tiny-ob-shared", "embedded", 80, saved_r)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    Vn = binarize(X[:80], "stochastic", random_state=0)  # (80, 784)
    for row, est in zip(rows, (rbm, shared)):
        if est is rbm:
            P, pixels, W = rbm.transform(Vn), Vn, rbm.components_
        else:
            P = model_rs.shared_probability(shared._params(), shared._checked(Vn))  # (80, 5)
            pixels, W = shared._checked(Vn).reshape(80, -1), shared.V_
        sigma = np.abs(np.einsum("ni,nk->ik", pixels, P) / 80 - np.outer(pixels.mean(0), P.mean(0)))
        assert row["sigma_abs"]["mean"] == pytest.approx(sigma.mean(), abs=1e-5)
        assert row["sigma_abs"]["quantiles"] == sorted(row["sigma_abs"]["quantiles"])
        assert row["pull_abs_mean"] == pytest.approx(2 * sigma.mean() / est.batch_size, rel=1e-2)
        assert row["decay_abs_mean"] == pytest.approx(est.weight_decay * np.abs(W).mean(), rel=1e-2)
        assert row["pull_over_decay"] == pytest.approx(row["pull_abs_mean"] / row["decay_abs_mean"], abs=0.1)


def test_is_proposal_check_fixed_points():
    """The check's fixed points are fixed points of the mean field (one more update stays put),
    and distinct ones are counted (a routing and its parent swap differ on decisive patches)."""
    from capsnp import model_r as mr
    from capsnp.ops import softmax
    from test_model_rb import make_params

    check = _script("is_proposal_check")
    rng = np.random.default_rng(0)
    p = make_params(0, I=6, J=2, d_h=3, d_v=2, scale=1.5)
    v = rng.integers(0, 2, size=(5, 6, 2)).astype(float)  # (B, I, d_v)
    c = check.fixed_point(p, v, softmax(mr.prior_logits(p, v), axis=-1))  # (B, I, J)
    assert np.abs(mr.mean_field(p, v, max_iter=1, start=c)[0] - c).max() < 1e-6
    two = np.stack([c, c, 1.0 - c])  # the third swaps the parents of every patch
    counts = check.distinct_count(two)  # (B,)
    assert list(counts) == [1 if np.abs(1 - 2 * c[b]).max() <= 0.5 else 2 for b in range(5)]
    assert counts.max() == 2


def test_is_proposal_check_reports_every_proposal(saved_r, tmp_path, capsys):
    """Six proposals and a fixed-point line; the reported estimator is the reference (difference
    0); with one capsule there is one routing, so every proposal gives the same exact value."""
    check = _script("is_proposal_check")
    check.main("tiny", "embedded", 20, saved_r, 50, 3, 10)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("proposal") for x in lines[:6]] == ["training", "training_S", "converged",
                                                      "multi_start", "widened", "multi_start_stratified"]
    assert lines[0]["mean_difference_from_training"] == 0.0 and lines[0]["draws"] == 100
    assert all(x["images"] == 20 and x["mean_is_se"] >= 0 for x in lines[:6])
    assert 1.0 <= lines[6]["mean_distinct_fixed_points"] <= 3.0 and lines[6]["starts"] == 3
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:200], "stochastic", random_state=0)
    RoutedCapsuleRBM(1, 6, n_iter=1, n_chains=50, random_state=0).fit(V).save(tmp_path / "one_model.npz")
    (tmp_path / "one.json").write_text(json.dumps({"params": {"random_state": 0}}))
    check.main("one", "embedded", 20, tmp_path, 30, 2, 10)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    for x in lines[:6]:
        assert abs(x["mean_difference_from_training"]) < 1e-6 and x["mean_is_se"] < 1e-6, x["proposal"]
    assert lines[6]["mean_distinct_fixed_points"] == 1.0


def test_train_test_gap(tmp_path, capsys):
    """Both sets are scored with the estimator's own log_likelihood on the run's binarisations
    (training split with the run's seed, test split with seed + 1), log Z from the last line of
    the AIS check when there is one, else from the row; the difference does not depend on log Z."""
    from capsnp.estimators import BernoulliRBM

    check = _script("train_test_gap")
    X, _ = load_dataset("embedded", "train")
    Xt, _ = load_dataset("embedded", "test")
    V = binarize(X, "stochastic", random_state=3)  # the seed-3 run's training images
    rbm = BernoulliRBM(8, n_iter=1, batch_size=50, random_state=3).fit(V[:300])
    caps = RoutedCapsuleRBM(2, 6, n_iter=1, n_chains=50, random_state=3).fit(V[:300])
    for name, est in (("rbm", rbm), ("caps", caps)):
        est.save(tmp_path / f"{name}_model.npz")
        (tmp_path / f"{name}.json").write_text(json.dumps({"log_z": 50.0, "params": {"random_state": "3"}}))
    (tmp_path / "caps_ais_check.jsonl").write_text('{"log_z": 1.0}\n{"log_z": 70.0}\n')
    check.main("rbm,caps", "embedded", 40, tmp_path)
    rows = {r["model"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    Vt = binarize(Xt, "stochastic", random_state=4)  # the run's test binarisation
    assert rows["rbm"]["log_z"] == 50.0 and rows["rbm"]["log_z_from"] == "rbm.json"
    assert rows["rbm"]["train_log_likelihood"] == pytest.approx(rbm.log_likelihood(V[:40], 50.0).mean(), abs=1e-4)
    assert rows["rbm"]["test_log_likelihood"] == pytest.approx(rbm.log_likelihood(Vt[:40], 50.0).mean(), abs=1e-4)
    assert rows["caps"]["log_z"] == 70.0 and rows["caps"]["log_z_from"] == "caps_ais_check.jsonl"
    ll = caps.log_likelihood(V[:40], 70.0, n_samples=100, random_state=np.random.default_rng(0))
    assert rows["caps"]["train_log_likelihood"] == pytest.approx(ll.mean(), abs=1e-4)
    y = load_dataset("embedded", "train")[1][:40]
    assert rows["caps"]["train_by_class"] == [pytest.approx(ll[y == k].mean(), abs=1e-3) if np.any(y == k)
                                              else None for k in range(10)]
    for r in rows.values():
        assert r["train_minus_test"] == pytest.approx(r["train_log_likelihood"] - r["test_log_likelihood"], abs=2e-4)
        assert r["train_sem"] > 0 and r["test_sem"] > 0
    (tmp_path / "caps_ais_check.jsonl").write_text('{"log_z": 90.0}\n')
    check.main("caps", "embedded", 40, tmp_path)
    moved = json.loads(capsys.readouterr().out)
    assert moved["train_log_likelihood"] == pytest.approx(rows["caps"]["train_log_likelihood"] - 20.0, abs=1e-3)
    assert moved["train_minus_test"] == pytest.approx(rows["caps"]["train_minus_test"], abs=1e-3)


def test_train_test_gap_pools_checks_of_the_last_schedule(tmp_path):
    """Several AIS checks of one schedule (other seeds) give the log of the mean of their Z
    estimates; a check of another schedule is left out, and a lone line is read as it is."""
    saved_log_z = _script("train_test_gap").saved_log_z
    lines = [dict(temperatures=4835, runs=50, log_z=0.0), dict(temperatures=43501, runs=50, log_z=10.0),
             dict(temperatures=43501, runs=50, seed=2, log_z=10.0 + np.log(3.0))]
    (tmp_path / "m_ais_check.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    log_z, source = saved_log_z(tmp_path, "m")
    assert source == "m_ais_check.jsonl"
    assert log_z == pytest.approx(10.0 + np.log(2.0))  # log((e^10 + 3 e^10) / 2)
    (tmp_path / "m_ais_check.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert saved_log_z(tmp_path, "m")[0] == 0.0


def test_step_profile_reports_own_times_and_who_asks_for_contiguous_arrays(tmp_path, monkeypatch, capsys):
    """One profiled epoch of a saved shared-capsule model: the top functions by own time, in
    order and within the total, and the contiguous-layout requests by the function that made
    them, the compiled RBM passes of the shared capsule among them (results sec. 38)."""
    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:400], "stochastic", random_state=0)
    folder = tmp_path / "docs" / "results" / "embedded"
    folder.mkdir(parents=True)
    RoutedCapsuleRBM(2, 6, n_iter=1, n_chains=50, momentum=0.5, assignment_biases=True, shared_units=5,
                     random_state=0).fit(V).save(folder / "tiny-rs_model.npz")
    monkeypatch.chdir(tmp_path)
    _script("step_profile").main("tiny-rs", 400, "embedded", 6)
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "tiny-rs" and report["images"] == 400
    own = [s for s, _, _ in report["top_own_seconds"]]
    assert len(own) == 6 and own == sorted(own, reverse=True)
    assert 0 < sum(own) <= report["profiled_seconds"] + 1e-3  # rounded to 4 and 3 digits
    copies = report["contiguous_copies_by_caller"]
    assert all(s > 0 for s in copies.values())
    if NUMBA_AVAILABLE:  # the compiled RBM passes ask for V's transposed view in layout
        assert any(k.startswith("_kernels_rbm.py") for k in copies)


def test_restricted_log_z_sums_two_restricted_masses_to_the_forward_log_z(saved_r, capsys):
    script = _script("restricted_log_z")
    p = np.random.default_rng(0).uniform(0.05, 0.95, 7)
    for t in (-1, 0, 2.5, 6):  # (6.9) on the flipped pixels: P(count <= t) by enumeration
        V = enumerate_binary(7)  # (128, 7)
        exact = np.prod(np.where(V == 1, p, 1 - p), axis=1)[V.sum(axis=1) <= t].sum()
        assert np.exp(script.log_mass_at_most(p, t)) == pytest.approx(exact, rel=1e-12, abs=1e-300)
    # a threshold inside the model's ink range, so that both sets hold mass
    script.main("tiny", "embedded", "fast", 16, 20, saved_r, 1, 100, "digits,box,reverse")
    report = json.loads(capsys.readouterr().out)
    assert report["temperatures"] == 1451 and report["runs"] == 16
    assert 0 < report["chains_from_noise_in_box"] < 16
    assert len(report["chains_from_noise_ink_quantiles"]) == 7
    assert 0.01 < report["box_share"] < 0.99, report
    est = load_estimator(saved_r / "tiny_model.npz")
    plain = ais_log_partition(est, 64, betas=default_betas(fast=True), random_state=2,
                              base_rate=_script("ais_schedule_check").experiment_base_rate(est, "embedded"))
    se = np.hypot(plain.std_error, max(report["digits_std_error"], report["box_std_error"]))
    assert abs(report["log_z"] - plain.log_z) < 5 * se + 0.1, (report["log_z"], plain.log_z)
    assert report["reverse_box_log_z"] > report["log_z_box"] - 5 * report["reverse_box_std_error"] - 0.1
    assert report["reported_log_z"] is None  # tiny.json has no log Z
    # every run ends inside its own set; the pictures and B's base are written
    assert report["digits_end_ink_quantiles"][-1] <= 100 < report["box_end_ink_quantiles"][0]
    for key in ("digits", "box"):
        assert 0 < report[f"{key}_top_run_share"] <= report[f"{key}_top_ten_share"] <= 1 + 1e-12
        assert (saved_r / f"tiny_restricted_{key}_end_states.png").stat().st_size > 0
    base = np.load(saved_r / "tiny_box_base.npy")  # (D,) in image layout
    assert base.shape == (784,) and 0 <= base.min() and base.max() <= 1
    # ... and B's base can come from that file (e.g. another model's): the same base, B's mass
    # from other runs
    script.main("tiny", "embedded", "fast", 16, 20, saved_r, 3, 100, "box", str(saved_r / "tiny_box_base.npy"))
    again = json.loads(capsys.readouterr().out)
    assert again["box_base"].endswith("tiny_box_base.npy") and "log_z_digits" not in again
    np.testing.assert_allclose(np.load(saved_r / "tiny_box_base.npy"), base, rtol=1e-12)
    assert again["box_log_base_mass"] == pytest.approx(report["box_log_base_mass"], rel=1e-9)
    assert abs(again["log_z_box"] - report["log_z_box"]) < 5 * np.hypot(again["box_std_error"],
                                                                       report["box_std_error"]) + 0.1
