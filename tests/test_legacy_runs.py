"""Runs made by the code before systems became packages (tests/reference/legacy, commit 86f05d4) still hold.

The double-exchange results must not change: today's code reruns each stored job and produces the same
`/samples/*` bit for bit, resumes the stored stopped run to the same end as the stored finished one, and
analyses and plots the stored files (their configuration has no `model.kind`: it means double_exchange).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, mpirun

LEGACY = REPO / "tests" / "reference" / "legacy"


def samples(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        n = int(f["samples"].attrs["n_measurements"])
        return {name: ds[:, :n] for name, ds in f["samples"].items()}


def assert_bitwise(got: Path, expected: Path) -> None:
    new, old = samples(got), samples(expected)
    assert sorted(new) == sorted(old)
    for name, values in old.items():
        assert new[name].shape == values.shape, name
        assert np.array_equal(new[name], values, equal_nan=True), f"/samples/{name} differs from {expected}"


@pytest.mark.parametrize("name", ["exact", "linear", "transformer"])
def test_stored_job_reruns_bit_for_bit(tmp_path, name):
    shutil.copy(LEGACY / name / "job.yaml", tmp_path / "job.yaml")
    mpirun(2, ["-m", "slmc_hpc", "run", "job.yaml"], cwd=tmp_path)
    assert_bitwise(tmp_path / "run" / "run.h5", LEGACY / name / "run.h5")


def test_stopped_run_of_the_old_code_resumes_to_the_same_end(tmp_path):
    shutil.copytree(LEGACY / "transformer_stopped", tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for file in ("run.h5", "checkpoint.h5", "run.lock"):
        (tmp_path / file).rename(run_dir / file)
    proc = mpirun(2, ["-m", "slmc_hpc", "run", "job.yaml"], cwd=tmp_path)
    assert "resuming" in proc.stderr
    assert_bitwise(run_dir / "run.h5", LEGACY / "transformer" / "run.h5")


@pytest.mark.parametrize("name", ["exact", "transformer"])
def test_stored_run_files_analyse_and_plot(tmp_path, name):
    shutil.copy(LEGACY / name / "run.h5", tmp_path / "run.h5")
    mpirun(1, ["-m", "slmc_hpc", "analyze", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    stored = json.loads((LEGACY / name / "results.json").read_text())
    for observable in ("omega", "m", "ms", "nn", "binder_ms", "chi_ms"):
        assert results[observable]["mean"] == pytest.approx(stored[observable]["mean"], rel=1e-12), observable
        assert results[observable]["error"] == pytest.approx(stored[observable]["error"], rel=1e-9), observable
    mpirun(1, ["-m", "slmc_hpc", "plot", str(tmp_path)])
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert {"time_series.png", "autocorrelation.png", "structure_factor.png"} <= set(pngs)
