"""The run driver: the phases of a run and their loop, collective decisions, signals (DESIGN §2, §4, §5).

exact:  thermalize (sweeps) -> production
slmc:   warmup (optional exact sweeps) -> train (rounds, from H_eff = 0 or from `effective.init`) ->
        freeze -> tune (the inner chain, where `auto`) -> thermalize (outer steps with the frozen
        H_eff) -> production; with `effective.load`, the stored model is frozen at once.

Every rank runs its own chains; with `evaluator.kind: slepc` the world is split into groups of
`ranks_per_config` ranks that share one diagonalisation and hold identical chains, and only a
group's leader writes its rows (`parallel.Topology`). An exception on one rank propagates to the
CLI, which aborts the job.

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
from slmc_hpc.errors import InputError
from slmc_hpc.evaluators import make_evaluator
from slmc_hpc.io.checkpoint import rng_from_text, rng_state_text
from slmc_hpc.io.rundir import CHECKPOINT_FILE, RUN_FILE, RunDirectory, status_report
from slmc_hpc.io.runfile import TIMING_NAMES, TRAINING_NAMES, RunFile, package_versions
from slmc_hpc.parallel import Topology, on_every_rank, on_root, ranks_on_this_node, world
from slmc_hpc.physics import DoubleExchange
from slmc_hpc.recorder import FLUSH_MEASUREMENTS, Recorder, layout, write_failure
from slmc_hpc.samplers import ChainState, ExactLocalSampler, SLMCSampler, init_chains, measure
from slmc_hpc.stepping import Interrupted, Progress, StepLoop

__all__ = ["run_simulation", "status_report", "phases", "RUN_FILE", "CHECKPOINT_FILE"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
DONE = "done"


def build_model(config: Config) -> DoubleExchange:
    m = config.model
    return DoubleExchange(lx=m.lx, ly=m.ly, hoppings=m.hoppings, J=m.J, mu=m.mu, T=m.T)


def phases(config: Config) -> tuple[str, ...]:
    """The phases of a run, in order."""
    if config.sampler.kind == "exact":
        return ("thermalize", "production")
    if config.effective.load is not None:
        return ("freeze", "tune", "thermalize", "production")
    return ("warmup", "train", "freeze", "tune", "thermalize", "production")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_topology(config: Config, comm) -> Topology:
    slepc = config.evaluator.kind == "slepc"
    per_group = config.evaluator.ranks_per_config if slepc else 1
    return Topology.build(comm, config.sampler.chains_per_rank, per_group, split=slepc)


# ------------------------------------------------------------------------------------ the run


@dataclass
class Window:
    """Accumulators of the current measurement window (acceptance per chain, seconds per kind)."""

    acceptance: np.ndarray
    steps: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_NAMES, 0.0))


class _History:
    """The training history as a checkpoint component (the learner's while it lives, else the run's)."""

    def __init__(self, run: Run):
        self.run = run

    def state_dict(self) -> dict:
        return self.run._history_arrays()

    def load_state_dict(self, state: dict) -> None:
        self.run.history = {name: list(np.asarray(values, dtype=np.float64)) for name, values in state.items()}


class Run:
    """One rank's view of a run: its chains, samplers, components and the phase loop."""

    def __init__(self, config: Config, topo: Topology, mode: str, stop: StopFlag, rundir: RunDirectory):
        self.config, self.topo, self.stop, self.rundir = config, topo, stop, rundir
        self.run_dir = Path(config.output.dir)
        self.phases = phases(config)
        self.model = build_model(config)
        kind = config.evaluator.kind
        self.evaluator = make_evaluator(
            kind, self.model, comm=topo.group_comm if kind == "slepc" else None, **config.evaluator.options
        )
        self.effective = None
        self.learner = None
        #: The production inner chain (sweeps, block): the sampler's values, `auto` until the tune phase.
        self.inner = (config.sampler.inner_sweeps, config.sampler.inner_block)
        if config.sampler.kind == "slmc":
            from slmc_hpc.effective.starting import loaded_model, starting_model

            build = loaded_model if config.effective.load else starting_model
            self.effective = on_every_rank(topo.comm, lambda: build(config.effective, self.model, config.seed))
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
        self.state = init_chains(self.evaluator, self.config.seed, topo.chains)
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
        if ckpt.chains["spins"].shape[1] != self.model.n_sites:
            raise InputError(f"{self.run_dir / CHECKPOINT_FILE}: its spins do not fit a {self.model.lattice} lattice")
        c = ckpt.counters
        self.progress = Progress(str(c["phase"]), int(c["step"]), int(c["measurements"]), int(c["rounds"]))
        if "inner_sweeps" in c:
            stored = (c["inner_sweeps"], c["inner_block"])
            self.inner = tuple(value if value == "auto" else int(value) for value in stored)
        if self.progress.phase == DONE and self.progress.measurements < self.config.sampler.measurements:
            # A finished run whose production is extended: its chains continue where they stopped.
            done = self.progress.measurements
            self.progress = Progress("production", done * self.config.sampler.measure_every, done, self.progress.rounds)
        if self.progress.phase not in (*self.phases, DONE):
            raise InputError(f"{self.run_dir / CHECKPOINT_FILE}: phase {self.progress.phase} is not part of this run")
        if self.progress.phase in ("warmup", "train") and ckpt.mpi_size != topo.size:
            raise InputError(
                f"{self.run_dir / CHECKPOINT_FILE}: written during training by {ckpt.mpi_size} ranks, each with its "
                f"own training data; resume it on {ckpt.mpi_size} ranks, not {topo.size}"
            )
        self.state = ChainState(
            spins=ckpt.chains["spins"],
            omega=ckpt.chains["omega"],
            eigenvalues=ckpt.chains["eigenvalues"],
            rngs=[rng_from_text(text) for text in ckpt.rng_states],
            chains=np.asarray(topo.chains, dtype=np.int64),
        )
        self.window = Window(ckpt.chains["window_acceptance"], steps=int(c["window_steps"]))
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
        from slmc_hpc.effective.training import SelfLearning

        self.learner = SelfLearning(
            self.effective,
            self.evaluator,
            self.config.training,
            comm=self.topo.comm,
            seed=self.config.seed,
            inner_sweeps=self.config.sampler.inner_sweeps,
            inner_block=self.config.sampler.inner_block,
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
        """Exact sweeps whose configurations are the first training data (checkpointable per sweep)."""

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
        """Record the frozen H_eff in /model: production runs with exactly these parameters."""
        from slmc_hpc.io.model import write_model

        if "model" in self.runfile.file:
            del self.runfile.file["model"]
        write_model(self.runfile.file.create_group("model"), self.effective, self._history_arrays(), frozen=True)
        self.runfile.flush()

    def _phase_tune(self) -> None:
        """Measure the inner chains that are `auto` with the frozen H_eff and fix them for production."""
        from slmc_hpc.samplers.tuning import tune_inner_chain

        if "auto" in self.inner:
            rows = []
            sweeps, block, trials = tune_inner_chain(
                self.evaluator, self.effective, self.state, *self.inner, comm=self.topo.comm, report=rows.append
            )
            self.inner = (sweeps, block)
            self.runfile.set_attrs(tune_outer_steps=sum(trial.steps for trial in trials))
            if self.topo.rank == 0:
                table = "".join(f"slmc-hpc:   {trial.row()}\n" for trial in rows)
                sys.stderr.write(f"slmc-hpc: inner chain measured with the frozen H_eff:\n{table}")
        mode = self._slmc_sampler().mode
        self.runfile.set_attrs(inner_sweeps=int(self.inner[0]), inner_block=int(self.inner[1]), inner_mode=mode)
        if self.topo.rank == 0:
            sweeps, block = self.inner
            sys.stderr.write(f"slmc-hpc: production inner chain: inner_sweeps {sweeps}, inner_block {block} ({mode})\n")

    def _phase_thermalize(self) -> None:
        self._loop(self.config.sampler.thermalization, self._sampler_step(), measuring=False)

    def _phase_production(self) -> None:
        s = self.config.sampler
        self._loop(s.measurements * s.measure_every, self._sampler_step(), measuring=True)

    def _sampler_step(self):
        """One sweep (exact) or one outer step (slmc, frozen H_eff): (acceptance per chain, timings)."""
        if self.config.sampler.kind == "exact":
            step = ExactLocalSampler(self.evaluator).sweep
        else:
            step = self._slmc_sampler().step

        def run_step():
            info = step(self.state)
            return info.accepted, info.timings

        return run_step

    def _slmc_sampler(self) -> SLMCSampler:
        sweeps, block = self.inner
        if "auto" in self.inner:  # only before the tune phase (thermalize/production always come after it)
            raise RuntimeError("the inner chain is used before it was tuned")
        return SLMCSampler(self.evaluator, self.effective, sweeps, block)

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
        sample = measure(self.model, self.state)
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
                "spins": self.state.spins,
                "omega": self.state.omega,
                "eigenvalues": self.state.eigenvalues,
                "window_acceptance": self.window.acceptance,
            }
            rngs = [rng_state_text(rng) for rng in self.state.rngs]
        counters = {
            **self.progress.counters(),
            "window_steps": self.window.steps,
            "inner_sweeps": self.inner[0],
            "inner_block": self.inner[1],
        }
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


def run_simulation(config: Config, force: bool = False, fresh: bool = False) -> None:
    """Run (or resume) the simulation that `config` describes, on every rank of MPI.COMM_WORLD.

    `force`: resume although the configuration changed; `fresh`: delete the run directory's run and start afresh.
    """
    comm = world()
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
                run.runfile.close()
                ended = "stopped"
                if topo.rank == 0:
                    sys.stderr.write(
                        f"slmc-hpc: stopped by signal at phase {run.progress.phase}; checkpoint written, "
                        "run the same command again to resume\n"
                    )
    finally:
        rundir.release(ended)
