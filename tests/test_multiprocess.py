"""Two processes on JAX's distributed runtime (127.0.0.1, CPU collectives over gloo), each with two
CPU devices, one global mesh of four: lut_gemm column-, row- and data-parallel and its gradient,
tensor-parallel generation, and multi-process checkpoints (tests/multiprocess_worker.py).

Both workers are launched once for the module and run every scenario in sequence; each test
below checks one scenario's results from both processes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
from multiprocess_worker import SCENARIOS

import lutgemm_jax
from lutgemm_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")
PROCESSES = 2
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(port: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # not the parent's 8
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # loopback only
    env["LUTGEMM_DEFAULT_MODE"] = "exact"
    # The workers import the lutgemm_jax this test imported (installed, or a developer's
    # PYTHONPATH), never the unbuilt sources in the repository root.
    package_parent = os.path.dirname(os.path.dirname(lutgemm_jax.__file__))
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [env.get("PYTHONPATH")])])
    return env


class Run:
    """The output of the two workers: RESULT records by scenario, and each one's stderr."""

    def __init__(self, outputs: list[tuple[int | None, str, str]], timed_out: bool):
        self.returncodes = [rc for rc, _, _ in outputs]
        self.stderr = [err for _, _, err in outputs]
        self.started: list[list[str]] = []
        self.results: list[dict[str, dict[str, Any]]] = []
        for _, out, _ in outputs:
            lines = out.splitlines()
            self.started.append([line[6:] for line in lines if line.startswith("START ")])
            records = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
            self.results.append({r["name"]: r for r in records})
        self.timed_out = timed_out

    def scenario(self, name: str) -> list[dict[str, Any]]:
        """Both processes' results of scenario ``name``; fails the test, with why, otherwise."""
        problems = []
        for i, results in enumerate(self.results):
            if name not in results:
                where = self.started[i][-1] if self.started[i] else "before the first scenario"
                stopped = "timed out" if self.timed_out else f"exited {self.returncodes[i]}"
                problems.append(
                    f"process {i} has no result for {name!r}: it {stopped} in {where}"
                    f"\n--- stderr of process {i} (end) ---\n{self.stderr[i][-6000:]}"
                )
            elif not results[name]["ok"]:
                problems.append(f"process {i} failed {name!r}:\n{results[name]['error']}")
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
        return [results[name] for results in self.results]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmpdir = str(tmp_path_factory.mktemp("multiprocess"))
    port = _free_port()
    env = _worker_env(port)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                str(PROCESSES),
                "--process-id",
                str(i),
                tmpdir,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(PROCESSES)
    ]
    outputs, timed_out = [], False
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                timed_out = True
                for p in procs:
                    p.kill()
                out, err = proc.communicate()
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Run(outputs, timed_out)


def test_every_scenario_ran_on_both_processes(run: Run):
    for name in SCENARIOS:
        run.scenario(name)
    assert run.returncodes == [0] * PROCESSES, run.stderr


def _ops(result: dict[str, Any]) -> list[str]:
    return [c.split("(")[0] for c in result["collectives"]]


def test_column_parallel_needs_no_collective(run: Run):
    for result in run.scenario("column_parallel"):
        assert result["collectives"] == []


def test_row_parallel_is_one_all_reduce_of_the_output(run: Run):
    for result in run.scenario("row_parallel"):
        # y: [8 rows, N = 128] in float32, summed over the K shards; the weights do not move.
        assert result["collectives"] == ["all-reduce(f32[8,128]{1,0})"]


def test_data_parallel_needs_no_collective(run: Run):
    for result in run.scenario("data_parallel"):
        assert result["collectives"] == []


def test_row_parallel_gradient_needs_no_collective(run: Run):
    # dx = c @ W_hat^T is sharded along K like x and like the weight: computed where it lives.
    for result in run.scenario("row_parallel_grad"):
        assert result["collectives"] == []


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n.startswith("generation_")])
def test_tensor_parallel_generation(run: Run, name: str):
    results = run.scenario(name)
    assert results[0]["tokens"] == results[1]["tokens"]
    for result in results:
        ops = _ops(result)
        assert "all-gather" not in ops, result["collectives"]
        # Row-parallel layers add their partial sums across the processes, and nothing else.
        assert ops and set(ops) == {"all-reduce"}, result["collectives"]


def test_checkpoint_written_once_by_process_zero(run: Run):
    first, second = run.scenario("checkpoint_round_trip")
    assert first["opened_for_writing"], "process 0 wrote nothing"
    assert all(os.path.basename(p).startswith(".sharded.") for p in first["opened_for_writing"])
    assert second["opened_for_writing"] == []
    assert first["size"] == second["size"]


def test_checkpoint_failure_on_either_process(run: Run):
    first, second = run.scenario("checkpoint_failure")
    # Process 1 cannot store a leaf: it raises its own error, process 0 learns it from the vote.
    assert "process(es) [1]" in first["errors"][0]
    assert "unsupported dtype complex64" in second["errors"][0]
    # A leaf of another shape on each process: both refuse before anything is gathered.
    for result in (first, second):
        assert "processes passed different trees" in result["errors"][1]
    # Process 0 fails mid-write: it raises that error, process 1 learns it from the last vote.
    assert first["errors"][2] == "OSError: disk full (simulated)"
    assert "process(es) [0]" in second["errors"][2]


# ---- the launch helper -----------------------------------------------------------------------


def _parse(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(distributed.COORDINATOR_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return distributed.add_distributed_args(argparse.ArgumentParser()).parse_args(argv)


def test_distributed_args(monkeypatch: pytest.MonkeyPatch):
    args = _parse([], {}, monkeypatch)
    assert (args.coordinator, args.num_processes, args.process_id) == (None, None, None)
    assert distributed.initialize_from_args(args) is False  # one process: nothing to join
    args = _parse(["--num-processes", "2", "--process-id", "1"],
                  {distributed.COORDINATOR_ENV: "10.0.0.1:1234"}, monkeypatch)  # fmt: skip
    assert (args.coordinator, args.num_processes, args.process_id) == ("10.0.0.1:1234", 2, 1)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--coordinator", "localhost"], "HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "0"], "must be >= 1"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], r"0\.\.1"),
        (["--coordinator", "h:1", "--process-id", "-1"], "--process-id"),
    ],
)
def test_distributed_args_rejected(argv: list[str], match: str, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match=match):
        distributed.initialize_from_args(_parse(argv, {}, monkeypatch))
