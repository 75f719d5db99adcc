"""Fast weights for the persistent chains (FPCD): do chains that are pushed out of their modes help?

Persistent contrastive divergence with fast weights (Tieleman and Hinton, 2009) runs the
persistent chains on ``theta + phi`` instead of ``theta``. The fast parameters ``phi`` (one
container of the shape of ``theta``, zero at the start) take every step's gradient with their
own rate and shrink by a constant factor after each update::

    phi <- FAST_DECAY * phi + fast_rate * g        (g: the step's ascent direction)

so that wherever the chains sit, the energy there rises at once (the negative statistics
lower the probability of where the chains are), pushing them on, while ``theta``'s learning is
unchanged: the data statistics, the model statistics taken at the chain states, the momentum
and weight decay are those of plain PCD. ``phi`` forgets within about 1 / (1 - FAST_DECAY) = 20
updates. The fast rate is the regular rate at the start of training and stays constant.

This script trains an experiment preset (the untied capsule model with assignment biases, or
the Bernoulli RBM; persistent chains, one sweep per update) with fast weights and evaluates it
as the experiment does (``capsnp.experiment.run(..., evaluate_only=True)``), under the name
``<model>+fpcd``:

    CAPSNP_DATA_DIR=../shared/data python docs/results/fast_weights.py rb-2x250-m5-lr2-mf3-c300-equal-time mnist 40 0 /tmp/fpcd
"""

import sys

import numpy as np

from capsnp.estimators import BernoulliRBM, RoutedCapsuleRBM
from capsnp.experiment import run
from param_averaging import (capsule_gradient, check_plain_capsule_model,  # same folder
                             train_as_experiment, with_update_hook)

FAST_DECAY = 0.95  # Tieleman and Hinton's 19/20


def _plus(params, fast):
    """theta + phi, a container of the same type and dtypes."""
    return type(params)(*(p + f for p, f in zip(params, fast)))


class FastWeights:
    """The fast parameters phi and their update (module docstring).

    Parameters
    ----------
    fast_rate : float
    """

    def __init__(self, fast_rate):
        self.fast_rate = float(fast_rate)
        self.phi = None

    def chain_params(self, params):
        """The parameters the chains run on: theta + phi (theta before the first update)."""
        return params if self.phi is None else _plus(params, self.phi)

    def add(self, grad, like):
        """phi <- FAST_DECAY * phi + fast_rate * grad."""
        if self.phi is None:
            self.phi = type(like)(*(np.zeros_like(p) for p in like))
        self.phi = type(like)(*(FAST_DECAY * f + self.fast_rate * g
                                for f, g in zip(self.phi, grad)))


def capsule_step(est, fast):
    """The capsule model's PCD step (``RoutedCapsuleRBM._step``) with its chains on theta + phi."""
    check_plain_capsule_model(est, "fast-weight")

    def step(params, batch, chains, rng):
        def advance(rng):
            model_r, chain_params = est._kernels("model_r"), fast.chain_params(params)
            v, a = chains
            for _ in range(int(est.cd_k)):
                v_in = v
                v, h, a, resp = model_r.gibbs_sweep(chain_params, v_in, a, rng)
            return v_in, h, resp, (v, a)

        return capsule_gradient(est, params, batch, rng, advance)

    return step


def rbm_step(est, fast):
    """The RBM's PCD step with its chains on theta + phi: ``cd_k`` block Gibbs sweeps
    (:func:`capsnp.rbm.gibbs_sweep`) on theta + phi, then the CD gradient (``cd_gradient``), whose
    negative statistics are taken at the chain states with theta. Unlike ``pcd_step`` the chains
    keep no hidden probabilities between steps: the first half-sweep of a step runs on the
    parameters after the last update."""
    if est.centring or not est.persistent:
        raise ValueError("the fast-weight step covers the uncentred RBM with persistent chains")

    def step(params, batch, chains, rng):
        rbm = est._kernels("rbm")
        chain_params = fast.chain_params(params)
        v, _ = chains  # (n_chains, D)
        for _ in range(int(est.cd_k)):
            v, _ = rbm.gibbs_sweep(chain_params, v, rng)
        return rbm.cd_gradient(params, batch, v), (v, None), {}

    return step


def with_fast_weights(est):
    """Make ``est`` train with fast weights (its ``_objective`` replaced on the instance)."""
    fast = FastWeights(est.learning_rate)
    make_step = capsule_step if isinstance(est, RoutedCapsuleRBM) else rbm_step
    if not isinstance(est, (RoutedCapsuleRBM, BernoulliRBM)):
        raise TypeError(f"no fast-weight step for {type(est).__name__}")
    est = with_update_hook(est, lambda params, grad, new, epoch: fast.add(grad, params),
                           step=make_step(est, fast))
    return est, fast


def main(model, dataset="mnist", epochs=40, seed=0, out="/tmp/fast_weights"):
    est, out = train_as_experiment(model, dataset, epochs, seed, out,
                                   lambda est: with_fast_weights(est)[0], "+fpcd")
    est.save(out / f"{model}+fpcd_model.npz")
    run(dataset, [f"{model}+fpcd"], int(epochs), out, seed=int(seed), evaluate_only=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
