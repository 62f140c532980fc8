"""analysis.analyze_run: Γ-method errors and τ_int checked against exact values and seed-to-seed scatter.

Tolerances follow from the measured error of the error: pyerrors reports δ(error) and δτ_int, and the
scatter of R independent runs has a relative uncertainty 1/sqrt(2(R-1)).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from slmc_hpc.analysis import analyze_run, gamma_analysis, jackknife
from slmc_hpc.errors import InputError
from tests.conftest import SPIN_SAMPLES

CONFIG_4X4 = "model:\n  lx: 4\n  ly: 4\n  hoppings: {1: 1.0}\n  J: 1.0\n  mu: 0.0\n  T: 0.05\n"


def write_run(run_dir: Path, samples: dict[str, np.ndarray], config_yaml: str = CONFIG_4X4, **extra) -> Path:
    """A run.h5 in the documented layout (CONTRIBUTING.md), as the driver writes it; extra: optional groups."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.h5"
    n_chains, n_meas = next(iter(samples.values())).shape
    with h5py.File(path, "w") as f:
        f.attrs.update(format_version=1, config_yaml=config_yaml, status=extra.get("status", "finished"), mpi_size=1)
        group = f.create_group("samples")
        for name, data in samples.items():
            rest = data.shape[2:]  # sq: [n_chains, n_measurements, ly, lx]
            group.create_dataset(name, data=data, maxshape=(n_chains, None, *rest), chunks=(n_chains, 64, *rest))
        group.attrs["n_measurements"] = extra.get("n_measurements", n_meas)
        for name, data in extra.get("timing", {}).items():
            f[f"timing/{name}"] = data
        for name, data in extra.get("training", {}).items():
            f[f"training/{name}"] = data
    if "mtime" in extra:
        os.utime(path, (extra["mtime"], extra["mtime"]))
    return path


def ar1(rng: np.random.Generator, rho: float, n_chains: int, n_meas: int) -> np.ndarray:
    """Unit-variance AR(1) chains started in equilibrium: τ_int = (1 + ρ) / (2 (1 - ρ)) exactly."""
    x = np.empty((n_chains, n_meas))
    x[:, 0] = rng.standard_normal(n_chains)
    noise = rng.standard_normal((n_chains, n_meas)) * math.sqrt(1 - rho**2)
    for t in range(1, n_meas):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


def binning_tau(chains: np.ndarray, bin_size: int) -> tuple[float, float]:
    """τ_int from the variance of bin means, τ = B var(bin mean) / (2 var(x)), and its statistical error."""
    n_chains, n_meas = chains.shape
    bins = n_meas // bin_size
    means = chains[:, : bins * bin_size].reshape(n_chains * bins, bin_size).mean(axis=1)
    tau = bin_size * means.var(ddof=1) / (2 * chains.var(ddof=1))
    return tau, tau * math.sqrt(2.0 / (means.size - 1))


def test_gamma_method_on_ar1_matches_exact_values():
    rng = np.random.default_rng(11)
    rho, n_chains, n_meas = 0.8, 8, 4000
    exact_tau = (1 + rho) / (2 * (1 - rho))  # 4.5
    exact_error = math.sqrt(2 * exact_tau / (n_chains * n_meas))
    r = gamma_analysis(ar1(rng, rho, n_chains, n_meas))
    assert abs(r["tau_int"] - exact_tau) < 3 * r["tau_int_error"]
    assert abs(r["error"] - exact_error) < 3 * r["error_of_error"]
    assert r["ess"] == pytest.approx(n_chains * n_meas / (2 * r["tau_int"]))


def test_jackknife_of_a_linear_function_equals_the_naive_error():
    """For f = <x> with uncorrelated data and blocks of 1, the jackknife error is the standard error exactly."""
    x = np.random.default_rng(3).standard_normal((4, 250))
    value, error = jackknife(lambda a: a, [x], bins=250, length=1)
    assert value == pytest.approx(x.mean())
    assert error == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-12)


@pytest.fixture(scope="module")
def exact_mc_runs(tmp_path_factory):
    """64 chains of the real exact local MC on 4x4 (T=0.05, τ_int(ms) ≈ 3.6 sweeps), split into 16 runs of 4."""
    from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
    from slmc_hpc.systems.double_exchange.physics import DoubleExchange
    from slmc_hpc.systems.double_exchange.samplers import ExactLocalSweep, init_chains, measure

    start = time.perf_counter()
    model = DoubleExchange(4, 4, {1: 1.0}, 1.0, 0.0, 0.05)
    evaluator = SpinAction(make_evaluator("dense", model))
    sampler = ExactLocalSweep(evaluator)
    n_chains, thermalization, n_meas = 64, 100, 300
    state = init_chains(evaluator, 2024, range(n_chains))
    for _ in range(thermalization):
        sampler.step(state)
    samples = {name: np.empty((n_chains, n_meas)) for name in SPIN_SAMPLES}
    for k in range(n_meas):
        info = sampler.step(state)
        for name, values in measure(evaluator, state).items():
            if name in samples:
                samples[name][:, k] = values
        samples["acceptance"][:, k] = info.accepted
    root = tmp_path_factory.mktemp("exact_mc")
    runs = []
    for r in range(16):
        block = {name: data[4 * r : 4 * r + 4] for name, data in samples.items()}
        write_run(root / f"run{r}", block)
        runs.append(root / f"run{r}")
    print(f"exact MC data: {time.perf_counter() - start:.1f} s")
    return samples, runs


