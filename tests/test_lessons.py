"""Execute every lesson (``lessons/NN_name.py``, jupytext percent format) as a notebook.

Each lesson is converted in memory with ``jupytext.read`` and run cell by cell by
``nbclient.NotebookClient`` in a ``python3`` kernel whose working directory is ``lessons/``.
Any error in any cell (a failed ``assert`` included) fails the test. Nothing is written to disk.
Set ``CAPSNP_FAST=1`` (as CI does) to run the lessons' smaller configurations.
"""

import sys
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9]*.py"))
CELL_TIMEOUT = 600  # seconds per cell; every lesson runs in well under a minute


def test_lessons_are_found():
    assert LESSONS, f"no lessons found in {LESSONS_DIR}"


def test_python3_kernel_runs_this_interpreter():
    """The ``python3`` kernel spec (ipykernel's, or an installed one) starts this environment."""
    pytest.importorskip("ipykernel")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    manager = pytest.importorskip("jupyter_client.manager")
    spec = kernelspec.KernelSpecManager().get_kernel_spec("python3")
    km = manager.KernelManager(kernel_name="python3")
    # jupyter_client replaces a bare "python" in the spec's argv with sys.executable
    cmd = km.format_kernel_cmd()
    assert spec.language.lower() == "python"
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve(), (cmd, sys.executable)


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_executes(path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(LESSONS_DIR)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
