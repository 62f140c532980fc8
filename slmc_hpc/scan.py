"""Parameter scans as one job: lists of values in a job file expand into points, each point a run of its own.

A key whose value is a list where the key takes a single value (`model.T: [0.02, 0.04]`; for keys that take a
list, `model.shape: [[4, 4, 4, 4], [6, 6, 6, 6]]`) is scanned; several scanned keys give every combination,
and `scan:` gives points explicitly (a list of mappings of dotted keys, `{model.lx: 8, model.ly: 8}`), combined
with the scanned keys. Every point is validated before anything runs, and runs in its own directory under
`output.dir`, named from its values (`T0.02_lx8`), with every guarantee of a single run (lock, resume, bitwise
restart). `output.dir/scan.yaml` lists the points, so `analyze`, `plot` and `status` take the scan directory.

Under MPI the job's ranks are split into groups (the largest divisor of the job's size that is at most the
number of points): `mpirun -n 8` with 4 points runs 2 ranks per point, each group its points one after the
other. `--point K` runs point K alone on every rank (a SLURM job array: one task per point).
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ruamel.yaml import YAML

from slmc_hpc.config import SECTIONS, Config, config_from_dict, defaults, list_keys, parse_yaml, show
from slmc_hpc.errors import ConfigError, InputError

SCAN_KEY = "scan"
SCAN_FILE = "scan.yaml"


@dataclass(frozen=True)
class Point:
    """One run of a scan: its directory name, the values of the scanned keys and its validated configuration."""

    name: str
    values: dict[str, Any]
    config: Config


def _kind(data: Mapping) -> str | None:
    model = data.get("model")
    return model.get("kind") if isinstance(model, Mapping) else None


def scanned_keys(data: Mapping) -> dict[str, list]:
    """Dotted key -> its list of values, for every key of `data` given as a list where it takes one value."""
    kind = _kind(data) if isinstance(_kind(data), str) else None
    base, listed = defaults(kind), list_keys(kind)
    grid = {}
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if not isinstance(value, list) or key not in base.get(section, {}):
                continue
            takes_list = f"{section}.{key}" in listed
            if takes_list and not (value and all(isinstance(v, list) for v in value)):
                continue  # a single value of a list-valued key, such as shape: [4, 4, 4, 4]
            if (section, key) == ("model", "kind"):
                raise ConfigError("model.kind: a scan runs one system; give a list of values for other keys")
            if not value:
                raise ConfigError(f"{section}.{key}: an empty list of values to scan")
            grid[f"{section}.{key}"] = list(value)
    return grid


def is_scan(data: Any) -> bool:
    return isinstance(data, Mapping) and (SCAN_KEY in data or bool(scanned_keys(data)))


def _explicit_points(data: Mapping) -> list[dict[str, Any]]:
    points = data.get(SCAN_KEY)
    if points is None:
        return [{}]
    if not isinstance(points, list) or not points or not all(isinstance(p, Mapping) for p in points):
        raise ConfigError(
            f"{SCAN_KEY}: expected a list of points, each a mapping of dotted keys to values, got {show(points)}"
        )
    return [dict(point) for point in points]


def _format(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list):
        text = "x".join(_format(v) for v in value)
    elif isinstance(value, Mapping):
        text = "-".join(f"{_format(k)}-{_format(v)}" for k, v in value.items())
    else:
        text = str(value)
    return text.replace("/", "-").replace(" ", "")


def point_name(values: Mapping[str, Any]) -> str:
    """`T0.02_lx8`: each scanned key by its last part (with its section where two would read the same)."""
    shorts = [key.rpartition(".")[2] for key in values]
    parts = []
    for (key, value), short in zip(values.items(), shorts, strict=True):
        label = short if shorts.count(short) == 1 else key.replace(".", "_")
        parts.append(f"{label}{_format(value)}")
    return "_".join(parts) or "point"


def expand(data: Mapping, source: str = "<job>") -> list[Point]:
    """Every point of a scan job, validated (a problem names the key and the point); [] if `data` is no scan."""
    if not is_scan(data):
        return []
    grid = scanned_keys(data)
    explicit = _explicit_points(data)
    base = copy.deepcopy({k: v for k, v in data.items() if k != SCAN_KEY})
    root = Path(base.get("output", {}).get("dir", defaults(_kind(data))["output"]["dir"]))
    points, names = [], set()
    for fixed, combination in itertools.product(explicit, itertools.product(*grid.values())):
        values = {**fixed, **dict(zip(grid, combination, strict=True))}
        job = copy.deepcopy(base)
        for dotted, value in values.items():
            section, _, key = dotted.partition(".")
            if section not in SECTIONS or not key:
                raise ConfigError(
                    f"{SCAN_KEY}: {dotted}: expected a dotted key section.key (sections: {', '.join(SECTIONS)})"
                )
            if section == "output":
                raise ConfigError(f"{SCAN_KEY}: {dotted}: each point's output.dir is named from its values")
            job.setdefault(section, {})
            if job[section] is None:
                job[section] = {}
            job[section][key] = value
        name = point_name(values)
        if name in names:
            raise ConfigError(f"{SCAN_KEY}: two points would share the directory {name}; make the points differ")
        names.add(name)
        job.setdefault("output", {})
        job["output"] = {**(job["output"] or {}), "dir": str(root / name)}
        try:
            config = config_from_dict(job, source=source)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (scan point {name})") from None
        points.append(Point(name, values, config))
    return points


def load_scan(path: str | Path) -> list[Point]:
    """The points of a scan job file ([] for a single job); the file's problems are ConfigErrors naming it."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except OSError:
        return []  # load_config reports a missing or unreadable file
    try:
        return expand(data, str(path)) if isinstance(data, Mapping) else []
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {path})") from None


