"""Runs the Python code blocks of docs/flax.md (the README's Flax section), in order, in one
namespace, from a temporary working directory."""

from __future__ import annotations

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "flax.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_flax_doc_examples_run(tmp_path, monkeypatch):
    blocks = code_blocks(DOC.read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "flax_doc"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)  # noqa: S102
    assert namespace["losses"][-1] < namespace["losses"][0]
    assert namespace["linen_losses"][-1] < namespace["linen_losses"][0]
