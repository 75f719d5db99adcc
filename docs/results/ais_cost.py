"""What an AIS estimate of log Z costs: the shared pass of ``ais._softplus_path`` and the rest.

AIS weighs every state at two neighbouring temperatures (6.3). For Model R (and the RBM) the log
density on the path is linear in the moving parameters plus one softplus per hidden unit of an
input that scales with beta, so one pass over a state (its routed input under its assignments,
the sparse kernel ``kernels.model_r.assigned_input``) serves both temperatures
(``AnnealingPath.log_f_pair``). For every model the interpolated parameters (6.2) keep the
shared fields as they are and scale the zero-based weights without a pass over the base.
The RBM's path has no pair: its compiled free energy is already one sparse pass, and its
rows show what the interpolation alone is worth.

This script loads trained models (``<name>_model.npz`` in docs/results/<dataset>, a name may
start with ``seed1/``) and runs AIS on each (100 runs, seed 0, the experiment's base-rate model)
over ``n_temperatures`` temperatures taken evenly from the default schedule, three ways,
alternated ``repeats`` times in one process:

* ``before``: two calls of ``log_f`` per state, Model R's ``log_joint_va`` on the NumPy
  reference (a dense product per parent over one-hot routings), every field interpolated,
  BLAS on its own threads;
* ``two passes``: two calls of ``log_f`` per state, the rest as now;
* ``now``: ``log_f_pair``, and for Model R on two kernel threads BLAS held to one
  (``ais.blas_setting``), as ``ais_log_partition`` runs it.

It prints one JSON line per model: median seconds scaled to the default schedule (14,501
temperatures), ratios to ``before``, and the log Z of each (the same draws: equal to rounding).

    CAPSNP_DATA_DIR=../shared/data python docs/results/ais_cost.py \
        rb-2x250-m5-lr2-mf3-c300,rbm-pcd-long-m5-lr2-c300 mnist 500 3
"""

import contextlib
import json
import sys
import time

import numpy as np

from ais_schedule_check import experiment_base_rate
from capsnp import _kernels_jit, _kernels_r, ais as ais_module, model_r
from capsnp.ais import ais, annealing_path, default_betas
from trained_epoch_cost import trained


def _interpolate_every_field(base, target, beta, zero=()):
    """(6.2) as it was computed before: ``(1 - beta) theta_0 + beta theta_1`` for every field."""
    return type(target)(*((1.0 - beta) * b + beta * t for b, t in zip(base, target)))


@contextlib.contextmanager
def as_before():
    """Full interpolation and Model R's reference ``log_joint_va`` inside the block."""
    saved = ais_module._interpolate, _kernels_r.log_joint_va
    ais_module._interpolate, _kernels_r.log_joint_va = _interpolate_every_field, model_r.log_joint_va
    try:
        yield
    finally:
        ais_module._interpolate, _kernels_r.log_joint_va = saved


def timed_ais(path, betas, variant):
    """(seconds, log Z) of one AIS estimate (100 runs, seed 0) on ``path`` the ``variant`` way."""
    before = variant == "before"
    with as_before() if before else ais_module.blas_setting(path):
        t0 = time.perf_counter()
        res = ais(path.log_f, path.sample_base, path.transition, path.log_z_base, betas, 100,
                  np.random.default_rng(0), log_f_pair=path.log_f_pair if variant == "now" else None)
        return time.perf_counter() - t0, res.log_z


def main(names, dataset="mnist", n_temperatures=500, repeats=3):
    n_temperatures, repeats = int(n_temperatures), int(repeats)
    full = default_betas()  # (14,501,)
    betas = full[np.unique(np.linspace(0, len(full) - 1, n_temperatures).round().astype(int))]
    for name in names.split(","):
        est = trained(dataset, name)
        path = annealing_path(est, experiment_base_rate(est, dataset))
        timed_ais(path, np.linspace(0.0, 1.0, 5), "now")  # compile the kernels
        seconds, log_z = {"before": [], "two passes": [], "now": []}, {}
        for _ in range(repeats):
            for variant in seconds:
                s, log_z[variant] = timed_ais(path, betas, variant)
                seconds[variant].append(s * len(full) / len(betas))
        median = {k: float(np.median(v)) for k, v in seconds.items()}
        print(json.dumps({"model": name, "dataset": dataset, "temperatures_timed": len(betas),
                          "repeats": repeats, "kernel_threads": _kernels_jit.num_threads(),
                          "seconds_per_default_schedule": {k: round(v, 1) for k, v in median.items()},
                          "ratio_to_before": {k: round(v / median["before"], 2) for k, v in median.items()},
                          "log_z": {k: round(v, 6) for k, v in log_z.items()}}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
