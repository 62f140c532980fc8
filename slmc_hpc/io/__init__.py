"""Everything that touches files: the parallel run file, atomic checkpoints, effective-model groups.

`runfile` writes `run.h5` collectively (HDF5 over MPI-IO, each rank its own chains' rows);
`checkpoint` writes `checkpoint.h5` from rank 0 through a temporary name, fsync and rename, so a
kill at any moment leaves the previous checkpoint whole; `model` stores H_eff's parameters.
Readers open files with `h5py.File(path, "r", locking=False)`, so they work while a run writes.
"""
