"""The run directory's life: may a run start or resume there (and why not), who holds it, how far it is.

`RunDirectory.open` (rank 0, before anything heavy) checks the output path, takes the lock
(`slmc_hpc.io.lock`), decides between a fresh start and a resume (`plan_start`) and checks the free disk
space; every refusal is an InputError naming the file, leaves no file changed and no folder behind.
`status_report` summarises a run, finished, going or dead, reading the files as any reader does
(`locking=False`) and the lock's heartbeat.

The configuration stored in the checkpoint is compared with the job's except for the keys a resume may
change (`config.RESUMABLE_KEYS`) and `output.dir`, the directory's own path: a moved run resumes.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from slmc_hpc.config import Config, config_from_dict, resume_differences
from slmc_hpc.errors import InputError
from slmc_hpc.io.checkpoint import checkpoint_summary, read_checkpoint
from slmc_hpc.io.lock import LOCK_FILE, RunLock, describe_holder, heartbeat_says_live, iso, probe, read_record
from slmc_hpc.io.runfile import read_run_summary

RUN_FILE, CHECKPOINT_FILE = "run.h5", "checkpoint.h5"
RESULTS_FILE = "results.json"
#: What `--fresh` deletes before it starts afresh.
RUN_FILES = (RUN_FILE, CHECKPOINT_FILE, CHECKPOINT_FILE + ".tmp", RESULTS_FILE)
#: What `analyze` and `plot` made of the run: stale once the run starts afresh or goes on (they are made again).
DERIVED_FILES = (
    RESULTS_FILE,
    "results.csv",
    "results.parquet",
    "samples.csv",
    "structure_factor.csv",
    "correlation.csv",
)
PLOTS_DIR = "plots"


def _config_from_yaml(text: str) -> Config:
    from ruamel.yaml import YAML

    return config_from_dict(YAML(typ="safe", pure=True).load(text), source="checkpoint")


def config_differences(old: Config, new: Config) -> list[str]:
    """`resume_differences` without `output.dir`: where the directory lies is not part of the run."""
    old = dataclasses.replace(old, output=dataclasses.replace(old.output, dir=new.output.dir))
    return resume_differences(old, new)


# ------------------------------------------------------------------------------------ start or resume


def plan_start(run_dir: Path, config: Config, n_chains: int, force: bool = False, fresh: bool = False) -> str:
    """'fresh' or 'resume' for `run_dir` (one process decides); every refusal is an InputError naming the file.

    `force`: resume although the configuration changed. `fresh`: start afresh whatever the directory holds.
    A run.h5 without a checkpoint and without measurements (killed before its first checkpoint) has
    nothing to lose, so it starts afresh without being asked.
    """
    if fresh:
        return "fresh"
    run_path, ckpt_path = run_dir / RUN_FILE, run_dir / CHECKPOINT_FILE
    status, measured = None, 0
    if run_path.exists():
        try:
            summary = read_run_summary(run_path)
            status, measured = summary["attrs"].get("status"), summary["n_measurements"]
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(
                f"{run_path}: damaged, not a readable run file ({exc}); move the run directory away or choose "
                "another output.dir"
            ) from None
    if status == "finished":
        if not ckpt_path.exists() or _finished_measurements(ckpt_path) >= config.sampler.measurements:
            raise InputError(
                f"{run_dir} holds a finished run of {measured} measurements ({run_path}); raise "
                "sampler.measurements to extend it, or choose another output.dir"
            )
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path, n_chains=n_chains)
        try:
            old = _config_from_yaml(ckpt.config_yaml)
        except InputError as exc:
            raise InputError(f"{ckpt_path}: its configuration is not valid here: {exc}") from None
        differences = config_differences(old, config)
        if differences and not force:
            raise InputError(
                f"the configuration differs from the one in {ckpt_path}:\n  "
                + "\n  ".join(differences)
                + "\nuse --force to resume with the new configuration, or choose another output.dir"
            )
        if not run_path.exists():
            raise InputError(f"{ckpt_path} exists but {run_path} is missing: cannot resume")
        return "resume"
    if run_path.exists() and (measured > 0 or status == "finished"):
        raise InputError(
            f"{run_path} holds {measured} measurements but {ckpt_path} is missing, so they cannot be continued; "
            "move the run directory away or choose another output.dir"
        )
    return "fresh"


def _finished_measurements(ckpt_path: Path) -> int:
    """Measurements recorded in a (final) checkpoint; unreadable ones are refused by read_checkpoint later."""
    try:
        return int(read_checkpoint(ckpt_path).counters["measurements"])
    except (InputError, KeyError):
        return 0


def check_output_path(run_dir: Path) -> Path:
    """The nearest existing folder of `run_dir`, once it is clear that the run directory can be made there.

    Refused: `run_dir` (or a folder above it) is a file; the folder is not writable (tried by creating a
    temporary file there, which also catches read-only mounts, where root ignores permission bits).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"output.dir: {run_dir} is a file, not a directory")
    existing = run_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"output.dir: {run_dir} cannot be created: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".slmc-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"output.dir: cannot write in {existing}: {exc.strerror or exc}") from None
    return existing


