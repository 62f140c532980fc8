"""Issue 4 evidence: interrupted runs resume bit for bit, and a chain does not depend on the rank count.

Runs stopped by SIGTERM (sent to the ranks, as a batch system does) in production or in training,
and killed with SIGKILL in the middle of production, are resumed with the same command and end with
`/samples/*` bitwise equal to an uninterrupted run of the same config and seed, under `mpirun -n 2`.
An interrupted run is also used to check that a changed config, a truncated, foreign or missing
checkpoint are refused (exit status 2) without touching the files. One BLAS thread per rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import mpi_env, mpirun
from tests.test_run import SLMC, _merge, digest, read_samples, run_cli, write_config

EXACT = {"sampler": {"measurements": 300}}
# Training long enough (about a second) that a SIGTERM sent once it starts lands inside it.
SLMC_LONG = _merge(SLMC, {"training": {"rounds": 60, "outer_steps_per_round": 10}, "sampler": {"measurements": 1000}})
# Transformer SLMC with the nested inner chain: the proposal model must survive the checkpoint too.
SLMC_NESTED = _merge(
    SLMC,
    {
        "effective": {"kind": "transformer", "n_J": 2, "n_layers": 1, "n_att": 2},
        "training": {"steps_per_round": 20},
        "sampler": {"inner_sweeps": 2, "inner_block": 4, "measurements": 1500},
    },
)
# Exact HMC of the spins: its evaluator keeps the diagonalisations of the forces for the test and the next start;
# a resumed run starts with none kept and must still give the same chains.
SPIN_HMC = {"sampler": {"kind": "hmc", "md_steps": 2, "trajectory_length": 1.0, "measurements": 600}}
OFTEN = {"output": {"checkpoint_every": 0.4}}  # seconds; it does not change the samples


def launch(n: int, config: Path, log: Path) -> subprocess.Popen:
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", "-m", "slmc_hpc", "run", str(config)]
    with open(log, "w") as stream:
        return subprocess.Popen(cmd, env=mpi_env(), stdout=stream, stderr=stream, start_new_session=True)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (mpirun's ranks)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def wait_for_phase(proc: subprocess.Popen, run_dir: Path, phase: str, log: Path, measurements: int = 0) -> None:
    """Poll run.h5 with a plain reader (while the run writes it) until `phase` with `measurements` done."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be interrupted:\n{log.read_text()}")
        try:
            with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
                if f.attrs["phase"] == phase and f["samples"].attrs["n_measurements"] >= measurements:
                    return
        except (OSError, KeyError):
            pass  # not created yet, or caught between two writes
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach {phase} in time")


def interrupt(proc: subprocess.Popen, signum: int) -> int:
    """Send `signum` to the ranks (as a batch system does); for SIGKILL, to mpirun as well. Exit status."""
    ranks = child_pids(proc.pid)
    assert ranks, "no rank processes found under mpirun"
    for pid in ranks:
        os.kill(pid, signum)
    if signum == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


def checkpoint_counters(run_dir: Path) -> dict:
    with h5py.File(run_dir / "checkpoint.h5", "r", locking=False) as f:
        return dict(f["counters"].attrs)


def assert_same_samples(run_dir: Path, reference: Path) -> None:
    got, expected = read_samples(run_dir), read_samples(reference)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert np.array_equal(got[name], expected[name]), f"/samples/{name} differs"


@pytest.fixture(scope="module")
def exact_reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("reference")
    run_cli(2, write_config(tmp, "exact", **EXACT))
    return tmp / "exact"


