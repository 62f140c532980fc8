"""slmc_hpc: self-learning Monte Carlo for lattice models with fermions, with MPI.

Systems are packages (`slmc_hpc.systems`); the framework (driver, run files, analysis, ...) serves any.
For notebooks: `slmc_hpc.load(paths...)` gives the merged results of runs and scans as a pandas DataFrame,
`slmc_hpc.load_samples(run)` a run's samples (`slmc_hpc.results`).
"""

import os

# Debian ships a serial and an MPI h5py; this makes `import h5py` pick the MPI build.
os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")

__version__ = "0.2.0"
__all__ = ["load", "load_samples", "__version__"]


def __getattr__(name: str):
    """`load` and `load_samples` without importing h5py and pandas until they are used."""
    if name in ("load", "load_samples"):
        from slmc_hpc import results

        return getattr(results, name)
    raise AttributeError(f"module 'slmc_hpc' has no attribute {name!r}")
