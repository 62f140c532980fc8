"""The double-exchange model's configuration keys (the public contract), with the defaults that measured best.

The framework owns the keys every system shares (output, seed, sampler.chains_per_rank, the self-learning
loop's `training` keys, ...) and their rules (`slmc_hpc.config`); this module adds the model's own keys
and the checks that involve them. `model.kind: double_exchange` is the default of every job file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slmc_hpc.config import (
    AUTO,
    ConfigError,
    at_least,
    auto_or,
    bounded,
    choice,
    integer,
    number,
    petsc_options,
    positive_number,
    show,
)
from slmc_hpc.core.integrators import INTEGRATORS
from slmc_hpc.core.protocols import Schema

EVALUATOR_KINDS = ("dense", "cupy", "slepc")
EFFECTIVE_KINDS = ("linear", "transformer")
SAMPLER_KINDS = ("exact", "slmc", "hmc", "slhmc")

DEFAULT_YAML = """\
model:
  kind: double_exchange   # double_exchange | su2_staggered
  lx: 6
  ly: 6
  hoppings: {1: 1.0}      # t_n per neighbour shell n
  J: 1.0
  mu: 0.0
  T: 0.05
evaluator:
  kind: dense             # dense | cupy | slepc
  ranks_per_config: 1     # slepc: ranks that share one diagonalisation
  options: {}             # solver settings: slepc {eps_type, ds_method, tol, petsc_options}, cupy {device}
effective:
  kind: transformer       # linear | transformer
  n_J: auto               # shells of the Heisenberg read-out (auto: every distance shell of the lattice)
  n_layers: 2             # transformer: attention layers
  n_att: 6                # transformer: attention over shells 0..n_att
  load: null              # an earlier run's HDF5 file whose trained model to use (frozen: skips training)
  init: null              # an earlier run's HDF5 file whose model starts the training (size transfer, fine-tuned)
training:
  warmup_sweeps: 0        # exact local MC sweeps before the rounds (N diagonalisations per kept sample)
  rounds: 5               # sample-then-train rounds (the first linear_rounds fit the linear read-out only)
  linear_rounds: 2        # rounds that start from H_eff = 0 and fit only the linear read-out (bootstrap)
  outer_steps_per_round: 30
  steps_per_round: 300    # most optimizer steps per round (a round stops early on the validation loss)
  batch_size: 64
  lr: 3.0e-3              # peak learning rate; cosine decay to lr/10 within each round
  weight_decay: 1.0e-4
  max_samples: 20000      # per rank: training configurations kept (oldest dropped first)
  validation_fraction: 0.2  # of the exactly evaluated configurations, held out (never trained on)
  validate_every: 10      # optimizer steps between validation losses
  patience: 4             # validations without improvement that end a round
  precision: float32      # gradient passes: float32 (faster) or float64; H_eff itself is always float64
sampler:
  kind: slmc              # exact | slmc | hmc | slhmc
  chains_per_rank: 8
  inner_sweeps: auto      # slmc: inner sweeps (N proposals each) per outer step (auto: measured, see tune)
  inner_block: auto       # slmc + transformer: moves per sub-chain under the fitted linear proposal (0: none)
  trajectory_length: auto # hmc, slhmc: MD time per trajectory (auto: hmc 1.5; slhmc measured with md_steps)
  md_steps: auto          # hmc: steps for target_acceptance; slhmc: measured by ESJD per second (tune phase)
  integrator: omelyan     # omelyan | leapfrog
  target_acceptance: 0.8  # hmc with md_steps auto: the acceptance the step size is chosen for
  thermalization: 50      # outer steps (slmc), sweeps (exact) or trajectories (hmc, slhmc) before measuring
  measurements: 1000
  measure_every: 1
output:
  dir: runs/demo
  checkpoint_every: 300   # seconds
