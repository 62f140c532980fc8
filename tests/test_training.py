"""Training: AdamW learns, restarts continue bit for bit, non-finite losses never leave NaN parameters,
the data store keeps its cap, models survive HDF5, and data-parallel training over 2 MPI ranks equals
training on the union of the data."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from slmc_hpc.core.learning import Trainer, TrainingData, fit_linear, pack_state, unpack_state
from slmc_hpc.errors import TrainingError
from slmc_hpc.io.model import read_model_group, write_model
from slmc_hpc.systems.double_exchange.effective import make_effective, rebuild
from slmc_hpc.systems.double_exchange.lattice import Lattice
from slmc_hpc.systems.double_exchange.physics import random_spins
from tests.conftest import REPO, mpirun

torch.set_num_threads(1)

LATTICE = Lattice(4, 4)
TRAINING = SimpleNamespace(batch_size=8, lr=1e-2, weight_decay=1e-4, max_samples=50)


def transformer(n_layers=1):
    return make_effective(SimpleNamespace(kind="transformer", n_J=2, n_layers=n_layers, n_att=2, load=None), LATTICE)


def target_data(n=40, seed=0):
    """Ω from a transformer with generic attention: a linear model cannot fit it exactly."""
    truth = transformer()
    rng = np.random.default_rng(seed)
    parameters = truth.parameters()
    parameters["attention"] = rng.normal(scale=0.4, size=parameters["attention"].shape)
    truth.set_parameters({**parameters, "e0": np.array(-20.0), "couplings": np.array([0.5, -0.2])})
    spins = random_spins(rng, (n, LATTICE.n_sites))
    return spins, truth.energy(spins)


def test_training_lowers_the_loss_below_the_linear_fit():
    spins, omega = target_data()
    model = transformer()
    linear_loss = fit_linear(model, spins, omega, scale=LATTICE.n_sites)
    trainer = Trainer(model, SimpleNamespace(**{**vars(TRAINING), "batch_size": 40}), LATTICE.n_sites)
    losses = trainer.train(spins, omega, 150)
    assert losses[0] == pytest.approx(linear_loss, rel=1e-10)  # the first step sees the fitted model
    assert losses[-1] < 0.5 * linear_loss


def test_state_dict_continues_bit_for_bit():
    spins, omega = target_data()
    model = transformer()
    fit_linear(model, spins, omega, scale=LATTICE.n_sites)
    trainer = Trainer(model, TRAINING, LATTICE.n_sites, seed=3)
    trainer.train(spins, omega, 4)
    saved = unpack_state(pack_state(trainer.state_dict()))
    expected_losses = trainer.train(spins, omega, 5)
    expected = model.parameters()

    resumed_model = transformer()
    resumed = Trainer(resumed_model, TRAINING, LATTICE.n_sites, seed=3)
    resumed.load_state_dict(saved)
    assert np.array_equal(resumed.train(spins, omega, 5), expected_losses)
    for name, value in expected.items():
        assert np.array_equal(resumed_model.parameters()[name], value), name


def test_linear_model_trains_by_gradient_too():
    spins, omega = target_data()
    model = make_effective(SimpleNamespace(kind="linear", n_J=2, n_layers=0, n_att=0, load=None), LATTICE)
    model.set_parameters({"e0": np.array(-19.0), "couplings": np.zeros(2)})
    losses = Trainer(model, TRAINING, LATTICE.n_sites).train(spins, omega, 30)
    assert losses[-1] < losses[0]
    assert model.parameters()["e0"] != -19.0  # the numpy model received the trained values


def test_non_finite_loss_restores_the_last_good_parameters():
    spins, omega = target_data()
    model = transformer()
    fit_linear(model, spins, omega, scale=LATTICE.n_sites)
    trainer = Trainer(model, TRAINING, LATTICE.n_sites)
    trainer.train(spins, omega, 2)
    good = model.parameters()
    omega = omega.copy()
    omega[:] = np.nan
    with pytest.raises(TrainingError, match="step 2.*loss = nan"):
        trainer.train(spins, omega, 3)
    for name, value in good.items():
        assert np.array_equal(model.parameters()[name], value)
    assert np.all(np.isfinite(model.energy(spins)))


def test_training_data_keeps_the_newest_samples():
    data = TrainingData((LATTICE.n_sites, 3), max_samples=5)
    spins = random_spins(np.random.default_rng(1), (7, LATTICE.n_sites))
    data.append(spins[:4], np.arange(4.0))
    data.append(spins[4:], np.arange(4.0, 7.0))
    assert len(data) == 5
    np.testing.assert_array_equal(data.arrays()[1], [2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(data.arrays()[0], spins[2:])
    copy = TrainingData((LATTICE.n_sites, 3), max_samples=5)
    copy.load_state_dict(unpack_state(pack_state(data.state_dict())))
    np.testing.assert_array_equal(copy.arrays()[0], spins[2:])


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_model_round_trip_through_hdf5(tmp_path, kind):
    model = make_effective(SimpleNamespace(kind=kind, n_J=3, n_layers=2, n_att=4, load=None), LATTICE)
    rng = np.random.default_rng(2)
    model.set_parameters({k: rng.normal(size=v.shape) for k, v in model.parameters().items()})
    history = {"loss": np.array([0.3, 0.2]), "round_acceptance": np.array([0.5])}
    with h5py.File(tmp_path / "run.h5", "w") as f:
        write_model(f.create_group("model"), model, history, frozen=True)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f["model"].attrs["frozen"] and f["model"].attrs["n_parameters"] == model.n_parameters()
        stored = read_model_group(f["model"], "run.h5")
    loaded, loaded_history = rebuild(stored, LATTICE), stored.history
    assert loaded.kind == kind
    np.testing.assert_array_equal(loaded_history["loss"], history["loss"])
    spins = random_spins(rng, (3, LATTICE.n_sites))
    assert np.array_equal(loaded.energy(spins), model.energy(spins))


def test_two_ranks_train_like_one_rank_on_the_union():
    proc = mpirun(2, [str(REPO / "tests" / "mpi_scripts" / "training_parallel.py")], timeout=240)
    assert "training_parallel OK" in proc.stdout


def self_learning(kind, seed=4):
    from slmc_hpc.core.learning import SelfLearning
    from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
    from slmc_hpc.systems.double_exchange.physics import DoubleExchange
    from slmc_hpc.systems.double_exchange.samplers import init_chains
    from slmc_hpc.systems.double_exchange.simulation import learning_plan

    evaluator = SpinAction(make_evaluator("dense", DoubleExchange(4, 4, {1: 1.0}, J=2.0, mu=0.0, T=0.1)))
    architecture = SimpleNamespace(kind=kind, n_J=2, n_layers=1, n_att=2, load=None)
    training = SimpleNamespace(
        **{**vars(TRAINING), "max_samples": 1000},
        outer_steps_per_round=3,
        steps_per_round=4,
        validation_fraction=0.0,
        linear_rounds=0,
    )
    plan = learning_plan(evaluator, inner_sweeps=1, inner_block=0)
    learner = SelfLearning(make_effective(architecture, LATTICE), plan, training, seed=seed)
    return learner, init_chains(evaluator, seed, range(2))


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_self_learning_rounds_collect_every_evaluation_and_resume_exactly(kind):
    learner, chains = self_learning(kind)
    assert 0.0 < learner.warmup(chains, 2) <= 1.0
    assert len(learner.data) == 2 * 2
    assert np.isfinite(learner.fit_initial())
    first = learner.run_round(chains)
    assert first.n_samples == 4 + 3 * 2 and 0.0 <= first.acceptance <= 1.0
    assert len(first.losses) == (4 if kind == "transformer" else 0) and np.isfinite(first.data_loss)

    # What the driver checkpoints: the learner's state, the model's parameters and the chains.
    saved, parameters = copy.deepcopy(learner.state_dict()), learner.effective.parameters()
    saved_chains = copy.deepcopy(chains)
    second = learner.run_round(chains)
    resumed, _ = self_learning(kind)
    resumed.effective.set_parameters(parameters)
    resumed.load_state_dict(saved)
    again = resumed.run_round(saved_chains)
    assert again.acceptance == second.acceptance and np.array_equal(again.losses, second.losses)
    assert np.array_equal(saved_chains.config, chains.config)
    for name, value in learner.effective.parameters().items():
        assert np.array_equal(resumed.effective.parameters()[name], value), name
    assert resumed.history["round_acceptance"] == learner.history["round_acceptance"]


def test_bootstrap_configurations_give_the_first_fit_only():
    """Round 0 samples with H_eff = 0 (uniform spins); later fits use only what fitted models proposed."""
    learner, chains = self_learning("linear")
    learner.validation_fraction = 0.0
    learner.run_round(chains)  # no warm-up: the bootstrap round
    assert len(learner.data) == 6 and learner.data.unfitted == 6
    assert np.any(learner.effective.parameters()["couplings"])  # its fit used the uniform configurations
    learner.run_round(chains)
    assert len(learner.data) == 12 and learner.data.unfitted == 6
    spins, omega = learner.data.fitted()
    np.testing.assert_array_equal(spins, learner.data.arrays()[0][6:])
    reference = make_effective(SimpleNamespace(kind="linear", n_J=2, n_layers=1, n_att=2, load=None), LATTICE)
    fit_linear(reference, spins, omega, scale=LATTICE.n_sites)
    np.testing.assert_allclose(learner.effective.parameters()["couplings"], reference.parameters()["couplings"])
    # The cut survives a checkpoint, and moves with the oldest samples when max_samples drops them.
    copy_ = TrainingData((LATTICE.n_sites, 3), max_samples=8)
    copy_.load_state_dict(unpack_state(pack_state(learner.data.state_dict())))
    assert len(copy_) == 8 and copy_.unfitted == 2
    np.testing.assert_array_equal(copy_.fitted()[1], omega)


def test_feature_cache_equals_fresh_features_through_appends_drops_cuts_and_training():
    """Only new rows go through the network, yet every returned row is the fresh features' bits."""
    from slmc_hpc.core.learning import FeatureCache

    rng = np.random.default_rng(11)
    model = transformer()
    data = TrainingData((LATTICE.n_sites, 3), max_samples=10)
    cache = FeatureCache(data, model)
    computed = []
    featurize = model.features
    model.features = lambda spins: computed.append(len(spins)) or featurize(spins)

    def check():
        spins, omega, features = cache.fitted()
        np.testing.assert_array_equal(spins, data.fitted()[0])
        assert np.array_equal(features, featurize(spins))

    for rows in (4, 3):
        data.append(random_spins(rng, (rows, LATTICE.n_sites)), rng.normal(size=rows))
        check()
    assert computed == [4, 3]
    data.unfitted = 2  # the bootstrap cut: the oldest rows leave the fit, nothing is recomputed
    check()
    data.append(random_spins(rng, (5, LATTICE.n_sites)), rng.normal(size=5))  # 12 > 10: two rows dropped
    check()
    assert computed == [4, 3, 5]
    parameters = model.parameters()
    model.set_parameters({**parameters, "e0": np.array(3.0), "couplings": np.array([0.1, 0.2])})  # read-out only
    check()
    assert computed == [4, 3, 5]
    model.set_parameters({**parameters, "attention": parameters["attention"] + 0.01})  # a new feature map
    check()
    assert computed == [4, 3, 5, len(data.fitted()[1])]
    data.load_state_dict(data.state_dict())  # reloaded rows are new rows
    check()
    assert computed[-1] == len(data.fitted()[1])


