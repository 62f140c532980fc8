"""Self-learning HMC of the gauge theory: the effective actions (loops, stout, CASK) and the SLHMC update.

The checks every HMC code owes, for the effective actions' MD: the force is a finite difference of S_eff (both
evaluators' fermion parts), a trajectory is reversible, and S_eff is gauge invariant. SLHMC is one update with
exact HMC: at m_eff = m with no smearing it is exact HMC bit for bit on the same random numbers, with both
evaluators. Training with cg: data, adjoint gradient. Frozen exactness: `test_su2_slhmc_exactness.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmc_hpc.systems.su2_staggered import links as L
from slmc_hpc.systems.su2_staggered import staggered
from slmc_hpc.systems.su2_staggered.effective import LoopAction, SmearedAction, pseudofermion_rows
from slmc_hpc.systems.su2_staggered.simulation import EffectiveForce
from tests.conftest import mpirun
from tests.test_run import _merge
from tests.test_su2_hmc import chains, forward_and_back, simulation
from tests.test_su2_run import DESIGN_JOB, write_job
from tests.test_su2_run import run as run_job
from tests.test_su2_smearing import ALL, EVERY, direction, lie_fd, randomise, rough_links

torch.set_num_threads(1)

SHAPE = (4, 2, 2, 2)


def effective_action(
    kind: str,
    lattice,
    n_layers: int = 2,
    mass: float = 0.4,
    n_flavors: int = 4,
    seed: int = 3,
    pseudofermions: bool = False,
):
    """An effective action with nonzero parameters (rhos drawn; the loops read-out near the Wilson action; with
    `pseudofermions`, the hopping terms too)."""
    if kind == "loops":
        model = LoopAction(lattice, EVERY, 2.7)
        model.set_readout(100.0, np.array([-1.2, 0.05, -0.02, 0.1, 0.06, 0.04, 0.05]))
        return model
    model = SmearedAction(lattice, kind, ("plaquette", "rectangle"), n_layers, 2.7, mass, n_flavors, pseudofermions)
    randomise(model.module.network, seed, scale=0.03, lead=0.05)
    model.set_readout(5.0, np.array([0.95, 1.1, -0.03, 0.02, -0.002] if pseudofermions else [0.95, 1.1]))
    return model


@pytest.mark.parametrize("kind", ["loops", "stout", "cask"])
def test_effective_force_is_a_finite_difference_of_the_effective_action(kind):
    """d_a S_eff along a random direction: the force against central differences of S_eff (dense fermion part),
    and for the networks also the pseudofermion form S_g + phi^dag M_ee[U_NN; m_eff]^-1 phi, with and without the
    hopping terms phi^dag A^k phi (S_eff of `pseudofermion_rows`, the form training fits)."""
    sim = simulation(SHAPE)
    model = effective_action(kind, sim.lattice)
    links = rough_links(sim.lattice, 1, 2)
    p = direction(sim.lattice, 2, 2)
    force = (model.link_force(links) * p).sum(dim=(1, 2, 3))
    expected = lie_fd(lambda u: torch.from_numpy(model.energy(u)), links, p)
    assert torch.allclose(force, expected, rtol=1e-7, atol=1e-7), (force, expected)
    if kind == "loops":
        return
    phi = staggered.draw_pseudofermion(links, sim.lattice, 0.3, [np.random.default_rng(s) for s in (4, 5)])
    weights = model.module.weights.detach()

    def pseudofermion_action(u):
        smeared = model.smear(u)
        fermion = staggered.pseudofermion_action_dense(smeared, sim.lattice, model.mass, phi)
        return weights[0] * model.gauge_action(u) + weights[1] * fermion

    iterations = []
    force = (model.link_force(links, phi, iterations.append, tol=1e-13) * p).sum(dim=(1, 2, 3))
    assert torch.allclose(force, lie_fd(pseudofermion_action, links, p), rtol=1e-7, atol=1e-7)
    assert len(iterations) == 1 and (iterations[0] > 0).all()
    hopping = effective_action(kind, sim.lattice, pseudofermions=True)
    force = (hopping.link_force(links, phi, tol=1e-13) * p).sum(dim=(1, 2, 3))
    expected = lie_fd(lambda u: torch.from_numpy(hopping.energy(pseudofermion_rows(u, phi))), links, p)
    assert torch.allclose(force, expected, rtol=1e-7, atol=1e-7), (force, expected)


@pytest.mark.parametrize("kind", ["loops", "stout", "cask"])
def test_effective_md_is_reversible(kind):
    """Forward, flip the momenta, back under the effective force (pseudofermions fixed, the networks with their
    hopping terms): back to ~1e-11."""
    sim = simulation(SHAPE, evaluator="cg")
    state = chains(sim, 2)
    sim.action.refresh(state)
    force = EffectiveForce(effective_action(kind, sim.lattice, pseudofermions=True), sim.action)
    moved, links_error, momenta_error = forward_and_back(sim, state, force, "omelyan", 5, 0.1)
    assert moved > 0.1
    assert links_error < 1e-10
    assert momenta_error < 1e-9


@pytest.mark.parametrize("kind", ["loops", "stout", "cask"])
def test_effective_actions_are_gauge_invariant(kind):
    sim = simulation(SHAPE)
    model = effective_action(kind, sim.lattice)
    links = rough_links(sim.lattice, 6, 2)
    g = L.random_gauge_transformation(sim.lattice, [np.random.default_rng(s) for s in (7, 8)])
    transformed = L.gauge_transform_links(links, g, sim.lattice)
    before, after = model.energy(links), model.energy(transformed)
    assert np.allclose(before, after, rtol=0, atol=1e-10 * np.abs(before).max())


@pytest.mark.parametrize("evaluator", ["dense", "cg"])
def test_slhmc_without_smearing_at_m_eff_m_is_exact_hmc_bit_for_bit(evaluator):
    """The same update with the effective action's force: no layers, m_eff = m, read-out (0, 1, 1)."""
    sims = [simulation(SHAPE, evaluator=evaluator) for _ in range(2)]
    states = [chains(sim, 3, seed=9) for sim in sims]
    identity = SmearedAction(sims[1].lattice, "stout", ALL, 0, 2.7, 0.3, 4)
    steppers = [sims[0].hmc(4), sims[1].hmc(4, identity)]
    for _ in range(3):
        infos = [stepper.step(state) for stepper, state in zip(steppers, states, strict=True)]
    assert np.array_equal(states[0].config, states[1].config)
    assert np.array_equal(infos[0].samples["dH"], infos[1].samples["dH"])
    assert np.array_equal(infos[0].accepted, infos[1].accepted) and infos[0].accepted.any()


