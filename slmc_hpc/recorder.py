"""The recorder: measurements buffered in memory and written to run.h5 in blocks (collectively).

The phase loop hands it one sample per measurement (this rank's chains) and the seconds of the
window; `flush` appends the buffered columns (and a changed training history) to the run file. A write
that fails (disk full, quota, I/O error) raises an InputError that names the file: the checkpoint is
untouched, so the run resumes from it once there is space (the CLI ends the job with status 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slmc_hpc.config import Config
from slmc_hpc.errors import InputError
from slmc_hpc.io.runfile import TIMING_NAMES, Layout, RunFile
from slmc_hpc.parallel import Topology

FLUSH_MEASUREMENTS = 256  # buffered measurements per block written to run.h5


def layout(config: Config, topo: Topology) -> Layout:
    """What run.h5 holds (the system's observables) and who writes which rows."""
    return Layout(
        n_chains=topo.n_chains,
        chains_per_writer=config.sampler.chains_per_rank,
        observables=tuple(config.system.observables(config)),
        mpi_size=topo.size,
        rank=topo.rank,
        rows=topo.chains if topo.leader else None,
    )


def write_error_reason(exc: BaseException) -> str:
    """One line for a failed write: the OS's words for its errno (HDF5's own messages span lines)."""
    errno = getattr(exc, "errno", None)
    if errno:
        return os.strerror(errno)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def write_failure(path: Path, exc: BaseException) -> InputError:
    return InputError(
        f"{path}: cannot write the run file ({write_error_reason(exc)}); disk full? The last checkpoint is whole: "
        "free some space and run the same command to resume"
    )


class Recorder:
    """This rank's buffer of measurements and its run file."""

    def __init__(self, runfile: RunFile, leader: bool):
        self.runfile, self.leader = runfile, leader
        self.samples: list[dict[str, np.ndarray]] = []
        self.timing: list[dict[str, float]] = []
        self.history_written = -1

    def __len__(self) -> int:
        return len(self.samples)

    def add(self, sample: dict[str, np.ndarray], seconds: dict[str, float]) -> None:
        self.samples.append(sample)
        self.timing.append(seconds)

    def flush(self, history: dict[str, np.ndarray]) -> None:
        """Append the buffered measurements, and the training history if it changed (collective)."""
        try:
            self._flush(history)
        except (OSError, RuntimeError) as exc:
            raise write_failure(Path(self.runfile.file.filename), exc) from None

    def _flush(self, history: dict[str, np.ndarray]) -> None:
        count = len(self.samples)
        if count:
            samples = None
            if self.leader:
                names = [observable.name for observable in self.runfile.layout.samples]
                samples = {name: np.stack([m[name] for m in self.samples], axis=1) for name in names}
            timing = {name: np.array([t[name] for t in self.timing]) for name in TIMING_NAMES}
            self.runfile.append(samples, timing, count)
        self.samples, self.timing = [], []
        written = sum(map(len, history.values()))
        if written != self.history_written:  # it changes only while training
            self.runfile.write_training(history)
            self.history_written = written
