"""The run driver: the phases of a run, checkpoints, signals and the progress bar (DESIGN §2, §4, §5).

exact:  thermalize (sweeps) -> production
slmc:   warmup (optional exact sweeps) -> train (rounds, from H_eff = 0 or from `effective.init`) ->
        freeze -> tune (the inner chain, where `auto`) -> thermalize (outer steps with the frozen
        H_eff) -> production; with `effective.load`, the stored model is frozen at once.

Every rank runs its own chains; with `evaluator.kind: slepc` the world is split into groups of
`ranks_per_config` ranks that share one diagonalisation and hold identical chains, and only a
group's leader writes its rows. All decisions that change control flow (checkpoint now, stop now)
are taken collectively at step boundaries, so every rank enters the same collectives in the same
order; an exception on one rank propagates to the CLI, which aborts the whole job.
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
from slmc_hpc.config import Config, config_sha256, to_yaml
from slmc_hpc.errors import InputError
from slmc_hpc.evaluators import make_evaluator
from slmc_hpc.io.checkpoint import Checkpoint, read_checkpoint, rng_from_text, rng_state_text, write_checkpoint
from slmc_hpc.io.resume import CHECKPOINT_FILE, RUN_FILE, plan_start, status_report
from slmc_hpc.io.runfile import SAMPLE_NAMES, TIMING_NAMES, TRAINING_NAMES, Layout, RunFile, package_versions
from slmc_hpc.parallel import allgather, allreduce_sum, broadcast, local_chains, world
from slmc_hpc.physics import DoubleExchange
from slmc_hpc.samplers import ChainState, ExactLocalSampler, SLMCSampler, init_chains, measure

__all__ = ["run_simulation", "status_report", "phases", "RUN_FILE", "CHECKPOINT_FILE"]

FLUSH_MEASUREMENTS = 256  # buffered measurements per block written to run.h5
FLUSH_SECONDS = 30.0  # ...or this often (and twice per checkpoint interval), so that readers see progress
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DECISION_SECONDS = 0.05  # how often the ranks agree on stop/checkpoint/flush (bounds the reaction to a signal)
DONE = "done"
CHECKPOINT_TAG = 7  # point-to-point messages carrying training data to rank 0


class Interrupted(Exception):
    """A stop signal arrived; the checkpoint is written and the run can be resumed."""


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


# ------------------------------------------------------------------------------------ who runs what


@dataclass
class Topology:
    """The world, its diagonalisation groups and this rank's chains."""

    comm: object
    group_comm: object
    rank: int
    size: int
    group: int
    n_groups: int
    leader: bool
    chains: range
    n_chains: int

    @classmethod
    def build(cls, config: Config, comm) -> Topology:
        rank, size = comm.Get_rank(), comm.Get_size()
        per_group = config.evaluator.ranks_per_config if config.evaluator.kind == "slepc" else 1
        if size % per_group:
            raise InputError(
                f"evaluator.ranks_per_config = {per_group} does not divide the {size} MPI ranks of this job"
            )
        group, n_groups, cpr = rank // per_group, size // per_group, config.sampler.chains_per_rank
        # slepc always gets its own group communicator (its default would be the whole world).
        group_comm = comm.Split(group, rank) if config.evaluator.kind == "slepc" else None
        leader = group_comm is None or group_comm.Get_rank() == 0
        return cls(comm, group_comm, rank, size, group, n_groups, leader, local_chains(cpr, group), n_groups * cpr)

    def layout(self, config: Config) -> Layout:
        return Layout(
            n_chains=self.n_chains,
            chains_per_writer=config.sampler.chains_per_rank,
            lx=config.model.lx,
            ly=config.model.ly,
            mpi_size=self.size,
            rank=self.rank,
            rows=self.chains if self.leader else None,
        )


# ------------------------------------------------------------------------------------ start or resume


def _collective(comm, rank: int, function, *args):
    """Run `function` on rank 0 and give its result to every rank; an InputError is raised on all ranks."""
    result, error = None, None
    if rank == 0:
        try:
            result = function(*args)
        except InputError as exc:
            error = str(exc)
    result, error = broadcast(comm, (result, error))
    if error is not None:
        exc = InputError(error)
        exc.collective = True
        raise exc
    return result


def _on_every_rank(comm, function):
    """Run `function` on every rank; if it raised InputError anywhere, raise it on all ranks (collectively).

    For checks every rank makes on its own (reading `effective.load`): a rank that fails alone must
    not leave the others waiting in the next collective.
    """
    result, error = None, None
    try:
        result = function()
    except InputError as exc:
        error = str(exc)
    errors = [e for e in allgather(comm, error) if e is not None]
    if errors:
        exc = InputError(errors[0])
        exc.collective = True
        raise exc
    return result