def test_zero_rhos_are_the_identity_network_to_rounding():
    """Two stout layers at rho = 0 give exact HMC's force to rounding (the layers then multiply by exp(0) = 1)."""
    sim = simulation(SHAPE)
    links = rough_links(sim.lattice, 1, 2)
    layered = SmearedAction(sim.lattice, "stout", ALL, 2, 2.7, 0.3, 4)
    assert torch.allclose(layered.link_force(links), sim.action.force(links), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------- whole runs

TRAINING = {
    "warmup_sweeps": 2,
    "rounds": 2,
    "outer_steps_per_round": 3,
    "steps_per_round": 12,
    "batch_size": 8,
    "validate_every": 4,
}
SLHMC_JOB = _merge(
    DESIGN_JOB,
    {
        "model": {"shape": [2, 2, 2, 4]},
        "sampler": {"kind": "slhmc", "md_steps": 4, "thermalization": 2, "measurements": 6},
        "effective": {"kind": "stout", "n_layers": 1, "loops": ["plaquette", "rectangle"]},
        "training": TRAINING,
    },
)


def test_slhmc_trains_online_freezes_and_its_model_runs_with_cg_on_another_lattice(tmp_path):
    """Warm-up (exact HMC) and rounds on 2 ranks, the frozen model in /model with its /training history and
    training.png; then that model loaded (effective.load) by a cg job on a larger lattice, which trains nothing."""
    import h5py

    trained = tmp_path / "trained"
    run_job(2, write_job(tmp_path, "trained", SLHMC_JOB))
    with h5py.File(trained / "run.h5", "r") as f:
        assert f.attrs["status"] == "finished"
        model, history = f["model"], f["training"]
        assert model.attrs["kind"] == "stout" and model.attrs["frozen"] and model.attrs["n_layers"] == 1
        assert model["network.layers.0.rho"].shape == (2,) and np.any(model["network.layers.0.rho"][()] != 0)
        # 2 ranks x 2 chains: warm-up 2 and 2 rounds of 3 trajectories, every exact evaluation kept
        assert history["round_samples"][()].tolist() == [4.0 * 5, 4.0 * 8]
        assert np.isfinite(history["round_validation_loss"][()]).all()
        assert 1 <= history["round_steps"][-1] <= TRAINING["steps_per_round"]
        assert f["samples"]["plaquette"].shape == (4, 6)
    mpirun(1, ["-m", "slmc_hpc", "plot", str(trained)])
    assert (trained / "plots" / "training.png").exists()

    job = _merge(SLHMC_JOB, {"model": {"shape": [4, 2, 2, 4]}, "evaluator": {"kind": "cg"}})
    job["effective"]["load"] = str(trained / "run.h5")
    run_job(2, write_job(tmp_path, "loaded", job))
    with h5py.File(tmp_path / "loaded" / "run.h5", "r") as f, h5py.File(trained / "run.h5", "r") as g:
        assert f.attrs["status"] == "finished" and "seconds_warmup" not in f.attrs  # frozen: no training
        assert np.array_equal(f["model"]["network.layers.0.rho"][()], g["model"]["network.layers.0.rho"][()])
        assert f["model"]["offset"][()] == pytest.approx(2.0 * g["model"]["offset"][()])  # extensive, V doubled
        assert (f["samples"]["cg_iterations"][()] > 0).all()


def test_loops_trained_with_cg_is_refused_naming_the_key(tmp_path):
    """loops has no fermion: it cannot follow the pseudofermion action that a cg test compares with."""
    job = _merge(SLHMC_JOB, {"evaluator": {"kind": "cg"}})
    job["effective"] = {"kind": "loops", "loops": ["plaquette", "rectangle"]}
    proc = run_job(1, write_job(tmp_path, "bad", job), check=False)
    assert proc.returncode == 2 and "effective.load" in proc.stderr and "loops" in proc.stderr


def test_loop_classes_auto_resolves_by_kind_and_a_bad_class_names_the_key():
    """`effective.loops: auto`: loops fits every class (the Polyakov lines in x, y, z too), the networks smear with
    the four of DESIGN §9; a listed class must be one of the seven."""
    from slmc_hpc.config import config_from_dict
    from slmc_hpc.errors import ConfigError
    from slmc_hpc.systems.su2_staggered.effective import loop_classes, make_effective

    def job(kind, loops="auto"):
        return config_from_dict({"model": {"kind": "su2_staggered"}, "effective": {"kind": kind, "loops": loops}})

    assert loop_classes(job("loops").effective) == EVERY
    assert make_effective(job("loops"), simulation(SHAPE).lattice).n_parameters() == 1 + len(EVERY)
    assert loop_classes(job("stout").effective) == loop_classes(job("cask").effective) == ALL
    assert loop_classes(job("loops", ["plaquette", "polyakov_x"]).effective) == ("plaquette", "polyakov_x")
    with pytest.raises(ConfigError, match=r"^effective.loops: must be one of .*polyakov_z, got 'wilson'"):
        job("loops", ["plaquette", "wilson"])


def test_adjoint_pseudofermion_action_differentiates_to_the_pseudofermion_force():
    """2 Re phi^dag X - X^dag M X (X = M^-1 phi by CG, a constant) is phi^dag M^-1 phi, and autograd through it
    gives the analytic pseudofermion force: what training a network on pseudofermion targets differentiates."""
    sim = simulation(SHAPE, evaluator="cg")
    links = rough_links(sim.lattice, 1, 2)
    phi = staggered.draw_pseudofermion(links, sim.lattice, 0.3, [np.random.default_rng(s) for s in (4, 5)])
    u = links.clone().requires_grad_(True)
    value, _ = staggered.pseudofermion_action_adjoint(u, sim.lattice, 0.4, phi, tol=1e-13)
    (grad,) = torch.autograd.grad(value.sum(), u)
    reference = staggered.pseudofermion_action_dense(links, sim.lattice, 0.4, phi)
    assert torch.allclose(value.detach(), reference, rtol=1e-12, atol=0)
    force, _ = staggered.pseudofermion_force(links, sim.lattice, 0.4, phi, tol=1e-13)
    assert torch.allclose(L.trace_generators(L.mm(links, L.dagger(grad))), force, rtol=0, atol=1e-9)


def cg_learner(kind: str = "stout", n_layers: int = 1):
    """A stout SLHMC job with cg on SHAPE, its simulation, chains and the framework's self-learning loop."""
    from slmc_hpc.config import config_from_dict
    from slmc_hpc.core.learning import SelfLearning
    from slmc_hpc.systems.su2_staggered.simulation import GaugeSimulation

    settings = {
        "model": {"kind": "su2_staggered", "shape": list(SHAPE), "beta": 2.7, "mass": 0.3, "n_flavors": 4},
        "evaluator": {"kind": "cg", "options": {"tol": 1e-12}},
        "sampler": {"kind": "slhmc", "md_steps": 5},
        "effective": {"kind": kind, "n_layers": n_layers, "loops": ["plaquette", "rectangle"], "mass": 0.4},
        "training": TRAINING,
    }
    sim = GaugeSimulation(config_from_dict(settings))
    randomise(sim.effective.module.network, 5, scale=0.03, lead=0.05)
    state = chains(sim, 3, seed=6)
    return sim, state, SelfLearning(sim.effective, sim.learning(), sim.config.training)


def test_cg_training_data_pair_each_configuration_with_its_trajectorys_pseudofermion():
    """With cg every datum is (links, phi) with the target S_g + phi^dag M^-1 phi under that phi (checked against a
    dense solve), and S_eff of a datum is evaluated under the same phi:
    c_0 + c_g S_g + c_f phi^dag M_NN^-1 phi + sum_k c_k phi^dag A^k phi, A = -D_eo D_oe[U_NN] (k = 0, 1, 2)."""
    from slmc_hpc.systems.su2_staggered import gauge
    from slmc_hpc.systems.su2_staggered.effective import split_rows

    sim, state, learner = cg_learner()
    learner.warmup(state, 2)
    rows, targets = learner.data.arrays()
    assert rows.shape == (len(targets), 17 * sim.lattice.volume)
    assert len(targets) + len(learner.validation) == 2 * 2 * 3  # both ends of 2 trajectories of 3 chains
    links, phi = split_rows(torch.from_numpy(rows), sim.lattice)
    exact = gauge.gauge_action(links, sim.lattice, 2.7)
    exact = exact + staggered.pseudofermion_action_dense(links, sim.lattice, 0.3, phi)
    assert np.allclose(targets, exact.numpy(), rtol=1e-10, atol=0)
    model = sim.effective
    model.set_readout(3.0, np.array([0.9, 1.2, -0.1, 0.03, -0.004]))
    smeared = model.smear(links)
    fermion = staggered.pseudofermion_action_dense(smeared, sim.lattice, 0.4, phi)
    deo, column = staggered.dense_deo(smeared, sim.lattice), phi.reshape(len(phi), -1, 1)
    a = deo @ deo.mH  # A = -D_eo D_oe with D_oe = -D_eo^dag
    hops = [(column.mH @ torch.linalg.matrix_power(a, k) @ column).real.reshape(-1) for k in range(3)]
    expected = 3.0 + 0.9 * gauge.gauge_action(links, sim.lattice, 2.7) + 1.2 * fermion
    expected = expected - 0.1 * hops[0] + 0.03 * hops[1] - 0.004 * hops[2]
    assert np.allclose(model.energy(rows), expected.numpy(), rtol=1e-10, atol=0)


def test_a_network_of_no_layers_trains_its_readout_alone():
    """`effective.n_layers: 0` leaves AdamW nothing to train: the rounds refit the read-out by least squares, the
    hopping terms included, under each datum's phi."""
    from slmc_hpc.core.learning import mean_squared_error

    sim, state, learner = cg_learner(n_layers=0)
    assert learner.trainer is None and sim.effective.n_parameters() == 6
    learner.warmup(state, 2)
    rows, targets = learner.data.arrays()
    untrained = mean_squared_error(sim.effective, rows, targets, scale=learner.scale)
    learner.fit_initial()
    result = learner.run_round(state)
    weights = sim.effective.parameters()["weights"]
    assert np.all(weights[2:] != 0) and np.isfinite(result.validation_loss)
    assert mean_squared_error(sim.effective, rows, targets, scale=learner.scale) < untrained


@pytest.mark.parametrize("kind", ["stout", "cask"])
def test_gradient_of_the_loss_on_pseudofermion_data_is_a_finite_difference(kind):
    """The trainer's gradient in the rhos (one CG solve per datum, autograd through the network) against central
    differences of the loss (S_eff - S)^2 / 2V on the same (links, phi) data."""
    from slmc_hpc.core.learning import mean_squared_error

    sim, state, learner = cg_learner(kind)
    learner.warmup(state, 2)
    rows, targets = learner.data.arrays()
    loss, gradient = learner.trainer.gradient(rows, targets)
    parameters = sim.effective.parameters()
    name = max(sim.effective.GRADIENT_PARAMETERS, key=lambda n: np.abs(gradient[n]).max())
    index = int(np.abs(gradient[name]).argmax())
    h = 1e-5
    values = []
    for sign in (1, -1):
        moved = {k: v.copy() for k, v in parameters.items()}
        moved[name] = moved[name] + sign * h * np.eye(1, moved[name].size, index).reshape(moved[name].shape)
        sim.effective.set_parameters(moved)
        values.append(mean_squared_error(sim.effective, rows, targets, scale=learner.scale))
    sim.effective.set_parameters(parameters)
    assert loss == pytest.approx(mean_squared_error(sim.effective, rows, targets, scale=learner.scale), rel=1e-10)
    assert gradient[name].reshape(-1)[index] == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5)


