"""What a run directory holds: may a run start or resume there (and why not), and how far is it.

`plan_start` decides between a fresh start and a resume, and refuses (InputError naming the file)
a finished run without --force, a changed configuration, a missing, truncated or foreign
checkpoint; it never modifies a file. `status_report` summarises a run, finished or still going,
reading the files as any reader does (`locking=False`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from slmc_hpc.config import Config, config_from_dict, resume_differences
from slmc_hpc.errors import InputError
from slmc_hpc.io.checkpoint import checkpoint_summary, read_checkpoint
from slmc_hpc.io.runfile import read_run_summary

RUN_FILE, CHECKPOINT_FILE = "run.h5", "checkpoint.h5"


def _config_from_yaml(text: str) -> Config:
    from ruamel.yaml import YAML

    return config_from_dict(YAML(typ="safe", pure=True).load(text), source="checkpoint")


def plan_start(run_dir: Path, config: Config, n_chains: int, force: bool) -> str:
    """'fresh' or 'resume' for `run_dir` (one process decides); every refusal is an InputError naming the file."""
    run_path, ckpt_path = run_dir / RUN_FILE, run_dir / CHECKPOINT_FILE
    status = None
    if run_path.exists():
        try:
            status = read_run_summary(run_path)["attrs"].get("status")
        except (OSError, KeyError) as exc:
            if not force:
                raise InputError(
                    f"{run_path}: exists but is not a readable run file ({exc}); --force overwrites it"
                ) from None
            return "fresh"
    if status == "finished":
        if force:
            return "fresh"
        if not ckpt_path.exists() or _finished_measurements(ckpt_path) >= config.sampler.measurements:
            raise InputError(
                f"{run_dir} holds a finished run ({run_path}); raise sampler.measurements to extend it, "
                "or use --force to overwrite it"
            )
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path, n_chains=n_chains)
        try:
            old = _config_from_yaml(ckpt.config_yaml)
        except InputError as exc:
            raise InputError(f"{ckpt_path}: its configuration is not valid here: {exc}") from None
        differences = resume_differences(old, config)
        if differences and not force:
            raise InputError(
                f"the configuration differs from the one in {ckpt_path}:\n  "
                + "\n  ".join(differences)
                + "\nuse --force to resume anyway, or choose another output.dir"
            )
        if not run_path.exists():
            raise InputError(f"{ckpt_path} exists but {run_path} is missing: cannot resume")
        return "resume"
    if run_path.exists() and not force:
        raise InputError(
            f"{run_path} exists (status {status}) but {ckpt_path} is missing, so it cannot be resumed; "
            "use --force to start afresh"
        )
    return "fresh"


def _finished_measurements(ckpt_path: Path) -> int:
    """Measurements recorded in a (final) checkpoint; unreadable ones are refused by read_checkpoint later."""
    try:
        return int(read_checkpoint(ckpt_path).counters["measurements"])
    except (InputError, KeyError):
        return 0


def status_report(run_dir: str | Path) -> str:
    """Phase, progress, recent acceptance and last checkpoint time of a run (finished or still going)."""
    run_dir = Path(run_dir)
    run_path = run_dir / RUN_FILE
    if not run_path.exists():
        raise InputError(f"{run_dir}: no {RUN_FILE} here")
    try:
        summary = read_run_summary(run_path)
    except (OSError, KeyError) as exc:
        return f"{run_path}: being written, cannot be read right now ({exc}); try again"
    attrs = summary["attrs"]
    try:
        total = _config_from_yaml(attrs["config_yaml"]).sampler.measurements
    except (KeyError, InputError):
        total = None
    lines = [
        f"run:          {run_path}",
        f"status:       {attrs.get('status', '?')}",
        f"phase:        {attrs.get('phase', '?')}",
        f"measurements: {summary['n_measurements']} / {total if total is not None else '?'}"
        + (f" ({100 * summary['n_measurements'] / total:.1f}%)" if total else ""),
        f"started:      {attrs.get('start_time', '?')}  ({attrs.get('mpi_size', '?')} MPI ranks)",
    ]
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
                f"              loss after the last round {training['round_loss'][-1]:.3e} (MSE of (Ω - H_eff)/N)"
            )
    checkpoint = checkpoint_summary(run_dir / CHECKPOINT_FILE)
    if checkpoint is not None:
        stamp = datetime.fromtimestamp(checkpoint["time"], timezone.utc).isoformat(timespec="seconds")
        lines.append(
            f"checkpoint:   {stamp} ({time.time() - checkpoint['time']:.0f} s ago), "
            f"at phase {checkpoint.get('phase')} step {checkpoint.get('step')}"
        )
    else:
        lines.append("checkpoint:   none")
    return "\n".join(lines)