def test_errors_agree_with_seed_to_seed_scatter(exact_mc_runs, capsys):
    """Γ-method errors of 16 independent runs vs the scatter of their means (ratio within 1.5).

    The scatter of R = 16 means has a relative uncertainty 1/sqrt(2 (R-1)) = 18%, so a factor 1.5 is a
    2.2 sigma band; the fixed seed makes the test deterministic.
    """
    _, runs = exact_mc_runs
    results = [analyze_run(run) for run in runs]
    assert "ms" in capsys.readouterr().out
    for name in ("omega", "ms", "m", "nn", "electron_energy"):
        means = np.array([r[name]["mean"] for r in results])
        predicted = np.sqrt(np.mean([r[name]["error"] ** 2 for r in results]))
        scatter = means.std(ddof=1)
        assert 1 / 1.5 < predicted / scatter < 1.5, (name, predicted, scatter)
    # derived quantities: the jackknife errors against their own scatter
    for name in ("binder_ms", "chi_ms"):
        values = np.array([r[name]["mean"] for r in results])
        predicted = np.sqrt(np.mean([r[name]["error"] ** 2 for r in results]))
        assert 1 / 1.5 < predicted / values.std(ddof=1) < 1.5, (name, predicted, values.std(ddof=1))


def test_tau_int_of_ms_matches_binning(exact_mc_runs):
    """τ_int(ms) from the Γ-method on all 64 chains vs the binning estimate with bins of 30 ≈ 8 τ_int.

    Both are estimates with errors (pyerrors' δτ, binning's sqrt(2/n_bins)); binning is biased low by
    O(τ/B), so the tolerance is 3 combined standard deviations plus 10% of τ for that bias.
    """
    samples, _ = exact_mc_runs
    r = gamma_analysis(samples["ms"])
    tau_bin, tau_bin_error = binning_tau(samples["ms"], 30)
    assert r["tau_int"] > 1.5, "ms should be visibly autocorrelated at T = 0.05"
    tolerance = 3 * math.hypot(r["tau_int_error"], tau_bin_error) + 0.1 * r["tau_int"]
    assert abs(r["tau_int"] - tau_bin) < tolerance, (r["tau_int"], r["tau_int_error"], tau_bin, tau_bin_error)


def test_outputs_results_json_group_and_csv(tmp_path, capsys):
    rng = np.random.default_rng(5)
    samples = {name: 0.5 + 0.1 * ar1(rng, 0.5, 3, 40) for name in ("omega", "m", "ms")}
    samples["acceptance"] = np.full((3, 40), 0.25)
    samples["sq"] = rng.random((3, 40, 4, 4))
    samples["sq"][:, :, 2, 2] += 5.0  # q = (π, π): FFT index 2 of 4
    path = write_run(tmp_path / "run", samples, n_measurements=30)  # 10 columns not yet complete
    results = analyze_run(path, csv=True, samples_csv=True)  # the run.h5 path works as well as the directory
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved.keys() == results.keys() >= {"omega", "m", "ms", "acceptance", "binder_ms", "chi_ms", "chi_m"}
    for stats in saved.values():
        assert {"mean", "error", "tau_int", "n_chains", "n_measurements"} <= stats.keys()
    assert saved["ms"]["n_measurements"] == 30 and saved["ms"]["n_chains"] == 3
    assert saved["ms"]["mean"] == pytest.approx(samples["ms"][:, :30].mean())
    assert saved["acceptance"] == {**saved["acceptance"], "mean": 0.25, "error": 0.0, "tau_int": None}
    with h5py.File(path, "r") as f:
        assert f["results/ms"].attrs["error"] == pytest.approx(saved["ms"]["error"])
        assert "tau_int" not in f["results/acceptance"].attrs  # constant: no autocorrelation time
    # results.csv: the table, one row per observable
    for name in ("results.csv", "structure_factor.csv", "samples.csv"):
        assert f"wrote {tmp_path / 'run' / name}" in out
    table = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert table[0] == "observable,mean,error,tau_int,tau_int_error,ess,r_hat,n_chains,n_measurements"
    assert [row.split(",")[0] for row in table[1:]] == list(results)
    ms_row = dict(zip(table[0].split(","), table[1 + list(results).index("ms")].split(","), strict=True))
    assert float(ms_row["mean"]) == saved["ms"]["mean"] and float(ms_row["tau_int"]) == saved["ms"]["tau_int"]
    assert table[1 + list(results).index("acceptance")].split(",")[3:6] == ["", "", ""]
    # structure_factor.csv: 16 momenta in units of π, the peak at (1, 1) = (π, π)
    rows = [line.split(",") for line in (tmp_path / "run" / "structure_factor.csv").read_text().splitlines()[1:]]
    assert len(rows) == 16 and {float(r[0]) for r in rows} == {-0.5, 0.0, 0.5, 1.0}
    peak = max(rows, key=lambda r: float(r[2]))
    assert (float(peak[0]), float(peak[1])) == (1.0, 1.0)
    assert float(peak[2]) == pytest.approx(samples["sq"][:, :30, 2, 2].mean())
    assert "at q/π = (1, 1)" in out
    # samples.csv: the raw samples, on request only
    rows = (tmp_path / "run" / "samples.csv").read_text().splitlines()
    assert rows[0] == "chain,measurement,observable,value"
    assert len(rows) == 1 + 4 * 3 * 30
    chain, k, name, value = rows[1 + 30 + 5].split(",")  # omega, chain 1, measurement 5
    assert (chain, k, name) == ("1", "5", "omega") and float(value) == samples["omega"][1, 5]


