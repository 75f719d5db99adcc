"""Parallel tempering inside training: do persistent chains that cross between modes help?

Persistent contrastive divergence with tempered chains (Desjardins et al. 2010; Salakhutdinov
2009): instead of ``n`` persistent chains at the model, keep ``n`` ladders of ``K`` chains at
the inverse temperatures ``0 = b_0 < ... < b_{K-1} = 1`` of the AIS path (6.2) of the current
parameters (the hot end: independent pixels with the model's own visible biases; Model R's
routing prior stays). Every update:

1. one sweep of every chain at its temperature (the path's transition; at ``b = 1`` the
   model's own sweep, whose draws give the model statistics exactly as plain PCD's do);
2. the step, with the model statistics of the ``b = 1`` chains (data statistics, momentum,
   weight decay and rate as in plain PCD);
3. exchanges between neighbouring temperatures (6.6), even pairs on even updates and odd pairs
   on odd ones (``capsnp.tempering.swap_step``), all with the parameters of this step.

States made where the landscape is flat travel down the ladder, so the ``b = 1`` chains leave
a mode more easily than a plain chain does. The price is ``K`` sweeps per chain at ``b = 1``;
run with ``n_chains`` ladders so that ``K * n_chains`` chain sweeps per update match a plain row
(10 temperatures of 30 chains against 1 sweep of 300 chains). The swap rate of every pair is
recorded per epoch in the history (``swap_rate_<k>``).

    CAPSNP_DATA_DIR=../shared/data python docs/results/tempered_training.py rb-2x250-m5-lr2-mf3-c300-equal-time mnist 40 0 /tmp/pt 10 30

trains the preset with ``n_chains`` = 30 ladders of 10 temperatures and evaluates it as the
experiment does (``capsnp.experiment.run(..., evaluate_only=True)``) under the name
``<model>+pt<K>x<n>``; with 1 temperature (``... 1 30``) it trains the control, the preset
with 30 plain persistent chains, as ``<model>+c30``.
"""

import sys

import numpy as np

from capsnp.ais import annealing_path
from capsnp.estimators import BernoulliRBM, RoutedCapsuleRBM
from capsnp.experiment import run
from capsnp.tempering import default_temperatures, swap_step
from param_averaging import (capsule_gradient, check_plain_capsule_model,  # same folder
                             train_as_experiment, with_update_hook)


class Ladder:
    """The tempered chains: ``states[k]`` at ``betas[k]``, ``states[-1]`` at the model.

    Parameters
    ----------
    n_temperatures : int, K
    """

    def __init__(self, n_temperatures):
        self.betas = default_temperatures(n_temperatures)  # (K,)
        self.states = None  # list of K chain states, set from the estimator's chains
        self.n_updates = 0

    def start(self, chains):
        """Every temperature starts at the estimator's initial chains (copies)."""
        if self.states is None:
            copy = (lambda x: tuple(np.array(a) for a in x)) if isinstance(chains, tuple) else np.array
            self.states = [copy(chains) for _ in self.betas]

    def advance_hot(self, path, rng):
        """One sweep at every temperature below 1 (1. of the module docstring)."""
        self.states[:-1] = [path.transition(b, x, rng) for b, x in zip(self.betas[:-1], self.states[:-1])]

    def swap(self, path, top, rng):
        """Put the model chains' new state ``top`` in place, then exchange (3.): returns the
        acceptance rate of each pair tried, {k: float}."""
        self.states[-1] = top
        self.states, accepted = swap_step(path.log_f, self.betas, self.states, self.n_updates % 2, rng)
        self.n_updates += 1
        return {k: float(np.mean(ok)) for k, ok in accepted.items()}


def _swap_stats(rates, n_temperatures):
    """The history's per-pair swap rates: pairs not tried this update are left out of the means
    (the loop averages each key over the minibatches that report it)."""
    return {f"swap_rate_{k}": rates[k] for k in range(n_temperatures - 1) if k in rates}


def capsule_step(est, ladder):
    """The capsule model's PCD step (``RoutedCapsuleRBM._step``) with tempered chains."""
    check_plain_capsule_model(est, "tempered")
    if int(est.cd_k) != 1:
        raise ValueError("the tempered step takes one sweep per update")

    def step(params, batch, chains, rng):
        ladder.start(chains)
        path = annealing_path(params, backend=est.backend)

        def advance(rng):
            ladder.advance_hot(path, rng)
            v_in, a_in = ladder.states[-1]
            v, h, a, resp = est._kernels("model_r").gibbs_sweep(params, v_in, a_in, rng)
            return v_in, h, resp, (v, a)

        grad, top, stats = capsule_gradient(est, params, batch, rng, advance)
        rates = ladder.swap(path, top, rng)
        return grad, ladder.states[-1], {**stats, **_swap_stats(rates, len(ladder.betas))}

    return step


def rbm_step(est, ladder):
    """The RBM's PCD step with tempered chains: a block Gibbs sweep at every temperature
    (``rbm.gibbs_sweep``), the CD gradient at the ``b = 1`` chains, then the exchanges. Unlike
    ``pcd_step`` the chains keep no hidden probabilities between steps."""
    if est.centring or not est.persistent or int(est.cd_k) != 1:
        raise ValueError("the tempered step covers the uncentred RBM with persistent chains and "
                         "one sweep per update")

    def step(params, batch, chains, rng):
        rbm = est._kernels("rbm")
        ladder.start(chains[0])  # the RBM's chains are (v, hidden probabilities)
        path = annealing_path(params, backend=est.backend)
        ladder.advance_hot(path, rng)
        v, _ = rbm.gibbs_sweep(params, ladder.states[-1], rng)  # (n_chains, D)
        grad = rbm.cd_gradient(params, batch, v)
        rates = ladder.swap(path, v, rng)
        return grad, (ladder.states[-1], None), _swap_stats(rates, len(ladder.betas))

    return step


def with_tempered_chains(est, n_temperatures, n_ladders):
    """Make ``est`` train with ``n_ladders`` ladders of ``n_temperatures`` tempered chains."""
    if not isinstance(est, (RoutedCapsuleRBM, BernoulliRBM)):
        raise TypeError(f"no tempered step for {type(est).__name__}")
    est.set_params(n_chains=int(n_ladders))
    ladder = Ladder(int(n_temperatures))
    make_step = capsule_step if isinstance(est, RoutedCapsuleRBM) else rbm_step
    return with_update_hook(est, lambda *args: None, step=make_step(est, ladder)), ladder


def with_plain_chains(est, n_chains):
    """The control: ``est`` with ``n_chains`` plain persistent chains (its own step)."""
    return est.set_params(n_chains=int(n_chains))


def main(model, dataset="mnist", epochs=40, seed=0, out="/tmp/tempered_training",
         n_temperatures=10, n_ladders=30):
    """``n_temperatures`` 1 trains the control, ``n_ladders`` plain persistent chains
    (``<model>+c<n>``): the chains at the model without the ladders."""
    if int(n_temperatures) == 1:
        name = f"{model}+c{int(n_ladders)}"
        change = lambda est: with_plain_chains(est, n_ladders)  # noqa: E731
    else:
        name = f"{model}+pt{int(n_temperatures)}x{int(n_ladders)}"
        change = lambda est: with_tempered_chains(est, n_temperatures, n_ladders)[0]  # noqa: E731
    est, out = train_as_experiment(model, dataset, epochs, seed, out, change, name[len(model):])
    est.save(out / f"{name}_model.npz")
    run(dataset, [name], int(epochs), out, seed=int(seed), evaluate_only=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
