"""`python -m lutgemm_jax.bench` end to end on a tiny shape: every backend, both sign layouts,
both modes, and the CSV/JSON/PNG outputs (timings themselves are not asserted: speed is measured
by the benchmark, never by tests)."""

import csv
import json

import pytest

from lutgemm_jax import bench


def test_bench_writes_every_backend_layout_and_output(tmp_path, capsys):
    out = {ext: tmp_path / f"rows.{ext}" for ext in ("json", "csv", "png")}
    bench.main(
        ["--quiet", "--shapes", "256x96", "--batch", "1", "5", "--reps", "2", "--warmup", "1"]
        + ["--budget", "0.1", "--modes", "fast", "exact", "--layouts", "canonical", "cpu"]
        + ["--backends", "lut", "lut_kernel", "dense", "xla", "xla_bytes", "numpy", "jnp"]
        + ["--accuracy"]
        + ["--json", str(out["json"]), "--csv", str(out["csv"]), "--plot", str(out["png"])]
    )
    data = json.loads(out["json"].read_text())
    rows = data["rows"]
    keys = {(r["M"], r["mode"], r["layout"], r["backend"]) for r in rows}
    for m in (1, 5):
        for layout in ("canonical", "cpu"):
            assert (m, "-", layout, "dense") in keys
            for mode in ("fast", "exact"):
                assert {(m, mode, layout, b) for b in ("lut", "lut_kernel")} <= keys
    assert len(rows) == len(keys) == 2 * 2 * (2 * 2 + 1)
    for r in rows:
        assert r["ms"] > 0 and r["min_ms"] <= r["ms"]
        assert {"x_vs_xla", "x_vs_xla_bytes", "x_vs_numpy", "x_vs_jnp"} <= set(r)
        # The same-bytes baseline: its speedup over XLA is the ratio of the two XLA timings.
        assert r["xla_vs_xla_bytes"] == pytest.approx(r["ms_xla"] / r["ms_xla_bytes"])
    assert data["meta"]["copy_GBps"] > 0
    # Accuracy table: both modes within their documented error (exact <= 1e-5, fast ~5e-3).
    acc = {(a["activations"], a["mode"]): a["rel_err"] for a in data["meta"]["accuracy"]}
    assert max(v for (_, mode), v in acc.items() if mode == "exact") <= 1e-5
    assert max(v for (_, mode), v in acc.items() if mode == "fast") <= 2e-2
    with open(out["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mode | layout | backend |" in capsys.readouterr().out


def test_bench_alpha_dtype(tmp_path, capsys):
    # float16 alpha (LUT-GEMM's own format): 2 bytes per alpha in the weight-bytes column, and an
    # alpha column in the table; float32 (the default) adds no column.
    out = tmp_path / "rows.json"
    common = ["--quiet", "--shapes", "256x96", "--reps", "2", "--warmup", "1", "--budget", "0.1"]
    bench.main(common + ["--alpha-dtype", "float16", "--backends", "lut", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    groups, q = 2, 3
    assert row["alpha"] == "float16"
    assert row["weight_MB"] * 1e6 == pytest.approx(256 // 32 * q * 96 * 4 + groups * q * 96 * 2)
    assert "| layout | alpha | backend |" in capsys.readouterr().out
    bench.main(common + ["--backends", "lut", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert "alpha" not in row
    assert "| layout | backend |" in capsys.readouterr().out
