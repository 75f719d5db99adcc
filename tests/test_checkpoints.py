"""Checkpoints: writing, exact resumption, Ctrl-C, SIGKILL during a write, refusal of bad files.

The exactness tests compare bit for bit, so they pin BLAS and Numba to one thread (a reduction
summed in another order by another number of threads changes the last bits).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SEEDS
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

import capsnp.estimators as estimators_module
from capsnp.cli import main
from capsnp.estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM, load_estimator
from capsnp.io import METADATA_KEY, load_model, remove_temporary_files, save_model

REPO = Path(__file__).resolve().parents[1]
KINDS = ["p", "r", "rb", "rbm"]  # rb: Model R with assignment biases (4b.1)
TIMING = {"seconds", "images_per_second"}  # the only history entries that may differ


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS thread and one Numba thread: the condition for bitwise-equal runs."""
    try:
        import numba
    except ImportError:  # pragma: no cover
        numba = None
    previous = numba.get_num_threads() if numba is not None else None
    if numba is not None:
        numba.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    if numba is not None:
        numba.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    """100 binarised 8x8 digits, (100, 64) float64."""
    return (load_digits().data[:100] / 16.0 > 0.5).astype(np.float64)


def make(kind, **overrides):
    """Small estimators for 8x8 images: 5 minibatches per epoch, 3 epochs."""
    common = dict(batch_size=20, n_iter=3, random_state=0)
    if kind == "p":
        return CapsulePoE(**{**common, "n_capsules": 3, "capsule_dim": 3, "patch": 4,
                             "learning_rate": 0.05, **overrides})
    if kind in ("r", "rb"):
        return RoutedCapsuleRBM(**{**common, "n_capsules": 3, "capsule_dim": 3, "patch": 4,
                                   "learning_rate": 0.2, "momentum": 0.5,
                                   "assignment_biases": kind == "rb", **overrides})
    return BernoulliRBM(**{**common, "n_components": 8, "momentum": 0.5, **overrides})


def training_state(est):
    """Everything that must be equal between an uninterrupted and a resumed fit."""
    state = est._state
    arrays = {name: getattr(est, name) for name in est._param_attributes}
    arrays.update({f"velocity_{f}": v for f, v in zip(state.velocity._fields, state.velocity)})
    if state.chains is not None:
        arrays.update(est._chain_arrays(state.chains))
    history = [{k: v for k, v in record.items() if k not in TIMING} for record in est.history_]
    return arrays, history, est._rng.bit_generator.state, est._monitor_rng.bit_generator.state


