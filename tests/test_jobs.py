"""The job templates on a real SLURM (slurmctld + slurmd + munge on this machine) and PBS's script body.

The SLURM test submits jobs/slurm/slmc.sbatch and has SLURM signal its batch shell while the run is going:
the run checkpoints, the job requeues itself (same job id), resumes, and finishes with samples bitwise
identical to an uninterrupted mpirun of the same configuration.
PBS has no Debian package: its script runs under bash with the environment PBS provides, and `qsub` is
a stand-in on PATH that records the resubmission, which the test then runs as PBS would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, mpi_env, mpirun
from slurm.local_cluster import LocalSlurm, missing_binaries

pytestmark = pytest.mark.cluster

SBATCH = REPO / "jobs" / "slurm" / "slmc.sbatch"
PBS = REPO / "jobs" / "pbs" / "slmc.pbs"


def tiny_config(measurements: int, output_dir: str = "run") -> str:
    """Exact local MC on 4x4, 2 ranks x 2 chains: about 180 measurements/s on an idle 2-core machine."""
    return (
        "model: {lx: 4, ly: 4, hoppings: {1: 1.0}, J: 1.0, mu: 0.0, T: 0.05}\n"
        f"sampler: {{kind: exact, chains_per_rank: 2, thermalization: 20, measurements: {measurements}}}\n"
        f"output: {{dir: {output_dir}, checkpoint_every: 300}}\n"
        "seed: 7\n"
    )


def job_env(**extra: str) -> dict[str, str]:
    env = mpi_env()
    env.update(SLMC_PYTHON=sys.executable, PYTHONPATH=str(REPO), **extra)
    return env


def read_samples(run_dir: Path) -> dict[str, np.ndarray]:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "finished"
        return {name: data[...] for name, data in f["samples"].items()}


def assert_bitwise_equal(run_dir: Path, reference_dir: Path) -> None:
    samples, reference = read_samples(run_dir), read_samples(reference_dir)
    assert samples.keys() == reference.keys() and "ms" in samples
    for name in reference:
        assert samples[name].shape == reference[name].shape, name
        assert samples[name].tobytes() == reference[name].tobytes(), f"{name} differs from the uninterrupted run"


class ReferenceRun(threading.Thread):
    """The uninterrupted run, straight from mpirun, in the background while the job runs."""

    def __init__(self, directory: Path, measurements: int):
        super().__init__(daemon=True)
        directory.mkdir(parents=True)
        self.config = directory / "reference.yaml"
        self.config.write_text(tiny_config(measurements, str(directory / "run")))
        self.run_dir = directory / "run"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            mpirun(2, ["-m", "slmc_hpc", "run", str(self.config)], timeout=600)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.error = exc

    def result(self) -> Path:
        self.join(timeout=600)
        if self.error:
            raise self.error
        return self.run_dir


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM/munge binaries not installed: {', '.join(missing)} (make install adds them)")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_local_slurm_runs_a_batch_job(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch("--wrap", "echo hello from $SLURM_JOB_ID", f"--output={tmp_path}/out", cwd=tmp_path)
    info = slurm_cluster.wait_job(job, timeout=60)
    assert info["JobState"] == "COMPLETED"
    assert (tmp_path / "out").read_text().strip() == f"hello from {job}"


def test_sbatch_checkpoints_on_signal_requeues_and_matches_uninterrupted_run(slurm_cluster, tmp_path):
    """SLURM sends USR1 to the batch shell once the run has started (`scancel --signal=USR1 --batch`: what
    `--signal=B:USR1@T` does T seconds before the time limit, which SLURM checks only every 30 s, too coarse for
    a short test); the template holds it back to 8 s after the launch, and the run needs ~17 s on an idle machine,
    so it is interrupted, checkpoints, requeues itself and resumes."""
    measurements = 3000
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.yaml").write_text(tiny_config(measurements))
    # The template's default launcher is `srun --mpi=pmix`; without SLURM's pmix plugin, OpenMPI's mpirun.
    plugins = slurm_cluster.run("srun", "--mpi=list", check=False)
    launcher = "srun --mpi=pmix" if "pmix" in plugins.stdout + plugins.stderr else "mpirun"
    env = {**slurm_cluster.env, **job_env(SLMC_STARTUP_GRACE="8", SLMC_LAUNCHER=launcher)}
    start, submitted = time.monotonic(), time.time()
    job = slurm_cluster.sbatch(
        "--time=10", "--ntasks=2", "--output=job.out", str(SBATCH), "job.yaml", env=env, cwd=job_dir
    )
    deadline = time.monotonic() + 120
    while not (job_dir / "run" / "run.h5").exists():  # the run has started: the batch shell traps USR1 by now
        assert time.monotonic() < deadline and slurm_cluster.job(job).get("JobState") in ("PENDING", "RUNNING")
        time.sleep(0.2)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", str(job))
    reference = ReferenceRun(tmp_path / "reference", measurements)
    reference.start()
    info = slurm_cluster.wait_job(job, timeout=900)
    log = (job_dir / "job.out").read_text(errors="replace")  # progress bars cut by log lines
    print(f"job {job}: {info.get('JobState')} after {time.monotonic() - start:.0f} s, restarts {info.get('Restarts')}")
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert int(info["Restarts"]) >= 1, log[-3000:]
    assert "got USR1, asking the run to checkpoint and stop" in log
    assert "stopped by signal" in log and "requeueing" in log
    assert "slmc-hpc: resuming run" in log and "run run finished" in log
    # The requeued job took the directory over: the first instance's lock died with it, and run.lock now
    # holds the last instance's record (started after the signal, which comes >= 8 s after the start).
    assert "in use by another run" not in log
    record = json.loads((job_dir / "run" / "run.lock").read_text())
    assert record["state"] == "finished" and record["start"] > submitted + 8 and record["os_lock"]
    assert_bitwise_equal(job_dir / "run", reference.result())


def test_pbs_script_checkpoints_before_walltime_and_resubmits(tmp_path):
    """The PBS script body under bash: walltime 20 s, timer 12 s before it, qsub recorded then 'run' (the
    resubmitted job with a walltime it finishes in: one checkpoint-and-resubmit cycle is what is tested, and further
    cycles would run the same code again, many more of them the busier the machine). That job returns well before its
    walltime: the timer, killed when the run ends first, takes its sleep with it (a sleep left behind held the
    job's output open until the walltime)."""
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec (OpenMPI) not installed")
    # About 12 s of sampling on an idle machine, so the timer (8 s after the start) always lands inside the run.
    measurements = 2500
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.yaml").write_text(tiny_config(measurements))
    (job_dir / "nodefile").write_text("localhost\nlocalhost\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "qsub_calls"
    (fake_bin / "qsub").write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {calls}\necho 1001.fake\n')
    (fake_bin / "qsub").chmod(0o755)
    reference = ReferenceRun(tmp_path / "reference", measurements)
    reference.start()
    env = job_env(
        PATH=f"{fake_bin}:{os.environ['PATH']}",
        PBS_O_WORKDIR=str(job_dir),
        PBS_NODEFILE=str(job_dir / "nodefile"),
        PBS_JOBID="1000.fake",
        NCPUS="2",
        CONFIG="job.yaml",
        SLMC_WALLTIME="00:20",
        SLMC_SIGNAL_MARGIN="12",
        SLMC_STARTUP_GRACE="6",
        SLMC_SCRIPT=str(PBS),
    )
    env.pop("OMP_NUM_THREADS")  # PBS sets it only with ompthreads; the script derives it from NCPUS / ranks
    logs = []
    for attempt in range(20):
        proc = subprocess.run(["bash", str(PBS)], env=env, cwd=job_dir, capture_output=True, text=True, timeout=120)
        logs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, logs[-1][-3000:]
        submitted = calls.read_text().splitlines() if calls.exists() else []
        if len(submitted) == attempt:  # not resubmitted: finished
            break
        args = submitted[-1]
        assert args.startswith("-W depend=afterany:1000.fake -v CONFIG=job.yaml,") and args.endswith(str(PBS))
        env["SLMC_RESUBMITS"] = str(attempt + 1)
        env["SLMC_WALLTIME"] = "10:00"
    log = "\n".join(logs)
    assert len(logs) >= 2, log[-3000:]
    assert "walltime near" in log and "got USR1, asking the run to checkpoint and stop" in log
    assert "stopped by signal" in log
    assert "2 ranks x 1 threads" in logs[0]
    assert "run run finished" in logs[-1]
    assert_bitwise_equal(job_dir / "run", reference.result())


def test_temperature_scan_example_runs_and_plots(tmp_path):
    """jobs/examples/temperature_scan.yaml (a scan as one job), shrunk to 4x4 and 2 temperatures, then the scan
    directory analysed (one row per point) and plotted (observables against T)."""
    example = (REPO / "jobs" / "examples" / "temperature_scan.yaml").read_text()
    job = example.replace("T: [0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2]", "T: [0.05, 0.2]")
    job = job.replace("lx: 6", "lx: 4").replace("ly: 6", "ly: 4").replace("chains_per_rank: 4", "chains_per_rank: 2")
    job = job.replace("thermalization: 200", "thermalization: 20").replace("measurements: 2000", "measurements: 200")
    job = job.replace("rounds: 3", "rounds: 1").replace("outer_steps_per_round: 50", "outer_steps_per_round: 10")
    job = job.replace("dir: runs/temperature_scan", f"dir: {tmp_path / 'scan'}")
    (tmp_path / "scan.yaml").write_text(job)
    run = mpirun(2, ["-m", "slmc_hpc", "run", str(tmp_path / "scan.yaml")])
    assert "scan of 2 points" in run.stderr
    for temperature in ("0.05", "0.2"):
        with h5py.File(tmp_path / "scan" / f"T{temperature}" / "run.h5", "r", locking=False) as f:
            assert f"T: {temperature}" in f.attrs["config_yaml"] and f.attrs["status"] == "finished"
    analysed = mpirun(1, ["-m", "slmc_hpc", "analyze", str(tmp_path / "scan")])
    assert "(2 runs, one row each)" in analysed.stdout
    mpirun(1, ["-m", "slmc_hpc", "plot", str(tmp_path / "scan")])
    png = tmp_path / "scan" / "scan.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
