"""Fresh samples of a saved likelihood-table model: plain chains against parallel tempering.

Loads ``docs/results/<dataset>/<name>_model.npz`` and writes ``<name>_tempered.png`` beside it:
100 plain chains from noise and 100 tempering ladders from noise (``capsnp.tempering``, 6.6;
``n_temperatures`` temperatures on the AIS path, hot end the independent-pixel model), both after
``sweeps`` sweeps and shown as the probabilities of the next visible draw (the binary states for
Model P). Prints one JSON line with the swap acceptance rate of each neighbouring pair (from 20
more ladders) and the seconds taken.

    python docs/results/tempered_samples.py r-2x250 mnist 20 1000 [folder]

``folder`` defaults to ``docs/results/<dataset>``.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from capsnp.estimators import CapsulePoE, load_estimator
from capsnp.plots import image_grids
from capsnp.tempering import tempered_sample


def main(name, dataset="mnist", n_temperatures=20, sweeps=1000, folder=None):
    n_temperatures, sweeps = int(n_temperatures), int(sweeps)
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    probabilities = not isinstance(est, CapsulePoE)
    t0 = time.perf_counter()
    plain = est.sample(100, n_steps=sweeps, random_state=0, return_probabilities=probabilities)
    t1 = time.perf_counter()
    tempered = est.sample(100, n_steps=sweeps, random_state=0, return_probabilities=probabilities,
                          n_temperatures=n_temperatures)
    t2 = time.perf_counter()
    _, rates = tempered_sample(est, n_samples=20, n_sweeps=sweeps, n_temperatures=n_temperatures,
                               random_state=1)
    what = "probabilities of the next draw" if probabilities else "binary states"
    image_grids([(f"plain chains from noise, {sweeps} sweeps ({what})", plain),
                 (f"tempering, {n_temperatures} temperatures, {sweeps} sweeps ({what})", tempered)],
                (28, 28), 10, folder / f"{name}_tempered.png")
    print(json.dumps({"model": name, "dataset": dataset, "temperatures": n_temperatures,
                      "sweeps": sweeps, "plain_seconds": round(t1 - t0, 1),
                      "tempered_seconds": round(t2 - t1, 1),
                      "swap_rates": [round(float(r), 3) for r in rates],
                      "min_swap_rate": round(float(np.min(rates)), 3)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