seed: 1234
"""


def _hoppings(path: str, value: Any) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping of neighbour shell n >= 1 to t_n, e.g. {{1: 1.0}}, got {show(value)}"
        )
    out = {}
    for shell, t in value.items():
        if isinstance(shell, bool) or not isinstance(shell, int) or shell < 1:
            raise ConfigError(f"{path}: keys must be neighbour shells (integers >= 1), got key {show(shell)}")
        out[shell] = number(f"{path}.{shell}", t)
    return out


RULES = {
    "model": {
        "lx": at_least(2),
        "ly": at_least(2),
        "hoppings": _hoppings,
        "J": number,
        "mu": number,
        "T": bounded(number, lambda v: v > 0, "> 0 for sampling (T = 0 is for evaluation only)"),
    },
    "evaluator": {"kind": choice(*EVALUATOR_KINDS), "ranks_per_config": at_least(1)},
    "effective": {
        "kind": choice(*EFFECTIVE_KINDS),
        "n_J": auto_or(at_least(1), "every distance shell of the lattice"),
        "n_layers": at_least(0),
        "n_att": at_least(0),
    },
    "sampler": {
        "kind": choice(*SAMPLER_KINDS),
        "inner_sweeps": auto_or(at_least(1), "measured before production"),
        "inner_block": auto_or(at_least(0), "measured before production"),
        "trajectory_length": auto_or(positive_number, "hmc 1.5, slhmc measured before production"),
        "md_steps": auto_or(at_least(1), "chosen before production"),
        "integrator": choice(*INTEGRATORS),
        "target_acceptance": bounded(number, lambda v: 0 < v < 1, "> 0 and < 1"),
    },
}

#: Solver settings each evaluator accepts under `evaluator.options` (passed to its constructor).
EVALUATOR_OPTIONS = {
    "dense": {},
    "cupy": {"device": at_least(0)},
    "slepc": {
        "eps_type": choice("krylovschur", "lapack", "scalapack"),
        "ds_method": bounded(integer, lambda v: 0 <= v <= 2, "0, 1 or 2"),
        "tol": positive_number,
        "petsc_options": petsc_options,
    },
}

#: model.T must lie within these multiples of the bandwidth (see `check_temperature`).
T_MIN_PER_BANDWIDTH = 1e-6
T_MAX_PER_BANDWIDTH = 1e3


def bandwidth(model) -> float:
    """Upper bound on the spread of the one-body spectrum: 2 Σ_n |t_n| |D_n| + |J| (8t + |J| for the usual model)."""
    from slmc_hpc.systems.double_exchange.lattice import shell_vectors

    shells = shell_vectors(max(model.hoppings, default=0))
    return 2.0 * sum(abs(t) * len(shells[n]) for n, t in model.hoppings.items()) + abs(model.J)


def check_temperature(model) -> None:
    """Refuse temperatures outside [1e-6, 1e3] × bandwidth W: there the sampling answers no physics question.

    Below 1e-6 W, exp(-ΔΩ/T) underflows to 0 for every move with ΔΩ > ~7e-4 W, so the Metropolis test is a
    quench, not equilibrium at T, and the rounding error of ΔΩ (~1e-16 N W) comes within a few decades of T;
    susceptibilities ∝ 1/T are then meaningless (T = 1e-300 gave chi_ms ~ 1e299). Above 1e3 W every Fermi
    factor is 1/2 to 1e-3 and every move is accepted with probability > 0.999: free spins, T = infinity.
    """
    width = bandwidth(model)
    if width == 0.0:  # no hopping and no coupling: no energy scale to compare with
        return
    low, high = T_MIN_PER_BANDWIDTH * width, T_MAX_PER_BANDWIDTH * width
    if not low <= model.T <= high:
        raise ConfigError(
            f"model.T: must lie between {low:.3g} and {high:.3g} (1e-6 to 1e3 times the bandwidth "
            f"W = 2 sum_n |t_n| |D_n| + |J| = {width:.3g}), got {show(model.T)}: below, exp(-dOmega/T) "
            "underflows and Metropolis is a quench; above, the spins are free (infinite temperature)"
        )


def check(cfg) -> None:
    """Rules that involve more than one key."""
    check_temperature(cfg.model)
    ev = cfg.evaluator
    if cfg.sampler.kind == "hmc" and ev.kind != "dense":
        raise ConfigError(
            f"evaluator.kind: exact HMC takes its forces from the eigenvectors of the dense evaluator, which {ev.kind} "
            "does not give (slepc distributes one matrix; cupy has not been run on a GPU by the project); set "
            "evaluator.kind: dense, or sampler.kind: slhmc (its MD needs no eigenvectors)"
        )
    if ev.ranks_per_config > 1 and ev.kind != "slepc":
        raise ConfigError(
            f"evaluator.ranks_per_config: must be 1 unless evaluator.kind is slepc "
            f"(only SLEPc shares one diagonalisation between ranks), got {ev.ranks_per_config} with kind {ev.kind}"
        )


SCHEMA = Schema(defaults_yaml=DEFAULT_YAML, rules=RULES, check=check, evaluator_options=EVALUATOR_OPTIONS)

__all__ = ["SCHEMA", "AUTO", "bandwidth", "check_temperature", "EVALUATOR_KINDS", "EFFECTIVE_KINDS", "SAMPLER_KINDS"]
