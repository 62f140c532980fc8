"""The step loop of a phase: collective decisions between steps, rank 0's progress bar and heartbeat.

Every rank runs the same number of steps. Between two steps the ranks agree (one allreduce every
`decide_every` steps, about DECISION_SECONDS of steps apart, so fast steps do not pay a
synchronisation each) whether to stop, checkpoint or flush, so every rank enters the same
collectives in the same order. What a step does, what a flush writes and what a checkpoint holds is
the run's business (`driver.Run`); this module only paces them and reports where the run stands.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slmc_hpc.io.rundir import RunDirectory
from slmc_hpc.parallel import Topology, allreduce_sum

FLUSH_SECONDS = 30.0  # flush at least this often (and twice per checkpoint interval), so that readers see progress
DECISION_SECONDS = 0.05  # how often the ranks agree on stop/checkpoint/flush (bounds the reaction to a signal)


class Interrupted(Exception):
    """A stop signal arrived; the checkpoint is written and the run can be resumed."""


@dataclass
class Progress:
    """Where the run stands: phase, steps done in it, measurements taken, training rounds done."""

    phase: str
    step: int = 0
    measurements: int = 0
    rounds: int = 0

    def counters(self) -> dict:
        return {"phase": self.phase, "step": self.step, "measurements": self.measurements, "rounds": self.rounds}


@dataclass
class Pace:
    """Speed of the current phase in this job (for the heartbeat: `status` shows rate and time left)."""

    phase: str
    total: int
    started: float
    step: int
    measurements: int


class StepLoop:
    """Runs a phase's steps and, between them, what all ranks decided together.

    `progress()` is where the run stands now (the run replaces its Progress between phases);
    `checkpoint()` and `flush()` are the run's collective writes; `buffered()` is how many
    measurements wait in memory (a full buffer forces a flush). `stop.requested` is the signal flag.
    """

    def __init__(
        self,
        topo: Topology,
        stop,
        rundir: RunDirectory,
        checkpoint_every: float,
        progress: Callable[[], Progress],
        checkpoint: Callable[[], None],
        flush: Callable[[], None],
        buffered: Callable[[], int],
        flush_measurements: int,
    ):
        self.topo, self.stop, self.rundir, self.checkpoint_every = topo, stop, rundir, checkpoint_every
        self.progress = progress
        self.checkpoint, self.flush, self.buffered, self.flush_measurements = (
            checkpoint,
            flush,
            buffered,
            flush_measurements,
        )
        self.steps_undecided, self.decide_every, self.last_decision = 0, 1, time.monotonic()
        self.last_checkpoint = self.last_flush = time.monotonic()
        self.step_seconds = 0.0
        self.pace = Pace("", 0, time.monotonic(), 0, 0)

    def run(self, total: int, step: Callable[[], float], after_step: Callable[[int], None] | None = None) -> None:
        """Call `step()` (it returns the step's mean acceptance) until the phase has `total` steps.

        `after_step(step_number)` runs after each step is counted (the run measures there).
        """
        progress = self.progress()
        self.pace = Pace(progress.phase, total, time.monotonic(), progress.step, progress.measurements)
        if progress.step >= total:  # nothing to do (warmup_sweeps: 0): no empty progress bar
            return
        accepted_sum, steps_here = 0.0, 0
        with self._progress_bar(progress.phase, total, progress.step) as bar:
            while progress.step < total:
                accepted = step()
                progress.step += 1
                if after_step is not None:
                    after_step(progress.step)
                accepted_sum, steps_here = accepted_sum + accepted, steps_here + 1
                bar.update(1)
                bar.set_postfix(acceptance=f"{accepted_sum / steps_here:.3f}", refresh=False)
                self.boundary()

    def boundary(self) -> None:
        """Between two steps: every rank learns whether to stop, checkpoint or flush, and does it.

        Rank 0 sets the decision interval from the measured step time, and refreshes the lock's
        heartbeat here (about every 30 s): a hung run stops beating.
        """
        self.steps_undecided += 1
        if self.topo.rank == 0:
            self.heartbeat()
        if self.steps_undecided < self.decide_every:
            return
        flags = np.zeros(4, dtype=np.int64)
        flags[0] = self.stop.requested
        if self.topo.rank == 0:
            now = time.monotonic()
            flags[1] = now - self.last_checkpoint >= self.checkpoint_every
            flags[2] = now - self.last_flush >= min(FLUSH_SECONDS, self.checkpoint_every / 2)
            self.step_seconds = (now - self.last_decision) / self.steps_undecided
            flags[3] = np.clip(round(DECISION_SECONDS / max(self.step_seconds, 1e-9)), 1, 1000)
            self.last_decision = now
        flags = allreduce_sum(self.topo.comm, flags)
        self.steps_undecided, self.decide_every = 0, int(flags[3])
        if flags[0]:
            self.checkpoint()
            raise Interrupted
        if flags[1]:
            self.checkpoint()
        elif flags[2] or self.buffered() >= self.flush_measurements:
            self.flush()
        if self.topo.rank == 0:
            self.last_decision = time.monotonic()  # time spent writing is not a step

    def flushed(self) -> None:
        """The run wrote its buffer: the data on disk and the heartbeat advance together."""
        self.last_flush = time.monotonic()
        if self.topo.rank == 0:
            self.heartbeat(force=True)

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()

    def heartbeat(self, force: bool = False) -> None:
        """Rank 0: where the run stands and how fast it goes, into run.lock (at most every 30 s unless `force`)."""
        pace, progress = self.pace, self.progress()
        elapsed = max(time.monotonic() - pace.started, 1e-9)
        self.rundir.beat(
            force=force,
            phase=progress.phase,
            step=progress.step,
            phase_steps=pace.total,
            measurements=progress.measurements,
            steps_per_second=(progress.step - pace.step) / elapsed,
            measurements_per_second=(progress.measurements - pace.measurements) / elapsed,
            step_seconds=self.step_seconds,
        )

    def _progress_bar(self, phase: str, total: int, initial: int):
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=phase,
            unit="step",
            file=sys.stderr,
            disable=self.topo.rank != 0,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,  # batch logs get a line every 30 s
            dynamic_ncols=True,
        )