def write_index(root: Path, points: list[Point]) -> Path:
    """`scan.yaml` in the scan's directory: every point's name, directory and values (readers find the runs)."""
    root.mkdir(parents=True, exist_ok=True)
    index = {"points": [{"name": p.name, "dir": p.config.output.dir, "values": p.values} for p in points]}
    target = root / SCAN_FILE
    temporary = target.with_name(SCAN_FILE + ".tmp")
    with open(temporary, "w") as handle:
        YAML(typ="safe", pure=True).dump(index, handle)
    temporary.replace(target)
    return target


def read_index(root: Path) -> list[dict]:
    """The points of a scan directory (`scan.yaml`), each with `name`, `dir` (absolute where relative) and `values`."""
    text = (root / SCAN_FILE).read_text()
    points = YAML(typ="safe", pure=True).load(text)["points"]
    for point in points:
        directory = Path(point["dir"])
        if not directory.is_dir():  # a moved scan: the points are the directories next to scan.yaml
            point["dir"] = str(root / point["name"])
    return points


def groups_for(n_points: int, n_ranks: int) -> int:
    """How many groups of ranks run points at once: the largest divisor of `n_ranks` that is at most `n_points`."""
    return max(d for d in range(1, min(n_points, n_ranks) + 1) if n_ranks % d == 0)


def run_scan(points: list[Point], force: bool = False, fresh: bool = False, only: int | None = None) -> int:
    """Run every point (or point `only`), the job's ranks split into groups; 0, or 2 if a point was refused.

    A refused point (its directory in use, ...) is reported and the group goes on with its next point; a stop
    signal stops the scan (every point resumes with the same command).
    """
    from slmc_hpc.driver import run_simulation
    from slmc_hpc.parallel import allreduce_sum, broadcast, split, world

    if only is not None:
        if not 0 <= only < len(points):
            raise InputError(f"--point {only}: the scan has points 0 to {len(points) - 1}")
        points = [points[only]]
    comm = world()
    n_groups = groups_for(len(points), comm.Get_size())
    per_group = comm.Get_size() // n_groups
    group = comm.Get_rank() // per_group
    group_comm = split(comm, group)
    if comm.Get_rank() == 0:
        sys.stderr.write(f"slmc-hpc: scan of {len(points)} points, {n_groups} at a time on {per_group} ranks each\n")
    refused = 0
    for index in range(group, len(points), n_groups):
        if broadcast(group_comm, _finished(points[index].config) if group_comm.Get_rank() == 0 else None):
            if group_comm.Get_rank() == 0:
                sys.stderr.write(f"slmc-hpc: scan point {points[index].name} finished already\n")
            continue
        try:
            ended = run_simulation(points[index].config, force=force, fresh=fresh, comm=group_comm)
        except InputError as exc:
            if not exc.collective:
                raise
            refused += 1
            if group_comm.Get_rank() == 0:
                sys.stderr.write(f"slmc-hpc: error: scan point {points[index].name}: {exc}\n")
            continue
        if ended == "stopped":
            break
    return 2 if allreduce_sum(comm, np.array([float(refused)]))[0] else 0


def _finished(config: Config) -> bool:
    """True if the point's run is finished with all its measurements (running the scan again skips it)."""
    from slmc_hpc.io.runfile import read_run_summary

    path = Path(config.output.dir) / "run.h5"
    try:
        summary = read_run_summary(path)
    except (OSError, KeyError, ValueError):
        return False
    finished = summary["attrs"].get("status") == "finished"
    return finished and summary["n_measurements"] >= config.sampler.measurements