class ModelTrajectories:
    """A stepper whose dH is Gaussian with mean FLOOR + C / n^4 and variance twice that (as <exp(-dH)> = 1 wants):
    an effective action's own mismatch (the floor) plus a second-order integrator's error."""

    FLOOR, C, CHAINS = 0.6, 500.0, 64

    def __init__(self, n: int, rng: np.random.Generator):
        self.mean, self.rng = self.FLOOR + self.C / n**4, rng

    def step(self, state):
        from types import SimpleNamespace

        return SimpleNamespace(samples={"dH": self.rng.normal(self.mean, np.sqrt(2 * self.mean), self.CHAINS)})


def test_md_step_tuning_of_an_effective_action_stops_where_more_steps_no_longer_lower_dh():
    """Acceptance 0.8 is out of reach (the floor alone gives ~0.58): 10 steps (integrator part 0.05), then 16
    (dH barely lower: more steps do not pay), then 5 (dH 1.4, far above the floor): 10 it is, not the cap."""
    from slmc_hpc.core.hmc import tune_md_steps

    rng = np.random.default_rng(3)
    md_steps, rows = tune_md_steps(lambda n: ModelTrajectories(n, rng), None, None, 10, 0.8, max_steps=40)
    assert [n for n, _, _ in rows] == [10, 16, 5]
    assert md_steps == 10
