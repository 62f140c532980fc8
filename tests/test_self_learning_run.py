"""Self-learning in real `slmc-hpc run` jobs on `mpirun -n 2` (issue 9): no exact sweeps, the inner chain
tuned and recorded, size transfer with `effective.init`, and loaded models that must match the job.

Tiny lattices and short runs: the physics of these paths is tested in test_size_transfer.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import mpirun

TRANSFORMER = {"kind": "transformer", "n_layers": 1, "n_att": 2}
TRAINING = {"rounds": 3, "linear_rounds": 2, "outer_steps_per_round": 6, "steps_per_round": 20, "validate_every": 5}


def job(directory: Path, name: str, size: int, **sections) -> Path:
    settings = {
        "model": {"lx": size, "ly": size, "T": 0.1},
        "effective": TRANSFORMER,
        "training": TRAINING,
        "sampler": {"chains_per_rank": 2, "thermalization": 2, "measurements": 12},
        "output": {"dir": str(directory / name)},
        "seed": 11,
    }
    for key, value in sections.items():
        settings[key] = {**settings.get(key, {}), **value}
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(settings))
    return path


def run(config: Path, check: bool = True):
    return mpirun(2, ["-m", "slmc_hpc", "run", str(config)], check=check)


@pytest.fixture(scope="module")
def trained_4x4(tmp_path_factory) -> Path:
    """A default-style job on 4x4: bootstrap from H_eff = 0 (no exact sweeps), auto inner chain."""
    tmp = tmp_path_factory.mktemp("boot")
    proc = run(job(tmp, "small", 4))
    assert "production inner chain: inner_sweeps" in proc.stderr
    return tmp / "small" / "run.h5"


def test_bootstrap_needs_no_exact_sweeps_and_records_the_tuned_inner_chain(trained_4x4):
    with h5py.File(trained_4x4, "r", locking=False) as f:
        attrs, training = f.attrs, f["training"]
        assert attrs["status"] == "finished" and float(attrs["seconds_warmup"]) < 1.0
        # Every round's outer steps (6 x 2 chains x 2 ranks) are the data; a fifth of them held out.
        assert training["round_samples"][()].tolist() == [24.0, 48.0, 72.0]
        validation = training["round_validation_loss"][()]
        assert validation.shape == (3,) and np.all(np.isfinite(validation))
        assert training["round_steps"][()].tolist()[:2] == [0.0, 0.0]  # the linear bootstrap rounds
        assert 1 <= training["round_steps"][2] <= TRAINING["steps_per_round"]
        assert int(attrs["inner_sweeps"]) in (1, 2, 4, 8, 16, 32) and int(attrs["inner_block"]) >= 1
        assert attrs["inner_mode"] == "nested" and int(attrs["tune_outer_steps"]) > 0
        assert f["model"].attrs["n_J"] == 5  # auto: every distance shell of 4x4


def test_size_transfer_with_init_fine_tunes_on_the_larger_lattice(tmp_path, trained_4x4):
    config = job(tmp_path, "large", 6, effective={"init": str(trained_4x4)}, sampler={"inner_sweeps": 2})
    run(config)
    with h5py.File(trained_4x4, "r", locking=False) as small, h5py.File(tmp_path / "large" / "run.h5", "r") as f:
        model = f["model"]
        assert (model.attrs["lx"], model.attrs["ly"], model.attrs["n_J"]) == (6, 6, 11)
        assert model["proposal_couplings"].shape == (11,)
        assert model["attention"].shape == small["model"]["attention"].shape
        assert f["training"]["round_samples"].shape == (3,)  # it trained on 6x6
        assert int(f.attrs["inner_sweeps"]) == 2  # an explicit value is kept
        assert f["samples"].attrs["n_measurements"] == 12


@pytest.mark.parametrize(
    "effective, key",
    [({"kind": "linear"}, "effective.kind"), ({"n_layers": 2}, "effective.n_layers"), ({"n_J": 3}, "effective.n_J")],
)
def test_a_loaded_model_must_match_the_job(tmp_path, trained_4x4, effective, key):
    config = job(tmp_path, "loaded", 4, effective={"load": str(trained_4x4), **effective})
    proc = run(config, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"slmc-hpc: error: {key}:" in proc.stderr and str(trained_4x4) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_model_from_another_lattice_can_be_loaded_frozen(tmp_path, trained_4x4):
    run(job(tmp_path, "frozen", 6, effective={"load": str(trained_4x4)}, sampler={"inner_sweeps": 1}))
    with h5py.File(tmp_path / "frozen" / "run.h5", "r", locking=False) as f:
        assert f.attrs["inner_mode"] == "nested"  # its proposal was refitted on 6x6 without a diagonalisation
        assert f["model"]["proposal_couplings"].shape == (11,) and f["training"]["loss"].shape == (0,)
