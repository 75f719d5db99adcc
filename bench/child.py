"""Work run in a fresh process by the benchmark: peak memory of one configuration, JIT cost.

``python -m bench.child memory CONFIG BACKEND [--quick]`` prints one JSON line with the peak of
the Python/NumPy allocations (tracemalloc) during one call of CONFIG, the resident size before
the call (after the imports and a warm-up call on a tiny input) and the peak resident size
during it (VmHWM, reset before the call); ``python -m bench.child jit`` prints the seconds spent
importing capsnp and fitting each estimator once on a tiny data set (the first fit compiles the
kernels it uses, or loads them from ``NUMBA_CACHE_DIR``).
"""

import json
import resource
import sys
import time
import tracemalloc


def _status_mb(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB, or None off Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset the process's peak resident size (Linux >= 4.0); False where that is impossible.

    ``ru_maxrss`` cannot be used: a process started by fork + exec keeps the peak of the parent
    it was forked from (the benchmark's own process, hundreds of MB).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb():
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory(config, backend, quick):
    import numpy as np

    from bench import workloads as w
    from capsnp import kernels

    rng = np.random.default_rng(0)
    dt = np.float64
    k = kernels.get_backend(backend)
    shapes = {
        "routing-mnist": dict(B=100, I=49, J=32, d_h=16, d_v=16),
        "routing-sabour": dict(B=32, I=1152, J=10, d_h=16, d_v=8),
        "p-mh": dict(B=100, I=49, J=16, d_h=8, d_v=16),
        "p-reconstruct": dict(B=100, I=49, J=16, d_h=8, d_v=16),
        "r": dict(B=100, I=49, J=16, d_h=8, d_v=16),
        "rbm": dict(B=100, D=784, H=500),
    }[config]
    if quick:
        shapes = {key: max(2, v // 8) for key, v in shapes.items()}

    def run(s):
        if config.startswith("routing"):
            u = w.random_u_hat(rng, s["B"], s["I"], s["J"], s["d_h"], dt)
            g = rng.normal(size=(s["B"], s["J"], s["d_h"]))
            k.routing.routing_forward_vjp(u, 3, None, g_s=g, g_v=g)
        elif config in ("p-mh", "p-reconstruct"):
            p = w.random_p_params(rng, s["I"], s["J"], s["d_h"], s["d_v"], dt)
            v = w.binary_capsules(rng, s["B"], s["I"], s["d_v"], dt)
            k.model_p.free_energy_grad(p, v, 3, "full")
            sweep = k.model_p.mh_sweep if config == "p-mh" else k.model_p.reconstruct_step
            v2 = sweep(p, v, rng, 3)[0]
            k.model_p.free_energy_grad(p, v2, 3, "full")
        elif config == "r":
            p = w.random_r_params(rng, s["I"], s["J"], s["d_h"], s["d_v"], dt)
            v = w.binary_capsules(rng, s["B"], s["I"], s["d_v"], dt)
            c, mu, _ = k.model_r.mean_field(p, v)
            k.model_r.data_statistics(p, v, c, mu)
            a = k.model_r._categorical_draw(c, rng.random(c.shape[:2]))
            v2, h, a, resp = k.model_r.gibbs_sweep(p, v, a, rng)
            k.model_r.model_statistics(p, v, h, resp)
        else:
            from capsnp.params import RBMParams

            p = RBMParams((rng.normal(0, 0.01, (s["D"], s["H"]))).astype(dt), np.zeros(s["D"]),
                          np.zeros(s["H"]))
            v = (rng.random((s["B"], s["D"])) < 0.13).astype(dt)
            v2, _ = k.rbm.gibbs_sweep(p, v, rng)
            k.rbm.cd_gradient(p, v, v2)

    run({key: 2 for key in shapes})  # compile / load the kernels on a tiny input
    reset = _reset_peak()
    baseline = _status_mb("VmRSS") or _peak_mb()
    tracemalloc.start()
    start = time.perf_counter()
    run(shapes)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = _peak_mb()
    print(json.dumps({"config": config, "backend": backend, "shapes": shapes,
                      "traced_peak_mb": traced_peak, "rss_before_mb": baseline, "peak_mb": peak,
                      "delta_mb": peak - baseline if reset else None, "seconds": seconds}))


def jit():
    start = time.perf_counter()
    import numpy as np

    import capsnp

    out = {"import_seconds": time.perf_counter() - start}
    rng = np.random.default_rng(0)
    X = (rng.random((20, 64)) < 0.2).astype(np.float64)
    for name, est in (
        ("CapsulePoE", capsnp.CapsulePoE(n_capsules=2, capsule_dim=2, n_iter=1, batch_size=10)),
        ("RoutedCapsuleRBM", capsnp.RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, n_iter=1,
                                                     batch_size=10)),
        ("BernoulliRBM", capsnp.BernoulliRBM(n_components=4, n_iter=1, batch_size=10)),
    ):
        t = time.perf_counter()
        est.fit(X)
        out[f"fit_{name}_seconds"] = time.perf_counter() - t
    out["total_seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "memory":
        memory(sys.argv[2], sys.argv[3], "--quick" in sys.argv)
    elif sys.argv[1] == "jit":
        jit()
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
