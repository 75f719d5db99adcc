"""Which parameters' gradients the lag of PCD's persistent chains distorts.

``chain_lag.py`` measured the lag in log f: while the rate is high, the chains sit below the
current model's typical set. Here the same probes measure it in the gradient, parameter group by
parameter group. At a probe epoch, with the parameters frozen:

* ``s0``: the model statistics of the chains as they are, those the next PCD step uses;
* ``sA``, ``sB``, ``sC``: the statistics after ``SWEEPS`` more sweeps of three copies of the
  chains, each with its own stream (the chains "caught up");
* ``g = data - sB``: the gradient with caught-up chains, the data statistics taken on a fixed
  batch of ``N_DATA`` training images (mean-field routing with the estimator's own settings for
  Model R, (4.6), (4.8); ``-dF/dtheta`` for the RBM, (5.6)).

PCD's step is ``data - s0 = g + (sB - s0)``, so for each group the lag adds
``lag_share = (sA - s0) . g / (g . g)`` of the step along g (sA in place of sB keeps the noise
of g out of the numerator), and ``control = (sA - sC) . g / (g . g)``, two caught-up copies,
is zero in expectation and shows the noise of that number. ``shift = |sA - s0| / |g|`` and
``noise = |sA - sC| / |g|`` are the same comparison in size, whatever the direction.

The statistics of a chain state are Rao-Blackwellised over what the state does not fix: for the
RBM ``-dF(v)/dtheta`` (5.6), for Model R the expectation over ``h ~ p(h | v, a)`` (4.4) of
``-dE(v, h, a)/dtheta``, i.e. (4.8) with ``c = onehot(a)`` and ``mu = p(h = 1 | v, a)``.
Model R's W is split into the pairs (position i, capsule j) that take at least 1% of the ink
patches at i under the data's routing (as ``routing_usage.py`` counts them) and the others, whose data
statistic is (almost) zero: they learn only from the chains.

One JSON line per probe (the probe epochs of ``chain_lag.py``):

    python docs/results/statistic_lag.py rb-2x250-m5-lr2-mf3-equal-time mnist 40 > statistic_lag.jsonl
"""

import sys

import numpy as np

from capsnp import model_r, rbm
from capsnp.ais import annealing_path
from capsnp.capsules import to_capsules
from capsnp.estimators import BernoulliRBM
from capsnp.params import RBMParams
from chain_lag import chain_state, train_and_probe  # beside this script
from routing_usage import ink_routing

SWEEPS = 30
N_DATA = 2000
CHAIN_ONLY = 0.01  # a pair (i, j) with fewer than this share of position i's ink patches


def is_rbm(est):
    return isinstance(est, BernoulliRBM)


def chain_statistics(params, state, weights=None):
    """Model statistics of chain states, averaged over the chains (or with weights (n,)): the fields of ``params``.

    RBM: v (n, D) -> ``rbm.sufficient_statistics`` (5.6). Model R: (v (n, I, d_v), a (n, I)) ->
    (4.8) with c = onehot(a) (n, I, J) and mu = p(h = 1 | v, a) (n, J, d_h) (4.4)."""
    if isinstance(params, RBMParams):
        return rbm.sufficient_statistics(params, state, weights)
    v, a = state
    onehot = np.eye(params.W.shape[1], dtype=v.dtype)[a]  # (n, I, J)
    return model_r.data_statistics(params, v, onehot, model_r.hidden_probability(params, v, a), weights)


def data_statistics(est, params, v):
    """Data statistics of the batch v (the model's layout), as the estimator's training step forms
    them, and Model R's mean-field routing c (B, I, J) of the batch (None for the RBM)."""
    if is_rbm(est):
        return rbm.sufficient_statistics(params, v), None
    c, mu, _ = est._mean_field(params, v)  # (B, I, J), (B, J, d_h)
    return model_r.data_statistics(params, v, c, mu), c


def groups(est, v_data, c):
    """Name -> (field, mask or None) of the parameter groups that training moves.

    Model R's W is split by the batch's routing c (B, I, J) on its ink patches: pairs (i, j) at
    positions with ink that take fewer than CHAIN_ONLY of the ink patches (chain-only) and the rest."""
    if is_rbm(est):
        return {"W": ("W", None), "a": ("a", None), "b": ("b", None)}
    ink, _, share = ink_routing(c, v_data)  # share: (I, J)
    chain_only = (share < CHAIN_ONLY) & ink.any(axis=0)[:, None]  # (I, J)
    out = {"W data-fed": ("W", ~chain_only), "W chain-only": ("W", chain_only),
           "alpha": ("alpha", None), "gamma": ("gamma", None)}
    if est.learn_prior:
        out["beta"] = ("beta", None)
    if est.assignment_biases:
        out.update(C=("C", None), A=("A", None))
    return out


def _select(stats, field, mask):
    """The entries of one group, flattened: (n_entries,)."""
    x = getattr(stats, field)
    if mask is None:
        return x.ravel()
    return x[np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 2)), x.shape)]


def lag_shares(est, v_data, rng, sweeps=SWEEPS):
    """Per group: lag_share, control, shift, noise (module docstring) and the share of entries."""
    params = est._params()
    path = annealing_path(est)
    start = chain_state(est)
    s0 = chain_statistics(params, start)
    caught_up = []
    for stream in rng.spawn(3):  # copies A, B, C
        state = start
        for _ in range(sweeps):
            state = path.transition(1.0, state, stream)
        caught_up.append(chain_statistics(params, state))
    sA, sB, sC = caught_up
    data, c = data_statistics(est, params, v_data)
    row = {}
    for name, (field, mask) in groups(est, v_data, c).items():
        x0, xA, xB, xC, xd = (_select(s, field, mask) for s in (s0, sA, sB, sC, data))
        g = xd - xB  # (n_entries,)
        gg = float(g @ g)
        if gg == 0.0:  # an empty group (no chain-only pairs)
            continue
        row[name] = {"entries": int(g.size), "lag_share": float((xA - x0) @ g) / gg,
                     "control": float((xA - xC) @ g) / gg,
                     "shift": float(np.linalg.norm(xA - x0) / np.sqrt(gg)),
                     "noise": float(np.linalg.norm(xA - xC) / np.sqrt(gg))}
    return row


def main(name, dataset="mnist", epochs=40, seed=0):
    def measure(est, V, rng):
        v = V[:N_DATA]  # (N_DATA, D)
        if not is_rbm(est):
            v = to_capsules(v, est.image_shape_, est.patch_)  # (N_DATA, I, d_v)
        return lag_shares(est, v.astype(np.float64), rng)

    train_and_probe(name, dataset, epochs, seed, measure)


if __name__ == "__main__":
    main(*sys.argv[1:])
