"""slmc_hpc: self-learning Monte Carlo (SLMC) for spin-fermion lattice models, with MPI.

Data flow: lattice -> physics (model) -> evaluators (exact weight) -> effective (H_eff) ->
samplers -> driver -> io (HDF5).
"""

import os

# Debian ships a serial and an MPI h5py; this makes `import h5py` pick the MPI build.
os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")

__version__ = "0.1.0"
