"""How far PCD's persistent chains lag behind the parameters they are trained with.

Section 15 found that 3 chain sweeps per update are worth 2 nats to the capsule model while its
sampler, at fixed parameters, moves as fast as the RBM-500's. That leaves a lag: if every
update moves the model further than one sweep moves the chains, the chains are no longer draws
of the current model and the negative statistics of the gradient (4.8, 5.6) are biased.

This trains the experiment preset ``name`` epoch by epoch (``partial_fit``, the preset's
schedule over ``epochs``; unlike ``fit`` it holds no rows out) and, after the epochs of
``PROBES``, freezes the parameters and runs copies of the persistent chains on at beta = 1 of
the annealing path (6.2), with a separate random stream, so that training is unchanged. It
records the mean over chains of ``log f``, the unnormalised log-probability of a chain state
(``-F(v)`` for the RBM, ``log p*(v, a)`` (4.4) for Model R), before and after ``k`` more sweeps,
and the mean share of pixels changed. Chains drawn from the current model keep ``E[log f]``
constant under further sweeps (the transition leaves the model invariant); a rise says that
the updates have pushed the chains' states below the model's typical set: the lag. The
paired difference's standard error over chains is printed beside it.

One JSON line per probe:

    python docs/results/chain_lag.py rbm-pcd-long-m5-lr2-40 mnist 40 > chain_lag_rbm.jsonl
"""

import json
import sys
import time

import numpy as np

from capsnp.ais import annealing_path
from capsnp.datasets import binarize, load_dataset
from capsnp.experiment import make_estimator

PROBES = (1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 60, 80, 100)
SWEEPS = (1, 3, 10, 30)


def chain_state(est):
    """The persistent chains as a state of the annealing path: v (n, D) or (v (n, I, d_v), a (n, I)).

    Read through the estimator's own chain layout (the arrays its model files store); the RBM's
    kept hidden probabilities are not part of a path state."""
    arrays = est._chain_arrays(est._state.chains)
    v = np.array(arrays["chains_v"], dtype=np.float64)  # (n, D) or (n, I, d_v)
    return (v, np.array(arrays["chains_a"])) if "chains_a" in arrays else v


def visible(state):
    """(n, D) visible states of a path state."""
    v = state[0] if isinstance(state, tuple) else state
    return v.reshape(v.shape[0], -1)


def probe(est, rng):
    """Mean log f of the chains now and after each k of SWEEPS more sweeps at fixed parameters."""
    path = annealing_path(est)
    state = chain_state(est)
    v0, f0 = visible(state), path.log_f(1.0, state)  # (n, D), (n,)
    row = {"log_f": float(f0.mean())}
    done = 0
    for k in SWEEPS:
        for _ in range(k - done):
            state = path.transition(1.0, state, rng)
        done = k
        d = path.log_f(1.0, state) - f0  # (n,) paired differences
        row[f"rise_{k}"] = float(d.mean())
        row[f"rise_{k}_se"] = float(d.std(ddof=1) / np.sqrt(d.shape[0]))
        row[f"pixels_changed_{k}"] = float((visible(state) != v0).mean())
    return row


def train_and_probe(name, dataset, epochs, seed, measure):
    """Train preset ``name`` epoch by epoch and print ``measure(est, V, rng)`` after each epoch of PROBES.

    ``V`` (60000, 784) is the training set binarised as the experiment does; ``rng`` a stream of
    its own (seed + 1000), so that probing leaves training unchanged. One JSON line per probe."""
    epochs, seed = int(epochs), int(seed)
    X, _ = load_dataset(dataset, "train")
    V = binarize(X, "stochastic", random_state=seed)  # (60000, 784), the experiment's binarisation
    est = make_estimator(name, epochs, random_state=seed)
    probe_rng = np.random.default_rng(seed + 1000)
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        est.partial_fit(V)
        seconds += time.perf_counter() - t0
        if epoch in PROBES:
            row = {"model": name, "dataset": dataset, "epoch": epoch, "train_seconds": round(seconds, 1),
                   "learning_rate": est.history_[-1]["learning_rate"]}
            row.update(measure(est, V, probe_rng))
            print(json.dumps(row), flush=True)


def main(name, dataset="mnist", epochs=40, seed=0):
    train_and_probe(name, dataset, epochs, seed, lambda est, V, rng: probe(est, rng))


if __name__ == "__main__":
    main(*sys.argv[1:])
