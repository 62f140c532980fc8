"""Shared test helpers: real `mpirun` runs of the real code (never a mock of MPI/HDF5/SLEPc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmc_hpc.parallel import launcher_env

REPO = Path(__file__).resolve().parents[1]
# Independently computed values: ../shared/reference next to the checkout, else the copy in tests/reference
# (a plain clone, as CI makes, has no shared/ beside it).
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
REFERENCE = SHARED_REFERENCE if SHARED_REFERENCE.is_dir() else REPO / "tests" / "reference"
#: What a double-exchange run records per measurement and chain as numbers (S(q) comes as a field).
SPIN_SAMPLES = ("omega", "m", "ms", "nn", "density", "electron_energy", "acceptance")


def mpi_env(threads: int = 1) -> dict[str, str]:
    """Environment for mpirun as root on a small machine, one BLAS thread per rank."""
    return {**launcher_env(threads), "PYTHONUNBUFFERED": "1"}


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
