"""Everything that touches MPI: communicators, chain distribution, RNG streams, reductions.

A chain's random numbers come from its own stream, derived from (seed, global chain index), so
its history does not depend on how many ranks run it (docs/design.md §4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from slmc_hpc.errors import InputError


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


def allgather(comm, obj) -> list:
    """Every rank's object, in rank order, on every rank ([obj] without MPI)."""
    if comm is None or comm.Get_size() == 1:
        return [obj]
    return comm.allgather(obj)


def broadcast_array(comm, array: np.ndarray, root: int = 0) -> np.ndarray:
    """Rank `root`'s array, bit for bit, on every rank (in place, returned for convenience)."""
    if comm is not None and comm.Get_size() > 1:
        comm.Bcast(array, root=root)
    return array


def split(comm, color: int):
    """The ranks of `comm` with the same `color`, as a communicator of their own (rank order kept)."""
    return comm.Split(int(color), comm.Get_rank())


def barrier(comm) -> None:
    """Wait for every rank of `comm` (nothing without MPI)."""
    if comm is not None and comm.Get_size() > 1:
        comm.Barrier()


def gather_to_root(comm, obj, root: int = 0) -> list | None:
    """Every rank's object, in rank order, on `root` (None elsewhere)."""
    if comm is None or comm.Get_size() == 1:
        return [obj]
    return comm.gather(obj, root=root)


STREAM_TAG = 7  # point-to-point messages of `stream_to_root`


def stream_to_root(comm, make: Callable[[], Any]) -> Iterator[Any] | None:
    """Each rank's `make()` delivered to rank 0 one rank at a time (a generator on rank 0, None elsewhere).

    For large per-rank data (training sets in checkpoints): rank 0 holds one rank's part at a time. Every
    rank must call it; rank 0 must exhaust the generator.
    """
    if comm is None or comm.Get_size() == 1:
        return iter([make()])
    if comm.Get_rank() != 0:
        comm.send(make(), dest=0, tag=STREAM_TAG)
        return None

    def receive() -> Iterator[Any]:
        yield make()
        for rank in range(1, comm.Get_size()):
            yield comm.recv(source=rank, tag=STREAM_TAG)

    return receive()


def on_root(comm, function: Callable[..., Any], *args) -> Any:
    """Run `function` on rank 0 only and give its result to every rank.

    An InputError raised there is raised on every rank, marked `collective` (all ranks leave together,
    so the CLI exits with status 2 instead of aborting the job).
    """
    rank = comm.Get_rank() if comm is not None else 0
    result, error = None, None
    if rank == 0:
        try:
            result = function(*args)
        except InputError as exc:
            error = str(exc)
    result, error = broadcast(comm, (result, error))
    if error is not None:
        exc = InputError(error)
        exc.collective = True
        raise exc
    return result


def on_every_rank(comm, function: Callable[[], Any]) -> Any:
    """Run `function` on every rank; if it raised InputError anywhere, raise it on all ranks (collectively).

    For checks every rank makes on its own (reading `effective.load`): a rank that fails alone must
    not leave the others waiting in the next collective.
    """
    result, error = None, None
    try:
        result = function()
    except InputError as exc:
        error = str(exc)
    errors = [e for e in allgather(comm, error) if e is not None]
    if errors:
        exc = InputError(errors[0])
        exc.collective = True
        raise exc
    return result


def comm_size(comm) -> int:
    """Ranks in `comm` (1 without MPI)."""
    return 1 if comm is None else comm.Get_size()


def mpi_library_version() -> str | None:
    """The MPI library's own version line (for provenance), or None where mpi4py is not usable."""
    try:
        from mpi4py import MPI

        return MPI.Get_library_version().strip("\x00 \n").splitlines()[0]
    except Exception:  # noqa: BLE001 - provenance only: an unusable MPI must not stop a run file being written
        return None


def ranks_on_this_node(comm) -> int:
    """How many ranks of `comm` share this node's memory (MPI_COMM_TYPE_SHARED); 1 without MPI."""
    if comm is None or comm.Get_size() == 1:
        return 1
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


@dataclass
class Topology:
    """The world, its diagonalisation groups and this rank's chains.

    With `ranks_per_config = k` (a distributed evaluator) the world is split into groups of k consecutive ranks
    that share
    one diagonalisation and hold identical chains; only a group's leader writes its rows.
    """

    comm: Any
    group_comm: Any
    rank: int
    size: int
    group: int
    n_groups: int
    leader: bool
    chains: range
    n_chains: int

    @classmethod
    def build(
        cls, comm, chains_per_rank: int, ranks_per_config: int = 1, split: bool = False, key: str = ""
    ) -> Topology:
        """`split`: give every group its own communicator (a distributed solver's default would be the whole
        world); `key` names the configuration key that set `ranks_per_config`, for the message."""
        rank, size = comm.Get_rank(), comm.Get_size()
        if size % ranks_per_config:
            raise InputError(
                f"{key or 'ranks per configuration'} = {ranks_per_config} does not divide the {size} MPI ranks "
                "of this job"
            )
        group, n_groups = rank // ranks_per_config, size // ranks_per_config
        group_comm = comm.Split(group, rank) if split else None
        leader = group_comm is None or group_comm.Get_rank() == 0
        chains = local_chains(chains_per_rank, group)
        return cls(comm, group_comm, rank, size, group, n_groups, leader, chains, n_groups * chains_per_rank)


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
