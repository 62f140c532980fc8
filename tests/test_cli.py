"""The real `python -m slmc_hpc` entry: bad input -> one clear message, exit 2, nothing on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slmc_hpc.config import default_config, load_config, with_overrides
from tests.conftest import REPO, mpirun


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "slmc_hpc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def job_file(tmp_path, body: str) -> str:
    """A job file whose output.dir lies inside tmp_path, so that a created directory would show."""
    path = tmp_path / "job.yaml"
    path.write_text(f"output:\n  dir: {tmp_path / 'out'}\n{body}")
    return str(path)


def assert_nothing_written(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


BAD_JOBS = [
    ("model:\n  T: -1\n", ["model.T", "> 0", "got -1"]),
    ("model:\n  Tt: 0.1\n", ["model.Tt", "unknown key", "expected one of"]),
    ("sampler:\n  chains_per_rank: 0\n", ["sampler.chains_per_rank", ">= 1", "got 0"]),
    ("model:\n  lx: true\n", ["model.lx", "integer", "true"]),
    ("evaluator:\n  kind: dense\n  ranks_per_config: 2\n", ["evaluator.ranks_per_config", "slepc", "got 2"]),
    ("effective:\n  load: missing/run.h5\n", ["effective.load", "not found", "missing/run.h5"]),
    ("model:\n  lx: [6,\n", ["job.yaml, line", "malformed YAML"]),
]


@pytest.mark.parametrize("body, fragments", BAD_JOBS, ids=[case[1][0] for case in BAD_JOBS])
def test_run_with_bad_config_exits_2_with_one_message_and_writes_nothing(tmp_path, body, fragments):
    proc = cli("run", job_file(tmp_path, body), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slmc-hpc: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert_nothing_written(tmp_path)


def test_missing_config_file_and_run_dir(tmp_path):
    proc = cli("run", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "slmc-hpc: error: config file not found: nope.yaml" in proc.stderr
    for command in ("status", "analyze", "plot"):
        proc = cli(command, "no_run", cwd=tmp_path)
        assert proc.returncode == 2 and "run directory not found: no_run" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2(tmp_path):
    assert cli(cwd=tmp_path).returncode == 2
    assert cli("run", "--frobnicate", cwd=tmp_path).returncode == 2
    assert cli("explode", cwd=tmp_path).returncode == 2


def test_config_prints_yaml_that_loads_back_to_the_same_config(tmp_path):
    proc = cli("config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "defaults.yaml").write_text(proc.stdout)
    assert load_config(tmp_path / "defaults.yaml") == default_config()

    job = job_file(tmp_path, "model:\n  lx: 4\n  hoppings: {1: 1, 3: -0.1}\nseed: 5\n")
    proc = cli("config", job, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "resolved.yaml").write_text(proc.stdout)
    expected = with_overrides(
        default_config(),
        {"model.lx": 4, "model.hoppings": {1: 1.0, 3: -0.1}, "seed": 5, "output.dir": str(tmp_path / "out")},
    )
    assert load_config(tmp_path / "resolved.yaml") == load_config(job) == expected


@pytest.mark.mpi
def test_bad_config_under_mpirun_reports_once_and_exits_2(tmp_path):
    job = job_file(tmp_path, "sampler:\n  measure_every: 0\n")
    proc = mpirun(2, ["-m", "slmc_hpc", "run", job], check=False, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("slmc-hpc: error:") == 1, proc.stderr
    assert "sampler.measure_every: must be >= 1, got 0" in proc.stderr
    assert "MPI_ABORT" not in proc.stderr  # MPI was never started for a bad config
    assert_nothing_written(tmp_path)


def test_set_overrides_keys_and_is_validated_like_the_file(tmp_path):
    job = job_file(tmp_path, "model:\n  T: 0.2\n")
    proc = cli("config", job, "--set", "model.T=0.1", "--set", "model.hoppings={1: 1, 2: 0.2}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "resolved.yaml").write_text(proc.stdout)
    resolved = load_config(tmp_path / "resolved.yaml")
    assert (resolved.model.T, resolved.model.hoppings) == (0.1, {1: 1.0, 2: 0.2})
    (tmp_path / "resolved.yaml").unlink()

    proc = cli("run", job, "--set", "sampler.chains_per_rank=0", cwd=tmp_path)
    assert proc.returncode == 2 and "sampler.chains_per_rank: must be >= 1, got 0" in proc.stderr
    proc = cli("run", job, "--set", "model.T", cwd=tmp_path)
    assert proc.returncode == 2 and "expected KEY=VALUE" in proc.stderr
    assert_nothing_written(tmp_path)
