"""Parameter scans as one job, merged results and the Python loader (issue 20).

Expansion of lists of values into points (names, explicit points, list-valued keys, errors that name the key
and the point); real scans under `mpirun -n 2` (sequential points), `-n 4` (two groups of 2 ranks) and
`--point K`, equal bit for bit to each other; a scan stopped by SIGTERM resumes every point bitwise with the
same command; `analyze`, `plot` and `status` of the scan directory; `slmc_hpc.load`.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

import slmc_hpc
from slmc_hpc.errors import ConfigError
from slmc_hpc.scan import SCAN_FILE, expand, groups_for, point_name, read_index
from tests.conftest import mpirun
from tests.test_restart import interrupt, launch
from tests.test_run import read_samples

SCAN = {
    "model": {"lx": 4, "ly": 4, "J": 2.0, "T": [0.1, 0.2, 0.3]},
    "sampler": {"kind": "exact", "chains_per_rank": 2, "thermalization": 3, "measurements": 30},
    "seed": 7,
}


def write_scan(directory: Path, name: str, job: dict = SCAN) -> Path:
    job = json.loads(json.dumps(job))
    job["output"] = {"dir": str(directory / name), "checkpoint_every": 60, **job.get("output", {})}
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(job))
    return path


def test_lists_expand_into_named_points_and_errors_name_key_and_point():
    points = expand({**SCAN, "model": {**SCAN["model"], "lx": [4, 6], "T": [0.1, 0.2]}})
    assert [p.name for p in points] == ["lx4_T0.1", "lx4_T0.2", "lx6_T0.1", "lx6_T0.2"]
    assert points[2].config.model.lx == 6 and points[2].config.model.T == 0.1
    assert points[2].config.output.dir == str(Path("runs/demo/lx6_T0.1"))
    two = {**SCAN, "model": {**SCAN["model"], "T": [0.1, 0.2]}}
    explicit = expand({**two, "scan": [{"model.lx": 4, "model.ly": 4}, {"model.lx": 6, "model.ly": 6}]})
    assert [p.name for p in explicit] == ["lx4_ly4_T0.1", "lx4_ly4_T0.2", "lx6_ly6_T0.1", "lx6_ly6_T0.2"]
    gauge = expand({"model": {"kind": "su2_staggered", "shape": [[4, 4, 4, 4], [6, 6, 6, 6]]}})
    assert [p.name for p in gauge] == ["shape4x4x4x4", "shape6x6x6x6"]
    assert expand({"model": {"kind": "su2_staggered", "shape": [4, 4, 4, 4]}}) == []  # one value: no scan
    loops = {"model": {"kind": "su2_staggered"}, "effective": {"kind": "loops", "loops": ["plaquette", "polyakov"]}}
    assert expand(loops) == []  # a list-valued key whose default (auto) is not a list: one value
    loops["effective"]["loops"] = [["plaquette"], ["plaquette", "polyakov"]]
    assert [p.config.effective.loops for p in expand(loops)] == [["plaquette"], ["plaquette", "polyakov"]]
    assert point_name({"sampler.kind": "slmc", "effective.kind": "linear"}) == "sampler_kindslmc_effective_kindlinear"
    with pytest.raises(ConfigError, match=r"^model.T: must be > 0.*\(scan point T-1\)$"):
        expand({"model": {"T": [0.1, -1]}})
    with pytest.raises(ConfigError, match="model.kind: a scan runs one system"):
        expand({"model": {"kind": ["double_exchange", "su2_staggered"]}})
    with pytest.raises(ConfigError, match="scan: output.dir: each point's output.dir is named from its values"):
        expand({"scan": [{"output.dir": "x"}]})
    assert [groups_for(4, n) for n in (1, 2, 3, 4, 8)] == [1, 2, 3, 4, 4]
    assert groups_for(3, 8) == 2 and groups_for(5, 6) == 3


def test_a_scan_runs_in_groups_or_point_by_point_with_the_same_samples(tmp_path):
    """A point's chains are chains_per_rank x its group's ranks, and their samples do not depend on how the scan
    is laid out: 1 rank, the points in turn = 2 ranks, one point each; 4 ranks, two groups of 2 = --point K alone
    on 2 ranks. Bit for bit."""
    two = {**SCAN, "model": {**SCAN["model"], "T": [0.1, 0.2]}}
    proc = mpirun(1, ["-m", "slmc_hpc", "run", str(write_scan(tmp_path, "sequential", two))])
    assert "scan of 2 points, 1 at a time on 1 ranks each" in proc.stderr
    proc = mpirun(2, ["-m", "slmc_hpc", "run", str(write_scan(tmp_path, "split", two))])
    assert "scan of 2 points, 2 at a time on 1 ranks each" in proc.stderr
    proc = mpirun(4, ["-m", "slmc_hpc", "run", str(write_scan(tmp_path, "pairs", two))])
    assert "scan of 2 points, 2 at a time on 2 ranks each" in proc.stderr
    for k in (0, 1):
        mpirun(2, ["-m", "slmc_hpc", "run", str(write_scan(tmp_path, "pointwise", two)), "--point", str(k)])
    for name in ("T0.1", "T0.2"):
        for one, other in (("sequential", "split"), ("pairs", "pointwise")):
            reference, samples = read_samples(tmp_path / one / name), read_samples(tmp_path / other / name)
            assert all(np.array_equal(samples[k], reference[k]) for k in reference), (other, name)
    assert read_samples(tmp_path / "pairs" / "T0.1")["omega"].shape == (4, 30)
    index = read_index(tmp_path / "sequential")
    assert [p["name"] for p in index] == ["T0.1", "T0.2"] and index[1]["values"] == {"model.T": 0.2}
    # Running the finished scan again changes nothing and says so.
    again = mpirun(2, ["-m", "slmc_hpc", "run", str(write_scan(tmp_path, "split", two))])
    assert again.stderr.count("finished already") == 2


def test_a_stopped_scan_resumes_every_point_bit_for_bit(tmp_path):
    job = {**SCAN, "sampler": {**SCAN["sampler"], "measurements": 400}}
    reference = write_scan(tmp_path, "reference", job)
    mpirun(1, ["-m", "slmc_hpc", "run", str(reference)])
    config = write_scan(tmp_path, "run", {**job, "output": {"checkpoint_every": 0.3}})
    log = tmp_path / "log.txt"
    proc = launch(1, config, log)  # one rank: the points one after the other
    import time

    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "T0.1" / "checkpoint.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert interrupt(proc, signal.SIGTERM) == 0, log.read_text()
    assert "stopped by signal" in log.read_text()
    assert not (tmp_path / "run" / "T0.2" / "run.h5").exists()  # the scan stopped with its first point
    mpirun(1, ["-m", "slmc_hpc", "run", str(config)])
    for name in ("T0.1", "T0.2", "T0.3"):
        got, expected = read_samples(tmp_path / "run" / name), read_samples(tmp_path / "reference" / name)
        assert all(np.array_equal(got[k], expected[k]) for k in expected), name


def test_analyze_plot_status_and_load_take_the_scan_directory(tmp_path):
    mpirun(2, ["-m", "slmc_hpc", "run", str(write_scan(tmp_path, "scan"))])
    scan_dir = tmp_path / "scan"
    assert (scan_dir / SCAN_FILE).is_file()
    analysed = mpirun(1, ["-m", "slmc_hpc", "analyze", str(scan_dir)])
    assert f"wrote {scan_dir / 'results.csv'} (3 runs, one row each)" in analysed.stdout
    header, *rows = (scan_dir / "results.csv").read_text().splitlines()
    columns = header.split(",")
    assert columns[:5] == ["run", "L", "T", "J", "mu"] and len(rows) == 3
    for name in ("omega", "omega_error", "omega_tau_int", "omega_ess", "ms", "binder_ms", "specific_heat"):
        assert name in columns, name
    table = slmc_hpc.load(scan_dir)
    assert list(table["T"]) == [0.1, 0.2, 0.3] and (table["ms_error"] > 0).all()
    assert table.loc[0, "sampler"] == "exact" and table.loc[0, "L"] == "4x4"
    samples = slmc_hpc.load_samples(scan_dir / "T0.1")
    assert samples["omega"].shape == (2, 30)  # 3 points on 2 ranks: one rank each
    plotted = mpirun(1, ["-m", "slmc_hpc", "plot", str(scan_dir)])
    assert (scan_dir / "scan.png").is_file() and f"wrote {scan_dir / 'scan.png'}" in plotted.stdout
    status = mpirun(1, ["-m", "slmc_hpc", "status", str(scan_dir), str(scan_dir / "T0.1" / "run.h5")]).stdout
    assert status.count("status:       finished") == 4
