"""`run.h5`, written collectively by all ranks over MPI-IO and readable by anyone while it grows.

Layout (CONTRIBUTING.md, format_version 1): root attrs; `/samples/<obs>` [n_chains, n_measurements, *shape]
for every observable the system declares (`Observable.shape`: () for a number, (ly, lx) for S(q)) and
`/samples/acceptance`; `/timing/<kind>` [mpi_size, n_measurements];
`/training/<name>` [length]; `/model` (written by `slmc_hpc.io.model`). Every metadata operation
(create, resize, attribute) is collective, so every rank calls every method here with the same
arguments. Every dataset carries HDF5's Fletcher-32 checksums (`slmc_hpc.io.integrity`), so parallel HDF5
writes its data collectively: each rank its own rows, in one write that all ranks call. Sample chunks span
exactly one rank's chains, so no two ranks ever write into the same chunk.

`/samples.attrs["n_measurements"]` counts the columns that are complete: it is raised only after
every rank has written its rows, followed by a flush, so a reader that opens the file with
`h5py.File(path, "r", locking=False)` never trusts a half-written column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from slmc_hpc.core.protocols import Observable
from slmc_hpc.errors import InputError
from slmc_hpc.io.integrity import create_dataset, verify_file, write_part
from slmc_hpc.parallel import barrier, broadcast, comm_size, mpi_library_version, on_root

FORMAT_VERSION = 1
#: Recorded for every run, whatever its system: the fraction of accepted proposals per measurement window.
ACCEPTANCE = Observable("acceptance", "acceptance")
TIMING_NAMES = ("inner", "exact", "measure", "io")
TRAINING_NAMES = ("loss", "round_acceptance", "round_samples", "round_loss")
_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class Layout:
    """What run.h5 holds and who writes which rows: `rows` are this rank's global chains, or None (a rank
    that shares its chains' evaluation with a group leader, which writes them)."""

    n_chains: int
    chains_per_writer: int
    observables: tuple[Observable, ...]  # the system's, without `acceptance`
    mpi_size: int
    rank: int
    rows: range | None

    @property
    def samples(self) -> tuple[Observable, ...]:
        return (*self.observables, ACCEPTANCE)


def require_parallel_hdf5(n_ranks: int) -> None:
    """Refuse a job of `n_ranks` > 1 ranks when this h5py is the serial build (they could not share run.h5).

    One process needs no parallel HDF5 (a GPU workstation, a laptop); the CLI calls this before anything
    runs or is written. Every rank imports the same h5py, so every rank raises it together (`collective`).
    """
    if n_ranks > 1 and not h5py.get_config().mpi:
        exc = InputError(
            f"{n_ranks} MPI ranks must write run.h5 together, which needs h5py built with MPI (parallel HDF5), "
            f"but this h5py {h5py.__version__} is the serial build; run on one process, or install the MPI build "
            "(README: Installing on a cluster)"
        )
        exc.collective = True
        raise exc


def open_parallel(path: str | Path, mode: str, comm) -> h5py.File:
    """Open `path` on every rank of `comm`: with HDF5's MPI-IO driver where h5py has it, else (one process
    only, see `require_parallel_hdf5`) with the default serial driver. The file's format is the same."""
    if h5py.get_config().mpi:
        return h5py.File(path, mode, driver="mpio", comm=comm)
    require_parallel_hdf5(comm_size(comm))
    return h5py.File(path, mode)


