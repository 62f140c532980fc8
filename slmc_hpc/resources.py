"""What a job will need: memory per rank and disk for its files, checked before anything is allocated.

Rough upper estimates from the configuration alone (the big terms: dense `2N × 2N` complex matrices,
the transformer's `N × N` attention, training data, buffered samples), so that `lx: 2000` or
`chains_per_rank: 100000000` end with one message naming both numbers instead of an allocation failure
minutes later, or a node swapping. They are meant to be generous by a small factor, never by orders of
magnitude, so a job that fits is never refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from slmc_hpc.config import Config
from slmc_hpc.errors import InputError
from slmc_hpc.recorder import FLUSH_MEASUREMENTS

GiB = 1024**3
BASELINE_BYTES = 400 * 1024**2  # python, numpy, torch and MPI of one rank
N_SCALARS = 8  # scalar observables + acceptance per measurement
N_TIMINGS = 4
RNG_BYTES = 600  # one chain's PCG64 state as JSON text


def _fmt(n: float) -> str:
    return f"{n / GiB:.3g} GiB" if n >= 0.1 * GiB else f"{n / 1024**2:.3g} MiB"


def training_samples_per_rank(config: Config) -> int:
    """Configurations a rank keeps for training (0 when there is no training)."""
    if config.sampler.kind != "slmc" or config.effective.load is not None:
        return 0
    t = config.training
    rounds = t.rounds + t.linear_rounds
    collected = config.sampler.chains_per_rank * (t.warmup_sweeps + rounds * t.outer_steps_per_round)
    return int(min(collected, t.max_samples))


def memory_terms(config: Config) -> dict[str, float]:
    """Bytes per rank, by what needs them."""
    n_sites = config.model.lx * config.model.ly
    n_orbitals = 2 * n_sites
    batch = config.sampler.chains_per_rank
    matrix = 16.0 * n_orbitals**2
    kind = config.evaluator.kind
    terms = {"baseline": float(BASELINE_BYTES)}
    if kind == "slepc":
        terms["distributed h(S)"] = 3 * matrix / config.evaluator.ranks_per_config + matrix  # + the hopping matrix
    else:  # dense (and the host side of cupy): the batch of h(S), the hopping matrix, LAPACK's copy and work
        terms["dense h(S) matrices"] = 1.25 * (batch + 4) * matrix  # measured: lx=2000, ly=4 needs > 23 GiB
    terms["spins and eigenvalues"] = 8.0 * batch * (4 * 3 * n_sites + 3 * n_orbitals)
    terms["sample buffer"] = 8.0 * FLUSH_MEASUREMENTS * batch * (n_sites + N_SCALARS)
    samples = training_samples_per_rank(config)
    terms["training data"] = 2 * 8.0 * samples * (3 * n_sites + 1)
    if config.sampler.kind == "slmc" and config.effective.kind == "transformer":
        e = config.effective
        attention = 8.0 * n_sites**2
        training_batch = config.training.batch_size if samples else 0
        per_layer = 3 * batch + 6 * training_batch
        dense_tables = sum(int(v) for v in (e.n_att, e.n_J) if isinstance(v, int))  # `auto` read-outs are sparse
        terms["transformer attention"] = attention * (1 + dense_tables + int(e.n_layers) * per_layer)
    return terms


def output_bytes(config: Config, n_chains: int, mpi_size: int) -> dict[str, float]:
    """Bytes of run.h5 and of the checkpoint (written next to the previous one) when the run is done."""
    n_sites = config.model.lx * config.model.ly
    m = config.sampler.measurements
    chunk_slack = 2 * 65536.0 * (N_SCALARS + 1 + N_TIMINGS) * mpi_size  # partly filled chunks
    run = 8.0 * m * (n_chains * (N_SCALARS + n_sites) + mpi_size * N_TIMINGS) + chunk_slack + 1024**2
    chains = n_chains * (8.0 * (3 * n_sites + 2 * n_sites + 2) + RNG_BYTES)
    training = mpi_size * 8.0 * training_samples_per_rank(config) * (3 * n_sites + 1)
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
        f"{largest}), but only {_fmt(available)} is available; reduce model.lx/ly or sampler.chains_per_rank, "
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
