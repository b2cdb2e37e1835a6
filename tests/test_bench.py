"""`python -m lutgemm_jax.bench` end to end on tiny shapes: every backend, both sign layouts,
both modes, the read-bandwidth floor, the dispatch-overhead table, the issue-20 presets, the
CSV/JSON/PNG outputs and `benchmarks/plot_bandwidth.py` (timings themselves are not asserted:
speed is measured by the benchmark, never by tests)."""

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from lutgemm_jax import _lutgemm_cpu, bench

PLOT_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "plot_bandwidth.py"
# Light settings for a shared machine: a small floor buffer, little rotation, few repetitions.
SMALL = ["--quiet", "--read-mib", "4", "--read-passes", "3", "--rotate-mib", "1"]
SMALL += ["--reps", "2", "--warmup", "1", "--budget", "0.1"]
# cpu/read_bandwidth.h: word j of the buffer holds j * this (mod 2^64).
FILL_MULTIPLIER = 0x9E3779B97F4A7C15


def _assert_floor_fields(row: dict, read_gbps: float):
    # floor = bytes read (weight as stored + x in float32) / read bandwidth; % = floor / time.
    read_bytes = row["weight_MB"] * 1e6 + row["M"] * row["K"] * 4
    assert row["read_MB"] * 1e6 == pytest.approx(read_bytes)
    assert row["floor_ms"] == pytest.approx(read_bytes / (read_gbps * 1e9) * 1e3)
    assert row["pct_of_floor"] == pytest.approx(100 * row["floor_ms"] / row["ms"])
    assert row["GBps"] == pytest.approx(read_bytes / (row["ms"] * 1e-3) / 1e9)
    assert row["bits_per_weight"] == pytest.approx(
        8 * row["weight_MB"] * 1e6 / (row["K"] * row["N"])
    )