def test_constant_observable_is_reported_as_constant(tmp_path, capsys):
    """density = 1 up to rounding noise (~1e-16) gets its value and error 0, no τ_int or ESS from the noise."""
    rng = np.random.default_rng(8)
    samples = {"ms": 0.5 + 0.1 * ar1(rng, 0.5, 2, 200)}
    samples["density"] = 1.0 + rng.choice([-2.2e-16, 0.0, 2.2e-16], size=(2, 200))
    assert np.ptp(samples["density"]) > 0  # a plain ptp == 0 test would not catch it
    results = analyze_run(write_run(tmp_path / "run", samples).parent)
    density = results["density"]
    assert density["constant"] is True and density["error"] == 0.0
    assert density["tau_int"] is None and density["ess"] is None
    assert density["mean"] == pytest.approx(1.0, abs=1e-15)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("density"))
    assert line.split() == ["density", "1", "constant", "-", "-"]
    assert results["ms"]["tau_int"] > 0.5 and "constant" not in results["ms"]  # a real observable is untouched


def test_non_finite_samples_are_named_and_left_out(tmp_path, capsys):
    rng = np.random.default_rng(9)
    samples = {name: 0.5 + 0.1 * ar1(rng, 0.5, 2, 50) for name in ("omega", "ms")}
    samples["omega"][1, 7] = np.nan
    samples["omega"][0, 3] = np.inf
    results = analyze_run(write_run(tmp_path / "run", samples).parent)
    err = capsys.readouterr().err
    assert "/samples/omega holds 2 non-finite values (nan or inf) among 100: omega is left out" in err
    assert "omega" not in results and np.isfinite(results["ms"]["mean"])


def test_live_run_is_analysed_without_writing_the_group(tmp_path):
    samples = {"ms": np.random.default_rng(1).random((2, 20))}
    path = write_run(tmp_path / "run", samples, status="running")
    with pytest.warns(UserWarning, match="being written"):
        analyze_run(tmp_path / "run")
    assert (tmp_path / "run" / "results.json").exists()
    with h5py.File(path, "r") as f:
        assert "results" not in f


def test_too_few_measurements_is_reported_not_raised(tmp_path, capsys):
    write_run(tmp_path / "run", {"ms": np.zeros((2, 5))}, n_measurements=1)
    assert analyze_run(tmp_path / "run") == {}
    assert "nothing to analyse yet" in capsys.readouterr().out
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_inputs_raise_input_error(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path / "nope")):
        analyze_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="run.h5"):
        analyze_run(tmp_path / "empty")


def test_analyze_a_run_while_the_driver_writes_it(tmp_path):
    """A real 2-rank run: analysed while it is going (complete columns only, no /results), then stopped."""
    import signal
    import subprocess
    import sys

    from conftest import mpi_env

    config = tmp_path / "live.yaml"
    config.write_text(
        CONFIG_4X4 + "sampler: {kind: exact, chains_per_rank: 2, thermalization: 5, measurements: 100000}\n"
        f"output: {{dir: {tmp_path / 'run'}, checkpoint_every: 300}}\nseed: 3\n"
    )
    cmd = ["mpirun", "-n", "2", sys.executable, "-m", "mpi4py", "-m", "slmc_hpc", "run", str(config)]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with h5py.File(tmp_path / "run" / "run.h5", "r", locking=False) as f:
                    if f["samples"].attrs["n_measurements"] >= 256:
                        break
            except (OSError, KeyError):
                pass
            time.sleep(0.5)
        with pytest.warns(UserWarning, match="being written"):
            results = analyze_run(tmp_path / "run")
        assert results["ms"]["n_chains"] == 4 and 256 <= results["ms"]["n_measurements"] < 100000
        assert 0 < results["ms"]["mean"] < 1 and results["ms"]["error"] > 0
    finally:
        proc.send_signal(signal.SIGUSR1)  # mpirun forwards it: the run checkpoints and exits 0
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-2000:]
