"""`slmc-hpc run` end to end under `mpirun -n 2`: file layout, status, refusals, a crashing rank.

Tiny 4x4 lattices and a few steps: every mpirun costs ~1-4 s (python, MPI and, for slmc, torch start-up).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from slmc_hpc.driver import status_report
from slmc_hpc.io.checkpoint import CHECKPOINT_FORMAT
from slmc_hpc.io.runfile import TIMING_NAMES
from tests.conftest import SPIN_SAMPLES, mpirun

LX = LY = 4


def _merge(base: dict, extra: dict) -> dict:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def write_config(directory: Path, name: str, **sections) -> Path:
    """A job file (JSON is YAML) whose output.dir is directory/name; `sections` override the small defaults."""
    base = {
        "model": {"lx": LX, "ly": LY, "J": 2.0, "mu": 0.0, "T": 0.1},
        "sampler": {"kind": "exact", "chains_per_rank": 2, "thermalization": 3, "measurements": 10},
        "output": {"dir": str(directory / name), "checkpoint_every": 60},
        "seed": 7,
    }
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(_merge(base, sections)))
    return path


def run_cli(n: int, config: Path, *extra: str, check: bool = True):
    return mpirun(n, ["-m", "slmc_hpc", "run", str(config), *extra], check=check)


def read_samples(run_dir: Path) -> dict[str, np.ndarray]:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        return {name: ds[()] for name, ds in f["samples"].items()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SLMC = {
    "effective": {"kind": "linear", "n_J": 2},
    "training": {"warmup_sweeps": 5, "rounds": 2, "outer_steps_per_round": 5},
    # An explicit inner chain: 'auto' is tuned by wall time, so two runs of one job could choose differently
    # and the restart tests compare a resumed run bit for bit with an independent reference run.
    "sampler": {
        "kind": "slmc",
        "chains_per_rank": 2,
        "thermalization": 5,
        "measurements": 12,
        "inner_sweeps": 4,
        "inner_block": 0,
    },
}


@pytest.fixture(scope="module")
def slmc_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("slmc")
    run_cli(2, write_config(tmp, "slmc", **SLMC))
    return tmp / "slmc"


def test_exact_run_layout_status_and_finished_refusal(tmp_path):
    config = write_config(tmp_path, "exact")
    run_dir = tmp_path / "exact"
    run_cli(2, config)

    n_chains, n_meas = 4, 10
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:  # a plain (serial) reader
        attrs = f.attrs
        assert attrs["format_version"] == 1 and attrs["status"] == "finished" and attrs["mpi_size"] == 2
        assert attrs["config_sha256"] == hashlib.sha256(attrs["config_yaml"].encode()).hexdigest()
        assert "kind: exact" in attrs["config_yaml"]
        assert {"numpy", "h5py", "mpi4py", "hdf5"} <= set(json.loads(attrs["package_versions"]))
        assert attrs["start_time"] and attrs["code_version"]
        samples = f["samples"]
        assert samples.attrs["n_measurements"] == n_meas
        for name in SPIN_SAMPLES:
            values = samples[name][()]
            assert values.shape == (n_chains, n_meas) and np.all(np.isfinite(values)), name
        assert samples["sq"].shape == (n_chains, n_meas, LY, LX)
        assert np.all((samples["acceptance"][()] >= 0) & (samples["acceptance"][()] <= 1))
        assert np.all((samples["ms"][()] >= 0) & (samples["ms"][()] <= 1))
        for name in TIMING_NAMES:
            assert f["timing"][name].shape == (2, n_meas)
        assert np.all(f["timing"]["exact"][()] > 0)
        assert f["training"]["loss"].shape == (0,) and "model" not in f
    with h5py.File(run_dir / "checkpoint.h5", "r", locking=False) as f:
        assert f.attrs["format"] == CHECKPOINT_FORMAT and f["counters"].attrs["phase"] == "done"

    report = status_report(run_dir)
    assert "finished" in report and f"{n_meas} / {n_meas}" in report and "checkpoint:" in report

    before = digest(run_dir / "run.h5"), digest(run_dir / "checkpoint.h5")
    refused = run_cli(2, config, check=False)
    assert refused.returncode == 2 and "finished run" in refused.stderr
    assert "--fresh" not in refused.stderr and "--force" not in refused.stderr  # it has data: no wiping offered
    assert (digest(run_dir / "run.h5"), digest(run_dir / "checkpoint.h5")) == before

    # More measurements extend a finished run: its chains go on where they stopped...
    first = read_samples(run_dir)
    longer = write_config(tmp_path, "longer", sampler={"measurements": 15}, output={"dir": str(run_dir)})
    run_cli(2, longer)
    extended = read_samples(run_dir)
    assert extended["omega"].shape == (n_chains, 15)
    assert all(np.array_equal(extended[name][:, :n_meas], first[name]) for name in first)
    # ...exactly as if it had been started with them (--fresh deletes the run and starts afresh).
    run_cli(2, longer, "--fresh")
    again = read_samples(run_dir)
    assert all(np.array_equal(extended[name], again[name]) for name in first)


def test_slmc_run_trains_freezes_and_produces(slmc_run):
    with h5py.File(slmc_run / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "finished"
        model = f["model"]
        assert model.attrs["kind"] == "linear" and bool(model.attrs["frozen"]) and model.attrs["n_J"] == 2
        couplings = model["couplings"][()]
        assert couplings.shape == (2,) and np.all(np.isfinite(couplings)) and np.any(couplings != 0)
        training = f["training"]
        rounds = SLMC["training"]["rounds"]
        assert training["round_acceptance"].shape == (rounds,)
        assert np.all((training["round_acceptance"][()] >= 0) & (training["round_acceptance"][()] <= 1))
        # warmup (5 sweeps x 2 chains) + 5 outer steps x 2 chains per round, per rank, summed over 2 ranks
        assert training["round_samples"][()].tolist() == [40.0, 60.0]
        assert training["loss"].shape == (0,)  # the linear model has no optimizer steps: it is refitted exactly
        assert training["round_loss"].shape == (rounds,) and np.all(training["round_loss"][()] < 1e-2)
        assert f["samples"]["omega"].shape == (4, 12)
        assert np.all(f["timing"]["inner"][()] > 0)
    assert "2 rounds" in status_report(slmc_run)


def test_slmc_with_loaded_model_skips_training(tmp_path, slmc_run):
    load = str(slmc_run / "run.h5")
    config = write_config(tmp_path, "loaded", **_merge(SLMC, {"effective": {"load": load}}))
    proc = run_cli(2, config)
    assert "phase freeze" in proc.stderr and "warmup" not in proc.stderr
    with h5py.File(load, "r", locking=False) as old, h5py.File(tmp_path / "loaded" / "run.h5", "r") as new:
        assert bool(new["model"].attrs["frozen"])
        assert np.array_equal(old["model"]["couplings"][()], new["model"]["couplings"][()])
        assert new["training"]["loss"].shape == (0,)
        assert new["samples"].attrs["n_measurements"] == 12


def test_crash_on_one_rank_aborts_the_job(tmp_path):
    """Rank 0 cannot write its checkpoint (the temporary name is a directory): the whole job ends, fast."""
    config = write_config(tmp_path, "crash", sampler={"measurements": 1000})
    run_dir = tmp_path / "crash"
    (run_dir / "checkpoint.h5.tmp").mkdir(parents=True)
    start = time.monotonic()
    proc = run_cli(2, config, check=False)
    assert proc.returncode not in (0, 2), proc.stderr
    assert "rank 0: unexpected error" in proc.stderr and "checkpoint.h5.tmp" in proc.stderr
    assert time.monotonic() - start < 60
    assert not (run_dir / "checkpoint.h5").exists()
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "running"
    assert os.path.isdir(run_dir / "checkpoint.h5.tmp")


def test_slepc_group_shares_chains_and_agrees_with_dense(tmp_path):
    """Two ranks sharing one distributed diagonalisation run the same chains as dense on one rank."""
    pytest.importorskip("slepc4py")
    short = {"sampler": {"thermalization": 1, "measurements": 4}}
    slepc = write_config(tmp_path, "slepc", evaluator={"kind": "slepc", "ranks_per_config": 2}, **short)
    dense = write_config(tmp_path, "dense", **short)
    run_cli(2, slepc)
    run_cli(1, dense)
    got, expected = read_samples(tmp_path / "slepc"), read_samples(tmp_path / "dense")
    assert got["omega"].shape == (2, 4)  # one group of 2 ranks: chains_per_rank chains, written once
    assert np.array_equal(got["acceptance"], expected["acceptance"])
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-12, err_msg=name)
