"""Command line: ``python -m capsnp {train,sample,evaluate,experiment,bench} ...``.

* ``train``: fit a model (``--model rbm|p|r``) on a data set and write, in ``--out``,
  ``model.npz`` (see :meth:`capsnp.estimators.CapsulePoE.save`), ``samples.png`` (persistent
  chains, and fresh chains from noise after ``--sample-steps`` sweeps), ``filters.png`` and
  ``history.png``. While it trains it keeps ``checkpoint.npz`` (every ``--checkpoint-every``
  epochs, and on Ctrl-C) and ``train_args.json`` (its arguments) in ``--out``;
  ``train --out DIR --resume`` continues an interrupted run from them, with the same
  arguments, and ends with the same model as an uninterrupted run;
* ``sample``: draw images from a saved model into a PNG grid;
* ``evaluate``: reconstruction error and the model's likelihood proxy (pseudo-likelihood for P
  and the RBM, the mean-field bound for R) on a data split; with ``--ais`` (annealed importance
  sampling) or ``--exact`` (enumeration, tiny models only) also log Z and the mean
  log-likelihood of the split in nats per image (MODEL.md sec. 6).

:func:`main` takes the argument list and returns the exit code: 0 on success, 1 when the work
failed (e.g. a data set or model file that cannot be read, or training diverged), 2 for bad
arguments, 130 when interrupted by Ctrl-C (``train`` first saves a checkpoint and names it).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .ais import ais_log_partition, default_betas
from .capsules import to_capsules
from .datasets import binarize, load_dataset
from .estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM, load_estimator
from .io import atomic_write_bytes
from .likelihood import exact_log_partition
from .plots import image_grid, image_grids, plot_filters, plot_history

__all__ = ["main", "build_parser", "load_estimator"]

MODELS = {"rbm": BernoulliRBM, "p": CapsulePoE, "r": RoutedCapsuleRBM}
DATASETS = ("embedded", "mnist", "fashion-mnist")
# evaluate --ais / --exact: AIS runs and importance samples per image (Model R) by default.
DEFAULT_AIS_RUNS = 100
DEFAULT_IS_SAMPLES = 100
# Fresh chains from noise: sweeps before the samples are drawn. Model P's exact MH sweep costs
# one routing per visible capsule, so it gets fewer by default.
DEFAULT_SAMPLE_STEPS = {"rbm": 1000, "p": 100, "r": 1000}
N_GRID = 64
CHECKPOINT_NAME = "checkpoint.npz"
TRAIN_ARGS_NAME = "train_args.json"
# The train arguments that define a run; --resume takes them from train_args.json.
RUN_ARGUMENTS = ("model", "dataset", "epochs", "capsules", "capsule_dim", "hidden", "patch", "lr",
                 "batch_size", "chains", "binarize", "seed", "dtype", "max_images", "backend",
                 "expert", "average")
# Run arguments added later, with the value that runs recorded before them used.
LATER_RUN_ARGUMENTS = {"backend": "numpy", "expert": "squash", "average": 0}
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT (128 + 2)


def _load_binary(dataset, split, method, seed, max_images, dtype):
    """Images of a split, binarised: (n, 784) in ``dtype``, and labels (n,)."""
    X, y = load_dataset(dataset, split)
    if max_images is not None:
        X, y = X[:max_images], y[:max_images]
    return binarize(X, method=method, random_state=seed, dtype=dtype), y


def _build_estimator(args, checkpoint_path=None):
    dtype = np.dtype(args.dtype).type
    common = dict(n_iter=args.epochs, batch_size=args.batch_size, random_state=args.seed,
                  dtype=dtype, verbose=1, checkpoint_path=checkpoint_path,
                  checkpoint_every=args.checkpoint_every, resume=bool(args.resume),
                  backend=args.backend, average=args.average)
    if args.lr is not None:
        common["learning_rate"] = args.lr
    if args.assignment_biases:
        if args.model != "r":
            raise ValueError(f"--assignment-biases extends Model R (docs/MODEL_RB.md); it needs "
                             f"--model r, not --model {args.model}")
        common["assignment_biases"] = True
    if args.model == "rbm":
        return BernoulliRBM(n_components=args.hidden, n_chains=args.chains, **common)
    if args.model == "p":
        common["expert"] = args.expert
    elif args.expert != "squash":
        raise ValueError(f"--expert {args.expert} selects Model P's variants (G, S); it needs "
                         f"--model p, not --model {args.model}")
    return MODELS[args.model](n_capsules=args.capsules, capsule_dim=args.capsule_dim,
                              patch=args.patch, n_chains=args.chains, **common)


def _resumed_arguments(args, out):
    """``args`` with the run arguments of ``<out>/train_args.json``; ValueError on a conflict.

    An option given on the command line with a value other than its default must equal the
    stored one: ``--resume`` continues a run, it does not change it.
    """
    path = out / TRAIN_ARGS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {TRAIN_ARGS_NAME} in {out}; there is no run to "
                                f"continue there (start one without --resume)")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(stored, dict):
        stored = {**LATER_RUN_ARGUMENTS, **stored}
    missing = [key for key in RUN_ARGUMENTS if not isinstance(stored, dict) or key not in stored]
    if missing:
        raise ValueError(f"{path}: missing run arguments {missing}")
    defaults = build_parser().parse_args(["train"])
    conflicts = [f"--{key.replace('_', '-')} {getattr(args, key)} (the run has {stored[key]})"
                 for key in RUN_ARGUMENTS
                 if getattr(args, key) not in (getattr(defaults, key), stored[key])]
    if conflicts:
        raise ValueError("--resume continues a run with its own arguments; these differ: "
                         + "; ".join(conflicts) + ". Drop them, or start a new run in another "
                         "--out directory")
    for key in RUN_ARGUMENTS:
        setattr(args, key, stored[key])
    return args


def _train(args):
    out = Path(args.out if args.out is not None else Path("runs") / args.model)
    checkpoint = out / CHECKPOINT_NAME
    if args.resume:
        args = _resumed_arguments(args, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        run = {key: getattr(args, key) for key in RUN_ARGUMENTS}
        atomic_write_bytes(out / TRAIN_ARGS_NAME, json.dumps(run, indent=1).encode("utf-8"))
    X, _ = _load_binary(args.dataset, "train", args.binarize, args.seed, args.max_images,
                        np.dtype(args.dtype))
    estimator = _build_estimator(args, checkpoint_path=checkpoint)
    what = "resuming" if args.resume else "training"
    print(f"{what} {type(estimator).__name__} on {X.shape[0]} {args.dataset} images "
          f"({args.binarize} binarisation) for {args.epochs} epochs; checkpoint: {checkpoint}",
          flush=True)
    start = time.perf_counter()
    try:
        estimator.fit(X)
    except KeyboardInterrupt as exc:
        if not str(exc):  # interrupted before the estimator could save anything
            raise
        print(f"capsnp train: {exc}\ncontinue with: python -m capsnp train --out {out} --resume",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    seconds = time.perf_counter() - start

    metrics = dict(estimator.history_[-1]) if estimator.history_ else {}
    metadata = {"dataset": args.dataset, "binarize": args.binarize, "seed": args.seed,
                "n_train_images": int(X.shape[0]), "train_seconds": seconds, "metrics": metrics,
                "command": "train", "resumed": bool(args.resume)}
    model_path = out / "model.npz"
    estimator.save(model_path, metadata=metadata)

    steps = DEFAULT_SAMPLE_STEPS[args.model] if args.sample_steps is None else args.sample_steps
    shape = _image_shape(estimator)
    fresh = estimator.sample(N_GRID, n_steps=steps, init="noise", random_state=args.seed,
                             return_probabilities=True)
    panels = []
    if estimator.persistent_chains_ is not None:
        panels.append(("persistent chains", estimator.persistent_chains_[:N_GRID]))
    panels.append((f"fresh chains, {steps} sweeps from noise"
                   + ("" if args.model == "p" else " (visible probabilities)"), fresh))
    samples_path = image_grids(panels, shape, 8, out / "samples.png")
    filters_path = plot_filters(estimator, out / "filters.png")
    history_path = plot_history(estimator.history_, out / "history.png")

    timing = ("epoch", "seconds", "images_per_second", "learning_rate", "momentum")
    print(f"trained in {seconds:.1f} s; final metrics: "
          + ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items() if k not in timing))
    for what, path in (("model", model_path), ("samples", samples_path),
                       ("filters", filters_path), ("history", history_path)):
        print(f"{what}: {path}")
    return 0


def _image_shape(estimator):
    if hasattr(estimator, "image_shape_"):
        return estimator.image_shape_
    side = int(round(np.sqrt(estimator.n_features_in_)))
    return (side, side)


def _sample(args):
    estimator = load_estimator(args.model_file)
    if args.init != "noise":
        raise ValueError(f"--init must be 'noise', got {args.init!r}")
    X = estimator.sample(args.n, n_steps=args.steps, init="noise", random_state=args.seed,
                         return_probabilities=args.probabilities, n_temperatures=args.temperatures)
    how = f", tempering with {args.temperatures} temperatures" if args.temperatures > 1 else ""
    path = image_grid(X, _image_shape(estimator), args.cols, args.out,
                      title=f"{type(estimator).__name__}: {args.steps} sweeps from noise{how}")
    print(f"{args.n} samples after {args.steps} sweeps: {path}")
    return 0


def _evaluate(args):
    if (args.ais_runs is not None or args.fast_ais) and not args.ais:
        raise ValueError("--ais-runs and --fast-ais set up --ais, which was not given")
    for flag, value in (("--is-samples", args.is_samples), ("--is-starts", args.is_starts)):
        if value is not None and not (args.ais or args.exact):
            raise ValueError(f"{flag} sets up the log-likelihood of --ais or --exact, neither "
                             "of which was given")
    estimator = load_estimator(args.model_file)
    from .io import load_model

    _, meta = load_model(args.model_file)
    dataset = args.dataset or meta.get("dataset", "embedded")
    method = args.binarize or meta.get("binarize", "stochastic")
    X, _ = _load_binary(dataset, args.split, method, args.seed, args.max_images,
                        np.dtype(estimator.dtype))
    metrics = estimator.evaluate(X, random_state=args.seed)
    likelihood, lines = {}, []
    if args.ais or args.exact:
        likelihood, lines = _likelihood(estimator, X, dataset, method, args)
    report = {"model": type(estimator).__name__, "dataset": dataset, "split": args.split,
              "n_images": int(X.shape[0]), **metrics, **likelihood}
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{report['model']} on {X.shape[0]} {dataset} {args.split} images "
              f"({method} binarisation):")
        for key, value in metrics.items():
            print(f"  {key}: {value:.4f}")
        if isinstance(estimator, RoutedCapsuleRBM):
            print("  (elbo is a mean-field lower bound on the UNNORMALISED log-probability; "
                  "Model R has no closed-form free energy or pseudo-likelihood)")
        for line in lines:
            print(line)
    return 0


def _likelihood(estimator, X, dataset, method, args):
    """log Z (``--exact``, ``--ais``) and the log-likelihood of X (MODEL.md sec. 6).

    The AIS base-rate model takes its visible biases from the pixel means of the whole
    binarised training split of ``dataset`` (same binarisation and seed as X, not limited by
    ``--max-images``), whichever split is evaluated. With both flags, the log-likelihood uses
    the exact log Z.

    Returns
    -------
    (dict of report entries, list of lines to print)
    """
    out, lines = {}, []
    if args.exact:  # first: it refuses large models at once, before a long AIS run
        start = time.perf_counter()
        out["exact_log_z"] = exact_log_partition(estimator)
        out["exact_seconds"] = time.perf_counter() - start
        lines.append(f"  log Z (exact enumeration): {out['exact_log_z']:.4f}")
    if args.ais:
        X_train, _ = _load_binary(dataset, "train", method, args.seed, None, np.dtype(np.float32))
        mean = X_train.mean(axis=0, dtype=np.float64)  # (D,)
        base_rate = (mean if isinstance(estimator, BernoulliRBM)
                     else to_capsules(mean[None], estimator.image_shape_, estimator.patch_)[0])
        betas = default_betas(fast=args.fast_ais)
        runs = DEFAULT_AIS_RUNS if args.ais_runs is None else args.ais_runs
        start = time.perf_counter()
        res = ais_log_partition(estimator, n_runs=runs, betas=betas, random_state=args.seed,
                                base_rate=base_rate, backend=estimator.backend)
        out.update(ais_log_z=res.log_z, ais_log_z_std_error=res.std_error,
                   ais_log_z_interval=list(res.interval), ais_runs=runs,
                   ais_temperatures=len(betas),
                   ais_effective_sample_size=res.effective_sample_size,
                   ais_seconds=time.perf_counter() - start,
                   ais_base_rate=f"pixel means of the {X_train.shape[0]} binarised {dataset} "
                                 f"training images")
        lo, hi = res.interval
        lines.append(f"  log Z (AIS, {runs} runs, {len(betas):,} temperatures, "
                     f"{out['ais_seconds']:.1f} s): {res.log_z:.4f} +- {res.std_error:.4f} "
                     f"(standard error; bootstrap 95% interval {lo:.4f} to {hi:.4f})")
    source = "exact" if args.exact else "ais"
    log_z = out[f"{source}_log_z"]
    if isinstance(estimator, RoutedCapsuleRBM):
        n_is = DEFAULT_IS_SAMPLES if args.is_samples is None else args.is_samples
        n_starts = 1 if args.is_starts is None else args.is_starts
        ll, is_se = estimator.log_likelihood(X, log_z, n_samples=n_is, random_state=args.seed,
                                             return_std=True, n_starts=n_starts)
        out.update(importance_samples=n_is, importance_starts=n_starts,
                   importance_sampling_mean_se=float(np.mean(is_se)))
    else:
        ll = estimator.log_likelihood(X, log_z)  # (n,)
    out.update(log_z=log_z, log_z_source=source, log_likelihood=float(np.mean(ll)),
               log_likelihood_sem=float(np.std(ll) / np.sqrt(len(ll))))
    lines.append(f"  log-likelihood (nats per image, {source} log Z): {out['log_likelihood']:.4f} "
                 f"+- {out['log_likelihood_sem']:.4f} (standard error of the mean over "
                 f"{len(ll)} images" + (", plus the log Z error" if source == "ais" else "") + ")")
    if isinstance(estimator, RoutedCapsuleRBM):
        starts = f" from a mixture of {n_starts} mean-field fixed points" if n_starts > 1 else ""
        lines.append(f"  (Model R: log p~(v) by importance sampling over routings, {n_is} samples "
                     f"per image{starts}, mean standard error "
                     f"{out['importance_sampling_mean_se']:.4f}; "
                     f"biased low, and with an AIS log Z neither a lower nor an upper bound: "
                     f"MODEL.md sec. 4)")
    return out, lines


def _positive_int(text):
    """argparse type: an integer >= 1."""
    return _integer_at_least(text, 1, "a positive integer")


def _nonnegative_int(text):
    """argparse type: an integer >= 0."""
    return _integer_at_least(text, 0, "a non-negative integer")


def _integer_at_least(text, low, expected):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _positive_float(text):
    """argparse type: a finite number > 0 (e.g. a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def build_parser():
    """The argparse parser of ``python -m capsnp``; subcommands are added by name."""
    parser = argparse.ArgumentParser(prog="capsnp", description="Capsule products of experts: "
                                     "train, sample from and evaluate models on binarised images.")
    parser.add_argument("--version", action="version", version=f"capsnp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("experiment", help="likelihood table: train, AIS, test log-likelihood "
                   "(see python -m capsnp experiment --help)")
    sub.add_parser("bench", help="benchmark: GEMM ceiling, routing, RBM against scikit-learn, "
                   "throughput, scaling, memory, JIT (see python -m capsnp bench --help)")

    train = sub.add_parser("train", help="fit a model and write model.npz and figures")
    train.add_argument("--model", choices=sorted(MODELS), default="rbm",
                       help="rbm: Bernoulli RBM; p: capsule product of experts; r: routed "
                            "capsule RBM (default: rbm, the model that generates recognisable digits in a few minutes)")
    train.add_argument("--expert", choices=("squash", "gaussian", "spin"), default="squash",
                       help="with --model p: the paper's squash expert (Model P), or a Gaussian "
                            "(Model G) or binary (Model S) capsule pose (docs/MODEL_G.md)")
    train.add_argument("--assignment-biases", action="store_true",
                       help="with --model r: learn prediction biases C and per-parent visible "
                            "biases A (docs/MODEL_RB.md)")
    train.add_argument("--dataset", choices=DATASETS, default="embedded")
    train.add_argument("--epochs", type=_nonnegative_int, default=10)
    train.add_argument("--capsules", type=_positive_int, default=16, help="hidden capsules J")
    train.add_argument("--capsule-dim", type=_positive_int, default=8, help="capsule size d_h")
    train.add_argument("--hidden", type=_positive_int, default=500, help="RBM hidden units")
    train.add_argument("--patch", type=_positive_int, default=4, help="patch side (visible capsule)")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the estimator's)")
    train.add_argument("--batch-size", type=_positive_int, default=100)
    train.add_argument("--chains", type=_positive_int, default=None,
                       help="persistent chains (default: the batch size)")
    train.add_argument("--average", type=_nonnegative_int, default=0, metavar="K",
                       help="publish the moving average of the parameters over about K updates "
                            "(training runs on the current ones; 0, the default: the last update)")
    train.add_argument("--binarize", choices=("stochastic", "threshold"), default="stochastic")
    train.add_argument("--seed", type=_nonnegative_int, default=0)
    train.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    train.add_argument("--max-images", type=_positive_int, default=None,
                       help="use only the first N training images")
    train.add_argument("--sample-steps", type=_nonnegative_int, default=None,
                       help="sweeps of the fresh chains in samples.png (default: 1000, P: 100)")
    train.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                       help="run the model on the compiled kernels (default) or on the NumPy "
                            "reference")
    train.add_argument("--out", default=None, help="output directory (default: runs/<model>)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="N",
                       help=f"write <out>/{CHECKPOINT_NAME} every N epochs (also after the "
                            f"last one and on Ctrl-C; default: 1)")
    train.add_argument("--resume", action="store_true",
                       help=f"continue the interrupted run in --out from its {CHECKPOINT_NAME}, "
                            f"with the arguments in its {TRAIN_ARGS_NAME}")
    train.set_defaults(func=_train)

    sample = sub.add_parser("sample", help="draw images from a saved model")
    sample.add_argument("--model-file", required=True)
    sample.add_argument("--n", type=_positive_int, default=64)
    sample.add_argument("--steps", type=_nonnegative_int, default=1000)
    sample.add_argument("--init", default="noise", choices=("noise",))
    sample.add_argument("--cols", type=_positive_int, default=8)
    sample.add_argument("--seed", type=_nonnegative_int, default=0)
    sample.add_argument("--temperatures", type=_positive_int, default=1,
                        help="parallel tempering with this many temperatures (each sweep costs "
                             "that many plain sweeps); 1: plain chains")
    sample.add_argument("--probabilities", action="store_true",
                        help="show the probabilities of the next visible draw (RBM and Model R)")
    sample.add_argument("--out", default="samples.png")
    sample.set_defaults(func=_sample)

    evaluate = sub.add_parser("evaluate", help="metrics of a saved model on a data split")
    evaluate.add_argument("--model-file", required=True)
    evaluate.add_argument("--dataset", choices=DATASETS, default=None,
                          help="default: the data set the model was trained on")
    evaluate.add_argument("--split", choices=("train", "test"), default="test")
    evaluate.add_argument("--binarize", choices=("stochastic", "threshold"), default=None)
    evaluate.add_argument("--max-images", type=_positive_int, default=None)
    evaluate.add_argument("--seed", type=_nonnegative_int, default=0)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--ais", action="store_true",
                          help="estimate log Z by annealed importance sampling (base rate: the "
                               "training split's pixel means) and report the mean "
                               "log-likelihood of the split in nats per image")
    evaluate.add_argument("--ais-runs", type=_positive_int, default=None,
                          help=f"AIS runs (default: {DEFAULT_AIS_RUNS})")
    evaluate.add_argument("--fast-ais", action="store_true",
                          help="1,450 temperatures instead of 14,500 (quick looks, not for "
                               "reported numbers)")
    evaluate.add_argument("--exact", action="store_true",
                          help="exact log Z by enumeration (tiny models only: at most 2**24 "
                               "states) and the log-likelihood of the split with it")
    evaluate.add_argument("--is-samples", type=_positive_int, default=None,
                          help=f"Model R: importance samples per image for log p(v) "
                               f"(default: {DEFAULT_IS_SAMPLES})")
    evaluate.add_argument("--is-starts", type=_positive_int, default=None,
                          help="Model R: draw the routings from a mixture of the mean-field "
                               "routing and the fixed points from this many - 1 random starts "
                               "(default: 1, the mean-field routing alone)")
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv=None):
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["experiment"]:  # its own parser: capsnp/experiment.py
        from .experiment import main as experiment_main

        return experiment_main(argv[1:])
    if argv[:1] == ["bench"]:  # its own parser: bench/run.py
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or an argument error
        return int(exc.code or 0)
    try:
        return args.func(args)
    except (OSError, ValueError, FloatingPointError) as exc:
        print(f"capsnp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"capsnp {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