def _chunk_length(bytes_per_column: int) -> int:
    return int(np.clip(_CHUNK_BYTES // max(bytes_per_column, 1), 1, 4096))


class RunFile:
    """The open run file of one rank (all ranks hold one, opened collectively)."""

    def __init__(self, file: h5py.File, layout: Layout, comm):
        self.file, self.layout, self.comm = file, layout, comm

    @classmethod
    def create(cls, path: str | Path, comm, layout: Layout, attrs: dict) -> RunFile:
        """A new run file (truncating any old one) with empty, growable datasets."""
        f = open_parallel(path, "w", comm)
        attrs = broadcast(comm, attrs)  # identical metadata on every rank (see set_attrs)
        for key, value in {"format_version": FORMAT_VERSION, **attrs}.items():
            f.attrs[key] = value
        samples = f.create_group("samples")
        samples.attrs["n_measurements"] = 0
        rows = layout.chains_per_writer
        for observable in layout.samples:
            shape = tuple(observable.shape)
            create_dataset(
                samples,
                observable.name,
                shape=(layout.n_chains, 0, *shape),
                maxshape=(layout.n_chains, None, *shape),
                chunks=(rows, _chunk_length(8 * rows * int(np.prod(shape, dtype=np.int64))), *shape),
                dtype="f8",
                fillvalue=np.nan,
            )
        timing = f.create_group("timing")
        timing.attrs["unit"] = "s"
        for name in TIMING_NAMES:
            shape = (layout.mpi_size, 0)
            create_dataset(timing, name, shape=shape, maxshape=(None, None), chunks=(1, _chunk_length(8)), dtype="f8")
        f.create_group("training")
        f.flush()
        return cls(f, layout, comm)

    @classmethod
    def reopen(cls, path: str | Path, comm, layout: Layout, position: int) -> RunFile:
        """Continue a run file at `position` measurements (later columns are dropped: they are redone).

        Rank 0 first reads everything that is kept (checksums included): a damaged file is named and the
        run refused on every rank, rather than extended with numbers nobody could trust.
        """
        on_root(comm, verify_file, path, position, ("samples", "timing"))
        try:
            f = open_parallel(path, "r", comm)
        except OSError as exc:
            raise InputError(f"{path}: cannot reopen the run file to resume ({exc})") from None
        problem = cls(f, layout, comm)._foreign(position)
        f.close()
        if problem:
            raise InputError(f"{path}: {problem}; move it away or start a new run directory")
        on_root(comm, truncate, path, position, layout.mpi_size)
        try:
            f = open_parallel(path, "r+", comm)
        except OSError as exc:
            raise InputError(f"{path}: cannot reopen the run file to resume ({exc})") from None
        return cls(f, layout, comm)

    def _foreign(self, position: int) -> str | None:
        f = self.file
        if f.attrs.get("format_version") != FORMAT_VERSION:
            return f"not a run file of format_version {FORMAT_VERSION}"
        names = [observable.name for observable in self.layout.samples]
        if "samples" not in f or any(name not in f["samples"] for name in names):
            return "not a complete run file of this system (no /samples datasets of its observables)"
        chains, columns = f["samples"]["acceptance"].shape
        if chains != self.layout.n_chains:
            return f"it holds {chains} chains, this run has {self.layout.n_chains}"
        if columns < position:
            return f"it holds {columns} measurements, the checkpoint expects {position}"
        return None

    @property
    def position(self) -> int:
        return int(self.file["samples"].attrs["n_measurements"])

    def set_attrs(self, **attrs) -> None:
        """Root attributes, collectively: rank 0's values are written by every rank.

        HDF5 requires identical metadata on all ranks; broadcasting makes values that each rank
        computes itself (clock readings, timings) safe.
        """
        attrs = broadcast(self.comm, attrs)
        for key, value in attrs.items():
            self.file.attrs[key] = value

    def add_seconds(self, key: str, seconds: float) -> None:
        """Accumulate rank 0's wall-clock seconds in the root attr `seconds_<key>` (summed over resumes)."""
        key = f"seconds_{key}"
        self.set_attrs(**{key: float(self.file.attrs.get(key, 0.0)) + float(seconds)})

    def append(self, samples: dict[str, np.ndarray] | None, timing: dict[str, np.ndarray], count: int) -> None:
        """Add `count` measurement columns: this rank's rows of every sample, its row of every timing.

        `samples[name]` is [B, count, *shape]; None for a rank without rows.
        """
        if count == 0:
            return
        start, stop = self.position, self.position + count
        group, lay = self.file["samples"], self.layout
        for observable in lay.samples:
            name = observable.name
            group[name].resize(stop, axis=1)
            rows = None if lay.rows is None else np.s_[lay.rows.start : lay.rows.stop, start:stop]
            write_part(group[name], rows, None if rows is None else samples[name])
        for name in TIMING_NAMES:
            ds = self.file["timing"][name]
            ds.resize(stop, axis=1)
            write_part(ds, np.s_[lay.rank, start:stop], timing[name])
        barrier(self.comm)  # every rank's columns are written before they are declared complete
        group.attrs["n_measurements"] = stop
        self.file.flush()

    def write_training(self, history: dict[str, np.ndarray]) -> None:
        """Replace `/training/<name>` by the (rank-identical) history arrays; rank 0 writes the data."""
        group = self.file["training"]
        for name, values in history.items():
            values = np.asarray(values, dtype=np.float64)
            if name not in group:
                create_dataset(group, name, shape=(0,), maxshape=(None,), chunks=(1024,), dtype="f8")
            group[name].resize(len(values), axis=0)
            write_part(group[name], np.s_[:] if self.layout.rank == 0 else None, values)
        self.file.flush()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate(path: str | Path, position: int, mpi_size: int) -> None:
    """Cut every sample and timing dataset back to `position` measurements (one process, before a resume).

    A run killed while it wrote measurements after its last checkpoint can leave a torn chunk past
    `position`; HDF5 then cannot shrink that dataset in place (it rewrites the chunk it cuts, and the
    chunk fails its checksum). Such a dataset is rebuilt from its kept part, which `verify_file` has read
    whole, with the same chunks, filters and fill value.
    """
    with h5py.File(path, "r+") as f:
        for group, rows in (("samples", None), ("timing", mpi_size)):
            for name in list(f[group]):
                ds = f[group][name]
                shape = (rows if rows is not None else ds.shape[0], position, *ds.shape[2:])
                try:
                    ds.resize(shape)
                except (OSError, RuntimeError):
                    _rebuild(f[group], name, shape)
        f["samples"].attrs["n_measurements"] = position


def _rebuild(group: h5py.Group, name: str, shape: tuple) -> None:
    old = group[name]
    kept = old[: min(shape[0], old.shape[0]), : shape[1]]
    options = {"maxshape": old.maxshape, "chunks": old.chunks, "dtype": old.dtype, "fillvalue": old.fillvalue}
    del group[name]
    new = create_dataset(group, name, shape=shape, **options)
    if kept.size:
        new[: kept.shape[0], : kept.shape[1]] = kept


def read_run_summary(path: str | Path, recent: int = 10) -> dict:
    """Root attrs, measurement count and recent mean acceptance of a (possibly running) run file."""
    with h5py.File(path, "r", locking=False) as f:
        attrs = {key: plain_value(value) for key, value in f.attrs.items()}
        n = int(f["samples"].attrs.get("n_measurements", 0)) if "samples" in f else 0
        acceptance = None
        if n > 0:
            window = f["samples"]["acceptance"][:, max(0, n - recent) : n]
            acceptance = float(np.mean(window))
        training = {name: f["training"][name][()] for name in f.get("training", {})}
    return {"attrs": attrs, "n_measurements": n, "recent_acceptance": acceptance, "training": training}


def plain_value(value):
    """An HDF5 attribute as a plain Python value (bytes -> str, numpy scalar -> int/float/bool)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def package_versions() -> str:
    """Versions of the libraries a result depends on, as JSON (for the root attrs)."""
    from importlib import metadata

    versions = {"hdf5": h5py.version.hdf5_version, "h5py": h5py.__version__}
    for name in ("numpy", "scipy", "mpi4py", "torch", "petsc4py", "slepc4py", "cupy-cuda12x"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    mpi = mpi_library_version()
    if mpi is not None:
        versions["mpi"] = mpi
    return json.dumps(versions, sort_keys=True)
