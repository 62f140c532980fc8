"""The run driver: the phases of a run and their loop, collective decisions, signals.

The phases a job runs come from its system (`System.phases`), in this order where present:
warmup (exact steps whose configurations are training data) -> train (self-learning rounds) ->
freeze (the effective model written to /model, fixed from here on) -> tune (the update's `auto`
settings measured) -> thermalize -> production.

Every rank runs its own chains; where a system lets several ranks share one exact evaluation
(`System.grouping`), the world is split into groups that hold identical chains, and only a
group's leader writes its rows (`parallel.Topology`). An exception on one rank propagates to the
CLI, which aborts the job. Nothing here knows a system: the `Simulation` a system builds does the
physics, and the driver calls it.

This module holds what a phase does. The other jobs live elsewhere: the step loop and its collective
decisions (checkpoint now, stop now, flush now) in `stepping`, the run directory (lock, start or
resume, status) in `io.rundir`, measurements to run.h5 in `recorder`, checkpoints from the
components' state dicts in `checkpointing`, the starting effective model in `effective.starting`,
what the job needs in `resources`, MPI in `parallel`.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from slmc_hpc import __version__
from slmc_hpc.checkpointing import Checkpointer, ParameterState
from slmc_hpc.config import Config, config_sha256, to_yaml
from slmc_hpc.core.chains import ChainState, chain_streams, initial_state
from slmc_hpc.errors import InputError
from slmc_hpc.io.checkpoint import rng_from_text, rng_state_text
from slmc_hpc.io.rundir import CHECKPOINT_FILE, RUN_FILE, RunDirectory, status_report
from slmc_hpc.io.runfile import TIMING_NAMES, TRAINING_NAMES, RunFile, package_versions
from slmc_hpc.parallel import Topology, on_every_rank, on_root, ranks_on_this_node, world
from slmc_hpc.recorder import FLUSH_MEASUREMENTS, Recorder, layout, write_failure
from slmc_hpc.stepping import Interrupted, Progress, StepLoop

__all__ = ["run_simulation", "status_report", "phases", "RUN_FILE", "CHECKPOINT_FILE"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
DONE = "done"


#: Every phase a run may have, in the order they run; a system's `phases(config)` picks from them.
PHASES = ("warmup", "train", "freeze", "tune", "thermalize", "production")


def phases(config: Config) -> tuple[str, ...]:
    """The phases of a run, in order."""
    chosen = tuple(config.system.phases(config))
    if any(name not in PHASES for name in chosen) or list(chosen) != sorted(chosen, key=PHASES.index):
        raise TypeError(f"system {config.model.kind}: phases {chosen} are not an ordered subset of {PHASES}")
    return chosen


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_topology(config: Config, comm) -> Topology:
    grouping = config.system.grouping(config)
    return Topology.build(comm, config.sampler.chains_per_rank, grouping.ranks, grouping.split, grouping.key)


# ------------------------------------------------------------------------------------ the run


@dataclass
class Window:
    """Accumulators of the current measurement window: acceptance per chain, seconds per kind, and the
    per-chain values the last step asked to record (the dH of a trajectory)."""

    acceptance: np.ndarray
    steps: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_NAMES, 0.0))
    samples: dict[str, np.ndarray] = field(default_factory=dict)


class _History:
    """The training history as a checkpoint component (the learner's while it lives, else the run's)."""

    def __init__(self, run: Run):
        self.run = run

    def state_dict(self) -> dict:
        return self.run._history_arrays()

    def load_state_dict(self, state: dict) -> None:
        self.run.history = {name: list(np.asarray(values, dtype=np.float64)) for name, values in state.items()}


class Run:
    """One rank's view of a run: its chains, its system's simulation, the components and the phase loop."""

    def __init__(self, config: Config, topo: Topology, mode: str, stop: StopFlag, rundir: RunDirectory):
        self.config, self.topo, self.stop, self.rundir = config, topo, stop, rundir
        self.system = config.system
        self.run_dir = Path(config.output.dir)
        self.phases = phases(config)
        # Every rank builds its own (reading `effective.load` or `init`): a rank that fails alone must
        # not leave the others waiting, so the error is raised on all of them.
        self.simulation = on_every_rank(topo.comm, lambda: self.system.build(config, topo.group_comm))
        self.effective = self.simulation.effective
        self.learner = None
        self.history: dict[str, list[float]] = {name: [] for name in TRAINING_NAMES}
        self.progress = Progress(self.phases[0])
        self.checkpointer = Checkpointer(self.run_dir / CHECKPOINT_FILE, topo, to_yaml(config), config_sha256(config))
        self.loop = StepLoop(
            topo,
            stop,
            rundir,
            config.output.checkpoint_every,
            progress=lambda: self.progress,
            checkpoint=self._checkpoint,
            flush=self._flush,
            buffered=lambda: len(self.recorder),
            flush_measurements=FLUSH_MEASUREMENTS,
        )
        if mode == "resume":
            self._resume()
        else:
            self._start()

    # -- start / resume ---------------------------------------------------------------------------
    def _root_attrs(self) -> dict:
        return {
            "code_version": __version__,
            "config_yaml": to_yaml(self.config),
            "config_sha256": config_sha256(self.config),
            "mpi_size": self.topo.size,
            "package_versions": package_versions(),
        }

    def _register_components(self) -> None:
        """What a checkpoint holds besides the chains (the learner registers itself while it lives)."""
        if self.effective is not None:
            self.checkpointer.register("effective", ParameterState(self.effective))
        self.checkpointer.register("history", _History(self))

    def _start(self) -> None:
        topo = self.topo
        rngs = chain_streams(self.config.seed, topo.chains)
        configs = self.simulation.initial_configurations(rngs)
        self.state = initial_state(self.simulation.action, configs, rngs, topo.chains)
        self.window = Window(np.zeros(len(topo.chains)))
        self.progress = Progress(self.phases[0])
        self._register_components()
        attrs = {**self._root_attrs(), "start_time": _now_iso(), "status": "running", "phase": self.progress.phase}
        path = self.run_dir / RUN_FILE
        try:
            runfile = RunFile.create(path, topo.comm, layout(self.config, topo), attrs)
        except (OSError, RuntimeError) as exc:
            raise write_failure(path, exc) from None
        self.recorder = Recorder(runfile, topo.leader)
        self._make_learner()

    def _resume(self) -> None:
        topo = self.topo
        ckpt = self.checkpointer.read()
        source = str(self.run_dir / CHECKPOINT_FILE)
        name = self.system.config_name
        if name not in ckpt.chains:
            raise InputError(f"{source}: it holds no {name} (a checkpoint of another system?)")
        self.simulation.check_configurations(ckpt.chains[name], source)
        c = ckpt.counters
        self.progress = Progress(str(c["phase"]), int(c["step"]), int(c["measurements"]), int(c["rounds"]))
        for key in self.simulation.settings:  # the update's settings as tuned (or `auto` before the tune phase)
            if key in c:
                self.simulation.settings[key] = c[key]
        if self.progress.phase == DONE and self.progress.measurements < self.config.sampler.measurements:
            # A finished run whose production is extended: its chains continue where they stopped.
            done = self.progress.measurements
            self.progress = Progress("production", done * self.config.sampler.measure_every, done, self.progress.rounds)
        if self.progress.phase not in (*self.phases, DONE):
            raise InputError(f"{source}: phase {self.progress.phase} is not part of this run")
        if self.progress.phase in ("warmup", "train") and ckpt.mpi_size != topo.size:
            raise InputError(
                f"{source}: written during training by {ckpt.mpi_size} ranks, each with its "
                f"own training data; resume it on {ckpt.mpi_size} ranks, not {topo.size}"
            )
        rows = {key: values for key, values in ckpt.chains.items() if key not in (name, "window_acceptance")}
        rows = {key: values for key, values in rows.items() if not key.startswith("window_")}
        self.state = ChainState(
            config=ckpt.chains[name],
            action=np.asarray(self.simulation.action.action_of(rows), dtype=np.float64),
            rows=rows,
            rngs=[rng_from_text(text) for text in ckpt.rng_states],
            chains=np.asarray(topo.chains, dtype=np.int64),
        )
        window_samples = {
            key[len("window_") :]: values
            for key, values in ckpt.chains.items()
            if key.startswith("window_") and key != "window_acceptance"
        }
        self.window = Window(ckpt.chains["window_acceptance"], steps=int(c["window_steps"]), samples=window_samples)
        self._register_components()
        runfile = RunFile.reopen(
            self.run_dir / RUN_FILE, topo.comm, layout(self.config, topo), self.progress.measurements
        )
        runfile.set_attrs(**self._root_attrs(), status="running", phase=self.progress.phase, resumed=_now_iso())
        self.recorder = Recorder(runfile, topo.leader)
        self._make_learner()

    @property
    def runfile(self) -> RunFile:
        return self.recorder.runfile

    def _make_learner(self) -> None:
        """The self-learning loop, only while warmup or training remain to be done."""
        if self.progress.phase not in ("warmup", "train"):
            return
        from slmc_hpc.core.learning import SelfLearning

        self.learner = SelfLearning(
            self.effective, self.simulation.learning(), self.config.training, comm=self.topo.comm, seed=self.config.seed
        )
        # Restored at once from a checkpoint being resumed; each rank keeps its own training and validation data.
        self.checkpointer.register("learner", self.learner, local=("data", "validation"))

    # -- the phase loop ---------------------------------------------------------------------------
    def execute(self) -> None:
        start = self.phases.index(self.progress.phase) if self.progress.phase != DONE else len(self.phases)
        for name in self.phases[start:]:
            self.runfile.set_attrs(phase=name)
            self.runfile.flush()  # readers (status, analysis) see the new phase at once
            started = time.perf_counter()
            getattr(self, f"_phase_{name}")()
            self.runfile.add_seconds(name, time.perf_counter() - started)
            following = self.phases.index(name) + 1
            self.progress = Progress(
                self.phases[following] if following < len(self.phases) else DONE,
                measurements=self.progress.measurements,
                rounds=self.progress.rounds,
            )
            if self.learner is None:
                self.checkpointer.unregister("learner")
            self._checkpoint()
        self.runfile.set_attrs(status="finished", phase=DONE, end_time=_now_iso())
        self.runfile.close()

    def _phase_warmup(self) -> None:
        """Exact steps whose configurations are the first training data (checkpointable per step)."""

        def sweep():
            return self.learner.warmup(self.state, 1), {}

        self._loop(self.config.training.warmup_sweeps, sweep, measuring=False)

    def _phase_train(self) -> None:
        """The initial linear fit, then sample-then-train rounds (checkpointable per round)."""
        if self.progress.step == 0:
            self.learner.fit_initial()

        def round_():
            trainer = self.learner.trainer
            before = dict(trainer.seconds) if trainer is not None else {}
            result = self.learner.run_round(self.state)
            self.progress.rounds = self.learner.round
            for part, seconds in before.items():  # optimizer steps and their allreduce, for tools/scaling.py
                self.runfile.add_seconds(f"training_{part}", trainer.seconds[part] - seconds)
            return result.acceptance, {}

        self._loop(self.config.training.rounds, round_, measuring=False)
        self.history = {name: list(values) for name, values in self.learner.history.items()}
        self.learner = None  # the training data are not needed any more

    def _phase_freeze(self) -> None:
        """Record the frozen effective model in /model: production runs with exactly these parameters."""
        from slmc_hpc.io.model import write_model

        if "model" in self.runfile.file:
            del self.runfile.file["model"]
        write_model(self.runfile.file.create_group("model"), self.effective, self._history_arrays(), frozen=True)
        self.runfile.flush()

    def _phase_tune(self) -> None:
        """Measure the update's `auto` settings with the frozen model and fix them for production."""
        tuned = self.simulation.tune(self.state, self.topo.comm)
        if tuned is None:
            return
        self.simulation.settings.update(tuned.settings)
        if tuned.attrs:
            self.runfile.set_attrs(**tuned.attrs)
        if self.topo.rank == 0 and tuned.report:
            sys.stderr.write("".join(f"slmc-hpc: {line}\n" for line in tuned.report))

    def _phase_thermalize(self) -> None:
        self._loop(self.config.sampler.thermalization, self._sampler_step(), measuring=False)

    def _phase_production(self) -> None:
        s = self.config.sampler
        self._loop(s.measurements * s.measure_every, self._sampler_step(), measuring=True)

    def _sampler_step(self):
        """One step of the production update (frozen model, tuned settings): (acceptance per chain, timings)."""
        stepper = self.simulation.stepper()

        def run_step():
            info = stepper.step(self.state)
            self.window.samples.update(info.samples)
            return info.accepted, info.timings

        return run_step

    def _loop(self, total: int, step, measuring: bool) -> None:
        """Run `step` until the phase has `total` steps, accumulating the window and measuring every `measure_every`."""
        every = self.config.sampler.measure_every

        def counted_step() -> float:
            accepted, timings = step()
            w = self.window
            w.acceptance += accepted
            w.steps += 1
            for key, seconds in timings.items():
                w.seconds[key] += seconds
            return float(np.mean(accepted))

        def after_step(number: int) -> None:
            if measuring and number % every == 0:
                self._measure()

        self.loop.run(total, counted_step, after_step)
        self.window = Window(np.zeros(len(self.topo.chains)))

    def _measure(self) -> None:
        start = time.perf_counter()
        w = self.window
        sample = self.simulation.measure(self.state)
        sample.update(w.samples)
        sample["acceptance"] = w.acceptance / max(w.steps, 1)
        w.seconds["measure"] += time.perf_counter() - start
        self.recorder.add(sample, w.seconds)
        self.window = Window(np.zeros(len(self.topo.chains)))
        self.progress.measurements += 1

    # -- collective writes -------------------------------------------------------------------------
    def _flush(self) -> None:
        """Write the buffered measurements to run.h5 (collective)."""
        start = time.perf_counter()
        self.recorder.flush(self._history_arrays())
        self.loop.flushed()
        self.window.seconds["io"] += time.perf_counter() - start

    def _history_arrays(self) -> dict[str, np.ndarray]:
        history = self.learner.history if self.learner is not None else self.history
        return {name: np.asarray(values, dtype=np.float64) for name, values in history.items()}

    def _checkpoint(self) -> None:
        """Flush run.h5, then write checkpoint.h5 from every component's state (rank 0 writes, atomically)."""
        self._flush()
        start = time.perf_counter()
        rows = rngs = None
        if self.topo.leader:
            rows = {
                self.system.config_name: self.state.config,
                **self.state.rows,
                "window_acceptance": self.window.acceptance,
                **{f"window_{key}": values for key, values in self.window.samples.items()},
            }
            rngs = [rng_state_text(rng) for rng in self.state.rngs]
        counters = {**self.progress.counters(), "window_steps": self.window.steps, **self.simulation.settings}
        self.checkpointer.save(counters, rows, rngs)
        self.loop.checkpointed()
        self.window.seconds["io"] += time.perf_counter() - start


