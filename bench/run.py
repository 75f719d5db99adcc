"""``python -m capsnp bench``: how fast capsnp runs on this machine, in one run.

Sections (each reports medians of repeated runs and the ratios between them):

1. ``gemm``: the matrix-product ceiling of this machine (float64/float32 GFLOP/s, 1 and 2 BLAS
   threads) for the RBM's product (100x784 @ 784x500) and the batched product of the capsule
   predictions (I, J d_h, d_v) @ (I, d_v, B).
2. ``routing``: routing forward + VJP at the MNIST configuration and at Sabour et al.'s layer:
   NumPy reference, Numba kernels and, when ``import torch`` works, the same math in torch ops
   with autograd.
3. ``rbm``: one epoch of PCD-1 on 10,000 binarised images, 784x500, batch 100: capsnp's
   BernoulliRBM against scikit-learn's, float64 and float32, runs alternating, both threads;
   and the same with one thread (1 BLAS thread, 1 Numba thread).
4. ``throughput``: training images/s of Model P (mh, reconstruct) and Model R at their default
   configurations, with the achieved GFLOP/s (``bench/workloads.py`` states the formulas) as a
   fraction of the GEMM ceiling.
5. ``scaling``: time per batch of Model P's gradient and MH sweep as B, I, J and d_h double
   (``bench/scaling.png``).
6. ``memory``: peak resident memory of each configuration, one fresh process each.
7. ``jit``: a first fit of each estimator in a fresh process with an empty ``NUMBA_CACHE_DIR``
   (cold: compiles the kernels) and again with that cache (warm).

``--quick`` runs every section on small shapes with few repeats (for the test suite).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results.json"


# ----------------------------------------------------------------------------- helpers


def timed(fn, repeats, warmup=1):
    """Median, min and all wall-clock seconds of ``fn()`` over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
            "runs_s": [float(t) for t in times]}


