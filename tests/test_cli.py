"""``python -m capsnp``: train, sample and evaluate on a tiny configuration, in-process."""

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from capsnp.cli import load_estimator, main
from capsnp.datasets import binarize, load_dataset
from capsnp.io import load_model


@pytest.fixture(scope="module", autouse=True)
def single_blas_thread():
    with threadpool_limits(limits=1):
        yield


TINY = {"rbm": ["--hidden", "20"], "r": ["--capsules", "4", "--capsule-dim", "4"],
        "p": ["--capsules", "4", "--capsule-dim", "4"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run per model: {model: output directory}."""
    runs = {}
    for model, extra in TINY.items():
        out = tmp_path_factory.mktemp(f"run_{model}")
        code = main(["train", "--model", model, "--epochs", "1", "--max-images", "120",
                     "--batch-size", "40", "--sample-steps", "2", "--seed", "3",
                     "--out", str(out), *extra])
        assert code == 0
        runs[model] = out
    return runs


@pytest.mark.parametrize("model", sorted(TINY))
def test_train_writes_model_and_figures(model, trained, capsys):
    out = trained[model]
    for name in ("model.npz", "samples.png", "filters.png", "history.png"):
        assert (out / name).stat().st_size > 0, name
    arrays, meta = load_model(out / "model.npz")
    assert meta["dataset"] == "embedded" and meta["epochs"] == 1
    assert meta["n_train_images"] == 120 and len(meta["history"]) == 1
    assert meta["hyperparameters"]["random_state"] == 3
    assert {"p": "CapsulePoE", "r": "RoutedCapsuleRBM", "rbm": "BernoulliRBM"}[model] == meta["model"]
    assert ("W_" in arrays) != (model == "rbm")


def test_train_prints_epochs_and_paths(tmp_path, capsys):
    code = main(["train", "--model", "rbm", "--epochs", "2", "--max-images", "50", "--hidden", "8",
                 "--batch-size", "25", "--sample-steps", "1", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch 1:" in printed and "epoch 2:" in printed
    assert str(tmp_path / "model.npz") in printed and str(tmp_path / "samples.png") in printed


@pytest.mark.parametrize("model", sorted(TINY))
def test_train_chains_option_sets_the_persistent_chain_count(model, tmp_path):
    code = main(["train", "--model", model, "--epochs", "1", "--max-images", "40", "--batch-size",
                 "20", "--chains", "7", "--sample-steps", "1", "--out", str(tmp_path), *TINY[model]])
    assert code == 0
    est = load_estimator(tmp_path / "model.npz")
    assert est.n_chains == 7 and est.persistent_chains_.shape[0] == 7


def test_train_average_option_publishes_the_moving_average(tmp_path):
    args = ["train", "--model", "rbm", "--epochs", "2", "--max-images", "40", "--batch-size", "20",
            "--hidden", "8", "--sample-steps", "1", "--seed", "1"]
    assert main([*args, "--average", "3", "--out", str(tmp_path / "avg")]) == 0
    assert main([*args, "--out", str(tmp_path / "last")]) == 0
    averaged = load_estimator(tmp_path / "avg" / "model.npz")
    last = load_estimator(tmp_path / "last" / "model.npz")
    assert averaged.average == 3 and last.average == 0
    # the same training (current parameters) with another published model (the average)
    np.testing.assert_array_equal(averaged._state.params.W, last._state.params.W)
    assert not np.array_equal(averaged.components_, last.components_)


@pytest.mark.parametrize("model", sorted(TINY))
def test_model_file_reproduces_free_energies(model, trained):
    est = load_estimator(trained[model] / "model.npz")
    X = binarize(load_dataset("embedded", "train")[0][:120], random_state=3)
    F = est.free_energy(X)
    assert F.shape == (120,) and np.all(np.isfinite(F))
    np.testing.assert_array_equal(load_estimator(trained[model] / "model.npz").free_energy(X), F)


@pytest.mark.parametrize("model", sorted(TINY))
def test_sample_and_evaluate(model, trained, tmp_path, capsys):
    model_file = str(trained[model] / "model.npz")
    png = tmp_path / "s.png"
    assert main(["sample", "--model-file", model_file, "--n", "6", "--steps", "2",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    capsys.readouterr()
    tempered = tmp_path / "t.png"
    assert main(["sample", "--model-file", model_file, "--n", "4", "--steps", "2",
                 "--temperatures", "3", "--probabilities", "--out", str(tempered)]) == 0
    assert tempered.stat().st_size > 0 and "4 samples after 2 sweeps" in capsys.readouterr().out
    assert main(["sample", "--model-file", model_file, "--temperatures", "0"]) == 2
    capsys.readouterr()
    assert main(["evaluate", "--model-file", model_file, "--max-images", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["n_images"] == 30
    assert np.isfinite(report["reconstruction_error"])
    assert ("elbo" in report) == (model == "r")
    assert ("pseudo_log_likelihood" in report) == (model != "r")
    assert main(["evaluate", "--model-file", model_file, "--max-images", "30"]) == 0
    assert "reconstruction_error" in capsys.readouterr().out


def test_errors_give_exit_codes(tmp_path, capsys):
    assert main(["train", "--model", "nope"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["sample", "--model-file", str(tmp_path / "missing.npz")]) == 1
    assert "error" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    assert main(["evaluate", "--model-file", str(bad)]) == 1
    assert main(["train", "--model", "p", "--patch", "3", "--epochs", "1", "--max-images", "10",
                 "--out", str(tmp_path / "x")]) == 1
    assert "patch" in capsys.readouterr().err


@pytest.mark.parametrize("expert", ["gaussian", "spin"])
def test_train_expert_variants_of_model_p(expert, tmp_path, capsys):
    """--expert picks Model G or S (docs/MODEL_G.md); the saved model keeps its pose parameters."""
    code = main(["train", "--model", "p", "--expert", expert, "--epochs", "1", "--max-images", "60",
                 "--batch-size", "30", "--sample-steps", "1", "--capsules", "3", "--capsule-dim", "2",
                 "--lr", "0.01", "--out", str(tmp_path)])
    assert code == 0
    est = load_estimator(tmp_path / "model.npz")
    assert est.expert == expert and est.m_.shape == (3, 2)
    assert json.loads((tmp_path / "train_args.json").read_text())["expert"] == expert
    capsys.readouterr()
    assert main(["train", "--model", "r", "--expert", expert, "--out", str(tmp_path / "r")]) != 0
    assert "--model p" in capsys.readouterr().err


def test_train_model_r_with_assignment_biases(tmp_path, capsys):
    """--assignment-biases trains Model R with C and A (docs/MODEL_RB.md); other models refuse it."""
    code = main(["train", "--model", "r", "--assignment-biases", "--epochs", "1", "--max-images", "60",
                 "--batch-size", "30", "--sample-steps", "1", "--capsules", "2", "--capsule-dim", "3",
                 "--out", str(tmp_path)])
    assert code == 0
    est = load_estimator(tmp_path / "model.npz")
    assert est.assignment_biases and est.C_.shape == (49, 2, 3) and est.A_.shape == (49, 2, 16)
    capsys.readouterr()
    assert main(["train", "--model", "rbm", "--assignment-biases", "--out", str(tmp_path / "b")]) != 0
    assert "--model r" in capsys.readouterr().err


def test_experiment_evaluate_only_reproduces_the_evaluation(tmp_path):
    """``experiment --evaluate-only`` loads the saved model and evaluates it exactly as the run
    that trained it (same seed: the same log Z, test log-likelihood and epoch count)."""
    from capsnp import experiment

    kw = dict(n_ais_runs=4, fast_ais=True, n_train=200, n_test=30, sample_steps=2)
    (trained,) = experiment.run("embedded", ["r"], 1, tmp_path, **kw)
    (tmp_path / "r.json").unlink()
    (again,) = experiment.run("embedded", ["r"], 99, tmp_path, evaluate_only=True, **kw)
    # the saved epochs' seconds, rounded to 0.1 s: 0.0 when the compiled kernels make a tiny epoch fast
    assert again["epochs"] == 1 and 0 <= again["train_seconds"] <= trained["train_seconds"]
    for key in ("log_z", "test_log_likelihood", "n_weights", "importance_sampling_mean_se",
                "importance_starts"):
        assert again[key] == trained[key], key
    assert (tmp_path / "r.json").exists() and trained["importance_starts"] == 1
    # --is-starts 3 scores the same model with the mixture proposal, as the estimator does
    (mixed,) = experiment.run("embedded", ["r"], 99, tmp_path, evaluate_only=True, is_starts=3, **kw)
    est = load_estimator(tmp_path / "r_model.npz")
    V = binarize(load_dataset("embedded", "test")[0][:30], "stochastic", random_state=1)
    ll = est.log_likelihood(V, mixed["log_z"], random_state=np.random.default_rng(0), n_starts=3)
    assert mixed["importance_starts"] == 3 and mixed["log_z"] == trained["log_z"]
    assert mixed["test_log_likelihood"] == pytest.approx(float(np.mean(ll)), abs=1e-12)
    with pytest.raises(SystemExit):
        experiment.main(["--is-starts", "0"])