def test_bench_writes_every_backend_layout_and_output(tmp_path, capsys):
    out = {ext: tmp_path / f"rows.{ext}" for ext in ("json", "csv", "png")}
    bench.main(
        SMALL
        + ["--shapes", "256x96", "--batch", "1", "5"]
        + ["--modes", "fast", "exact", "--layouts", "canonical", "cpu"]
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
    meta = data["meta"]
    # The floor: the median of the read passes taken before and after the timings.
    passes = [g for k in ("before", "after") for g in meta["read_bandwidth"][k]["pass_GBps"]]
    assert len(passes) == 2 * 3 and meta["read_GBps"] == pytest.approx(statistics.median(passes))
    assert 0 < meta["read_GBps_min"] <= meta["read_GBps"] <= meta["read_GBps_max"]
    for r in rows:
        assert r["ms"] > 0 and r["min_ms"] <= r["ms"]
        assert {"x_vs_xla", "x_vs_xla_bytes", "x_vs_numpy", "x_vs_jnp"} <= set(r)
        # The same-bytes baseline: its speedup over XLA is the ratio of the two XLA timings.
        assert r["xla_vs_xla_bytes"] == pytest.approx(r["ms_xla"] / r["ms_xla_bytes"])
        _assert_floor_fields(r, meta["read_GBps"])
    # Accuracy table: both modes within their documented error (exact <= 1e-5, fast ~5e-3).
    acc = {(a["activations"], a["mode"]): a["rel_err"] for a in meta["accuracy"]}
    assert max(v for (_, mode), v in acc.items() if mode == "exact") <= 1e-5
    assert max(v for (_, mode), v in acc.items() if mode == "fast") <= 2e-2
    with open(out["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| floor_ms | pct_of_floor |" in printed
    assert "# read floor " in printed


def test_bench_alpha_dtype(tmp_path, capsys):
    # float16 alpha (LUT-GEMM's own format): 2 bytes per alpha in the weight-bytes column, and an
    # alpha column in the table; float32 (the default) adds no column.
    out = tmp_path / "rows.json"
    common = SMALL + ["--shapes", "256x96", "--backends", "lut", "--json", str(out)]
    bench.main(common + ["--alpha-dtype", "float16"])
    (row,) = json.loads(out.read_text())["rows"]
    groups, q = 2, 3
    assert row["alpha"] == "float16"
    assert row["weight_MB"] * 1e6 == pytest.approx(256 // 32 * q * 96 * 4 + groups * q * 96 * 2)
    assert row["bits_per_weight"] == pytest.approx(3 + 16 * q / 128)
    assert "| layout | alpha |" in capsys.readouterr().out
    bench.main(common)
    (row,) = json.loads(out.read_text())["rows"]
    assert "alpha" not in row
    assert row["bits_per_weight"] == pytest.approx(3 + 32 * q / 128)
    assert "| layout | bits_per_weight |" in capsys.readouterr().out


def test_bench_uniform_weights(tmp_path, capsys):
    # --uniform: one scale per group (alpha [G, 1, N]), so 1 alpha per group in the weight bytes
    # and a uniform column in the table.
    out = tmp_path / "rows.json"
    argv = SMALL + ["--shapes", "256x96", "--backends", "lut", "--g", "32", "--uniform"]
    bench.main(argv + ["--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    groups, q = 256 // 32, 3
    assert row["uniform"] is True and row["g"] == 32
    assert row["weight_MB"] * 1e6 == pytest.approx(256 // 32 * q * 96 * 4 + groups * 96 * 4)
    assert "| uniform |" in capsys.readouterr().out


def test_bench_rotates_cold_sets(tmp_path):
    # --rotate-mib: enough copies of the weight for >= that many MiB, at most MAX_SETS copies.
    out = tmp_path / "rows.json"
    common = SMALL[:5] + SMALL[7:] + ["--shapes", "1024x512", "--backends", "lut"]
    bench.main(common + ["--rotate-mib", "2", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    copies = row["rotated_MiB"] / (row["weight_MB"] * 1e6 / (1 << 20))
    assert copies == pytest.approx(math.ceil(2 * (1 << 20) / (row["weight_MB"] * 1e6)))
    bench.main(common + ["--rotate-mib", "1024", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["rotated_MiB"] == pytest.approx(bench.MAX_SETS * row["weight_MB"] * 1e6 / (1 << 20))


@pytest.mark.parametrize("isa", ["portable", "avx2"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_bandwidth_reads_every_word(monkeypatch, isa, threads):
    if isa == "avx2" and not _lutgemm_cpu.avx2_supported():
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setenv("LUTGEMM_CPU_ISA", isa)
    nbytes, passes = (1 << 20) + 384, 3  # not a whole number of chunks per thread
    r = bench.read_bandwidth(nbytes, passes, threads)
    assert r["isa"] == isa and r["threads"] == threads and r["passes"] == passes
    for key in ("GBps", "GBps_min", "GBps_max"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert r["GBps_min"] <= r["GBps"] <= r["GBps_max"] and len(r["pass_GBps"]) == passes
    # Each pass (warm-up included) summed every word once: sum_j j * C over nbytes / 8 words.
    words = nbytes // 8
    expected = (passes + 1) * FILL_MULTIPLIER * (words * (words - 1) // 2) % (1 << 64)
    assert r["checksum"] == expected


def test_read_bandwidth_uses_the_kernels_thread_count(monkeypatch):
    monkeypatch.setenv("LUTGEMM_CPU_THREADS", "3")
    assert bench.read_bandwidth(1 << 20, 1)["threads"] == 3
    monkeypatch.delenv("LUTGEMM_CPU_THREADS")
    assert bench.read_bandwidth(1 << 20, 1)["threads"] == _lutgemm_cpu.kernel_threads() >= 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(nbytes=100), ValueError, "nbytes must be a positive multiple of 128, got 100"),
        (dict(nbytes=0), ValueError, "nbytes must be a positive multiple of 128, got 0"),
        (dict(nbytes=1 << 20, passes=0), ValueError, r"passes must be in \[1, 1000\], got 0"),
        (dict(nbytes=1 << 20, threads=257), ValueError, r"threads must be in \[1, 256\]"),
        (dict(nbytes=1 << 20, threads=1.5), TypeError, "threads must be an int, got 1.5"),
        (dict(nbytes=float(1 << 20)), TypeError, "nbytes must be an int"),
    ],
)
def test_read_bandwidth_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bench.read_bandwidth(**kwargs)


@pytest.mark.parametrize(
    "args, match",
    [
        ((100, 1, 1), "nbytes must be a positive multiple of 128, got 100"),
        ((128, 0, 1), r"passes must be in \[1, 1000\], got 0"),
        ((128, 1, 0), r"threads must be in \[1, 256\], got 0"),
    ],
)
def test_native_read_bandwidth_validates_too(args, match):
    with pytest.raises(ValueError, match="read_bandwidth: " + match):
        _lutgemm_cpu.read_bandwidth(*args)


def test_suites_preset_issue20_tables():
    a = bench.parse_args(["--suite", "decode"])
    assert a.shapes == list(bench.ISSUE_SHAPES) and a.q == [2, 3, 4] and a.batch == [1]
    assert (a.g, a.modes, a.layouts, a.backends) == (128, ["fast"], ["cpu"], ["lut"])
    assert bench.parse_args(["--suite", "batch"]).batch == list(range(1, 9))
    p = bench.parse_args(["--suite", "prefill"])
    assert p.batch == [128, 512, 2048] and p.backends == ["lut", "jnp", "xla"]
    assert p.shapes == list(bench.PREFILL_SHAPES) and p.q == [2, 3, 4] and not p.uniform
    assert bench.parse_args(["--suite", "prefill", "--g", "32", "--uniform"]).uniform
    # Explicit options override the preset; no preset keeps the plain defaults.
    assert bench.parse_args(["--suite", "decode", "--q", "3"]).q == [3]
    assert bench.parse_args([]).shapes == [(4096, 4096)]


def test_overhead_table(tmp_path, capsys):
    out = tmp_path / "rows.json"
    bench.main(SMALL + ["--suite", "overhead", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == []
    calls = {r["call"]: r for r in data["meta"]["overhead"]}
    assert set(calls) == {"lut_gemm (fast)", "xla f32 dot"}
    for r in calls.values():
        assert (r["M"], r["K"], r["N"]) == (1, 64, 64)
        assert 0 < r["min_us"] <= r["us"] and r["loop_us"] > 0
        assert r["floor_us"] == pytest.approx(r["read_bytes"] / data["meta"]["read_GBps"] / 1e3)
    assert "| call | M | K | N | us |" in capsys.readouterr().out


def _plot(*args) -> subprocess.CompletedProcess:
    # The script needs only matplotlib: run it as users do, without the repo on PYTHONPATH.
    return subprocess.run(
        [sys.executable, str(PLOT_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(args[0].parent)},
        timeout=120,
    )


def test_plot_bandwidth_script(tmp_path):
    data = tmp_path / "bench.json"
    bench.main(
        SMALL
        + ["--shapes", "256x96", "128x64", "--q", "2", "3", "4", "--backends", "lut"]
        + ["--json", str(data)]
    )
    png = tmp_path / "bandwidth.png"
    r = _plot(data, png)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Rows that do not match, or a JSON without the floor, fail with a message naming the cause.
    r = _plot(data, tmp_path / "none.png", "--batch", "7")
    assert r.returncode != 0 and "no rows with M = 7" in r.stderr
    no_floor = tmp_path / "old.json"
    no_floor.write_text(json.dumps({"meta": {}, "rows": json.loads(data.read_text())["rows"]}))
    r = _plot(no_floor, tmp_path / "old.png")
    assert r.returncode != 0 and "meta.read_GBps" in r.stderr