class Threads:
    """Context: BLAS threads (threadpoolctl) and Numba threads set to ``n``, restored after."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        import numba

        self._limits = threadpool_limits(self.n)
        self._numba = numba.get_num_threads()
        numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))
        return self

    def __exit__(self, *exc):
        import numba

        numba.set_num_threads(self._numba)
        self._limits.restore_original_limits()


def machine():
    """CPU, cores, load, library versions and BLAS of this machine."""
    import numba
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = [{k: info.get(k) for k in ("internal_api", "version", "num_threads",
                                       "threading_layer", "architecture")}
            for info in threadpool_info() if info.get("user_api") == "blas"]
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "blas": blas,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": os.environ.get("NUMBA_THREADING_LAYER"),
    }


def log(text):
    print(text, flush=True)


# ----------------------------------------------------------------------------- 1. GEMM


def bench_gemm(quick):
    rng = np.random.default_rng(0)
    I, J, d_h, d_v, B = (49, 32, 16, 16, 100) if not quick else (8, 4, 4, 4, 10)
    shapes = {
        "rbm 100x784 @ 784x500": ((100, 784), (784, 500)) if not quick else ((10, 64), (64, 32)),
        f"predictions ({I}, {J * d_h}, {d_v}) @ ({I}, {d_v}, {B})": ((I, J * d_h, d_v), (I, d_v, B)),
    }
    out = []
    repeats = 3 if quick else 20
    for name, (sa, sb) in shapes.items():
        flops = 2 * np.prod(sa) * sb[-1]
        for dt in (np.float64, np.float32):
            a, b = rng.random(sa).astype(dt), rng.random(sb).astype(dt)
            for threads in (1, 2):
                with Threads(threads):
                    t = timed(lambda: np.matmul(a, b), repeats, warmup=2)
                out.append({"shape": name, "dtype": np.dtype(dt).name, "threads": threads,
                            **t, "gflops_median": flops / t["median_s"] / 1e9,
                            "gflops_best": flops / t["min_s"] / 1e9})
    ceiling = {}
    for dt in ("float64", "float32"):
        rows = [r for r in out if r["dtype"] == dt and r["shape"].startswith("rbm")]
        ceiling[dt] = max(r["gflops_median"] for r in rows)
    return {"rows": out, "ceiling_gflops": ceiling,
            "ceiling_note": "best median GFLOP/s of the RBM-shaped product over 1 and 2 threads"}


# ----------------------------------------------------------------------------- 2. routing


def _torch():
    try:
        import torch
    except Exception:  # not installed, or broken: the section skips torch
        return None
    return torch


def bench_routing(quick):
    from bench import workloads as w

    torch = _torch()
    configs = {"mnist": dict(B=100, I=49, J=32, d_h=16, r=3),
               "sabour": dict(B=32, I=1152, J=10, d_h=16, r=3)}
    if quick:
        configs = {"mnist": dict(B=4, I=6, J=3, d_h=4, r=3), "sabour": dict(B=2, I=20, J=3, d_h=4, r=3)}
    repeats = 2 if quick else 5
    rows = []
    rng = np.random.default_rng(0)
    for name, c in configs.items():
        flops = w.routing_flops(c["B"], c["I"], c["J"], c["d_h"], c["r"])
        for dt in (np.float64, np.float32):
            u = w.random_u_hat(rng, c["B"], c["I"], c["J"], c["d_h"], dt)
            g_s = rng.normal(size=(c["B"], c["J"], c["d_h"])).astype(dt)
            g_v = rng.normal(size=(c["B"], c["J"], c["d_h"])).astype(dt)
            results = {}
            for backend in ("numpy", "numba"):
                results[backend] = timed(lambda: w.routing_call(backend, u, c["r"], g_s, g_v), repeats)
            if torch is not None:
                run = w.torch_routing(torch)
                tu, ts, tv = (torch.from_numpy(np.ascontiguousarray(x)) for x in (u, g_s, g_v))
                torch.set_num_threads(2)
                results["torch"] = timed(lambda: run(tu, c["r"], ts, tv), repeats)
                ref = w.routing_call("numba", u, c["r"], g_s, g_v)[3]
                got = run(tu, c["r"], ts, tv)[3].numpy()
                results["torch"]["max_rel_diff_g_u_hat"] = float(
                    np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            for impl, t in results.items():
                rows.append({"config": name, **c, "dtype": np.dtype(dt).name, "impl": impl, **t,
                             "gflops": flops / t["median_s"] / 1e9,
                             "speedup_vs_numpy": results["numpy"]["median_s"] / t["median_s"]})
    return {"rows": rows, "torch": None if torch is None else torch.__version__,
            "flops_formula": "(12 r - 6) B I J d_h", "threads": 2}


# ----------------------------------------------------------------------------- 3. RBM


def bench_rbm(quick):
    from sklearn.neural_network import BernoulliRBM as SklearnRBM

    from capsnp import BernoulliRBM
    from capsnp.datasets import binarize, load_dataset

    X, _ = load_dataset("embedded", "train")
    n = 300 if quick else 10_000
    V = binarize(X[:n], "stochastic", random_state=0)
    H = 16 if quick else 500
    settings = [(2, 2)] if quick else [(2, 5), (1, 3)]  # (threads, repeats)
    rows = []
    for threads, repeats in settings:
        for dt in (np.float64, np.float32):
            Xd = V.astype(dt)
            times = {"capsnp": [], "sklearn": [], "capsnp_training_only": []}

            def capsnp_fit():
                est = BernoulliRBM(n_components=H, learning_rate=0.05, batch_size=100, n_iter=1,
                                   random_state=0, dtype=dt)
                start = time.perf_counter()
                est.fit(Xd)
                times["capsnp"].append(time.perf_counter() - start)
                times["capsnp_training_only"].append(est.history_[0]["seconds"])

            def sklearn_fit():
                est = SklearnRBM(n_components=H, learning_rate=0.05, batch_size=100, n_iter=1,
                                 random_state=0)
                start = time.perf_counter()
                est.fit(Xd)
                times["sklearn"].append(time.perf_counter() - start)
                assert est.components_.dtype == dt

            with Threads(threads):
                capsnp_fit()  # warm-up: kernels loaded, caches filled
                sklearn_fit()
                for key in times:
                    times[key].clear()
                for _ in range(repeats):  # alternating
                    capsnp_fit()
                    sklearn_fit()
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append({"dtype": np.dtype(dt).name, "threads": threads, "repeats": repeats,
                         "capsnp_median_s": med["capsnp"], "sklearn_median_s": med["sklearn"],
                         "capsnp_training_only_median_s": med["capsnp_training_only"],
                         "speedup": med["sklearn"] / med["capsnp"],
                         "capsnp_runs_s": times["capsnp"], "sklearn_runs_s": times["sklearn"]})
    targets = {"float64": 1.2, "float32": 1.5}
    for r in rows:
        r["target"] = targets[r["dtype"]] if r["threads"] == 2 else None
        r["target_met"] = None if r["target"] is None else bool(r["speedup"] >= r["target"])
    return {"rows": rows, "n_images": n, "D": 784, "H": H, "batch_size": 100,
            "algorithm": "PCD-1, learning_rate 0.05, one epoch, fit() wall time (capsnp's includes "
                         "its end-of-epoch monitoring on 1,000 rows)"}


# ----------------------------------------------------------------------------- 4. throughput


def bench_throughput(quick, ceiling):
    from bench import workloads as w

    from capsnp import CapsulePoE, RoutedCapsuleRBM
    from capsnp.datasets import binarize, load_dataset

    X, _ = load_dataset("embedded", "train")
    V = binarize(X[:1000], "stochastic", random_state=0)
    repeats = 3
    small = {}
    if quick:  # 8x8 crops, two small capsules, one repeat
        V = np.ascontiguousarray(V[:40].reshape(40, 28, 28)[:, 10:18, 10:18].reshape(40, 64))
        repeats, small = 1, dict(n_capsules=2, capsule_dim=2, batch_size=10)
    configs = [("P mh", CapsulePoE, dict(sampler="mh")),
               ("P reconstruct", CapsulePoE, dict(sampler="reconstruct")),
               ("R", RoutedCapsuleRBM, {}),
               # the likelihood table's best capsule configuration (docs/results.md sec. 8)
               ("R 2x250 biases", RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250,
                                                         assignment_biases=True))]
    rows = []
    for name, cls, kw in configs:
        for backend in ("numba", "numpy"):
            if backend == "numpy" and (quick or name == "P mh"):
                reps = 1
            else:
                reps = repeats
            ips, mf = [], []
            for rep in range(reps + 1):  # the first fit loads the kernels
                est = cls(n_iter=1, random_state=rep, monitor_fraction=0.01, backend=backend,
                          **{**kw, **small})
                data = V if not (backend == "numpy" and name == "P mh") else V[:200]
                est.fit(data)
                if rep:
                    ips.append(est.history_[0]["images_per_second"])
                    mf.append(est.history_[0].get("train_mean_field_iterations", 0.0))
            B = est.batch_size
            I, d_v = est.n_visible_capsules_, est.visible_capsule_dim_
            J, d_h = est.n_capsules, est.capsule_dim
            if cls is CapsulePoE:
                flops = w.p_step_flops(B, I, J, d_h, d_v, est.n_routing, est.sampler)
            else:
                flops = w.r_step_flops(B, I, J, d_h, d_v, float(np.median(mf)))
            images_per_s = float(np.median(ips))
            gflops = flops / B * images_per_s / 1e9
            rows.append({"model": name, "backend": backend, "B": B, "I": I, "d_v": d_v, "J": J,
                         "d_h": d_h, "repeats": reps, "images_per_s": images_per_s,
                         "flops_per_image": flops / B, "gflops": gflops,
                         "fraction_of_gemm_ceiling": gflops / ceiling["float64"],
                         **({"mean_field_iterations": float(np.median(mf))} if cls is RoutedCapsuleRBM else {})})
    return {"rows": rows, "dtype": "float64", "ceiling_gflops": ceiling["float64"],
            "formulas": {"P": "2 x gradient [(2 d_v + 12 r - 6 + 2 d_v) B I J d_h] + sweep; "
                              "mh sweep: B [2 I J d_h d_v + (4r-2) I J d_h + I ((4r-2) I J d_h + 6 J d_h d_v)]; "
                              "reconstruct: B [4 I J d_h d_v + (4r-2) I J d_h]",
                         "R": "B [8 I J d_h d_v + 4 n_mf I J d_h + 2 I J d_h + 2 I d_h (d_v + 1)]"}}


# ----------------------------------------------------------------------------- 5. scaling


def bench_scaling(quick, out_dir):
    from bench import workloads as w

    from capsnp import kernels
    from capsnp.capsules import predictions

    base = dict(B=50, I=49, J=16, d_h=8) if not quick else dict(B=4, I=4, J=2, d_h=2)
    d_v, r = (16, 3) if not quick else (4, 3)
    repeats = 2 if quick else 7
    rng = np.random.default_rng(0)
    cases = []
    for doubled in (None, "B", "I", "J", "d_h"):
        s = dict(base)
        if doubled:
            s[doubled] *= 2
        p = w.random_p_params(rng, s["I"], s["J"], s["d_h"], d_v, np.float64)
        v = w.binary_capsules(rng, s["B"], s["I"], d_v, np.float64)
        u = predictions(p.W, v)  # (B, I, J, d_h): routing alone, the cost of one MH proposal
        cases.append((doubled or "base", s, {
            "grad": lambda p=p, v=v: kernels.model_p.free_energy_grad(p, v, r, "full"),
            "mh": lambda p=p, v=v: kernels.model_p.mh_sweep(p, v, np.random.default_rng(1), r),
            "route": lambda p=p, u=u: kernels.routing.dynamic_routing(u, r, p.beta)}))
    times = {(name, op): [] for name, _, ops in cases for op in ops}
    for rep in range(repeats + 1):  # round robin, so that a change of load hits every case
        for name, _, ops in cases:
            for op, fn in ops.items():
                start = time.perf_counter()
                fn()
                if rep:  # the first round is a warm-up
                    times[name, op].append(time.perf_counter() - start)
    rows = []
    for name, s, ops in cases:
        row = {"doubled": name, **s, "d_v": d_v}
        for op in ops:
            row[f"{op}_median_s"] = float(np.median(times[name, op]))
            row[f"{op}_min_s"] = float(np.min(times[name, op]))
        rows.append(row)
    for row in rows:
        for op in ("grad", "mh"):
            row[f"{op}_ratio"] = row[f"{op}_median_s"] / rows[0][f"{op}_median_s"]
            row[f"{op}_ratio_of_min"] = row[f"{op}_min_s"] / rows[0][f"{op}_min_s"]
        # target: an MH sweep (I proposals) within 2x of I routings of the batch
        row["mh_vs_routing"] = row["mh_median_s"] / (row["I"] * row["route_median_s"])
    plot = _plot_scaling(rows, out_dir / "scaling.png")
    return {"rows": rows, "backend": "numba", "dtype": "float64", "plot": plot, "repeats": repeats,
            "method": "cases timed round robin; ratio = median / median at base "
                      "(ratio_of_min: fastest / fastest, less sensitive to load); "
                      "mh_vs_routing = MH sweep / (I x routing forward of the batch)",
            "expected": "gradient linear in B, I, J, d_h; MH sweep linear in B, J, d_h and "
                        "quadratic in I (I proposals, each routing all I capsules)"}


def _plot_scaling(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["doubled"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, [r["grad_ratio"] for r in rows], 0.4, label="free-energy gradient (full)")
    ax.bar(x + 0.2, [r["mh_ratio"] for r in rows], 0.4, label="MH sweep")
    ax.axhline(2, color="grey", lw=0.8, ls="--")
    ax.axhline(4, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, ["base" if l == "base" else f"2 x {l}" for l in labels])
    ax.set_ylabel("time / time at base")
    base = rows[0]
    ax.set_title(f"Model P per batch, Numba, base B={base['B']} I={base['I']} J={base['J']} "
                 f"d_h={base['d_h']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


# ----------------------------------------------------------------------------- 6, 7. processes


def _child(args, env=None, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "bench.child", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.child {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(quick):
    configs = ["routing-mnist", "routing-sabour", "p-mh", "p-reconstruct", "r", "rbm"]
    backends = ("numba", "numpy")
    if quick:
        configs, backends = ["routing-mnist", "rbm"], ("numba",)
    rows = []
    for config in configs:
        for backend in backends:
            rows.append(_child(["memory", config, backend] + (["--quick"] if quick else [])))
    return {"rows": rows, "dtype": "float64",
            "method": "one call (a training step: gradient, sweep, gradient or statistics; "
                      "routing: forward + VJP) in a fresh process: tracemalloc peak of the "
                      "Python/NumPy allocations during the call (the kernels' own scratch is "
                      "per image and not counted); resident size before the call and its peak "
                      "during the call (VmHWM, reset just before it)"}


def bench_jit(quick):
    if quick:  # no cold compile: a fresh process with the existing cache only
        return {"cold": None, "warm": _child(["jit"]), "workload": "see the full run"}
    with tempfile.TemporaryDirectory(prefix="capsnp-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = _child(["jit"], env=env)
        warm = _child(["jit"], env=env)
    return {"cold": cold, "warm": warm,
            "workload": "import capsnp, then fit CapsulePoE, RoutedCapsuleRBM and BernoulliRBM "
                        "once each on 20 tiny float64 images (compiles the float64 kernels they "
                        "use)"}


# ----------------------------------------------------------------------------- report


def table(results):
    """The printed report: one block per section."""
    lines = []
    m = results["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)" for b in m["blas"])
    lines += [f"machine: {m['cpu']}, {m['usable_cores']} usable cores, load average at start "
              f"{m['load_average_at_start'][0]:.1f}, end {results['load_average_at_end'][0]:.1f}",
              f"python {m['python']}, numpy {m['numpy']}, numba {m['numba']}, scikit-learn "
              f"{m['scikit_learn']}, BLAS: {blas}", ""]
    g = results.get("gemm")
    if g:
        lines += ["1. GEMM ceiling (GFLOP/s, median; best in brackets)",
                  f"{'shape':46s} {'dtype':8s} {'1 thread':>16s} {'2 threads':>16s}"]
        for shape in dict.fromkeys(r["shape"] for r in g["rows"]):
            for dt in ("float64", "float32"):
                cells = {r["threads"]: r for r in g["rows"] if r["shape"] == shape and r["dtype"] == dt}
                lines.append(f"{shape:46s} {dt:8s} " + " ".join(
                    f"{cells[t]['gflops_median']:7.1f} ({cells[t]['gflops_best']:6.1f})" for t in (1, 2)))
        lines.append("")
    r = results.get("routing")
    if r:
        lines += [f"2. routing forward + VJP, 2 threads (torch: {r['torch'] or 'not installed'})",
                  f"{'config':8s} {'shape B,I,J,d_h':18s} {'dtype':8s} {'impl':6s} {'median ms':>10s} "
                  f"{'GFLOP/s':>8s} {'x numpy':>8s}"]
        for row in r["rows"]:
            shape = f"{row['B']},{row['I']},{row['J']},{row['d_h']}"
            lines.append(f"{row['config']:8s} {shape:18s} {row['dtype']:8s} {row['impl']:6s} "
                         f"{row['median_s'] * 1e3:10.2f} {row['gflops']:8.2f} "
                         f"{row['speedup_vs_numpy']:8.2f}")
        lines.append("")
    b = results.get("rbm")
    if b:
        lines += [f"3. BernoulliRBM {b['D']}x{b['H']}, {b['n_images']} images, one PCD-1 epoch "
                  f"(fit wall time, median)",
                  f"{'dtype':8s} {'threads':>7s} {'runs':>4s} {'capsnp s':>9s} {'(training)':>10s} "
                  f"{'sklearn s':>9s} {'speedup':>8s} {'target':>7s}"]
        for row in b["rows"]:
            target = "" if row["target"] is None else (
                f">={row['target']} {'met' if row['target_met'] else 'MISSED'}")
            lines.append(f"{row['dtype']:8s} {row['threads']:7d} {row['repeats']:4d} "
                         f"{row['capsnp_median_s']:9.2f} {row['capsnp_training_only_median_s']:10.2f} "
                         f"{row['sklearn_median_s']:9.2f} {row['speedup']:8.2f} {target}")
        lines.append("")
    t = results.get("throughput")
    if t:
        lines += [f"4. training throughput, float64, default configurations and R 2 x 250 with "
                  f"assignment biases (GEMM ceiling "
                  f"{t['ceiling_gflops']:.1f} GFLOP/s)",
                  f"{'model':14s} {'backend':7s} {'B,I,d_v,J,d_h':18s} {'images/s':>9s} "
                  f"{'MFLOP/img':>10s} {'GFLOP/s':>8s} {'of ceiling':>10s}"]
        for row in t["rows"]:
            shape = f"{row['B']},{row['I']},{row['d_v']},{row['J']},{row['d_h']}"
            lines.append(f"{row['model']:14s} {row['backend']:7s} {shape:18s} "
                         f"{row['images_per_s']:9.1f} {row['flops_per_image'] / 1e6:10.2f} "
                         f"{row['gflops']:8.2f} {row['fraction_of_gemm_ceiling']:10.1%}")
        lines.append("")
    s = results.get("scaling")
    if s:
        lines += ["5. scaling, Model P per batch (Numba, float64): median ms, time / time at base "
                  "(median ratio; fastest-run ratio in brackets)",
                  f"{'doubled':8s} {'B':>4s} {'I':>5s} {'J':>4s} {'d_h':>4s} {'grad ms':>9s} "
                  f"{'ratio':>13s} {'MH ms':>9s} {'ratio':>13s} {'MH/(I route)':>13s}"]
        for row in s["rows"]:
            lines.append(f"{row['doubled']:8s} {row['B']:4d} {row['I']:5d} {row['J']:4d} "
                         f"{row['d_h']:4d} {row['grad_median_s'] * 1e3:9.2f} "
                         f"{row['grad_ratio']:6.2f} ({row['grad_ratio_of_min']:4.2f}) "
                         f"{row['mh_median_s'] * 1e3:9.1f} {row['mh_ratio']:6.2f} "
                         f"({row['mh_ratio_of_min']:4.2f}) {row.get('mh_vs_routing', float('nan')):13.2f}")
        lines.append("")
    mem = results.get("memory")
    if mem:
        lines += ["6. peak memory, float64, one fresh process per configuration (MB)",
                  f"{'config':16s} {'backend':7s} {'arrays peak':>11s} {'RSS before':>10s} "
                  f"{'RSS peak':>9s} {'RSS delta':>9s} {'seconds':>8s}"]
        for row in mem["rows"]:
            delta = "n/a" if row["delta_mb"] is None else f"{row['delta_mb']:.1f}"
            lines.append(f"{row['config']:16s} {row['backend']:7s} {row['traced_peak_mb']:11.1f} "
                         f"{row['rss_before_mb']:10.1f} {row['peak_mb']:9.1f} {delta:>9s} "
                         f"{row['seconds']:8.3f}")
        lines.append("")
    j = results.get("jit")
    if j:
        lines += ["7. JIT: import + first fit of each estimator in a fresh process (seconds)",
                  f"{'':6s} {'import':>7s} {'P fit':>7s} {'R fit':>7s} {'RBM fit':>8s} {'total':>7s}"]
        for key in ("cold", "warm"):
            x = j[key]
            if x is None:
                continue
            lines.append(f"{key:6s} {x['import_seconds']:7.2f} {x['fit_CapsulePoE_seconds']:7.2f} "
                         f"{x['fit_RoutedCapsuleRBM_seconds']:7.2f} {x['fit_BernoulliRBM_seconds']:8.2f} "
                         f"{x['total_seconds']:7.2f}")
        lines.append("")
    lines.append(f"total bench time: {results['bench_seconds']:.0f} s")
    return "\n".join(lines)


SECTIONS = ("gemm", "routing", "rbm", "throughput", "scaling", "memory", "jit")


def run(out=DEFAULT_OUT, quick=False, sections=SECTIONS):
    """Run the benchmark; write the JSON to ``out`` (and scaling.png beside it); return the dict."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {"quick": bool(quick), "machine": machine()}
    ceiling = {"float64": float("nan"), "float32": float("nan")}
    for name in sections:
        t = time.perf_counter()
        log(f"[bench] {name} ...")
        if name == "gemm":
            results["gemm"] = bench_gemm(quick)
            ceiling = results["gemm"]["ceiling_gflops"]
        elif name == "routing":
            results["routing"] = bench_routing(quick)
        elif name == "rbm":
            results["rbm"] = bench_rbm(quick)
        elif name == "throughput":
            results["throughput"] = bench_throughput(quick, ceiling)
        elif name == "scaling":
            results["scaling"] = bench_scaling(quick, out.parent)
        elif name == "memory":
            results["memory"] = bench_memory(quick)
        elif name == "jit":
            results["jit"] = bench_jit(quick)
        else:
            raise ValueError(f"unknown section {name!r}; choose from {SECTIONS}")
        results[name]["seconds"] = time.perf_counter() - t
        log(f"[bench] {name}: {results[name]['seconds']:.0f} s")
    results["load_average_at_end"] = list(os.getloadavg())
    results["bench_seconds"] = time.perf_counter() - start
    results["table"] = table(results)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(prog="capsnp bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file (default: bench/results.json); "
                    "scaling.png is written beside it")
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (for tests)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    a = ap.parse_args(argv)
    results = run(a.out, a.quick, [s for s in a.sections.split(",") if s])
    print(results["table"])
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
