"""Averaged parameters: is the model at the end of training worth less than an average of its path?

Trains one experiment preset exactly as ``python -m capsnp experiment`` does (same data, seed and
draws: the averages are read off the updates and never feed back into training), while keeping
averages of the parameters over the updates:

* ``ema<k>``: an exponential moving average with a horizon of ``k`` updates,
  ``avg <- avg + (theta - avg) / k`` from the first update on;
* ``tail<q>``: the plain mean of the parameters after every update of the last ``q`` percent of
  the epochs (Polyak-Ruppert averaging of the tail).

The persistent chains always run on the current parameters, as in training. Each set of
parameters is saved as ``<out>/<model>+<average>_model.npz`` next to ``<out>/<model>_model.npz``
(the parameters of the last update) and all are evaluated as the experiment evaluates a model
(``capsnp.experiment.run(..., evaluate_only=True)``: AIS log Z with the default schedule, test
log-likelihood, sample grids, one JSON per model).

    CAPSNP_DATA_DIR=../shared/data python docs/results/param_averaging.py rb-2x250-m5-lr2-mf3-c300-equal-time mnist 40 0 /tmp/avg
    CAPSNP_DATA_DIR=../shared/data python docs/results/param_averaging.py rbm-pcd-long-m5-lr2-c300-40 mnist 40 1 /tmp/avg1 ema1000,tail25
"""

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from capsnp.datasets import binarize, load_dataset
from capsnp.experiment import make_estimator, run
from capsnp.training import moving_average

EMA_HORIZONS = (1000, 5000)  # updates; one MNIST epoch is 600 updates of 100 images
TAIL_PERCENTS = (50, 25)


class ParameterAverages:
    """Running averages of a parameter container, fed by the training loop's update.

    Parameters
    ----------
    n_epochs : int, the length of training (to place the tails)
    """

    def __init__(self, n_epochs):
        self.n_epochs = int(n_epochs)
        self.ema = {k: None for k in EMA_HORIZONS}
        self.tail_sum = {q: None for q in TAIL_PERCENTS}
        self.tail_count = {q: 0 for q in TAIL_PERCENTS}

    def tail_start(self, q):
        """First 1-based epoch of the last ``q`` percent of the epochs (at least the last one)."""
        return self.n_epochs - max(1, int(round(self.n_epochs * q / 100))) + 1

    def add(self, params, epoch):
        """Fold in the parameters after one update of (1-based) ``epoch``."""
        params64 = type(params)(*(np.asarray(p, dtype=np.float64) for p in params))
        for k, avg in self.ema.items():
            self.ema[k] = moving_average(avg, params64, k)  # kept in float64
        for q in TAIL_PERCENTS:
            if epoch >= self.tail_start(q):
                if self.tail_sum[q] is None:
                    self.tail_sum[q] = [np.array(p, dtype=np.float64) for p in params]
                else:
                    for s, p in zip(self.tail_sum[q], params):
                        s += p
                self.tail_count[q] += 1

    def averages(self, like):
        """{suffix: container of the type and dtypes of ``like``}."""
        out = {}
        for k, avg in self.ema.items():
            out[f"ema{k}"] = type(like)(*(a.astype(p.dtype) for a, p in zip(avg, like)))
        for q in TAIL_PERCENTS:
            n = self.tail_count[q]
            out[f"tail{q}"] = type(like)(*((s / n).astype(p.dtype)
                                           for s, p in zip(self.tail_sum[q], like)))
        return out


def with_update_hook(est, hook, step=None):
    """Make ``est`` call ``hook(params, grad, new_params, epoch)`` after every update of its
    training loop (and take its steps with ``step``, when given), by replacing its
    ``_objective`` on the instance; ``del est._objective`` restores the class's."""
    make_objective = est._objective

    def objective():
        base = make_objective()

        def update(params, velocity, grad, lr, mom, wd, epoch):
            new_params, velocity = base.update(params, velocity, grad, lr, mom, wd, epoch)
            hook(params, grad, new_params, epoch)
            return new_params, velocity

        return replace(base, update=update, step=step or base.step)

    est._objective = objective
    return est