def test_sigterm_then_resume_is_bitwise_identical(tmp_path, exact_reference):
    config = write_config(tmp_path, "run", **_merge(EXACT, OFTEN))
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=10)
    assert interrupt(proc, signal.SIGTERM) == 0, log.read_text()
    assert "stopped by signal" in log.read_text()
    counters = checkpoint_counters(run_dir)
    assert counters["phase"] == "production" and 10 <= counters["measurements"] < 300
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "stopped" and f["samples"].attrs["n_measurements"] == counters["measurements"]
    analysed = mpirun(1, ["-m", "slmc_hpc", "analyze", str(run_dir)])  # a stopped run is called stopped everywhere
    assert "(stopped, " in analysed.stdout and "is being written" not in analysed.stderr
    assert "status:       stopped" in mpirun(1, ["-m", "slmc_hpc", "status", str(run_dir)]).stdout

    # A changed configuration is refused, naming the difference; nothing is touched.
    files = {name: digest(run_dir / name) for name in ("run.h5", "checkpoint.h5")}
    changed = write_config(
        tmp_path,
        "changed",
        **_merge(EXACT, {"model": {"T": 0.2}, "output": {"dir": str(run_dir), "checkpoint_every": 0.4}}),
    )
    refused = run_cli(2, changed, check=False)
    assert refused.returncode == 2 and "model.T: 0.1 -> 0.2" in refused.stderr
    assert {name: digest(run_dir / name) for name in files} == files

    # A truncated checkpoint is refused, naming the file, and left as it is.
    checkpoint = run_dir / "checkpoint.h5"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    refused = run_cli(2, config, check=False)
    assert refused.returncode == 2 and str(checkpoint) in refused.stderr
    assert checkpoint.read_bytes() == whole[: len(whole) // 2]
    checkpoint.write_bytes(whole)

    # A checkpoint of another number of chains (here: the same job on 1 rank) is refused.
    refused = mpirun(1, ["-m", "slmc_hpc", "run", str(config)], check=False)
    assert refused.returncode == 2 and "holds 4 chains, this run has 2" in refused.stderr

    # A missing checkpoint next to a run.h5 with measurements is refused (only --fresh would start afresh).
    checkpoint.rename(run_dir / "moved.h5")
    refused = run_cli(2, config, check=False)
    assert refused.returncode == 2 and "checkpoint.h5 is missing" in refused.stderr
    (run_dir / "moved.h5").rename(checkpoint)
    assert {name: digest(run_dir / name) for name in files} == files

    run_cli(2, config)
    assert_same_samples(run_dir, exact_reference)


def test_sigterm_in_training_sigkill_in_production_resume_bitwise_identical(tmp_path):
    """SLMC with training, stopped twice: each resume continues from the last checkpoint (training data,
    model and chains), and later rows that the killed run had written are redone identically."""
    reference = tmp_path / "reference"
    run_cli(2, write_config(tmp_path, "reference", **SLMC_LONG))

    config = write_config(tmp_path, "run", **_merge(SLMC_LONG, OFTEN))
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "train", log)
    assert interrupt(proc, signal.SIGTERM) == 0, log.read_text()
    counters = checkpoint_counters(run_dir)
    assert counters["phase"] == "train" and 0 < counters["rounds"] < SLMC_LONG["training"]["rounds"]

    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=50)
    interrupt(proc, signal.SIGKILL)
    counters = checkpoint_counters(run_dir)
    assert counters["phase"] == "production" and counters["measurements"] < 1000
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "running"
        assert f["samples"].attrs["n_measurements"] >= counters["measurements"]

    proc = run_cli(2, config)
    assert "resuming" in proc.stderr
    assert_same_samples(run_dir, reference)
    with h5py.File(run_dir / "run.h5", "r") as f, h5py.File(reference / "run.h5", "r") as g:
        assert np.array_equal(f["model"]["couplings"][()], g["model"]["couplings"][()])
        for name in ("round_loss", "round_acceptance", "round_samples"):
            assert np.array_equal(f["training"][name][()], g["training"][name][()]), name


def sigterm_in_production_then_resume(tmp_path: Path, job: dict) -> tuple[Path, Path]:
    """`job` run uninterrupted, and again stopped by SIGTERM 20 measurements into production and resumed with the
    same command: the samples are bitwise equal. Returns (resumed run, reference run)."""
    reference = tmp_path / "reference"
    run_cli(2, write_config(tmp_path, "reference", **job))
    config = write_config(tmp_path, "run", **_merge(job, OFTEN))
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=20)
    assert interrupt(proc, signal.SIGTERM) == 0, log.read_text()
    assert checkpoint_counters(run_dir)["measurements"] < job["sampler"]["measurements"]
    run_cli(2, config)
    assert_same_samples(run_dir, reference)
    return run_dir, reference


def test_nested_transformer_sigterm_in_production_resume_bitwise_identical(tmp_path):
    run_dir, reference = sigterm_in_production_then_resume(tmp_path, SLMC_NESTED)
    with h5py.File(run_dir / "run.h5", "r") as f, h5py.File(reference / "run.h5", "r") as g:
        proposal = f["model"]["proposal_couplings"][()]
        assert proposal.shape == (5,) and np.any(proposal != 0)  # 4x4: 5 distance shells
        assert np.array_equal(proposal, g["model"]["proposal_couplings"][()])


def test_spin_exact_hmc_sigterm_in_production_resume_bitwise_identical(tmp_path):
    sigterm_in_production_then_resume(tmp_path, SPIN_HMC)


def test_one_rank_and_two_ranks_give_identical_chains(tmp_path, exact_reference):
    """Same 4 chains (exact sampler): on 1 rank with 4 chains, and on 2 ranks with 2 chains each."""
    config = write_config(tmp_path, "one", **_merge(EXACT, {"sampler": {"chains_per_rank": 4}}))
    run_cli(1, config)
    assert_same_samples(tmp_path / "one", exact_reference)
