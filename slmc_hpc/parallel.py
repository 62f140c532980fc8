"""Everything that touches MPI: communicators, chain distribution, RNG streams, reductions.

A chain's random numbers come from its own stream, derived from (seed, global chain index), so
its history does not depend on how many ranks run it (DESIGN §4).
"""

from __future__ import annotations

import numpy as np


def chain_rng(seed: int, chain: int) -> np.random.Generator:
    """The random stream of global chain `chain`: PCG64 seeded by SeedSequence(seed, spawn_key=(chain,))."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(chain,))))


def chain_rngs(seed: int, chains: range | list[int]) -> list[np.random.Generator]:
    return [chain_rng(seed, c) for c in chains]


def local_chains(chains_per_rank: int, rank: int) -> range:
    """Global indices of the chains that rank `rank` runs (contiguous blocks)."""
    return range(rank * chains_per_rank, (rank + 1) * chains_per_rank)


def world():
    """MPI.COMM_WORLD (imported lazily so that the physics modules never need MPI)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def allreduce_sum(comm, array: np.ndarray) -> np.ndarray:
    """Element-wise sum over the ranks of `comm` (a copy on every rank; identity without MPI)."""
    array = np.ascontiguousarray(array)
    if comm is None or comm.Get_size() == 1:
        return array.copy()
    from mpi4py import MPI

    out = np.empty_like(array)
    comm.Allreduce(array, out, op=MPI.SUM)
    return out


def broadcast(comm, obj, root: int = 0):
    """Rank `root`'s object on every rank (identity without MPI)."""
    if comm is None or comm.Get_size() == 1:
        return obj
    return comm.bcast(obj, root=root)


def barrier(comm) -> None:
    """Wait until every rank of `comm` has arrived (no-op without MPI)."""
    if comm is not None and comm.Get_size() > 1:
        comm.Barrier()


def broadcast_array(comm, array: np.ndarray, root: int = 0) -> np.ndarray:
    """Rank `root`'s array, bit for bit, on every rank (in place, returned for convenience)."""
    if comm is not None and comm.Get_size() > 1:
        comm.Bcast(array, root=root)
    return array


def launcher_env(threads: int = 1, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for starting `mpirun` from Python (tests, benchmarks, scaling studies).

    `threads` BLAS/OpenMP threads per rank (more threads than cores per rank make small eigensolvers
    several times slower, and bit-for-bit results assume a fixed count); the MPI build of h5py; and,
    as root on a small machine, the flags OpenMPI needs to run at all (harmless elsewhere).
    """
    import os

    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    env["H5PY_ALWAYS_USE_MPI"] = "1"
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return env
