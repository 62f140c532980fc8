"""plots.plot_run / plot_scan write real, readable PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_analysis import CONFIG_4X4, ar1, write_run

from slmc_hpc.analysis import field_chain_means
from slmc_hpc.config import config_from_dict
from slmc_hpc.errors import InputError
from slmc_hpc.plots import autocorrelation, plot_run, plot_scan, run_label, running_mean
from slmc_hpc.systems.double_exchange.structure_factor import centred, q_over_pi

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
    names = ["time_series.png", "autocorrelation.png", "structure_factor.png", "correlation.png", "training.png"]
    assert [p.name for p in paths] == names
    for path in paths:
        assert path.parent == tmp_path / "run" / "plots"
        assert_png(path, min_bytes=5_000 if path.name in ("structure_factor.png", "correlation.png") else 10_000)


def test_plot_run_without_training(tmp_path):
    paths = plot_run(fake_run(tmp_path / "run", training=False))
    names = ["time_series.png", "autocorrelation.png", "structure_factor.png", "correlation.png"]
    assert [p.name for p in paths] == names
    linear = plot_run(tmp_path / "run", linear=True)  # a second figure, the log one stays
    assert "structure_factor_linear.png" in [p.name for p in linear]
    assert (tmp_path / "run" / "plots" / "structure_factor.png").exists()


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


def test_plot_accepts_run_h5_and_titles_name_the_run(tmp_path):
    path = fake_run(tmp_path / "run", training=False) / "run.h5"
    assert [p.parent for p in plot_run(path)] == [tmp_path / "run" / "plots"] * 4
    config = {"model": {"lx": 6, "ly": 4, "T": 0.05}, "sampler": {"kind": "slmc"}, "effective": {"kind": "linear"}}
    label = run_label({"run_config": config_from_dict(config)})
    assert label == "6×4, T = 0.05, J = 1, μ = 0, t1 = 1, slmc sampler, linear H_eff"
    exact = config_from_dict({**config, "sampler": {"kind": "exact"}})
    assert run_label({"run_config": exact}) == "6×4, T = 0.05, J = 1, μ = 0, t1 = 1, exact sampler, no H_eff"


def test_plot_of_a_run_without_data_says_so_and_leaves_no_folder(tmp_path):
    write_run(tmp_path / "run", {"ms": np.zeros((2, 0))}, status="running")
    with pytest.raises(InputError, match="no measurements and no training data yet: nothing to plot"):
        plot_run(tmp_path / "run")
    assert not (tmp_path / "run" / "plots").exists()


def test_structure_factor_grid_runs_over_minus_pi_to_pi_with_the_neel_peak_at_pi_pi(tmp_path):
    np.testing.assert_allclose(q_over_pi(4), [-0.5, 0.0, 0.5, 1.0])  # q = π included for even L
    np.testing.assert_allclose(q_over_pi(5), [-0.8, -0.4, 0.0, 0.4, 0.8])
    sq = centred(field_chain_means(fake_run(tmp_path / "run", training=False) / "run.h5", "sq"))
    iy, ix = np.unravel_index(np.argmax(sq["mean"]), sq["mean"].shape)
    assert (sq["qx"][ix], sq["qy"][iy]) == (1.0, 1.0)  # fake_run's peak sits at FFT index (2, 2) = (π, π)
    assert sq["error"].shape == (4, 4) and (sq["error"] > 0).all()


def test_acceptance_running_mean():
    accepted = np.tile([1.0, 0.0], 50)[None]  # 0/1 per outer step
    smooth = running_mean(accepted, 10)
    np.testing.assert_allclose(smooth[0, 9:], 0.5)  # a full window of alternating 0/1
    np.testing.assert_allclose(smooth[0, :3], [1.0, 0.5, 2 / 3])  # shorter windows at the start
