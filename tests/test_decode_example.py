"""examples/decode.py end to end on toy shapes: a saved OPT directory and a Llama preset."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest

from lutgemm_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("decode", f"{ROOT}/examples/decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_an_opt_directory(cli, tmp_path, capsys):
    config = models.OPTConfig(vocab_size=300, hidden_size=64, num_hidden_layers=1, ffn_dim=64,
                              num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    models.save_hf_checkpoint(tmp_path, models.init_params(config), config)
    cli.main(["--model", str(tmp_path), "--bits", "3", "--group-size", "32", "--method", "rtn",
              "--max-new-tokens", "3", "--prompt", "hi"])  # fmt: skip
    out = capsys.readouterr().out
    assert "[float32]" in out and "[3-bit]" in out and "top-1 agreement" in out


def test_benchmark_table(cli, capsys, monkeypatch):
    monkeypatch.setattr(cli, "TINY", dataclasses.replace(cli.TINY, num_hidden_layers=1))
    cli.main(["--benchmark", "--bits", "3,4", "--batch", "1,2", "--group-size", "64",
              "--method", "rtn", "--bench-steps", "2", "--bench-repeats", "1"])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if " | " in line]
    assert rows[0].split("|")[2].strip() == "ms/step"
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["float32", "3-bit g64", "4-bit g64"] * 2
    assert [int(r.split("|")[0]) for r in rows[1:]] == [1, 1, 1, 2, 2, 2]


def test_bad_arguments(cli):
    with pytest.raises(SystemExit, match="unknown preset"):
        cli.main(["--preset", "gpt-5"])
    with pytest.raises(SystemExit):
        cli.main(["--bits", "three"])
