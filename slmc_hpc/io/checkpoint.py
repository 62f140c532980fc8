"""`checkpoint.h5`: everything a run needs to continue bit for bit, written atomically.

One process (rank 0) writes the whole file to `checkpoint.h5.tmp`, fsyncs it, renames it over
`checkpoint.h5` and fsyncs the directory: a kill at any moment leaves either the previous or the
new checkpoint, never a half-written one. Each rank then reads back only its own chains' rows.

Layout: root attrs `format` ("slmc_hpc checkpoint"), `format_version`, `config_yaml`,
`config_sha256`, `mpi_size`, `n_chains`, `time`; `/counters` attrs (phase, steps, output position);
`/chains/<name>` [n_chains, ...] (spins, Ω, eigenvalues, per-chain accumulators) and `/chains/rng`
(each chain's `bit_generator.state` as fixed-length JSON text: PCG64's 128-bit integers survive exactly);
`/blobs/<component>` (the rank-independent part of each component's `state_dict`, e.g. H_eff's
parameters, the optimizer state) and `/ranks/<rank>/<component>` (each rank's own part, e.g. its
training data), both opaque bytes (`slmc_hpc.io.state.pack_tree`).
Every non-scalar dataset carries Fletcher-32 checksums: a damaged byte makes `read_checkpoint` refuse the
file, naming it and the dataset, instead of resuming from wrong spins or RNG states.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from slmc_hpc.errors import InputError
from slmc_hpc.io.integrity import READ_ERRORS, create_dataset, read
from slmc_hpc.io.runfile import plain_value

CHECKPOINT_FORMAT = "slmc_hpc checkpoint"
#: HDF5 1.8's file format, whose metadata (superblock, object headers with the attributes, indexes) carries
#: checksums too. Not used for run.h5: under mpio (h5py 3.7, HDF5 1.10.8) creating root attributes in this
#: format failed in one of two test runs with "MPI_Bcast failed: MPI_ERR_TRUNCATE".
LIBVER = ("v108", "v110")
FORMAT_VERSION = 2  # 2: H_eff parameters and history as component blobs


@dataclass
class Checkpoint:
    """A run's resumable state; `chains` and `rng_states` hold the rows that were written or read."""

    config_yaml: str
    config_sha256: str
    mpi_size: int
    n_chains: int
    counters: dict = field(default_factory=dict)
    chains: dict[str, np.ndarray] = field(default_factory=dict)
    rng_states: list[dict] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    rank_blobs: Iterable[dict[str, bytes]] = field(default_factory=list)  # may be a generator: one rank at a time
    time: float = 0.0


def rng_state_text(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def rng_from_text(text: str) -> np.random.Generator:
    """The generator whose `bit_generator.state` was saved by `rng_state_text`, bit for bit."""
    state = json.loads(text)
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def write_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically (temporary name, fsync, rename, fsync of the directory)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w", locking=False, libver=LIBVER) as f:
        f.attrs.update(
            format=CHECKPOINT_FORMAT,
            format_version=FORMAT_VERSION,
            config_yaml=ckpt.config_yaml,
            config_sha256=ckpt.config_sha256,
            mpi_size=ckpt.mpi_size,
            n_chains=ckpt.n_chains,
            time=ckpt.time or time.time(),
        )
        f.create_group("counters").attrs.update(ckpt.counters)
        chains = f.create_group("chains")
        for name, values in ckpt.chains.items():
            create_dataset(chains, name, data=values)
        # Fixed-length ASCII, so that the checksum covers the text (variable-length strings live outside the chunks).
        create_dataset(chains, "rng", data=np.array([text.encode() for text in ckpt.rng_states], dtype=np.bytes_))
        _write_blobs(f.create_group("blobs"), ckpt.blobs)
        ranks = f.create_group("ranks")
        for rank, blobs in enumerate(ckpt.rank_blobs):
            _write_blobs(ranks.create_group(str(rank)), blobs)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _write_blobs(group: h5py.Group, blobs: dict[str, bytes]) -> None:
    for name, blob in blobs.items():
        create_dataset(group, name, data=np.frombuffer(blob, dtype=np.uint8))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(
    path: str | Path, n_chains: int | None = None, rows: range | None = None, rank: int | None = None
) -> Checkpoint:
    """Read and validate a checkpoint: the chains in `rows` (all if None) and rank `rank`'s blobs.

    Anything that is not a whole checkpoint of this format with `n_chains` chains is an InputError
    naming the file; the file itself is never touched.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            return _read(f, path, n_chains, rows, rank)
    except InputError:
        raise
    except READ_ERRORS as exc:
        raise InputError(f"{path}: unreadable checkpoint (truncated or damaged?): {exc}") from None


def _read(f: h5py.File, path: Path, n_chains: int | None, rows: range | None, rank: int | None) -> Checkpoint:
    attrs = f.attrs
    if attrs.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a slmc_hpc checkpoint (no format={CHECKPOINT_FORMAT!r} attribute)")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format_version {attrs.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    stored_chains = int(attrs["n_chains"])
    if n_chains is not None and stored_chains != n_chains:
        raise InputError(
            f"{path}: checkpoint holds {stored_chains} chains, this run has {n_chains} (sampler.chains_per_rank x the "
            f"number of MPI ranks): resume on as many ranks as wrote it, or set sampler.chains_per_rank so that the "
            f"product is {stored_chains} again"
        )
    select = slice(None) if rows is None else slice(rows.start, rows.stop)
    chains = {name: read(ds, select) for name, ds in f["chains"].items() if name != "rng"}
    rng_states = [plain_value(s) for s in read(f["chains"]["rng"], select)]
    rank_blobs = []
    if rank is not None and str(rank) in f["ranks"]:
        rank_blobs = [_read_blobs(f["ranks"][str(rank)])]
    return Checkpoint(
        config_yaml=str(plain_value(attrs["config_yaml"])),
        config_sha256=str(plain_value(attrs["config_sha256"])),
        mpi_size=int(attrs["mpi_size"]),
        n_chains=stored_chains,
        counters={key: plain_value(value) for key, value in f["counters"].attrs.items()},
        chains=chains,
        rng_states=rng_states,
        blobs=_read_blobs(f["blobs"]),
        rank_blobs=rank_blobs,
        time=float(attrs["time"]),
    )


def _read_blobs(group: h5py.Group) -> dict[str, bytes]:
    return {name: read(ds).tobytes() for name, ds in group.items()}


def checkpoint_summary(path: str | Path) -> dict | None:
    """When the checkpoint was written (unix `time`) and its counters, or None if it cannot be read."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return {"time": float(f.attrs["time"]), **{k: plain_value(v) for k, v in f["counters"].attrs.items()}}
    except (OSError, KeyError):
        return None
