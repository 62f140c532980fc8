"""What a job will need: memory per rank and disk for its files, checked before anything is allocated.

Rough upper estimates from the configuration alone (the big terms come from the system: for spins the
dense `2N × 2N` complex matrices and the transformer's `N × N` attention; then training data and
buffered samples, from the sizes the system declares), so that `lx: 2000` or
`chains_per_rank: 100000000` end with one message naming both numbers instead of an allocation failure
minutes later, or a node swapping. They are meant to be generous by a small factor, never by orders of
magnitude, so a job that fits is never refused.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from slmc_hpc.config import Config
from slmc_hpc.errors import InputError
from slmc_hpc.recorder import FLUSH_MEASUREMENTS

GiB = 1024**3
BASELINE_BYTES = 400 * 1024**2  # python, numpy, torch and MPI of one rank
N_TIMINGS = 4
RNG_BYTES = 600  # one chain's PCG64 state as JSON text


def _fmt(n: float) -> str:
    return f"{n / GiB:.3g} GiB" if n >= 0.1 * GiB else f"{n / 1024**2:.3g} MiB"


def _sample_doubles(config: Config) -> int:
    """Doubles one measurement records per chain: every observable's values, and the acceptance."""
    return 1 + sum(int(math.prod(o.shape)) for o in config.system.observables(config))


def training_samples_per_rank(config: Config) -> int:
    """Configurations a rank keeps for training (0 when there is no training)."""
    if not config.system.learns(config):
        return 0
    t = config.training
    rounds = t.rounds + t.linear_rounds
    collected = config.sampler.chains_per_rank * (t.warmup_sweeps + rounds * t.outer_steps_per_round)
    return int(min(collected, t.max_samples))


def memory_terms(config: Config) -> dict[str, float]:
    """Bytes per rank, by what needs them: the system's big arrays, buffered samples, training data."""
    batch = config.sampler.chains_per_rank
    terms = {"baseline": float(BASELINE_BYTES), **config.system.memory_terms(config)}
    terms["sample buffer"] = 8.0 * FLUSH_MEASUREMENTS * batch * _sample_doubles(config)
    terms["training data"] = 2 * training_samples_per_rank(config) * config.system.configuration_bytes(config)
    return terms


def output_bytes(config: Config, n_chains: int, mpi_size: int) -> dict[str, float]:
    """Bytes of run.h5 and of the checkpoint (written next to the previous one) when the run is done."""
    m = config.sampler.measurements
    per_chain = _sample_doubles(config)
    n_datasets = 1 + len(config.system.observables(config))
    chunk_slack = 2 * 65536.0 * (n_datasets + N_TIMINGS) * mpi_size  # partly filled chunks
    run = 8.0 * m * (n_chains * per_chain + mpi_size * N_TIMINGS) + chunk_slack + 1024**2
    chains = n_chains * (config.system.state_bytes(config) + RNG_BYTES)
    training = mpi_size * training_samples_per_rank(config) * config.system.configuration_bytes(config)
    return {"run.h5": run, "checkpoint.h5 (twice while it is replaced)": 2 * (chains + training) + 1024**2}


def available_memory() -> float | None:
    """Bytes this process may still allocate: MemAvailable, or a lower cgroup (v2) limit of the job."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = float(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    try:  # a batch system's memory limit (cgroup v2): limit - usage
        relative = Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip()
        group = Path("/sys/fs/cgroup") / relative.lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit != "max":
            available = min(available, float(limit) - float((group / "memory.current").read_text()))
    except (OSError, IndexError, ValueError):
        pass
    return available


def check_memory(config: Config, ranks_on_node: int) -> None:
    """InputError (both numbers printed) when the job's ranks on this node would not fit into its memory."""
    terms = memory_terms(config)
    per_rank = sum(terms.values())
    needed = per_rank * ranks_on_node
    available = available_memory()
    if available is None or needed <= available:
        return
    largest = ", ".join(f"{name} {_fmt(value)}" for name, value in sorted(terms.items(), key=lambda kv: -kv[1])[:3])
    raise InputError(
        f"this job needs about {_fmt(needed)} of memory on this node ({ranks_on_node} ranks x {_fmt(per_rank)}: "
        f"{largest}), but only {_fmt(available)} is available; reduce the lattice or sampler.chains_per_rank, "
        "or use fewer ranks per node"
    )


def check_disk(config: Config, n_chains: int, mpi_size: int, directory: Path, present: float = 0.0) -> None:
    """InputError when the free space where the run's files go is less than they will need.

    `present`: bytes of the run's files already there (a resumed or extended run only grows them).
    """
    directory = Path(directory)
    while not directory.exists():
        directory = directory.parent
    sizes = output_bytes(config, n_chains, mpi_size)
    needed = max(0.0, sum(sizes.values()) - present)
    free = float(shutil.disk_usage(directory).free)
    if needed > free:
        parts = ", ".join(f"{name} {_fmt(value)}" for name, value in sizes.items())
        raise InputError(
            f"{config.output.dir}: the run's files need about {_fmt(needed)} more ({parts}), but {directory} "
            f"has only {_fmt(free)} free; free some space, choose another output.dir, or fewer "
            "sampler.measurements"
        )