def check_plain_capsule_model(est, what):
    """ValueError unless ``est`` is the untied, uncentred capsule model with persistent chains
    (the settings :func:`capsule_gradient` reproduces)."""
    if est.centring or est.tie_weights or est.assignment_bias_rate != 1.0 or not est.persistent:
        raise ValueError(f"the {what} step covers the untied, uncentred model with persistent "
                         f"chains")


def capsule_gradient(est, params, batch, rng, advance):
    """The capsule model's PCD gradient as ``RoutedCapsuleRBM._step`` takes it (4.8) for the
    models :func:`check_plain_capsule_model` accepts, with the chains advanced by
    ``advance(rng) -> (v_in, h, resp, chains)``: the states before the last sweep, that sweep's
    hidden draws and routing responsibilities, and the new chain state. The data statistics
    draw from ``rng`` first, then ``advance``. Returns (grad, chains, stats) as a step does."""
    c, mu, n_mf = est._mean_field(params, batch)  # (B, I, J), (B, J, d_h), (B,)
    positive = est._data_statistics(params, batch, c, mu, rng)
    v_in, h, resp, chains = advance(rng)
    negative = est._kernels("model_r").model_statistics(params, v_in, h, resp)  # at the chains
    grad = type(params)(*(p - n for p, n in zip(positive, negative)))
    if not est.learn_prior:
        grad = grad._replace(beta=np.zeros_like(params.beta))
    return grad, chains, {"train_mean_field_iterations": float(np.mean(n_mf))}


def with_averages(est, averages):
    """Make ``est`` report every update's new parameters to ``averages``."""
    return with_update_hook(est, lambda params, grad, new, epoch: averages.add(new, epoch))


def selected(names, evaluate):
    """The names among ``<model>`` and ``<model>+<suffix>`` that ``evaluate`` asks for: "all", or
    comma-separated suffixes, "last" standing for ``<model>`` itself."""
    if evaluate == "all":
        return list(names)
    wanted = evaluate.split(",")
    return [n for n in names if (n.partition("+")[2] or "last") in wanted]


def train_as_experiment(model, dataset, epochs, seed, out, change, label=""):
    """Fit the preset ``model`` on the data, seed and epochs ``python -m capsnp experiment`` uses,
    after ``change(est)`` has attached its hooks (:func:`with_update_hook`) or changed its
    settings; the hooks are then removed. Returns (the fitted estimator, ``out`` as a created
    Path)."""
    epochs, seed, out = int(epochs), int(seed), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    X_train, _ = load_dataset(dataset, "train")
    V_train = binarize(X_train, "stochastic", random_state=seed)  # as experiment.run
    est = change(make_estimator(model, epochs, random_state=seed))
    t0 = time.perf_counter()
    est.fit(V_train)
    print(f"{model}{label}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    est.__dict__.pop("_objective", None)  # back to the class's method: the estimator saves as usual
    return est, out


def main(model, dataset="mnist", epochs=40, seed=0, out="/tmp/param_averaging", evaluate="all"):
    """``evaluate``: "all", or the comma-separated suffixes to evaluate ("last" for the
    parameters of the last update, e.g. "ema1000,tail25"); every file is saved either way."""
    averages = ParameterAverages(epochs)
    est, out = train_as_experiment(model, dataset, epochs, seed, out,
                                   lambda est: with_averages(est, averages))
    est.save(out / f"{model}_model.npz")
    last = est._params()
    names = [model]
    for suffix, params in averages.averages(last).items():
        est._set_params(params)
        est.save(out / f"{model}+{suffix}_model.npz")
        names.append(f"{model}+{suffix}")
    est._set_params(last)
    run(dataset, selected(names, evaluate), int(epochs), out, seed=int(seed), evaluate_only=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
