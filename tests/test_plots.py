"""plots.plot_run / plot_scan write real, readable PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_analysis import CONFIG_4X4, ar1, write_run

from slmc_hpc.errors import InputError
from slmc_hpc.plots import autocorrelation, plot_run, plot_scan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.01  # not a blank canvas


def fake_run(run_dir: Path, temperature: float = 0.05, training: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    level = 1.0 / (1.0 + 10 * temperature)
    samples = {
        "omega": -1.2 + 0.01 * ar1(rng, 0.7, 4, 200),
        "ms": level + 0.05 * ar1(rng, 0.8, 4, 200),
        "m": 0.1 + 0.02 * ar1(rng, 0.5, 4, 200),
        "acceptance": rng.random((4, 200)),
    }
    sq = rng.random((4, 200, 4, 4))
    sq[:, :, 2, 2] += 10.0  # a Neel peak at q = (pi, pi)
    samples["sq"] = sq
    train = {"loss": np.exp(-np.linspace(0, 5, 300)) + 1e-4, "round_acceptance": np.array([0.2, 0.5, 0.7, 0.8])}
    config = CONFIG_4X4.replace("T: 0.05", f"T: {temperature}")
    write_run(run_dir, samples, config_yaml=config, training=train if training else {})
    return run_dir


def test_plot_run_writes_time_series_autocorrelation_sq_and_training(tmp_path):
    paths = plot_run(fake_run(tmp_path / "run"))
    names = ["time_series.png", "autocorrelation.png", "structure_factor.png", "training.png"]
    assert [p.name for p in paths] == names
    for path in paths:
        assert path.parent == tmp_path / "run" / "plots"
        assert_png(path, min_bytes=5_000 if path.name == "structure_factor.png" else 10_000)


def test_plot_run_without_training(tmp_path):
    paths = plot_run(fake_run(tmp_path / "run", training=False))
    assert [p.name for p in paths] == ["time_series.png", "autocorrelation.png", "structure_factor.png"]


def test_plot_scan_over_temperatures(tmp_path):
    runs = [fake_run(tmp_path / f"T{t}", temperature=t, seed=k) for k, t in enumerate((0.05, 0.1, 0.2))]
    path = plot_scan(runs, tmp_path / "scan.png")
    assert path == tmp_path / "scan.png"
    assert_png(path)
    assert all((run / "results.json").exists() for run in runs)  # analysed on the way


def test_autocorrelation_of_ar1_is_geometric():
    x = ar1(np.random.default_rng(2), 0.6, 16, 4000)
    rho = autocorrelation(x, 4)
    assert rho[0] == 1.0
    np.testing.assert_allclose(rho[1:], 0.6 ** np.arange(1, 5), atol=0.03)


def test_missing_run_dir(tmp_path):
    with pytest.raises(InputError):
        plot_run(tmp_path / "missing")
