"""Checksummed HDF5 datasets, collective writes to them, and reads that name what is damaged.

HDF5 stores a Fletcher-32 checksum with every chunk of a dataset created with `fletcher32=True` and checks
it on every read, so a flipped byte in stored data raises `OSError("... data error detected by Fletcher32
checksum")` instead of returning wrong numbers. Filters need chunked datasets; scalars (shape ()) cannot be
chunked and carry no checksum. Under parallel HDF5 (mpio driver; HDF5 >= 1.10.2) a dataset with a filter
may be written only collectively: every rank takes part in every write, a rank without data with an empty
selection (`write_part`). Reads may stay independent.

Metadata (superblock, object headers with the attributes, link and chunk indexes) carries checksums only
in HDF5 1.8's file format (`checkpoint.LIBVER`, used for checkpoint.h5); run.h5 keeps HDF5's default format,
which has none (see checkpoint.LIBVER for why). There a damaged structure is usually found as malformed and
surfaces as one of READ_ERRORS, which the functions here turn into an InputError naming the file and the
part that failed; a damaged attribute header can also crash HDF5 itself (segfault), and a damaged byte in
an attribute's value goes unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from h5py import h5fd, h5p, h5s

from slmc_hpc.errors import InputError

#: What goes wrong when HDF5 reads damaged bytes: checksum mismatches and malformed structures.
READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError, UnicodeDecodeError)


def create_dataset(group: h5py.Group, name: str, data=None, **kwargs) -> h5py.Dataset:
    """`group.create_dataset` with Fletcher-32 checksums wherever the dataset can be chunked.

    Under mpio every rank calls it with the same arguments (metadata is collective); `data`, the same on
    every rank, is then written by one collective write (HDF5 gives each chunk one owner, so identical
    contributions of several ranks write it once).
    """
    if data is not None:
        data = np.asarray(data)
        kwargs.setdefault("shape", data.shape)
        kwargs.setdefault("dtype", data.dtype)
    if kwargs.get("shape", ()) != ():
        kwargs.setdefault("chunks", True)
        kwargs["fletcher32"] = True
    ds = group.create_dataset(name, **kwargs)
    if data is not None and data.size:
        write_part(ds, ..., data)
    return ds


def write_part(ds: h5py.Dataset, key, values) -> None:
    """`ds[key] = values`; under mpio one collective write that every rank of the file must call.

    `key` None (or no values) means this rank writes nothing but still takes part, with an empty
    selection (h5py's own `ds[...] = ...` skips empty selections, which would leave the others waiting).
    """
    empty = key is None or np.size(values) == 0
    if ds.file.driver != "mpio":
        if not empty:
            ds[key] = values
        return
    if not empty:
        with ds.collective:
            ds[key] = values
        return
    dxpl = h5p.create(h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5fd.MPIO_COLLECTIVE)
    file_space = ds.id.get_space()
    file_space.select_none()
    memory_space = h5s.create_simple((1,))
    memory_space.select_none()
    ds.id.write(memory_space, file_space, np.zeros(1, dtype=ds.dtype), dxpl=dxpl)


class DamagedFileError(InputError):
    """Part of a file cannot be read: a checksum mismatch or a malformed structure (or a writer mid-flush)."""


def damaged(path: str | Path, what: str, exc: BaseException) -> DamagedFileError:
    """The error for a file whose `what` (a dataset or attribute path) cannot be read."""
    reason = str(exc).strip() or type(exc).__name__
    return DamagedFileError(f"{path}: {what}: damaged, cannot be read ({reason}); the file cannot be trusted")


def read(ds: h5py.Dataset, key=()) -> np.ndarray:
    """`ds[key]`; a failed read (checksum mismatch, damaged chunk index) is an InputError naming file and dataset."""
    try:
        return ds[key]
    except READ_ERRORS as exc:
        raise damaged(ds.file.filename, ds.name, exc) from None


def read_attrs(obj: h5py.HLObject) -> dict:
    """All attributes of `obj` as a dict; a damaged one is an InputError naming it."""
    out = {}
    try:
        names = list(obj.attrs)
    except READ_ERRORS as exc:
        raise damaged(obj.file.filename, f"the attributes of {obj.name}", exc) from None
    for name in names:
        try:
            out[name] = obj.attrs[name]
        except READ_ERRORS as exc:
            raise damaged(obj.file.filename, f"attribute {obj.name.rstrip('/')}/{name}", exc) from None
    return out


def all_datasets(f: h5py.File) -> list[h5py.Dataset]:
    """Every dataset in `f`, at any depth."""
    found = []
    f.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def verify_dataset(ds: h5py.Dataset, columns: int | None = None) -> None:
    """Read every chunk of `ds` once (checksums are checked on read); InputError naming it if any fails.

    With `columns`, only the first `columns` entries along axis 1 (the measurements of a run file's
    samples and timing): a resume drops the later ones, which a kill during a flush may have left torn.
    """
    try:
        if ds.chunks is None or ds.size == 0:
            ds[()]
            return
        selection = None
        if columns is not None and ds.ndim >= 2:
            kept = min(columns, ds.shape[1])
            if kept == 0:
                return
            selection = tuple(slice(0, kept if axis == 1 else n) for axis, n in enumerate(ds.shape))
        for chunk in ds.iter_chunks(selection):
            ds[chunk]
    except READ_ERRORS as exc:
        raise damaged(ds.file.filename, ds.name, exc) from None


def verify_file(path: str | Path, columns: int | None = None, prefix_groups: tuple[str, ...] = ()) -> None:
    """Read every attribute and every byte of data in `path`: InputError naming the first damaged part.

    For a resume of run.h5 or a check before trusting a file: costs one read of the whole file. Datasets
    directly under one of `prefix_groups` are read only up to `columns` along axis 1 (`verify_dataset`).
    """
    path = Path(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            read_attrs(f)
            groups: list[h5py.Group] = []
            f.visititems(lambda _, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
            for group in groups:
                read_attrs(group)
            for ds in all_datasets(f):
                read_attrs(ds)
                in_prefix = ds.parent.name.strip("/") in prefix_groups
                verify_dataset(ds, columns if in_prefix else None)
    except InputError:
        raise
    except READ_ERRORS as exc:
        raise damaged(path, "the file structure", exc) from None
