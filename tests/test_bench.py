"""``python -m capsnp bench --quick``: every section runs on small shapes and the JSON has the
expected keys. Timings are not checked (they depend on the machine and its load)."""

import json

import pytest

pytest.importorskip("threadpoolctl")

from capsnp.cli import main  # noqa: E402

SECTION_KEYS = {
    "gemm": {"rows", "ceiling_gflops"},
    "routing": {"rows", "torch", "flops_formula"},
    "rbm": {"rows", "n_images", "D", "H"},
    "throughput": {"rows", "ceiling_gflops", "formulas"},
    "scaling": {"rows", "plot"},
    "memory": {"rows", "method"},
    "jit": {"cold", "warm"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def test_quick_bench_writes_every_section(quick_run):
    out, results = quick_run
    assert results["quick"] is True
    for key in ("machine", "table", "bench_seconds", "load_average_at_end"):
        assert key in results
    for key in ("cpu", "logical_cores", "numpy", "numba", "blas", "load_average_at_start"):
        assert key in results["machine"]
    for section, keys in SECTION_KEYS.items():
        assert keys <= set(results[section]), section
        assert results[section]["seconds"] >= 0
    assert (out.parent / "scaling.png").is_file()


def test_quick_bench_rows(quick_run):
    _, results = quick_run
    gemm = results["gemm"]["rows"]
    assert {(r["dtype"], r["threads"]) for r in gemm} == {(d, t) for d in ("float64", "float32")
                                                          for t in (1, 2)}
    assert all(r["gflops_median"] > 0 for r in gemm)
    impls = {r["impl"] for r in results["routing"]["rows"]}
    assert {"numpy", "numba"} <= impls
    assert ("torch" in impls) == (results["routing"]["torch"] is not None)
    for row in results["rbm"]["rows"]:
        assert {"capsnp_median_s", "sklearn_median_s", "speedup", "target_met"} <= set(row)
    models = {(r["model"], r["backend"]) for r in results["throughput"]["rows"]}
    assert models == {(m, b) for m in ("P mh", "P reconstruct", "R", "R 2x250 biases")
                      for b in ("numba", "numpy")}
    assert [r["doubled"] for r in results["scaling"]["rows"]] == ["base", "B", "I", "J", "d_h"]
    for row in results["memory"]["rows"]:
        assert row["traced_peak_mb"] >= 0 and row["peak_mb"] > 0
    assert results["jit"]["warm"]["total_seconds"] > 0


def test_bench_rejects_an_unknown_section(tmp_path):
    with pytest.raises(ValueError, match="unknown section"):
        from bench.run import run

        run(tmp_path / "r.json", quick=True, sections=["gemm", "nope"])
