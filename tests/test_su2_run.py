"""`slmc-hpc run` for the gauge theory (`model.kind: su2_staggered`) under real `mpirun -n 2`.

A job that sets only DESIGN §9's keys runs, records its observables and its MD step choice, and is analysed
and plotted; runs stopped by SIGTERM and by SIGKILL resume bit for bit, with both evaluators; the chains do
not depend on the number of ranks; bad input is one message with exit status 2. Tiny lattices (4x2x2x4,
V = 64), so each mpirun costs seconds.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import mpirun
from tests.test_restart import assert_same_samples, checkpoint_counters, interrupt, launch, wait_for_phase
from tests.test_run import _merge

#: DESIGN §9's keys and nothing else (output.dir is the framework's), at the seeds' couplings.
DESIGN_JOB = {
    "model": {"kind": "su2_staggered", "shape": [4, 2, 2, 4], "beta": 2.7, "mass": 0.3, "n_flavors": 4},
    "evaluator": {"kind": "dense"},
    "sampler": {
        "kind": "hmc",
        "trajectory_length": 1.0,
        "md_steps": "auto",
        "integrator": "omelyan",
        "chains_per_rank": 2,
        "thermalization": 5,
        "measurements": 30,
    },
    "effective": {"kind": "stout", "n_layers": 2, "loops": ["plaquette", "rectangle", "chair", "polyakov"]}
    | {"mass": 0.4},
}
LONG = {
    "model": {"shape": [2, 2, 2, 4]},
    "sampler": {"md_steps": 2, "thermalization": 2, "measurements": 80},
    "seed": 5,
}
OFTEN = {"output": {"checkpoint_every": 0.3}}
OBSERVABLES = ("plaquette", "polyakov", "pbp", "dH", "acceptance")


def write_job(directory: Path, name: str, job: dict) -> Path:
    job = _merge(job, {"output": {"dir": str(directory / name), **job.get("output", {})}})
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(job))
    return path


def run(n: int, config: Path, check: bool = True):
    return mpirun(n, ["-m", "slmc_hpc", "run", str(config)], check=check)


def test_a_job_with_only_design_keys_runs_on_two_ranks_and_is_analysed_and_plotted(tmp_path):
    proc = run(2, write_job(tmp_path, "run", DESIGN_JOB))
    assert "production trajectories: md_steps" in proc.stderr
    run_dir = tmp_path / "run"
    with h5py.File(run_dir / "run.h5", "r") as f:
        assert f.attrs["status"] == "finished" and f.attrs["md_steps"] >= 1
        assert f.attrs["step_size"] == pytest.approx(1.0 / f.attrs["md_steps"])
        for name in OBSERVABLES:
            data = f["samples"][name][()]
            assert data.shape == (4, 30) and np.isfinite(data).all(), name
        plaquette = f["samples"]["plaquette"][()]
        assert 0.5 < plaquette.mean() < 0.9  # thermalising towards ~0.7 from the cold start
    results = json.loads((run_dir / "results.json").read_text())
    assert set(OBSERVABLES) | {"exp_minus_dH"} <= set(results)
    status = mpirun(1, ["-m", "slmc_hpc", "status", str(run_dir)]).stdout
    assert "finished" in status and "30 / 30" in status
    mpirun(1, ["-m", "slmc_hpc", "plot", str(run_dir)])
    pngs = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert pngs == {"time_series.png", "autocorrelation.png", "energy_violation.png"}


@pytest.mark.parametrize("evaluator, signum", [("dense", signal.SIGTERM), ("cg", signal.SIGKILL)])
def test_stopped_gauge_runs_resume_bit_for_bit(tmp_path, evaluator, signum):
    job = _merge(_merge(DESIGN_JOB, LONG), {"evaluator": {"kind": evaluator}})
    run(2, write_job(tmp_path, "reference", job))
    config = write_job(tmp_path, "run", _merge(job, OFTEN))
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(2, config, log)
    wait_for_phase(proc, run_dir, "production", log, measurements=10)
    status = interrupt(proc, signum)
    if signum == signal.SIGTERM:
        assert status == 0 and "stopped by signal" in log.read_text()
    assert checkpoint_counters(run_dir)["measurements"] < 80
    assert "resuming" in run(2, config).stderr
    assert_same_samples(run_dir, tmp_path / "reference")
    if evaluator == "cg":
        with h5py.File(run_dir / "run.h5", "r") as f:
            assert (f["samples"]["cg_iterations"][()] > 5).all()


def test_gauge_chains_do_not_depend_on_the_number_of_ranks(tmp_path):
    job = _merge(DESIGN_JOB, {"sampler": {"md_steps": 3, "measurements": 10}, "evaluator": {"kind": "cg"}})
    run(2, write_job(tmp_path, "two", job))
    run(1, write_job(tmp_path, "one", _merge(job, {"sampler": {"chains_per_rank": 4}})))
    assert_same_samples(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {"n_flavors": 2}, "evaluator": {"kind": "cg"}}, "model.n_flavors: 2 (the square root"),
        ({"model": {"shape": [4, 4, 3, 4]}}, "model.shape: every extent must be even"),
        ({"model": {"lx": 4}}, "model.lx: unknown key of model.kind su2_staggered"),
        ({"sampler": {"kind": "slmc"}}, "sampler.kind: must be one of hmc"),
    ],
)
def test_bad_gauge_jobs_are_one_message_and_exit_2(tmp_path, change, message):
    proc = run(2, write_job(tmp_path, "bad", _merge(DESIGN_JOB, change)), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("slmc-hpc: error:") == 1 and message in proc.stderr
    assert not (tmp_path / "bad").exists()