def assert_same_training_state(a, b):
    arrays_a, history_a, rng_a, monitor_a = training_state(a)
    arrays_b, history_b, rng_b, monitor_b = training_state(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name  # bitwise
    assert history_a == history_b
    assert rng_a == rng_b and monitor_a == monitor_b
    assert a.n_iter_ == b.n_iter_


_REFERENCE = {}


def uninterrupted(kind, digits):
    """The uninterrupted fit of ``make(kind)``, computed once per kind."""
    if kind not in _REFERENCE:
        _REFERENCE[kind] = make(kind).fit(digits)
    return _REFERENCE[kind]


def interrupt_on_call(monkeypatch, est, method, call, after=True):
    """Make ``est.<method>`` raise KeyboardInterrupt at its ``call``-th call.

    With ``after`` the real method runs first (so any change it made in place would show).
    """
    original = getattr(est, method)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call and not after:
            raise KeyboardInterrupt
        result = original(*args, **kwargs)
        if len(calls) == call:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(est, method, wrapper)


# ----------------------------------------------------------------------------- writing


def test_checkpoints_are_written_every_n_epochs_and_after_the_last(digits, tmp_path, monkeypatch):
    written = []
    real_save = estimators_module.save_model

    def spy(path, arrays, metadata):
        written.append(metadata["epochs"])
        real_save(path, arrays, metadata)

    monkeypatch.setattr(estimators_module, "save_model", spy)
    path = tmp_path / "ckpt.npz"
    est = make("rbm", n_iter=5, checkpoint_every=2, checkpoint_path=path).fit(digits)
    assert written == [2, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    # a checkpoint is also a model file: it loads as the fitted estimator
    loaded = load_estimator(path)
    np.testing.assert_array_equal(loaded.free_energy(digits), est.free_energy(digits))


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_holds_the_whole_training_state_without_pickle(kind, digits, tmp_path):
    path = tmp_path / "ckpt.npz"
    est = make(kind, n_iter=2, checkpoint_path=path).fit(digits)
    with np.load(path, allow_pickle=False) as npz:  # every member is a plain array
        names = set(npz.files)
        meta = json.loads(npz[METADATA_KEY].tobytes().decode("utf-8"))
    params = set(est._param_attributes)
    velocities = {f"velocity_{f}" for f in est._state.params._fields}
    chains = {"r": {"chains_v", "chains_a"}, "rb": {"chains_v", "chains_a"}, "rbm": {"chains_v", "chains_p"}}.get(kind, {"chains_v"})
    held_out = {"monitor_rows"} if kind != "rbm" else set()  # the RBM has no held-out slice
    assert names == params | velocities | chains | held_out | {METADATA_KEY}
    assert meta["epochs"] == 2 and len(meta["history"]) == 2
    assert meta["rng_state"]["bit_generator"] == "PCG64"
    assert meta["rng_state"] == json.loads(json.dumps(est._rng.bit_generator.state))
    assert meta["hyperparameters"]["checkpoint_path"] == str(path)
    assert meta["checkpoint"]["n_samples"] == 100 and len(meta["checkpoint"]["data_sha256"]) == 64
    assert meta["format_version"] == 1


# ----------------------------------------------------------------------------- exact resumption


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["mid-epoch step", "monitoring", "checkpoint write"])
def test_interrupted_and_resumed_fit_equals_uninterrupted(kind, where, digits, tmp_path,
                                                          monkeypatch):
    path = tmp_path / "ckpt.npz"
    est = make(kind, checkpoint_path=path)
    if where == "mid-epoch step":
        interrupt_on_call(monkeypatch, est, "_step", call=8)  # epoch 2, third minibatch
    elif where == "monitoring":
        interrupt_on_call(monkeypatch, est, "_monitor", call=2)  # end of epoch 2
    else:  # Ctrl-C inside the atomic write of the second checkpoint
        real_save = estimators_module.save_model
        calls = []

        def interrupted_save(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            real_save(*args)

        monkeypatch.setattr(estimators_module, "save_model", interrupted_save)
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved to .*ckpt.npz"):
        est.fit(digits)
    monkeypatch.undo()
    assert 1 <= est.n_iter_ < 3  # stopped part way, with a usable model
    assert np.all(np.isfinite(est.free_energy(digits)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary litter

    resumed = make(kind, checkpoint_path=path, resume=True).fit(digits)
    assert_same_training_state(resumed, uninterrupted(kind, digits))


def test_resuming_twice_and_a_finished_run(digits, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    first = make("p", checkpoint_path=path)
    interrupt_on_call(monkeypatch, first, "_step", call=3)
    with pytest.raises(KeyboardInterrupt):
        first.fit(digits)
    second = make("p", checkpoint_path=path, resume=True)
    interrupt_on_call(monkeypatch, second, "_step", call=6, after=False)
    with pytest.raises(KeyboardInterrupt, match=r"after 1 epoch and 2 of 5 minibatches"):
        second.fit(digits)
    monkeypatch.undo()
    third = make("p", checkpoint_path=path, resume=True).fit(digits)
    assert_same_training_state(third, uninterrupted("p", digits))
    # resuming a finished run trains no further
    again = make("p", checkpoint_path=path, resume=True, checkpoint_every=2, verbose=0).fit(digits)
    assert_same_training_state(again, third)


def test_interrupt_without_checkpoint_path_keeps_a_consistent_model(digits, monkeypatch):
    est = make("r")
    interrupt_on_call(monkeypatch, est, "_step", call=7)
    with pytest.raises(KeyboardInterrupt):
        est.fit(digits)
    assert est.n_iter_ == 1 and est._state.batches_done == 1
    assert np.all(np.isfinite(est.transform(digits)))
    # partial_fit drops the unfinished epoch and runs a whole one from the current parameters
    monkeypatch.undo()
    est.partial_fit(digits)
    assert est.n_iter_ == 2 and not est._state.in_epoch


# ----------------------------------------------------------------------------- refusals


def checkpoint_file(digits, tmp_path, kind="rbm"):
    path = tmp_path / "ckpt.npz"
    make(kind, n_iter=1, checkpoint_path=path).fit(digits)
    return path


def edited(edit_arrays=None, edit_meta=None):
    """A damage function: rewrite a checkpoint (a valid file) with edited arrays or metadata."""
    def damage(path):
        arrays, meta = load_model(path)
        for edit, target in ((edit_arrays, arrays), (edit_meta, meta)):
            if edit is not None:
                edit(target)
        meta.pop("format_version")
        meta.pop("capsnp_version")
        save_model(path, arrays, meta)
    return damage


def set_array(name, make_value):
    return edited(edit_arrays=lambda a: a.update({name: make_value(a[name])}))


def set_meta(*keys, **updates):
    """Update the metadata dict found at ``meta[keys[0]][keys[1]]...``."""
    def edit(meta):
        for key in keys:
            meta = meta[key]
        meta.update(updates)
    return edited(edit_meta=edit)


def with_format_version(version):
    """A damage function: rewrite the file as another format_version would (a valid zip)."""
    def damage(path):
        arrays, meta = load_model(path)
        meta["format_version"] = version
        entry = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays, **{METADATA_KEY: entry})
    return damage


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside the first member: its zip CRC no longer matches
    path.write_bytes(bytes(data))


# case: (damage(path), exception, message pattern)
BAD_CHECKPOINTS = {
    "truncated": (truncate, ValueError, "truncated or corrupted"),
    "corrupted byte": (flip_a_byte, ValueError, "ckpt.npz"),
    "empty file": (lambda p: p.write_bytes(b""), ValueError, "not a valid .npz"),
    "wrong format_version": (with_format_version(9), ValueError, "unsupported format_version 9"),
    "model file, not checkpoint": (edited(edit_meta=lambda m: m.pop("checkpoint")), ValueError,
                                   "not a checkpoint"),
    "other class": (set_meta(model="CapsulePoE"), ValueError, "checkpoint of a CapsulePoE"),
    "other hyper-parameters": (set_meta("hyperparameters", learning_rate=0.5), ValueError,
                               r"learning_rate=0.1 here, 0.5 in the checkpoint"),
    "other data": (set_meta("checkpoint", data_sha256="0" * 64), ValueError,
                   "other training data"),
    "missing array": (edited(edit_arrays=lambda a: a.pop("velocity_W")), ValueError,
                      "no array 'velocity_W'"),
    "wrong shape": (set_array("components_", lambda W: W[:, :63]), ValueError,
                    r"shape \(8, 63\)"),
    "wrong dtype": (set_array("components_", lambda W: W.astype(np.float32)), ValueError,
                    "dtype float32"),
    "NaN parameters": (set_array("intercept_hidden_", lambda b: b * np.nan), ValueError,
                       "NaN or infinity"),
    "bad generator state": (set_meta("rng_state", bit_generator="seed"), ValueError,
                            "unknown random generator state 'seed'"),
    "missing generator state": (edited(edit_meta=lambda m: m.pop("rng_state")), ValueError,
                                "missing or malformed metadata"),
    "wrong chain shape": (set_array("chains_v", lambda v: v[:3]), ValueError,
                          "'chains_v' has shape"),
    "deleted": (lambda p: p.unlink(), FileNotFoundError, "no checkpoint at"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_refused_with_a_clear_message(case, digits, tmp_path):
    path = checkpoint_file(digits, tmp_path)
    damage, error, message = BAD_CHECKPOINTS[case]
    damage(path)
    with pytest.raises(error, match=message):
        make("rbm", n_iter=1, checkpoint_path=path, resume=True).fit(digits)


def test_resume_refuses_other_data_by_content(digits, tmp_path):
    path = checkpoint_file(digits, tmp_path)
    other = digits.copy()
    other[0, 0] = 1 - other[0, 0]  # one pixel differs
    with pytest.raises(ValueError, match="other training data"):
        make("rbm", n_iter=1, checkpoint_path=path, resume=True).fit(other)
    # verbose and the checkpoint settings may change
    make("rbm", n_iter=1, checkpoint_path=path, resume=True, verbose=0,
         checkpoint_every=3).fit(digits)


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("kind", ["p", "r"])
def test_divergence_stops_with_the_epoch_and_keeps_the_last_checkpoint(kind, digits, tmp_path):
    # A linear "schedule" from 0.05 up to ~1e39: epoch 1 is fine, epoch 2 overflows float32.
    path = tmp_path / "ckpt.npz"
    est = make(kind, n_iter=3, dtype=np.float32, lr_schedule="linear", lr_final_ratio=4e40,
               learning_rate=0.05, checkpoint_path=path)
    with pytest.raises(FloatingPointError, match=r"epoch 2 .*learning rate is too high.*"
                                                 r"checkpoint .*ckpt.npz of epoch 1 is kept"):
        est.fit(digits)
    kept = load_estimator(path)
    assert kept.n_iter_ == 1
    assert all(np.all(np.isfinite(getattr(kept, name))) for name in kept._param_attributes)
    # the estimator keeps the last finite parameters (epoch 2 stopped at its first update)
    assert all(np.all(np.isfinite(getattr(est, name))) for name in est._param_attributes)
    assert est.n_iter_ == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(digits, tmp_path):
    est = make("rbm", learning_rate=1e39, dtype=np.float32, checkpoint_path=tmp_path / "c.npz")
    with pytest.raises(FloatingPointError, match="epoch 1 .*no checkpoint was written"):
        est.fit(digits)
    assert not (tmp_path / "c.npz").exists()


# ----------------------------------------------------------------------------- killed writers

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from capsnp.io import save_model

    path, n = sys.argv[1], 2_000_000  # three arrays of 16 MB: a write takes a while
    for k in range(1, 1_000_000):
        arrays = {"W": np.full(n, float(k)), "velocity_W": np.full(n, -float(k)),
                  "chains_v": np.full((1000, 2000), k % 2, dtype=np.float64)}
        print(f"writing {k}", flush=True)
        save_model(path, arrays, {"version": k, "epochs": k})
""")


def temporary_files(directory):
    return [p for p in Path(directory).iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_sigkill_during_a_write_leaves_a_complete_checkpoint(seed, tmp_path):
    rng = np.random.default_rng(seed)
    path = tmp_path / "checkpoint.npz"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for expected in ("writing 1", "writing 2", "writing 3"):  # 1 and 2 are then complete
            assert child.stdout.readline().strip() == expected, "the writer died"
        deadline = time.monotonic() + 20
        while not temporary_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.001)  # until write 3 reaches the disk
        time.sleep(rng.uniform(0.0, 0.02))  # then a random moment, usually inside that write
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    arrays, meta = load_model(path)  # loads, and is one complete version
    k = meta["version"]
    assert k >= 2 and meta["epochs"] == k
    assert np.all(arrays["W"] == k) and np.all(arrays["velocity_W"] == -k)
    assert np.all(arrays["chains_v"] == k % 2) and arrays["chains_v"].shape == (1000, 2000)
    # a writer killed mid-write leaves its temporary file; it never breaks the next run ...
    leftovers = temporary_files(tmp_path)
    assert all(p.name.startswith(".checkpoint.npz.") for p in leftovers)
    save_model(path, {"W": np.zeros(2)}, {"version": k + 1})
    assert load_model(path)[1]["version"] == k + 1
    # ... and is removed when training starts (remove_temporary_files)
    assert sorted(remove_temporary_files(path)) == sorted(leftovers)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_fit_removes_leftover_temporary_files(digits, tmp_path):
    path = tmp_path / "ckpt.npz"
    litter = tmp_path / ".ckpt.npz.0123456789ab.tmp"
    litter.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".ckpt.npz.notmine.tmp"
    unrelated.write_bytes(b"keep")
    make("rbm", n_iter=1, checkpoint_path=path).fit(digits)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.npz.notmine.tmp", "ckpt.npz"]


# ----------------------------------------------------------------------------- the command line

TRAIN = ["train", "--model", "rbm", "--hidden", "8", "--epochs", "3", "--max-images", "60",
         "--batch-size", "20", "--sample-steps", "1", "--seed", "4"]


def model_arrays(out):
    arrays, _ = load_model(out / "model.npz")
    return arrays


def test_cli_ctrl_c_exits_130_and_resume_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(TRAIN + ["--out", str(full)]) == 0
    calls = []
    real_step = BernoulliRBM._step

    def step(self, *args):
        calls.append(1)
        if len(calls) == 5:  # epoch 2, second minibatch
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(BernoulliRBM, "_step", step)
    capsys.readouterr()
    assert main(TRAIN + ["--out", str(cut), "--checkpoint-every", "2"]) == 130
    err = capsys.readouterr().err
    assert f"checkpoint saved to {cut / 'checkpoint.npz'}" in err
    assert f"--out {cut} --resume" in err
    assert not (cut / "model.npz").exists()
    monkeypatch.undo()

    assert main(["train", "--out", str(cut), "--resume"]) == 0  # arguments from train_args.json
    a, b = model_arrays(full), model_arrays(cut)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    assert load_model(cut / "model.npz")[1]["resumed"] is True


def test_cli_resume_refusals(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 1
    assert "no train_args.json" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--hidden", "9"]) == 1
    assert "--hidden 9 (the run has 8)" in capsys.readouterr().err
    (run / "checkpoint.npz").unlink()
    assert main(["train", "--out", str(run), "--resume"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_sigint_in_a_real_process_saves_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "NUMBA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "capsnp", "train", "--model", "rbm", "--hidden", "8", "--epochs",
         "100000", "--max-images", "100", "--batch-size", "10", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        # a test run started in the background of a non-interactive shell ignores SIGINT, and
        # the child would inherit that: give it the default disposition, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in child.stdout:
            if "epoch 2:" in line:
                break
        child.send_signal(signal.SIGINT)
        # generous: on a loaded machine the child can take tens of seconds to reach its handler
        _, err = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert f"checkpoint saved to {out / 'checkpoint.npz'}" in err
    assert load_estimator(out / "checkpoint.npz").n_iter_ >= 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "train_args.json"]


def test_rbm_file_without_chain_probabilities_still_resumes(digits, tmp_path):
    """Files written before the RBM's chains carried p(h | v) hold chains_v only: the first
    step then recomputes p(h | v) with the stored parameters. A wrong shape is refused."""
    est = make("rbm", n_iter=2).fit(digits)
    path = tmp_path / "rbm.npz"
    est.save(path)
    arrays, metadata = load_model(path)
    assert arrays["chains_p"].shape == (20, 8)
    old = tmp_path / "old.npz"
    save_model(old, {k: v for k, v in arrays.items() if k != "chains_p"}, metadata)
    resumed = load_estimator(old)
    assert resumed._state.chains[1] is None
    resumed.partial_fit(digits)
    assert resumed._state.chains[1].shape == (20, 8)
    assert np.all(np.isfinite(resumed.components_))
    bad = tmp_path / "bad.npz"
    save_model(bad, {**arrays, "chains_p": arrays["chains_p"][:, :3]}, metadata)
    with pytest.raises(ValueError, match="chains_p"):
        load_estimator(bad)


# ----------------------------------------------------------------------------- centring offsets

AVERAGED_OFFSETS = {  # centred steps whose offsets' moving average (5.10) travels with the chains
    "rbm": dict(centring=True, centring_average=3),
    "rs": dict(assignment_biases=True, shared_units=4, shared_centring=True, centring_average=3),
}


def make_averaged_offsets(kind, **overrides):
    return make("rbm" if kind == "rbm" else "rb", **{**AVERAGED_OFFSETS[kind], **overrides})


@pytest.mark.parametrize("kind", sorted(AVERAGED_OFFSETS))
def test_offsets_average_is_checkpointed_and_resumes_exactly(kind, digits, tmp_path, monkeypatch):
    """The offsets' moving average is training state: it is in the checkpoint, a resumed fit
    equals the uninterrupted one bit for bit, and a damaged offset array is refused."""
    reference = make_averaged_offsets(kind).fit(digits)
    offsets = reference._state.chains[2]
    m_shape = (64,) if kind == "rbm" else (4, 16)
    l_shape = (8,) if kind == "rbm" else (4,)
    assert offsets.m.shape == m_shape and offsets.l.shape == l_shape
    path = tmp_path / "ckpt.npz"
    est = make_averaged_offsets(kind, checkpoint_path=path)
    interrupt_on_call(monkeypatch, est, "_step", call=8)  # epoch 2, third minibatch
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved to"):
        est.fit(digits)
    monkeypatch.undo()
    arrays, _ = load_model(path)
    assert {"centring_m", "centring_l"} <= set(arrays)
    resumed = make_averaged_offsets(kind, checkpoint_path=path, resume=True).fit(digits)
    assert_same_training_state(resumed, reference)  # the offsets are among the chain arrays
    edited(edit_arrays=lambda a: a.update(centring_l=a["centring_l"][:-1]))(path)
    with pytest.raises(ValueError, match="'centring_l' is missing, malformed"):
        make_averaged_offsets(kind, checkpoint_path=path, resume=True).fit(digits)


def test_checkpoint_written_before_a_hyperparameter_existed_resumes_with_its_default(digits, tmp_path):
    """A checkpoint whose metadata lacks a hyper-parameter (here ``centring_average``, added
    later) was trained with its default: resuming with the default is accepted, resuming with
    another value is refused."""
    path = tmp_path / "ckpt.npz"
    trained = make("rbm", n_iter=2, checkpoint_path=path).fit(digits)
    edited(edit_meta=lambda m: m["hyperparameters"].pop("centring_average"))(path)
    assert "centring_average" not in load_model(path)[1]["hyperparameters"]
    resumed = make("rbm", n_iter=2, checkpoint_path=path, resume=True).fit(digits)
    assert resumed.n_iter_ == 2
    np.testing.assert_array_equal(resumed.components_, trained.components_)
    with pytest.raises(ValueError, match=r"centring_average=3 here, 0 in the checkpoint"):
        make("rbm", n_iter=2, checkpoint_path=path, resume=True, centring=True,
             centring_average=3).fit(digits)
