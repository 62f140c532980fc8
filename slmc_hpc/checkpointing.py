"""Checkpoints built from the run's components, each through its own `state_dict()`/`load_state_dict()`.

A component (H_eff's parameters, the training history, the self-learning loop, ...) is registered
under a name, with the top-level keys of its state that differ per rank (`local`, e.g. each rank's
training data). The rest of its state is the same on every rank, and rank 0's copy is stored once.
Chains are rows: every group leader's chains are gathered into `/chains` in global chain order, so a
run outside training can resume on another number of ranks. A new component is one `register` call;
the checkpoint format does not change. MPI goes through `slmc_hpc.parallel`, files through `slmc_hpc.io`.

A component registered after the checkpoint was read (components that exist only in some phases) is
restored at once, so the order of registration is the order of restoration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from slmc_hpc import parallel
from slmc_hpc.errors import InputError
from slmc_hpc.io.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from slmc_hpc.io.state import pack_tree, split_state, unpack_tree
from slmc_hpc.recorder import write_error_reason


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Component:
    obj: Stateful
    local: tuple[str, ...] = ()


class ParameterState:
    """An effective model as a component: its `parameters()` are its state."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict:
        return dict(self.model.parameters())

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.model.set_parameters({name: np.asarray(value) for name, value in state.items()})


class Checkpointer:
    """Writes and reads `checkpoint.h5` for one rank (every rank calls every method, collectively)."""

    def __init__(self, path: Path, topo: parallel.Topology, config_yaml: str, config_sha256: str):
        self.path, self.topo = Path(path), topo
        self.config_yaml, self.config_sha256 = config_yaml, config_sha256
        self.components: dict[str, Component] = {}
        self.loaded: Checkpoint | None = None

    # -- components -------------------------------------------------------------------------------
    def register(self, name: str, obj: Stateful, local: tuple[str, ...] = ()) -> None:
        """Add a component (restored at once if a checkpoint was read and holds it)."""
        self.components[name] = Component(obj, tuple(local))
        if self.loaded is not None:
            self._restore(name)

    def unregister(self, name: str) -> None:
        self.components.pop(name, None)

    def _restore(self, name: str) -> None:
        ckpt, component = self.loaded, self.components[name]
        state = {}
        if name in ckpt.blobs:
            state.update(unpack_tree(ckpt.blobs[name]))
        own = ckpt.rank_blobs[0] if ckpt.rank_blobs else {}
        if name in own:
            state.update(unpack_tree(own[name]))
        if state:
            component.obj.load_state_dict(state)

    # -- read ---------------------------------------------------------------------------------------
    def read(self) -> Checkpoint:
        """This rank's rows and own state (components registered later are restored from it)."""
        topo = self.topo
        self.loaded = read_checkpoint(self.path, topo.n_chains, rows=topo.chains, rank=topo.rank)
        return self.loaded

    # -- write --------------------------------------------------------------------------------------
    def save(self, counters: dict, rows: dict[str, np.ndarray] | None, rng_states: list[str] | None) -> None:
        """Gather the leaders' rows and every rank's own state on rank 0, which writes the file atomically.

        A write that fails (disk full, quota, I/O error) removes the temporary file, leaves the previous
        checkpoint whole, and raises one InputError on every rank together.
        """
        topo = self.topo
        states = {name: component.obj.state_dict() for name, component in self.components.items()}
        gathered = parallel.gather_to_root(topo.comm, (rows, rng_states) if topo.leader else None)
        own = parallel.stream_to_root(topo.comm, lambda: self._blobs(states, own=True))
        error = None
        if topo.rank == 0:
            parts = [part for part in gathered if part is not None]
            ckpt = Checkpoint(
                config_yaml=self.config_yaml,
                config_sha256=self.config_sha256,
                mpi_size=topo.size,
                n_chains=topo.n_chains,
                counters=counters,
                chains={name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]},
                rng_states=[text for p in parts for text in p[1]],
                blobs=self._blobs(states, own=False),
                rank_blobs=own,
                time=time.time(),
            )
            try:
                write_checkpoint(self.path, ckpt)
            except (OSError, RuntimeError) as exc:
                for _ in own:  # every rank's message must be received, or a rank waits for ever
                    pass
                self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
                error = (
                    f"{self.path}: cannot write the checkpoint ({write_error_reason(exc)}); disk full? The previous "
                    "checkpoint is whole: free some space and run the same command to resume"
                )
        error = parallel.broadcast(topo.comm, error)
        if error is not None:
            exc = InputError(error)
            exc.collective = True
            raise exc

    def _blobs(self, states: dict[str, dict], own: bool) -> dict[str, bytes]:
        """Packed states: the shared parts (own=False) or this rank's own parts (own=True)."""
        blobs = {}
        for name, state in states.items():
            local = self.components[name].local
            if own and not local:
                continue
            shared, mine = split_state(state, local)
            blobs[name] = pack_tree(mine if own else shared)
        return blobs
