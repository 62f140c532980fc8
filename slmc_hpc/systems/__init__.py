"""Physical systems, one package each; `model.kind` names the package and its `SYSTEM` object.

A new system is a new package here with a `SYSTEM` (see `slmc_hpc.core.protocols.System`) and one line
in `PACKAGES`; no framework file changes. The first kind is the default of every job file, so jobs and
run files written before there were systems keep their meaning.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

#: model.kind -> the package that holds its SYSTEM.
PACKAGES = {
    "double_exchange": "slmc_hpc.systems.double_exchange",
    "su2_staggered": "slmc_hpc.systems.su2_staggered",
}
KINDS = tuple(PACKAGES)
DEFAULT_KIND = KINDS[0]


@cache
def get_system(kind: str):
    """The SYSTEM object of `model.kind` (imported on first use: a job imports only its own system)."""
    if kind not in PACKAGES:
        raise ValueError(f"unknown system {kind!r}; expected one of {KINDS}")
    return import_module(PACKAGES[kind]).SYSTEM
