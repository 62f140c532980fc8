"""Issue 10 evidence: one run per directory, restarts that need no flag, environment errors, `status`.

Under `mpirun -n 2` on 4x4 lattices: a second job on a live directory is refused at once (exit 2, the
holder named, no file changed) and the first run ends bitwise equal to an undisturbed run; a run killed
(SIGKILL) before its first checkpoint restarts with the same command and ends equal to it too; `status`
tells live from dead. Output paths that are a file, under a file or read-only, a disk too small, a disk
that fills during the run, and a job too large for memory each end with one message and exit 2, leaving
no new folder behind (and the checkpoint whole)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from slmc_hpc.io.checkpoint import read_checkpoint
from slmc_hpc.io.lock import heartbeat_says_live
from slmc_hpc.io.rundir import status_report
from slmc_hpc.io.state import pack_tree, unpack_tree
from tests.conftest import REPO, mpirun
from tests.test_restart import assert_same_samples, interrupt, launch, wait_for_phase
from tests.test_run import run_cli, write_config

# About 3 s of production on 2 ranks: long enough to start a second job while it runs.
LONG = {"sampler": {"thermalization": 300, "measurements": 600}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("reference")
    run_cli(2, write_config(tmp, "reference", **LONG))
    return tmp / "reference"


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("slmc-hpc: error")]


def test_second_job_on_a_live_directory_is_refused_and_the_first_is_undisturbed(tmp_path, reference):
    # Frequent checkpoints (they do not change the samples) make frequent flushes and heartbeats.
    config = write_config(tmp_path, "run", **{**LONG, "output": {"checkpoint_every": 0.4}})
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    first = launch(2, config, log)
    wait_for_phase(first, run_dir, "production", log, measurements=50)

    report = status_report(run_dir)
    assert "status:       running" in report and f"pid {first.pid}" not in report  # rank 0's pid, not mpirun's
    assert f"process:      live: host {socket.gethostname()}, pid " in report
    assert "measurements/s, production time left about" in report, report

    lock_before = (run_dir / "run.lock").stat().st_mtime_ns
    started = time.monotonic()
    second = run_cli(2, config, check=False)
    assert second.returncode == 2, second.stderr
    errors = _errors(second.stderr)
    assert len(errors) == 1 and "is in use by another run" in errors[0], second.stderr
    assert f"host {socket.gethostname()}, pid " in errors[0] and "last heartbeat" in errors[0]
    assert time.monotonic() - started < 30
    assert first.poll() is None or first.returncode == 0
    assert first.wait(timeout=120) == 0, log.read_text()
    assert (run_dir / "run.lock").stat().st_mtime_ns >= lock_before
    assert_same_samples(run_dir, reference)
    report = status_report(run_dir)
    assert "status:       finished" in report and "process:      none: finished" in report


def test_sigkill_before_the_first_checkpoint_restarts_with_the_same_command(tmp_path, reference):
    config = write_config(tmp_path, "run", **LONG)
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "thermalize", log)
    interrupt(proc, signal.SIGKILL)
    assert not (run_dir / "checkpoint.h5").exists()
    deadline = time.monotonic() + 10  # the killed ranks may outlive mpirun by a moment
    while "status:       dead" not in (report := status_report(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status:       dead" in report and "process:      dead since" in report, report

    restarted = run_cli(2, config)
    assert "starting" in restarted.stderr
    assert_same_samples(run_dir, reference)


def test_moved_finished_run_extends_with_its_first_measurements_unchanged(tmp_path):
    config = write_config(tmp_path, "old")
    run_cli(2, config)
    with h5py.File(tmp_path / "old" / "run.h5", "r") as f:
        first = {name: ds[()] for name, ds in f["samples"].items()}
    moved = tmp_path / "moved"
    (tmp_path / "old").rename(moved)
    longer = write_config(tmp_path, "longer", sampler={"measurements": 15}, output={"dir": str(moved)})
    proc = run_cli(2, longer)
    assert "resuming" in proc.stderr
    with h5py.File(moved / "run.h5", "r") as f:
        assert f["samples"]["omega"].shape == (4, 15)
        for name, values in first.items():
            assert np.array_equal(f["samples"][name][:, :10], values), name


def test_damaged_run_file_is_named_by_status_and_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    report = status_report(run_dir)
    assert f"status:       damaged: {run_dir / 'run.h5'} cannot be read" in report, report
    proc = cli("run", str(write_config(tmp_path, "run")), cwd=tmp_path)
    assert_one_error(proc, "run.h5: damaged")
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.h5"]  # nothing added, nothing deleted


# ------------------------------------------------------------------------------------ environment errors


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")}
    env.update(PYTHONPATH=str(REPO), H5PY_ALWAYS_USE_MPI="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "slmc_hpc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (root only): returns mount(size, read_only) -> its path; unmounted afterwards."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    proc = cli("run", str(write_config(tmp_path, "afile")), cwd=tmp_path)
    assert_one_error(proc, "output.dir", "afile is a file")
    config = write_config(tmp_path, "x", output={"dir": str(tmp_path / "afile" / "sub" / "run")})
    proc = cli("run", str(config), cwd=tmp_path)
    assert_one_error(proc, "output.dir", "afile is a file, not a directory")
    assert tree(tmp_path) == sorted([*before, "afile.yaml", "x.yaml"])


def test_read_only_output_dir(tmp_path, tmpfs):
    read_only = tmpfs("1m", read_only=True)
    config = write_config(tmp_path, "x", output={"dir": str(read_only / "deep" / "run")})
    proc = cli("run", str(config), cwd=tmp_path)
    assert_one_error(proc, "output.dir", "cannot write in", str(read_only))
    assert tree(read_only) == []


def test_disk_too_small_is_refused_before_the_run(tmp_path, tmpfs):
    small = tmpfs("1m")
    config = write_config(tmp_path, "x", sampler={"measurements": 20000}, output={"dir": str(small / "a" / "run")})
    proc = cli("run", str(config), cwd=tmp_path)
    assert_one_error(proc, "need about", "free", str(small))
    assert tree(small) == []


def test_disk_that_fills_during_the_run_ends_with_one_message_and_a_whole_checkpoint(tmp_path, tmpfs):
    disk = tmpfs("16m")
    run_dir = disk / "run"
    sampler, output = {"thermalization": 0, "measurements": 3000}, {"dir": str(run_dir), "checkpoint_every": 0.5}
    config = write_config(tmp_path, "x", sampler=sampler, output=output)
    log = tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=20)
    deadline = time.monotonic() + 30
    while not (run_dir / "checkpoint.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(disk / "filler", "wb") as filler:  # take every free byte
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    assert proc.wait(timeout=120) == 2, log.read_text()
    text = log.read_text()
    errors = _errors(text)
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in text, text
    assert errors[0].endswith("free some space and run the same command to resume")  # one line
    ckpt = read_checkpoint(run_dir / "checkpoint.h5", n_chains=4)  # whole and readable
    assert ckpt.counters["phase"] == "production" and not (run_dir / "checkpoint.h5.tmp").exists()


@pytest.mark.parametrize("override", ["model.lx=2000", "sampler.chains_per_rank=100000000"])
def test_job_too_large_for_memory_is_refused_before_allocation(tmp_path, override):
    config = write_config(tmp_path, "x")
    started = time.monotonic()
    proc = mpirun(2, ["-m", "slmc_hpc", "run", str(config), "--set", override], check=False, timeout=120)
    assert_one_error(proc, "of memory on this node", "GiB", "available")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ units


def test_heartbeat_fallback_without_os_locks():
    now, host = 1000.0, socket.gethostname()
    alive = {"host": "other-node", "pid": 1, "heartbeat": now - 10, "stale_after": 90}
    assert heartbeat_says_live(alive, now, host)
    assert not heartbeat_says_live({**alive, "heartbeat": now - 100}, now, host)  # stale
    assert not heartbeat_says_live({**alive, "released": now - 5}, now, host)  # ended cleanly
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert not heartbeat_says_live({**alive, "host": host, "pid": ended.pid}, now, host)  # its pid is dead
    assert heartbeat_says_live({**alive, "host": host, "pid": os.getpid()}, now, host)
    assert not heartbeat_says_live(None, now, host)


def test_state_trees_round_trip_with_any_key():
    state = {
        "trainer": {"param/layers.0.w": np.arange(3.0), "step_count": np.array(4)},
        "data": {"spins": np.zeros((2, 4, 3)), "omega": np.ones(2)},
        "round": 3,
        "history": {},
    }
    back = unpack_tree(pack_tree(state))
    assert sorted(back) == sorted(state) and back["history"] == {} and int(back["round"]) == 3
    assert np.array_equal(back["trainer"]["param/layers.0.w"], np.arange(3.0))
    assert back["data"]["spins"].shape == (2, 4, 3)
    assert json.dumps(sorted(back["trainer"])) == json.dumps(["param/layers.0.w", "step_count"])


def test_signals_to_mpirun_checkpoint_usr1_exits_0_and_term_is_openmpis_1(tmp_path):
    """SIGUSR1 to mpirun reaches every rank: checkpoint, exit 0. SIGTERM to mpirun: the ranks checkpoint
    too (OpenMPI passes SIGTERM on), but OpenMPI's mpirun reports 1 for a job it was told to end (README)."""
    config = write_config(tmp_path, "run", sampler={"measurements": 100000})
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=5)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == 0, log.read_text()
    first = read_checkpoint(run_dir / "checkpoint.h5").counters["measurements"]
    assert "stopped by signal" in log.read_text() and first >= 5

    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=first + 5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1, log.read_text()
    assert "stopped by signal" in log.read_text()
    assert read_checkpoint(run_dir / "checkpoint.h5").counters["measurements"] >= first + 5
    assert "status:       stopped" in status_report(run_dir)
