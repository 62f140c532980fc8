"""slmc_hpc: self-learning Monte Carlo for spin-fermion lattice models on clusters."""

from setuptools import find_packages, setup

setup(
    name="slmc_hpc",
    version="0.1.0",
    description="Self-learning Monte Carlo (SLMC) for the double-exchange model, with MPI",
    packages=find_packages(include=["slmc_hpc", "slmc_hpc.*"]),
    python_requires=">=3.10",
    # numpy, mpi4py, h5py (MPI build), petsc4py/slepc4py (complex) come from the system or the
    # cluster's modules; they are deliberately not listed so that pip never replaces them.
    install_requires=["ruamel.yaml>=0.18", "scipy", "matplotlib", "tqdm", "torch", "numba"],
    # CuPy for `evaluator.kind: cupy`: the wheel for the node's CUDA major version (README, "GPU nodes").
    # CuPy 14 needs numpy 2: next to numpy 1.x, constrain it below 14 (`make install-gpu` does).
    extras_require={
        "gpu": ["cupy-cuda12x"],
        "gpu-cuda11": ["cupy-cuda11x"],
        "gpu-cuda12": ["cupy-cuda12x"],
        "gpu-cuda13": ["cupy-cuda13x"],
    },
    entry_points={"console_scripts": ["slmc-hpc = slmc_hpc.cli:main"]},
)
