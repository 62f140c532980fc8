"""One process needs no parallel HDF5 (a GPU workstation, a laptop, a GPU node with a serial h5py).

Debian ships both h5py builds; `SERIAL_H5PY` imports the serial one before slmc_hpc (whose import would
otherwise make Debian pick the MPI build), as on a machine that has only a serial h5py, and then runs
`python -m slmc_hpc` exactly. A one-process SLMC run made that way, stopped by SIGTERM in production and
resumed, writes a run.h5 with the same layout as the MPI-IO file and `/samples`, `/model`, `/training` and
results bitwise equal to the same job on 1 rank with the MPI build; status, analyze and plot read it. Two ranks
with the serial h5py are refused before anything runs: exit 2, one message, no file or directory.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from tests.conftest import mpi_env, mpirun
from tests.test_restart import OFTEN, assert_same_samples, checkpoint_counters, wait_for_phase
from tests.test_run import SLMC, _merge, run_cli, write_config

# `python -m slmc_hpc ARGS` with Debian's serial h5py: the variables that make Debian's h5py load its MPI
# build are hidden while it is imported (and put back, so that MPI itself still sees its launcher).
SERIAL_H5PY = """
import os, runpy, sys
hidden = {k: os.environ.pop(k) for k in ("H5PY_ALWAYS_USE_MPI", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
          if k in os.environ}
import h5py
os.environ.update(hidden)
if h5py.get_config().mpi:
    sys.exit("expected the serial h5py")
runpy.run_module("slmc_hpc", run_name="__main__", alter_sys=True)
"""

JOB = _merge(SLMC, {"sampler": {"measurements": 3000}})


def serial_command(*args: str) -> list[str]:
    return [sys.executable, "-c", SERIAL_H5PY, *map(str, args)]


def serial_cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(serial_command(*args), env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def layout(path: Path) -> dict[str, tuple]:
    """Every group and dataset of an HDF5 file: attribute names; shape, maxshape, chunks, dtype."""
    items = {}
    with h5py.File(path, "r", locking=False) as f:

        def visit(name, obj):
            shape = (obj.shape, obj.maxshape, obj.chunks, obj.dtype.str) if isinstance(obj, h5py.Dataset) else ()
            items[name] = (tuple(sorted(obj.attrs)), *shape)

        visit("/", f)
        f.visititems(visit)
    return items


def datasets(path: Path, group: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        out = {}
        f[group].visititems(lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_one_process_with_serial_h5py_resumes_and_matches_the_mpi_build(tmp_path):
    reference = tmp_path / "mpi"
    run_cli(1, write_config(tmp_path, "mpi", **JOB))  # mpirun -n 1 with the MPI build: the mpio driver

    config = write_config(tmp_path, "serial", **_merge(JOB, OFTEN))
    run_dir, log = tmp_path / "serial", tmp_path / "log.txt"
    with open(log, "w") as stream:
        proc = subprocess.Popen(serial_command("run", config), env=mpi_env(), stdout=stream, stderr=stream)
    wait_for_phase(proc, run_dir, "production", log, measurements=10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert "stopped by signal" in log.read_text()
    stopped_at = checkpoint_counters(run_dir)["measurements"]
    assert checkpoint_counters(run_dir)["phase"] == "production" and 10 <= stopped_at < 3000
    resumed = serial_cli("run", config)
    assert "resuming" in resumed.stderr and "(1 ranks, 2 chains)" in resumed.stderr

    # The same file, whichever driver wrote it: the layout, and bit for bit the data.
    got, expected = layout(run_dir / "run.h5"), layout(reference / "run.h5")
    assert "resumed" in got["/"][0] and "resumed" not in expected["/"][0]
    got["/"] = (tuple(name for name in got["/"][0] if name != "resumed"),)
    assert got == expected
    assert_same_samples(run_dir, reference)
    for group in ("model", "training"):
        a, b = datasets(run_dir / "run.h5", group), datasets(reference / "run.h5", group)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[name], b[name]) for name in b), group
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "finished" and f.attrs["mpi_size"] == 1
        assert f["samples"].attrs["n_measurements"] == 3000

    # The finished run's results (written by the run itself) equal the MPI build's; analyze, status, plot read it.
    results = json.loads((run_dir / "results.json").read_text())
    assert results == json.loads((reference / "results.json").read_text())
    (run_dir / "results.json").unlink()
    serial_cli("analyze", run_dir)
    assert json.loads((run_dir / "results.json").read_text()) == results
    status = serial_cli("status", run_dir).stdout
    assert "finished" in status and "3000 / 3000" in status
    serial_cli("plot", run_dir)
    plots = {path.name for path in (run_dir / "plots").iterdir()}
    expected = {"autocorrelation.png", "structure_factor.png", "correlation.png", "time_series.png", "training.png"}
    assert plots == expected


def test_two_ranks_with_serial_h5py_are_refused_before_anything_runs(tmp_path):
    config = write_config(tmp_path, "refused", **JOB)
    proc = mpirun(2, ["-c", SERIAL_H5PY, "run", str(config)], check=False, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("slmc-hpc: error:") == 1, proc.stderr
    assert "2 MPI ranks must write run.h5 together" in proc.stderr and "serial build" in proc.stderr
    assert "MPI_ABORT" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["refused.yaml"]
