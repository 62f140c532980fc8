"""Shared test helpers: real `mpirun` runs of the real code (never a mock of MPI/HDF5/SLEPc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def mpi_env(threads: int = 1) -> dict[str, str]:
    """Environment for mpirun as root on a small machine, one BLAS thread per rank."""
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        H5PY_ALWAYS_USE_MPI="1",
        OMP_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    return env


def mpirun(n: int, args: list[str], timeout: float = 300, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m mpi4py ARGS` on n ranks (mpi4py's runner aborts all ranks on an exception)."""
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", *args]
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def run_mpi():
    return mpirun
