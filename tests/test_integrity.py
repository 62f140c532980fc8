"""Damaged files are named, never analysed or resumed from: HDF5 Fletcher-32 checksums on real run files.

One tiny real run (mpirun -n 2, 4x4 exact MC, parallel HDF5 with collective filtered writes) is made once;
each test damages a copy of it by flipping bytes inside the stored data, found with h5py's chunk index.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from slmc_hpc.cli import main
from slmc_hpc.errors import InputError
from slmc_hpc.io.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from slmc_hpc.io.integrity import all_datasets, verify_file
from tests.conftest import mpirun


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    config = {
        "model": {"lx": 4, "ly": 4, "J": 2.0, "T": 0.1},
        "sampler": {"kind": "exact", "chains_per_rank": 2, "thermalization": 2, "measurements": 12},
        "output": {"dir": str(root / "run"), "checkpoint_every": 60},
        "seed": 5,
    }
    (root / "job.yaml").write_text(json.dumps(config))
    mpirun(2, ["-m", "slmc_hpc", "run", str(root / "job.yaml")])
    return root / "run"


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    (target / "results.json").unlink(missing_ok=True)  # the run's own final analysis
    config = json.loads((run.parent / "job.yaml").read_text())
    config["output"]["dir"] = str(target)
    (target.parent / f"{target.name}.yaml").write_text(json.dumps(config))
    return target


def flip_byte_in_chunk(path: Path, dataset: str, chunk: int = 0, position: int = 20) -> None:
    """Invert one byte `position` bytes into the stored (filtered) chunk `chunk` of `dataset`."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
        assert f[dataset].fletcher32 and position < info.size - 4  # the last 4 bytes are the checksum
        offset = info.byte_offset + position
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_file_datasets_carry_checksums_written_collectively(finished_run):
    """Every dataset of run.h5 and checkpoint.h5 that can be chunked has Fletcher-32; the data are whole."""
    # run.h5: samples, timing, training; checkpoint.h5: the chains' arrays, their RNG states and the history blob
    for name, at_least in (("run.h5", 9), ("checkpoint.h5", 6)):
        with h5py.File(finished_run / name, "r") as f:
            datasets = all_datasets(f)
            assert len(datasets) >= at_least, (name, [ds.name for ds in datasets])
            assert all(ds.fletcher32 for ds in datasets if ds.shape != ()), name
    with h5py.File(finished_run / "run.h5", "r") as f:
        omega = f["samples/omega"][()]
        assert omega.shape == (4, 12) and np.isfinite(omega).all()  # both ranks' rows were written
    verify_file(finished_run / "run.h5")
    verify_file(finished_run / "checkpoint.h5")


def test_analyze_names_a_flipped_sample_byte_and_writes_nothing(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    flip_byte_in_chunk(run / "run.h5", "samples/omega")
    before = digest(run / "run.h5")
    assert main(["analyze", str(run), "--csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"slmc-hpc: error: {run / 'run.h5'}: /samples/omega: damaged")
    assert "Fletcher32 checksum" in err[0]
    assert digest(run / "run.h5") == before  # no /results written into it
    assert not any((run / name).exists() for name in ("results.json", "results.csv", "structure_factor.csv"))
    with pytest.raises(InputError, match="/samples/omega: damaged"):
        verify_file(run / "run.h5")  # what a resume can call before trusting run.h5


def test_plot_names_a_flipped_structure_factor_byte(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    flip_byte_in_chunk(run / "run.h5", "samples/sq", position=100)
    assert main(["plot", str(run / "run.h5")]) == 2
    assert "/samples/sq: damaged" in capsys.readouterr().err
    assert not (run / "plots").exists()


def test_resume_refuses_a_checkpoint_with_a_flipped_spin_byte(finished_run, tmp_path):
    """Extending the finished run resumes from checkpoint.h5: a damaged spin byte stops it with exit 2."""
    run = copy_run(finished_run, tmp_path / "run")
    flip_byte_in_chunk(run / "checkpoint.h5", "chains/spins", position=40)
    before = {name: digest(run / name) for name in ("run.h5", "checkpoint.h5")}
    proc = mpirun(
        2, ["-m", "slmc_hpc", "run", str(tmp_path / "run.yaml"), "--set", "sampler.measurements=20"], check=False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{run / 'checkpoint.h5'}" in proc.stderr and "/chains/spins: damaged" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {name: digest(run / name) for name in before} == before  # nothing was touched


def test_resume_refuses_a_run_file_with_a_flipped_sample_byte(finished_run, tmp_path):
    """Extending the run reads back run.h5's kept measurements first: a flipped omega byte stops it with exit 2."""
    run = copy_run(finished_run, tmp_path / "run")
    flip_byte_in_chunk(run / "run.h5", "samples/omega")
    before = {name: digest(run / name) for name in ("run.h5", "checkpoint.h5")}
    proc = mpirun(
        2, ["-m", "slmc_hpc", "run", str(tmp_path / "run.yaml"), "--set", "sampler.measurements=20"], check=False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{run / 'run.h5'}: /samples/omega: damaged" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {name: digest(run / name) for name in before} == before  # nothing was touched


def test_checkpoint_round_trip_and_damaged_rng_text(tmp_path):
    """The RNG states are fixed-length text inside checksummed chunks, so a flip there is caught too."""
    rng = np.random.default_rng(0)
    states = [json.dumps({"chain": c, "state": int(rng.integers(1 << 62))}) for c in range(3)]
    ckpt = Checkpoint("a: 1\n", "0" * 64, 1, 3, counters={"phase": "production"}, rng_states=states, time=1.0)
    ckpt.chains = {"spins": rng.standard_normal((3, 4, 3))}
    ckpt.blobs = {"empty": b"", "optimizer": b"\x00\x01\x02"}
    path = tmp_path / "checkpoint.h5"
    write_checkpoint(path, ckpt)
    back = read_checkpoint(path, n_chains=3, rows=range(1, 3))
    assert back.rng_states == states[1:] and np.array_equal(back.chains["spins"], ckpt.chains["spins"][1:])
    assert back.blobs == ckpt.blobs
    flip_byte_in_chunk(path, "chains/rng", position=30)
    with pytest.raises(InputError, match=rf"^{path}: /chains/rng: damaged, .*Fletcher32 checksum"):
        read_checkpoint(path, n_chains=3)