# ------------------------------------------------------------------------------------ the run


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
class Window:
    """Accumulators of the current measurement window (acceptance per chain, seconds per kind)."""

    acceptance: np.ndarray
    steps: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_NAMES, 0.0))


class Run:
    """One rank's view of a run: its chains, samplers, files and the phase loop."""

    def __init__(self, config: Config, topo: Topology, mode: str, stop: StopFlag):
        self.config, self.topo, self.stop = config, topo, stop
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
            build = self._load_effective if config.effective.load else self._new_effective
            self.effective = _on_every_rank(topo.comm, build)
        self.history: dict[str, list[float]] = {name: [] for name in TRAINING_NAMES}
        self.progress = Progress(self.phases[0])
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffer_timing: list[dict[str, float]] = []
        self.history_written = -1
        self.steps_undecided, self.decide_every, self.last_decision = 0, 1, time.monotonic()
        self.last_checkpoint = self.last_flush = time.monotonic()
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

    def _start(self) -> None:
        topo = self.topo
        if topo.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # Only reached for an empty directory or with --force: the old run's checkpoint must not
            # be mistaken for this run's if it dies before its first checkpoint.
            (self.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        topo.comm.Barrier()
        self.state = init_chains(self.evaluator, self.config.seed, topo.chains)
        self.window = Window(np.zeros(len(topo.chains)))
        self.progress = Progress(self.phases[0])
        attrs = {**self._root_attrs(), "start_time": _now_iso(), "status": "running", "phase": self.progress.phase}
        self.runfile = RunFile.create(self.run_dir / RUN_FILE, topo.comm, topo.layout(self.config), attrs)
        self._make_learner()

    def _resume(self) -> None:
        topo = self.topo
        ckpt = read_checkpoint(self.run_dir / CHECKPOINT_FILE, topo.n_chains, rows=topo.chains, rank=topo.rank)
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
        self.history = {name: list(np.asarray(values, dtype=np.float64)) for name, values in ckpt.history.items()}
        if self.effective is not None and ckpt.parameters:
            self.effective.set_parameters(ckpt.parameters)
        self.runfile = RunFile.reopen(
            self.run_dir / RUN_FILE, topo.comm, topo.layout(self.config), self.progress.measurements
        )
        self.runfile.set_attrs(**self._root_attrs(), status="running", phase=self.progress.phase, resumed=_now_iso())
        self._make_learner(ckpt)

    def _new_effective(self):
        """An untrained model (H_eff = 0), or with `effective.init` a stored one carried to this lattice."""
        from slmc_hpc.effective import check_architecture, make_effective, transfer
        from slmc_hpc.effective.training import proposal_for_lattice

        init = self.config.effective.init
        if init is None:
            return make_effective(self.config.effective, self.model.lattice)
        stored, stored_lattice = self._read_stored("init")
        check_architecture(stored, self.config.effective, init, allow_other_n_J=True)
        model = transfer(stored, self.model.lattice, self.config.effective, stored_lattice.n_sites)
        proposal_for_lattice(model, self.model.T, self.config.seed)
        return model

    def _load_effective(self):
        """The trained model stored in the run file that `effective.load` names (frozen)."""
        from slmc_hpc.effective import check_architecture
        from slmc_hpc.effective.training import proposal_for_lattice

        model, _ = self._read_stored("load")
        check_architecture(model, self.config.effective, self.config.effective.load)
        if getattr(model, "proposal", False) is None:  # trained on another lattice: refit, no diagonalisation
            proposal_for_lattice(model, self.model.T, self.config.seed)
        return model

    def _read_stored(self, key: str):
        """(model rebuilt on this lattice, the lattice it was trained on) from the file `effective.<key>` names."""
        import h5py

        from slmc_hpc.io.model import read_model, stored_lattice

        path = getattr(self.config.effective, key)
        try:
            with h5py.File(path, "r", locking=False) as f:
                if "model" not in f:
                    raise InputError(f"effective.{key}: {path} holds no /model group (not a trained run?)")
                return read_model(f["model"], self.model.lattice)[0], stored_lattice(f["model"])
        except OSError as exc:
            raise InputError(f"effective.{key}: cannot read {path}: {exc}") from None

    def _make_learner(self, ckpt: Checkpoint | None = None) -> None:
        """The self-learning loop, only while warmup or training remain to be done."""
        if self.progress.phase not in ("warmup", "train"):
            return
        from slmc_hpc.effective.training import SelfLearning, unpack_state

        self.learner = SelfLearning(
            self.effective,
            self.evaluator,
            self.config.training,
            comm=self.topo.comm,
            seed=self.config.seed,
            inner_sweeps=self.config.sampler.inner_sweeps,
            inner_block=self.config.sampler.inner_block,
        )
        if ckpt is not None:
            blobs = ckpt.rank_blobs[0]
            state = {"data": unpack_state(blobs["data"]), "round": self.progress.rounds, "history": ckpt.history}
            if "validation" in blobs:
                state["validation"] = unpack_state(blobs["validation"])
            if "trainer" in ckpt.blobs:
                state["trainer"] = unpack_state(ckpt.blobs["trainer"])
            self.learner.load_state_dict(state)

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
            self._checkpoint()
        self.runfile.set_attrs(status="finished", phase=DONE, end_time=_now_iso())
        self.runfile.close()

    def _phase_warmup(self) -> None:
        """Exact sweeps whose configurations are the first training data (checkpointable per sweep)."""

        def sweep():
            return self.learner.warmup(self.state, 1), {}

        self._loop("warmup", self.config.training.warmup_sweeps, sweep, measuring=False)

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

        self._loop("train", self.config.training.rounds, round_, measuring=False)
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
        self._loop("thermalize", self.config.sampler.thermalization, self._sampler_step(), measuring=False)

    def _phase_production(self) -> None:
        s = self.config.sampler
        self._loop("production", s.measurements * s.measure_every, self._sampler_step(), measuring=True)

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

    def _loop(self, phase: str, total: int, step, measuring: bool) -> None:
        """Run `step` until the phase has `total` steps, measuring and deciding at every step boundary."""
        every = self.config.sampler.measure_every
        accepted_sum, steps_here = 0.0, 0
        with self._progress_bar(phase, total) as bar:
            while self.progress.step < total:
                accepted, timings = step()
                self.progress.step += 1
                w = self.window
                w.acceptance += accepted
                w.steps += 1
                for key, seconds in timings.items():
                    w.seconds[key] += seconds
                if measuring and self.progress.step % every == 0:
                    self._measure()
                accepted_sum, steps_here = accepted_sum + float(np.mean(accepted)), steps_here + 1
                bar.update(1)
                bar.set_postfix(acceptance=f"{accepted_sum / steps_here:.3f}", refresh=False)
                self._boundary()
        self.window = Window(np.zeros(len(self.topo.chains)))

    def _measure(self) -> None:
        start = time.perf_counter()
        w = self.window
        sample = measure(self.model, self.state)
        sample["acceptance"] = w.acceptance / max(w.steps, 1)
        self.buffer.append(sample)
        w.seconds["measure"] += time.perf_counter() - start
        self.buffer_timing.append(w.seconds)
        self.window = Window(np.zeros(len(self.topo.chains)))
        self.progress.measurements += 1

    # -- collective decisions ---------------------------------------------------------------------
    def _boundary(self) -> None:
        """Between two steps: every rank learns whether to stop, checkpoint or flush, and does it.

        The ranks agree by an allreduce every `decide_every` steps; rank 0 sets that interval to
        about DECISION_SECONDS of steps, so fast steps do not pay a synchronisation each.
        """
        self.steps_undecided += 1
        if self.steps_undecided < self.decide_every:
            return
        flags = np.zeros(4, dtype=np.int64)
        flags[0] = self.stop.requested
        if self.topo.rank == 0:
            now = time.monotonic()
            flags[1] = now - self.last_checkpoint >= self.config.output.checkpoint_every
            flags[2] = now - self.last_flush >= min(FLUSH_SECONDS, self.config.output.checkpoint_every / 2)
            seconds_per_step = (now - self.last_decision) / self.steps_undecided
            flags[3] = np.clip(round(DECISION_SECONDS / max(seconds_per_step, 1e-9)), 1, 1000)
            self.last_decision = now
        flags = allreduce_sum(self.topo.comm, flags)
        self.steps_undecided, self.decide_every = 0, int(flags[3])
        if flags[0]:
            self._checkpoint()
            raise Interrupted
        if flags[1]:
            self._checkpoint()
        elif flags[2] or len(self.buffer) >= FLUSH_MEASUREMENTS:
            self._flush()
        if self.topo.rank == 0:
            self.last_decision = time.monotonic()  # time spent writing is not a step

    def _flush(self) -> None:
        """Write the buffered measurements to run.h5 (collective)."""
        start = time.perf_counter()
        count = len(self.buffer)
        if count:
            samples = None
            if self.topo.leader:
                samples = {name: np.stack([m[name] for m in self.buffer], axis=1) for name in (*SAMPLE_NAMES, "sq")}
            timing = {name: np.array([t[name] for t in self.buffer_timing]) for name in TIMING_NAMES}
            self.runfile.append(samples, timing, count)
        self.buffer, self.buffer_timing = [], []
        history = self._history_arrays()
        if sum(map(len, history.values())) != self.history_written:  # it changes only while training
            self.runfile.write_training(history)
            self.history_written = sum(map(len, history.values()))
        self.last_flush = time.monotonic()
        self.window.seconds["io"] += time.perf_counter() - start

    def _history_arrays(self) -> dict[str, np.ndarray]:
        history = self.learner.history if self.learner is not None else self.history
        return {name: np.asarray(values, dtype=np.float64) for name, values in history.items()}

    def _checkpoint(self) -> None:
        """Flush run.h5, then write checkpoint.h5 from rank 0 (atomically)."""
        self._flush()
        start = time.perf_counter()
        topo = self.topo
        mine = None
        if topo.leader:
            mine = {
                "spins": self.state.spins,
                "omega": self.state.omega,
                "eigenvalues": self.state.eigenvalues,
                "window_acceptance": self.window.acceptance,
                "rng": [rng_state_text(rng) for rng in self.state.rngs],
            }
        gathered = topo.comm.gather(mine, root=0)
        training = self.learner is not None  # the same on every rank (it depends on the phase only)
        if training and topo.rank != 0:
            topo.comm.send(self._learner_blobs(), dest=0, tag=CHECKPOINT_TAG)
        if topo.rank == 0:
            parts = [part for part in gathered if part is not None]
            counters = {
                **self.progress.counters(),
                "window_steps": self.window.steps,
                "inner_sweeps": self.inner[0],
                "inner_block": self.inner[1],
            }
            ckpt = Checkpoint(
                config_yaml=to_yaml(self.config),
                config_sha256=config_sha256(self.config),
                mpi_size=topo.size,
                n_chains=topo.n_chains,
                counters=counters,
                chains={
                    name: np.concatenate([p[name] for p in parts])
                    for name in ("spins", "omega", "eigenvalues", "window_acceptance")
                },
                rng_states=[text for p in parts for text in p["rng"]],
                parameters=self.effective.parameters() if self.effective is not None else {},
                history=self._history_arrays(),
                blobs=self._trainer_blob(),
                rank_blobs=self._all_learner_blobs() if training else [],
                time=time.time(),
            )
            write_checkpoint(self.run_dir / CHECKPOINT_FILE, ckpt)
        self.last_checkpoint = time.monotonic()
        self.window.seconds["io"] += time.perf_counter() - start

    def _all_learner_blobs(self):
        """Rank 0: every rank's training data, received one rank at a time while the file is written."""
        yield self._learner_blobs()
        for rank in range(1, self.topo.size):
            yield self.topo.comm.recv(source=rank, tag=CHECKPOINT_TAG)

    def _learner_blobs(self) -> dict[str, bytes]:
        """This rank's training data (npz bytes): each rank keeps its own."""
        if self.learner is None:
            return {}
        from slmc_hpc.effective.training import pack_state

        state = self.learner.state_dict()
        return {"data": pack_state(state["data"]), "validation": pack_state(state["validation"])}

    def _trainer_blob(self) -> dict[str, bytes]:
        """Rank 0's optimizer state (npz bytes), stored once."""
        if self.learner is None or self.learner.trainer is None:
            return {}
        from slmc_hpc.effective.training import pack_state

        return {"trainer": pack_state(self.learner.trainer.state_dict())}

    # -- progress ---------------------------------------------------------------------------------
    def _progress_bar(self, phase: str, total: int):
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=self.progress.step,
            desc=phase,
            unit="step",
            file=sys.stderr,
            disable=self.topo.rank != 0,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,  # batch logs get a line every 30 s
            dynamic_ncols=True,
        )


# ------------------------------------------------------------------------------------ entry points


class StopFlag:
    """SIGTERM/SIGUSR1 handlers that only raise a flag; the run acts on it at the next step boundary."""

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


def run_simulation(config: Config, force: bool = False) -> None:
    """Run (or resume) the simulation that `config` describes, on every rank of MPI.COMM_WORLD."""
    comm = world()
    topo = Topology.build(config, comm)
    run_dir = Path(config.output.dir)
    mode = _collective(comm, topo.rank, plan_start, run_dir, config, topo.n_chains, force)
    with StopFlag() as stop:
        run = Run(config, topo, mode, stop)
        if topo.rank == 0:
            action = "resuming" if mode == "resume" else "starting"
            sys.stderr.write(
                f"slmc-hpc: {action} {run_dir} at phase {run.progress.phase} "
                f"({topo.size} ranks, {topo.n_chains} chains)\n"
            )
        try:
            run.execute()
            if topo.rank == 0:
                _print_results(run_dir)
        except Interrupted:
            run.runfile.close()
            if topo.rank == 0:
                sys.stderr.write(
                    f"slmc-hpc: stopped by signal at phase {run.progress.phase}; checkpoint written, "
                    "run the same command again to resume\n"
                )
