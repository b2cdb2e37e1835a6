"""Runs the README's Python examples: the ten-line API example, then the Flax section's code
blocks (convert + run, LoRA fine-tuning, save/load) in order, in one namespace, from a temporary
working directory."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


def _run(blocks: list[str], name: str) -> dict:
    namespace: dict = {"__name__": name}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[{name} block {i}]", "exec"), namespace)  # noqa: S102
    return namespace


def test_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (block,) = code_blocks(section(README.read_text(), "## API in ten lines"))
    namespace = _run([block], "api")
    assert float(namespace["err"]) < 0.1  # LUT-GEMM vs x @ dequantize(w): kernel error only


def test_flax_examples_run(tmp_path, monkeypatch):
    blocks = code_blocks(section(README.read_text(), "## Flax: convert, fine-tune, save"))
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = _run(blocks, "flax")
    assert namespace["losses"][-1] < namespace["losses"][0]
    assert namespace["linen_losses"][-1] < namespace["linen_losses"][0]
