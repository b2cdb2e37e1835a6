#!/usr/bin/env bash
# Regenerates the CPU tables of BENCHMARKS.md (results/*.md, *.json, *.csv, speedup_vs_batch.png).
# Run from the repository root on an otherwise idle machine; the tables before the issue-20
# suites take about 5 minutes, the suites (cold weights rotated over 256 MiB) longer.
set -euo pipefail
out=benchmarks/results
mkdir -p "$out"
shapes="4096x4096 4096x16384 16384x4096"
bench() { python -m lutgemm_jax.bench --quiet "$@"; }
uptime | tee "$out/load.txt"
bench --shapes $shapes --q 3 --batch 1 --modes fast exact --layouts cpu canonical \
  --backends lut xla xla_bytes numpy jnp --accuracy --json "$out/batch1.json" --csv "$out/batch1.csv" \
  | tee "$out/batch1.md"
bench --shapes $shapes --q 2 3 4 --batch 1 --modes fast --backends lut xla numpy \
  --json "$out/qscaling.json" | tee "$out/qscaling.md"
bench --shapes $shapes --q 3 --batch 8 --modes fast exact --backends lut xla numpy \
  --json "$out/batch8.json" | tee "$out/batch8.md"
bench --shapes 4096x4096 --q 3 --sweep --modes fast exact --backends lut dense xla \
  --budget 4 --reps 40 --json "$out/sweep.json" --csv "$out/sweep.csv" \
  --plot benchmarks/speedup_vs_batch.png | tee "$out/sweep.md"
# Issue 20's tables (`--suite`, lutgemm_jax/bench.py), each against the read floor of its run.
bench --suite decode --json "$out/decode.json" | tee "$out/decode.md"
python benchmarks/plot_bandwidth.py "$out/decode.json" benchmarks/bandwidth_vs_shape.png
bench --suite batch --json "$out/batch_1_8.json" | tee "$out/batch_1_8.md"
bench --suite prefill --json "$out/prefill.json" | tee "$out/prefill.md"
bench --suite overhead --json "$out/overhead.json" | tee "$out/overhead.md"
uptime | tee -a "$out/load.txt"
