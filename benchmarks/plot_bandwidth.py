"""GB/s vs shape per bit width, with the read floor, from ``python -m lutgemm_jax.bench --json``.

    python benchmarks/plot_bandwidth.py results.json bandwidth.png [--batch 1] [--backend lut]
        [--target-pct 80]

One line per (q, and mode / layout / alpha dtype where the JSON holds several) over the shapes in
the order the bench ran them; y is the rows' ``GBps`` (bytes the op must read / median time), and
the horizontal line is the same run's read bandwidth (``meta.read_GBps``), so a point's height
against the line is its ``pct_of_floor``; a dotted line marks ``--target-pct`` of the floor (issue
20's decode target, 80%; 0 draws none). Needs only matplotlib (Agg backend, no display).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def _series_key(row: dict) -> tuple:
    return (row["q"], row.get("mode", "-"), row.get("layout", "-"), row.get("alpha", "float32"))


def plot_bandwidth(
    data: dict, path: str | Path, *, batch: int = 1, backend: str = "lut", target_pct: float = 80
) -> None:
    """Writes a PNG of ``GBps`` vs ``KxN`` for the rows with ``M == batch`` and ``backend``.

    Args:
      data: the bench JSON: ``{"meta": {"read_GBps": ..., ...}, "rows": [...]}``.
      path: where to write the PNG.
      batch, backend: which rows to draw.
      target_pct: a dotted line at this percentage of the floor (0: none).

    Raises:
      ValueError: if the JSON has no read floor or no row matches.
    """
    meta = data.get("meta", {})
    if "read_GBps" not in meta:
        raise ValueError(
            "plot_bandwidth: the JSON has no meta.read_GBps (the read floor); write it with "
            "`python -m lutgemm_jax.bench --json FILE`"
        )
    rows = [r for r in data.get("rows", []) if r["M"] == batch and r["backend"] == backend]
    if not rows:
        raise ValueError(f"plot_bandwidth: no rows with M = {batch} and backend {backend!r}")
    shapes = list(dict.fromkeys(f"{r['K']}x{r['N']}" for r in rows))
    keys = sorted({_series_key(r) for r in rows})
    varying = [len({k[i] for k in keys}) > 1 for i in range(1, 4)]

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key in keys:
        pts = {f"{r['K']}x{r['N']}": r["GBps"] for r in rows if _series_key(r) == key}
        xs = [i for i, s in enumerate(shapes) if s in pts]
        label = f"q={key[0]}" + "".join(
            f" {v}" for v, on in zip(key[1:], varying, strict=True) if on
        )
        ax.plot(xs, [pts[shapes[i]] for i in xs], marker="o", label=label)
    floor = meta["read_GBps"]
    threads = f", {meta['read_threads']} threads" if "read_threads" in meta else ""
    ax.axhline(floor, color="black", ls="--", lw=1, label=f"read floor {floor:.1f} GB/s{threads}")
    if target_pct > 0:
        ax.axhline(
            floor * target_pct / 100, color="gray", ls=":", lw=1, label=f"{target_pct:g}% of floor"
        )
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_xlabel("K x N")
    ax.set_ylabel("GB/s (bytes read / median time)")
    ax.set_ylim(0, max(floor, max(r["GBps"] for r in rows)) * 1.15)
    ax.set_title(f"{backend}, M = {batch}, {meta.get('date', '')} {meta.get('machine', '')}")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("json", type=Path, help="output of python -m lutgemm_jax.bench --json")
    p.add_argument("png", type=Path, help="PNG to write")
    p.add_argument("--batch", type=int, default=1, help="rows with this M (default 1)")
    p.add_argument("--backend", default="lut", help="rows of this backend (default lut)")
    p.add_argument(
        "--target-pct", type=float, default=80, help="dotted line at this %% of the floor (0: none)"
    )
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text())
    plot_bandwidth(
        data, args.png, batch=args.batch, backend=args.backend, target_pct=args.target_pct
    )


if __name__ == "__main__":
    main()