def test_float32_gradients_match_float64_and_parameters_stay_float64():
    """Mixed precision: the float32 copy's gradient is the float64 gradient to float32 accuracy, and the
    model's parameters (the H_eff of every acceptance test) stay float64."""
    spins, omega = target_data()
    exact, mixed = transformer(), transformer()
    fit_linear(exact, spins, omega, scale=LATTICE.n_sites)
    mixed.set_parameters(exact.parameters())
    loss64, gradient64 = Trainer(exact, TRAINING, LATTICE.n_sites).gradient(spins, omega)
    settings = SimpleNamespace(**{**vars(TRAINING), "batch_size": 40}, precision="float32")
    trainer = Trainer(mixed, settings, LATTICE.n_sites)
    loss32, gradient32 = trainer.gradient(spins, omega)
    assert loss32 == pytest.approx(loss64, rel=1e-4)
    np.testing.assert_allclose(gradient32["attention"], gradient64["attention"], rtol=1e-3, atol=1e-6)
    losses = trainer.train(spins, omega, 150)  # as test_training_lowers_the_loss_below_the_linear_fit
    assert losses[-1] < 0.5 * loss64
    assert all(p.dtype == torch.float64 for p in mixed.torch_module().parameters())
    assert mixed.energy(spins).dtype == np.float64
