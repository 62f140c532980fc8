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
    """Environment for mpirun as root on a small machine, one BLAS thread per rank. Ranks waiting in MPI yield
    the core (two test workers run two jobs at once, and OpenMPI would otherwise spin in every wait)."""
    return {**launcher_env(threads), "PYTHONUNBUFFERED": "1", "OMPI_MCA_mpi_yield_when_idle": "1"}


def mpirun(n: int, args: list[str], timeout: float = 300, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m mpi4py ARGS` on n ranks (mpi4py's runner aborts all ranks on an exception)."""
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", *args]
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


#: Files collected first, longest first (after the first user of the shared session data): those whose tests
#: wait on wall-clock timers (PBS's walltime, signals at phases), then the longest by CPU, so that `make test`'s
#: two workers (`-n 2 --dist loadfile`) fill those waits with other files and do not end on one long file alone.
LONG_FIRST = (
    "test_size_transfer.py",  # computes `exact_local_mc` early; test_spin_hmc.py reads it later, not alongside
    "test_jobs.py",
    "test_restart.py",
    "test_su2_run.py",
    "test_su2_slhmc.py",
    "test_su2_slhmc_exactness.py",
    "test_su2_hmc.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: the rest keep their order


@pytest.fixture
def run_mpi():
    return mpirun


@pytest.fixture(scope="session")
def exact_local_mc(tmp_path_factory, worker_id):
    """The exact local MC of 4x4 and 6x6 at t = 1, J = 1, μ = 0, T = 0.1 (τ_int(ms) a few sweeps there), for the
    exactness tests of every other sampler: per size, the per-chain means of omega, m, ms, nn and the visited
    (spins, Ω) of every sweep (data to fit effective models on). Computed once per `make test`: the two xdist
    workers share it through a file under their common temporary directory, the first one computes it (pytest-xdist's
    recipe for session data)."""
    import pickle
    from types import SimpleNamespace

    from filelock import FileLock

    from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
    from slmc_hpc.systems.double_exchange.physics import DoubleExchange
    from slmc_hpc.systems.double_exchange.samplers import ExactLocalSweep, init_chains
    from tests.test_slmc_exactness import sample

    runs = {4: (24, 150), 6: (12, 90)}  # size: chains, sweeps
    models = {size: DoubleExchange(lx=size, ly=size, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.1) for size in runs}
    actions = {size: SpinAction(make_evaluator("dense", model)) for size, model in models.items()}

    def compute() -> dict:
        out = {}
        for size, (chains, sweeps) in runs.items():
            state = init_chains(actions[size], seed=500 + size, chains=range(chains))
            means, configs, _ = sample(ExactLocalSweep(actions[size]).step, actions[size], state, sweeps, 30)
            out[size] = (means, configs)
        return out

    if worker_id == "master":  # no xdist: nothing to share (and basetemp's parent outlives the session)
        data = compute()
    else:
        shared = tmp_path_factory.getbasetemp().parent / "exact_local_mc.pickle"  # this session's workers' parent
        with FileLock(f"{shared}.lock"):
            if shared.is_file():
                data = pickle.loads(shared.read_bytes())
            else:
                data = compute()
                shared.write_bytes(pickle.dumps(data))
    return {
        size: SimpleNamespace(model=models[size], action=actions[size], means=means, configs=configs)
        for size, (means, configs) in data.items()
    }
