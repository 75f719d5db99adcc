"""Command line: ``python -m capsnp {train,sample,evaluate} ...``.

* ``train``: fit a model (``--model rbm|p|r``) on a data set and write, in ``--out``,
  ``model.npz`` (see :meth:`capsnp.estimators.CapsulePoE.save`), ``samples.png`` (persistent
  chains, and fresh chains from noise after ``--sample-steps`` sweeps), ``filters.png`` and
  ``history.png``;
* ``sample``: draw images from a saved model into a PNG grid;
* ``evaluate``: reconstruction error and the model's likelihood proxy (pseudo-likelihood for P
  and the RBM, the mean-field bound for R) on a data split.

:func:`main` takes the argument list and returns the exit code: 0 on success, 1 when the work
failed (e.g. a data set or model file that cannot be read), 2 for bad arguments.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .datasets import binarize, load_dataset
from .estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM, load_estimator
from .plots import image_grid, image_grids, plot_filters, plot_history

__all__ = ["main", "build_parser", "load_estimator"]

MODELS = {"rbm": BernoulliRBM, "p": CapsulePoE, "r": RoutedCapsuleRBM}
DATASETS = ("embedded", "mnist", "fashion-mnist")
# Fresh chains from noise: sweeps before the samples are drawn. Model P's exact MH sweep costs
# one routing per visible capsule, so it gets fewer by default.
DEFAULT_SAMPLE_STEPS = {"rbm": 1000, "p": 100, "r": 1000}
N_GRID = 64


def _load_binary(dataset, split, method, seed, max_images, dtype):
    """Images of a split, binarised: (n, 784) in ``dtype``, and labels (n,)."""
    X, y = load_dataset(dataset, split)
    if max_images is not None:
        X, y = X[:max_images], y[:max_images]
    return binarize(X, method=method, random_state=seed, dtype=dtype), y


def _build_estimator(args):
    dtype = np.dtype(args.dtype).type
    common = dict(n_iter=args.epochs, batch_size=args.batch_size, random_state=args.seed,
                  dtype=dtype, verbose=1)
    if args.lr is not None:
        common["learning_rate"] = args.lr
    if args.model == "rbm":
        if args.chains is not None and args.chains != args.batch_size:
            raise ValueError("the RBM keeps batch_size persistent chains (as scikit-learn's); "
                             "--chains must equal --batch-size or be omitted")
        return BernoulliRBM(n_components=args.hidden, **common)
    return MODELS[args.model](n_capsules=args.capsules, capsule_dim=args.capsule_dim,
                              patch=args.patch, n_chains=args.chains, **common)


def _train(args):
    out = Path(args.out if args.out is not None else Path("runs") / args.model)
    out.mkdir(parents=True, exist_ok=True)
    X, _ = _load_binary(args.dataset, "train", args.binarize, args.seed, args.max_images,
                        np.dtype(args.dtype))
    estimator = _build_estimator(args)
    print(f"training {type(estimator).__name__} on {X.shape[0]} {args.dataset} images "
          f"({args.binarize} binarisation) for {args.epochs} epochs", flush=True)
    start = time.perf_counter()
    estimator.fit(X)
    seconds = time.perf_counter() - start

    metrics = dict(estimator.history_[-1]) if estimator.history_ else {}
    metadata = {"dataset": args.dataset, "binarize": args.binarize, "seed": args.seed,
                "n_train_images": int(X.shape[0]), "train_seconds": seconds, "metrics": metrics,
                "command": "train"}
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
    X = estimator.sample(args.n, n_steps=args.steps, init="noise", random_state=args.seed)
    path = image_grid(X, _image_shape(estimator), args.cols, args.out,
                      title=f"{type(estimator).__name__}: {args.steps} sweeps from noise")
    print(f"{args.n} samples after {args.steps} sweeps: {path}")
    return 0


def _evaluate(args):
    estimator = load_estimator(args.model_file)
    from .io import load_model

    _, meta = load_model(args.model_file)
    dataset = args.dataset or meta.get("dataset", "embedded")
    method = args.binarize or meta.get("binarize", "stochastic")
    X, _ = _load_binary(dataset, args.split, method, args.seed, args.max_images,
                        np.dtype(estimator.dtype))
    metrics = estimator.evaluate(X, random_state=args.seed)
    report = {"model": type(estimator).__name__, "dataset": dataset, "split": args.split,
              "n_images": int(X.shape[0]), **metrics}
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
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser():
    """The argparse parser of ``python -m capsnp``; subcommands are added by name."""
    parser = argparse.ArgumentParser(prog="capsnp", description="Capsule products of experts: "
                                     "train, sample from and evaluate models on binarised images.")
    parser.add_argument("--version", action="version", version=f"capsnp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("experiment", help="likelihood table: train, AIS, test log-likelihood "
                   "(see python -m capsnp experiment --help)")

    train = sub.add_parser("train", help="fit a model and write model.npz and figures")
    train.add_argument("--model", choices=sorted(MODELS), default="r",
                       help="rbm: Bernoulli RBM; p: capsule product of experts; r: routed "
                            "capsule RBM (default: r)")
    train.add_argument("--dataset", choices=DATASETS, default="embedded")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--capsules", type=_positive_int, default=16, help="hidden capsules J")
    train.add_argument("--capsule-dim", type=_positive_int, default=8, help="capsule size d_h")
    train.add_argument("--hidden", type=_positive_int, default=500, help="RBM hidden units")
    train.add_argument("--patch", type=_positive_int, default=4, help="patch side (visible capsule)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: the estimator's)")
    train.add_argument("--batch-size", type=_positive_int, default=100)
    train.add_argument("--chains", type=_positive_int, default=None,
                       help="persistent chains (default: the batch size)")
    train.add_argument("--binarize", choices=("stochastic", "threshold"), default="stochastic")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    train.add_argument("--max-images", type=_positive_int, default=None,
                       help="use only the first N training images")
    train.add_argument("--sample-steps", type=int, default=None,
                       help="sweeps of the fresh chains in samples.png (default: 1000, P: 100)")
    train.add_argument("--out", default=None, help="output directory (default: runs/<model>)")
    train.set_defaults(func=_train)

    sample = sub.add_parser("sample", help="draw images from a saved model")
    sample.add_argument("--model-file", required=True)
    sample.add_argument("--n", type=_positive_int, default=64)
    sample.add_argument("--steps", type=int, default=1000)
    sample.add_argument("--init", default="noise", choices=("noise",))
    sample.add_argument("--cols", type=_positive_int, default=8)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png")
    sample.set_defaults(func=_sample)

    evaluate = sub.add_parser("evaluate", help="metrics of a saved model on a data split")
    evaluate.add_argument("--model-file", required=True)
    evaluate.add_argument("--dataset", choices=DATASETS, default=None,
                          help="default: the data set the model was trained on")
    evaluate.add_argument("--split", choices=("train", "test"), default="test")
    evaluate.add_argument("--binarize", choices=("stochastic", "threshold"), default=None)
    evaluate.add_argument("--max-images", type=_positive_int, default=None)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv=None):
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["experiment"]:  # its own parser: capsnp/experiment.py
        from .experiment import main as experiment_main

        return experiment_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or an argument error
        return int(exc.code or 0)
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:
        print(f"capsnp {args.command}: error: {exc}", file=sys.stderr)
        return 1
