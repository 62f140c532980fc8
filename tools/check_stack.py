"""Fail `make install` loudly if the stack is not the one the code needs (README: Quick start, Installing on a cluster).

It asserts the MPI h5py that runs on several ranks need; one process also runs with a serial h5py (README: GPU nodes).
"""

import os
import sys

os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")

import h5py  # noqa: E402
import mpi4py  # noqa: E402
import numba  # noqa: E402
import numpy  # noqa: E402
import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402
from slepc4py import SLEPc  # noqa: E402

problems = []
if not h5py.get_config().mpi:
    problems.append("h5py is not the MPI build (python3-h5py-mpi)")
if PETSc.ScalarType is not numpy.complex128:
    problems.append(f"petsc4py has scalar type {PETSc.ScalarType}, expected complex128")
if not numpy.__version__.startswith("1."):
    problems.append(f"numpy {numpy.__version__} replaced Debian's numpy 1.x")
if problems:
    sys.exit("stack check failed: " + "; ".join(problems))
print(
    f"stack ok: numpy {numpy.__version__}, h5py {h5py.__version__} (mpi), mpi4py {mpi4py.__version__}, "
    f"petsc4py {PETSc.Sys.getVersion()} complex, slepc4py {SLEPc.Sys.getVersion()}, torch {torch.__version__}, "
    f"numba {numba.__version__}"
)
