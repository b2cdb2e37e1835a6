"""Joining JAX's multi-controller runtime from a script: one process per host, one global mesh.

A script that can run on several hosts adds the flags and initializes before it touches a
device::

    parser = argparse.ArgumentParser()
    add_distributed_args(parser)
    args = parser.parse_args()
    initialize_from_args(args)          # before any jax.devices() / computation
    mesh = tensor_parallel.make_mesh("tp=4")   # over every process's devices

Without any of the flags (and without ``JAX_COORDINATOR_ADDRESS``) the script stays a single
process. With them, every process runs the same program on its own devices, and jitted
computations over the global mesh run their collectives across processes: over NCCL on GPUs,
over gloo (TCP) on CPUs. See docs/multiprocess.md for the commands.
"""

from __future__ import annotations

import argparse
import os
import re

import jax

__all__ = ["add_distributed_args", "initialize", "initialize_from_args"]

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
"""The environment variable ``jax.distributed.initialize`` reads the coordinator address from."""
CPU_COLLECTIVES = "gloo"
"""The CPU collectives implementation used across processes (TCP, no extra dependency)."""


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--coordinator``, ``--num-processes`` and ``--process-id`` to ``parser``.

    ``--coordinator`` defaults to ``$JAX_COORDINATOR_ADDRESS``; the other two default to unset,
    which leaves them to JAX's cluster detection (SLURM, Open MPI, Kubernetes, Cloud TPU).
    """
    group = parser.add_argument_group(
        "multi-process", "run as one of several processes (one per host) of one JAX program"
    )
    group.add_argument(
        "--coordinator",
        default=os.environ.get(COORDINATOR_ENV),
        metavar="HOST:PORT",
        help=f"address of process 0's coordinator service (default: ${COORDINATOR_ENV})",
    )
    group.add_argument(
        "--num-processes", type=int, default=None, help="number of processes (hosts) in the run"
    )
    group.add_argument(
        "--process-id", type=int, default=None, help="this process's index, 0..num-processes-1"
    )
    return parser


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Joins the distributed runtime, unless all three arguments are None (one process).

    Enables CPU collectives (gloo) first, so that CPU devices of different processes can take
    part in one computation. Arguments left None are filled in by JAX's cluster detection.

    Returns:
      Whether ``jax.distributed.initialize`` was called.

    Raises:
      ValueError: a malformed coordinator address, ``num_processes < 1``, or a ``process_id``
        outside ``0..num_processes-1``.
    """
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if coordinator is not None and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", coordinator):
        raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and (
        process_id < 0 or (num_processes is not None and process_id >= num_processes)
    ):
        last = "num-processes-1" if num_processes is None else num_processes - 1
        raise ValueError(f"--process-id must be in 0..{last}, got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return True


def initialize_from_args(args: argparse.Namespace) -> bool:
    """`initialize` with the flags of `add_distributed_args`."""
    return initialize(args.coordinator, args.num_processes, args.process_id)