# ------------------------------------------------------------------------------------ entry points


class StopFlag:
    """SIGTERM/SIGUSR1/SIGINT handlers that only raise a flag; the run acts on it at the next step boundary."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _print_results(run_dir: Path) -> None:
    """The finished run's results table (mean, error, τ_int, ESS), as `slmc-hpc analyze` prints it."""
    from slmc_hpc.analysis import analyze_run

    sys.stdout.flush()
    try:
        analyze_run(run_dir)
    except (InputError, ValueError) as exc:  # e.g. too few measurements for the Γ-method; the data are intact
        sys.stderr.write(f"slmc-hpc: no results table for {run_dir}: {exc}\n")


def _check_job(config: Config, topo: Topology, node_ranks: int, force: bool, fresh: bool, rundir: RunDirectory) -> str:
    """Rank 0, before anything is allocated: memory, output path, lock, plan, disk. 'fresh' or 'resume'."""
    from slmc_hpc.resources import check_memory

    check_memory(config, node_ranks)
    return rundir.open(config, topo.n_chains, topo.size, force=force, fresh=fresh)


def run_simulation(config: Config, force: bool = False, fresh: bool = False, comm=None) -> str:
    """Run (or resume) the simulation that `config` describes, on every rank of `comm` (MPI.COMM_WORLD).

    `force`: resume although the configuration changed; `fresh`: delete the run directory's run and start afresh.
    Returns how the run ended: "finished" or "stopped" (by a signal, checkpointed).
    """
    comm = world() if comm is None else comm
    topo = build_topology(config, comm)
    run_dir = Path(config.output.dir)
    rundir = RunDirectory(run_dir)
    node_ranks = ranks_on_this_node(comm)
    mode = on_root(comm, _check_job, config, topo, node_ranks, force, fresh, rundir)
    ended = "failed"
    try:
        with StopFlag() as stop:
            run = Run(config, topo, mode, stop, rundir)
            if topo.rank == 0:
                for warning in config.system.warnings(config):
                    sys.stderr.write(f"slmc-hpc: warning: {warning}\n")
                action = "resuming" if mode == "resume" else "starting"
                sys.stderr.write(
                    f"slmc-hpc: {action} {run_dir} at phase {run.progress.phase} "
                    f"({topo.size} ranks, {topo.n_chains} chains)\n"
                )
            try:
                run.execute()
                ended = "finished"
                if topo.rank == 0:
                    _print_results(run_dir)
            except Interrupted:
                run.runfile.set_attrs(status="stopped")  # readers (analyze, plot) say so; a resume sets it back
                run.runfile.close()
                ended = "stopped"
                if topo.rank == 0:
                    sys.stderr.write(
                        f"slmc-hpc: stopped by signal at phase {run.progress.phase}; checkpoint written, "
                        "run the same command again to resume\n"
                    )
    finally:
        rundir.release(ended)
    return ended