class RunDirectory:
    """Rank 0's hold on the run directory: path checks, the lock, the plan; released at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.created: list[Path] = []

    def open(self, config: Config, n_chains: int, mpi_size: int, force: bool = False, fresh: bool = False) -> str:
        """Check, lock and plan (rank 0): 'fresh' or 'resume'. On a refusal nothing is left behind."""
        from slmc_hpc.resources import check_disk

        existing = check_output_path(self.path)
        try:
            self._make_dirs(existing)
            self.lock.acquire()
        except InputError:
            self._remove_dirs()
            raise
        except OSError as exc:
            self._remove_dirs()
            raise InputError(f"output.dir: cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            mode = plan_start(self.path, config, n_chains, force=force, fresh=fresh)
            present = 0.0 if mode == "fresh" else sum(_size(self.path / name) for name in RUN_FILES)
            check_disk(config, n_chains, mpi_size, self.path, present)
        except BaseException:
            self.lock.abandon()
            self._remove_dirs()
            raise
        self.lock.claim()
        stale = RUN_FILES if fresh else ()  # --fresh: the old run's files must not be mistaken for this one's
        for name in (*stale, *DERIVED_FILES):  # results and figures of the run as it was: made again later
            if (self.path / name).is_file():
                (self.path / name).unlink()
        plots = self.path / PLOTS_DIR
        if plots.is_dir():
            for png in plots.glob("*.png"):
                png.unlink()
            if not any(plots.iterdir()):
                plots.rmdir()
        return mode

    def _make_dirs(self, existing: Path) -> None:
        missing = []
        here = self.path
        while here != existing:
            missing.append(here)
            here = here.parent
        for folder in reversed(missing):
            folder.mkdir()
            self.created.append(folder)

    def _remove_dirs(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []

    def beat(self, force: bool = False, **progress) -> None:
        self.lock.beat(force=force, **progress)

    def release(self, state: str) -> None:
        self.lock.release(state)


def _size(path: Path) -> float:
    try:
        return float(path.stat().st_size)
    except OSError:
        return 0.0


# ------------------------------------------------------------------------------------ status


def liveness(run_dir: Path) -> tuple[str, dict | None]:
    """('live' | 'dead' | 'stopped' | 'failed' | 'finished' | 'unknown', lock record): the lock and its heartbeat."""
    path = run_dir / LOCK_FILE
    record = read_record(path)
    state = probe(path)
    if state == "held":
        return "live", record
    if state == "unsupported":
        return ("live" if heartbeat_says_live(record, time.time(), socket.gethostname()) else "dead"), record
    if record is None:
        return "unknown", None
    if record.get("released") is not None:
        return {"finished": "finished", "failed": "failed"}.get(record.get("state"), "stopped"), record
    return "dead", record


#: What `status` says after the first word of each state (the run's `status` line).
STATE_NOTES = {
    "stopped": " (checkpointed; run the same command to resume)",
    "failed": " (ended with an error; see the job's log, then run the same command to resume)",
    "dead": " (killed or crashed; run the same command to resume)",
}


def run_state(run_dir: Path, recorded: str, state: str | None = None) -> str:
    """How a run stands, from run.h5's own `status` (`recorded`) and the lock (its `liveness`, read here unless
    given): finished, running, stopped, failed, dead; or what run.h5 says where no lock confirms it."""
    if recorded == "finished":
        return "finished"
    if state is None:
        state, _ = liveness(Path(run_dir))
    return {"live": "running", "stopped": "stopped", "failed": "failed", "dead": "dead"}.get(state, recorded)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours:d}:{rest // 60:02d}:{rest % 60:02d}"


def _liveness_lines(state: str, record: dict | None, now: float) -> list[str]:
    if state == "live":
        return [f"process:      live: {describe_holder(record, now)}"]
    if state == "dead":
        beat = record.get("heartbeat") if record else None
        since = f"since about {iso(beat)} ({_duration(now - float(beat))} ago)" if beat else "since an unknown time"
        return [
            f"process:      dead {since}: host {record.get('host', '?')}, pid {record.get('pid', '?')} ended "
            "without releasing the run; run the same command to resume it"
        ]
    if state in ("stopped", "finished", "failed"):
        return [f"process:      none: {state} at {iso(record.get('released'))} (host {record.get('host', '?')})"]
    return ["process:      unknown (no run.lock: a run of an older version, or never started here)"]


def _read_summary(run_path: Path, live: bool) -> tuple[dict | None, str | None]:
    tries = 5 if live else 1
    for attempt in range(tries):
        try:
            return read_run_summary(run_path), None
        except (OSError, KeyError, ValueError) as exc:
            error = str(exc)
            if attempt < tries - 1:
                time.sleep(0.2)
    return None, error


def status_report(run_dir: str | Path) -> str:
    """Who runs it (live or dead since when), phase, progress, rate, time left, last checkpoint; damage named."""
    run_dir = Path(run_dir)
    run_path = run_dir / RUN_FILE
    now = time.time()
    state, record = liveness(run_dir)
    if not run_path.exists():
        if state == "live":
            return "\n".join([f"run:          {run_path} (not created yet)", "status:       starting",
                              *_liveness_lines(state, record, now)])  # fmt: skip
        raise InputError(f"{run_dir}: no {RUN_FILE} here")
    summary, error = _read_summary(run_path, state == "live")
    if summary is None:
        return "\n".join(
            [
                f"run:          {run_path}",
                f"status:       damaged: {run_path} cannot be read ({error})"
                + (" (or the run was writing it just then; try again)" if state == "live" else ""),
                *_liveness_lines(state, record, now),
            ]
        )
    attrs = summary["attrs"]
    try:
        total = _config_from_yaml(attrs["config_yaml"]).sampler.measurements
    except (KeyError, InputError):
        total = None
    recorded = attrs.get("status", "?")
    status = run_state(run_dir, recorded, state)  # the same reading of the lock as the process line
    if status in STATE_NOTES:
        status += STATE_NOTES[status]
    elif status not in ("finished", "running"):
        status = f"{recorded} (according to {RUN_FILE}; no lock to confirm it)"
    done = summary["n_measurements"]
    lines = [
        f"run:          {run_path}",
        f"status:       {status}",
        *_liveness_lines(state, record, now),
        f"phase:        {attrs.get('phase', '?')}",
        f"measurements: {done} / {total if total is not None else '?'}"
        + (f" ({100 * done / total:.1f}%)" if total else ""),
    ]
    lines.extend(_rate_lines(state, record, done, total))
    lines.append(f"started:      {attrs.get('start_time', '?')}  ({attrs.get('mpi_size', '?')} MPI ranks)")
    if summary["recent_acceptance"] is not None:
        lines.append(f"acceptance:   {summary['recent_acceptance']:.3f} (last measurements, all chains)")
    training = summary["training"]
    if len(training.get("round_acceptance", [])):
        rounds, steps = len(training["round_acceptance"]), len(training.get("loss", []))
        lines.append(
            f"training:     {rounds} rounds, {steps} optimizer steps, "
            f"outer acceptance per round {np.round(training['round_acceptance'], 3).tolist()}"
        )
        if len(training.get("round_loss", [])):
            lines.append(
                f"              loss after the last round {training['round_loss'][-1]:.3e} "
                "(MSE of (target - H_eff)/scale)"
            )
    lines.append(_checkpoint_line(run_dir / CHECKPOINT_FILE, now))
    return "\n".join(lines)


def _rate_lines(state: str, record: dict | None, done: int, total: int | None) -> list[str]:
    """Measurements per second and the production time left, from the last heartbeat of a live run."""
    if state != "live" or not record:
        return []
    lines = []
    rate = record.get("measurements_per_second")
    if rate and total:
        left = max(total - done, 0) / float(rate)
        lines.append(f"rate:         {float(rate):.3g} measurements/s, production time left about {_duration(left)}")
    elif record.get("steps_per_second") and record.get("phase_steps"):
        step, steps = record.get("step", 0), record["phase_steps"]
        speed = float(record["steps_per_second"])
        lines.append(
            f"rate:         {record.get('phase', '?')} step {step} / {steps}, {speed:.3g} steps/s, "
            f"{_duration(max(steps - step, 0) / speed)} left in this phase"
        )
    return lines


def _checkpoint_line(path: Path, now: float) -> str:
    if not path.exists():
        return "checkpoint:   none"
    checkpoint = checkpoint_summary(path)
    if checkpoint is None:
        return f"checkpoint:   damaged: {path} cannot be read"
    return (
        f"checkpoint:   {iso(checkpoint['time'])} ({_duration(now - checkpoint['time'])} ago), "
        f"at phase {checkpoint.get('phase')} step {checkpoint.get('step')}"
    )
