"""A component's `state_dict()` (nested dicts of arrays and numbers) as bytes, and back, for checkpoints.

Any key may hold any characters ("param/layers.0.w" from torch included): leaves are stored as
`a0, a1, ...` in an npz archive (no pickle) next to a JSON index of their key paths, so nesting
needs no separator that a key could contain. Leaves come back as numpy arrays (0-d for numbers);
`int(state["round"])`-style readers need nothing else. Empty dicts survive as empty dicts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

INDEX = "index"


def _leaves(tree: Mapping, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        here = (*path, str(key))
        if isinstance(value, Mapping):
            if not value:
                yield here, None  # an empty dict
            yield from _leaves(value, here)
        else:
            yield here, value


def pack_tree(tree: Mapping) -> bytes:
    """A nested dict of arrays/numbers/lists as npz bytes (no pickle)."""
    paths, arrays = [], {}
    for path, value in _leaves(tree):
        if value is None:
            paths.append({"path": list(path), "empty": True})
            continue
        arrays[f"a{len(arrays)}"] = np.asarray(value)
        paths.append({"path": list(path)})
    buffer = io.BytesIO()
    np.savez(buffer, **{INDEX: np.array(json.dumps(paths))}, **arrays)
    return buffer.getvalue()


def unpack_tree(blob: bytes) -> dict:
    """The nested dict that `pack_tree` stored (leaves as numpy arrays)."""
    out: dict = {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        count = 0
        for entry in json.loads(str(archive[INDEX])):
            *parents, last = entry["path"]
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            if entry.get("empty"):
                node.setdefault(last, {})
            else:
                node[last] = archive[f"a{count}"]
                count += 1
    return out


def split_state(state: Mapping, local: tuple[str, ...]) -> tuple[dict, dict]:
    """(shared part, this rank's own part) of a state dict whose top-level keys `local` differ per rank."""
    shared = {key: value for key, value in state.items() if key not in local}
    own = {key: value for key, value in state.items() if key in local}
    return shared, own
