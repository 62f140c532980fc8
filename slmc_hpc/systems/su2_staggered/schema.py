"""Configuration keys of SU(2) lattice gauge theory with staggered fermions (`model.kind: su2_staggered`).

The key names are docs/design.md §9's (the public contract); the framework adds its own (output, seed, the
sampler's chain counts and measurements, `training`). Defaults are the seeds' point: 4^4, beta = 2.7,
m = 0.3, Nf = 4, exact HMC with the dense log det.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slmc_hpc.config import (
    AUTO,
    ConfigError,
    at_least,
    auto_or,
    bounded,
    choice,
    number,
    positive_number,
    show,
)
from slmc_hpc.core.integrators import INTEGRATORS
from slmc_hpc.core.protocols import Schema

EVALUATOR_KINDS = ("dense", "cg")
EFFECTIVE_KINDS = ("loops", "stout", "cask")
SAMPLER_KINDS = ("hmc", "slhmc")
#: The loop classes of `effective.loops` (docs/design.md §9; shapes and sums in `loops`).
LOOP_CLASSES: tuple[str, ...] = ("plaquette", "rectangle", "chair", "polyakov")
#: The Polyakov lines in x, y, z, which the public code also offers. On a small lattice they are short loops
#: that the fermion determinant depends on strongly (at 4^4 they are 4 links long, as the plaquette).
EXTRA_CLASSES: tuple[str, ...] = ("polyakov_x", "polyakov_y", "polyakov_z")
FLAVORS = (0, 2, 4)

DEFAULT_YAML = """\
model:
  kind: su2_staggered     # double_exchange | su2_staggered
  shape: [4, 4, 4, 4]     # [Lx, Ly, Lz, Lt], every extent even; fermions antiperiodic in t
  beta: 2.7               # Wilson gauge coupling
  mass: 0.3               # staggered quark mass m
  n_flavors: 4            # 4 (one staggered field) | 2 (its square root: evaluator.kind dense) | 0 (pure gauge)
evaluator:
  kind: dense             # dense (exact log det M_ee by Cholesky) | cg (pseudofermions, conjugate gradients)
  options: {}             # cg: {tol, max_iter, n_noise}
effective:
  kind: stout             # loops | stout | cask (the self-learning HMC's effective action)
  n_layers: 2
  loops: auto             # loop classes (auto: loops all seven, stout and cask the first four; see the README)
  mass: 0.4               # m_eff of the fermion action inside S_eff
  load: null              # an earlier run's HDF5 file whose trained model to use (frozen: skips training)
  init: null              # an earlier run's HDF5 file whose model starts the training
training:                 # sampler.kind slhmc: the effective action is trained, then frozen
  warmup_sweeps: 0        # exact HMC trajectories whose configurations are the first data
  rounds: 5               # rounds of SLHMC trajectories under the current model, each followed by training
  linear_rounds: 0        # first rounds that only solve the linear read-out
  outer_steps_per_round: 20  # trajectories per chain and round
  steps_per_round: 300
  batch_size: 64
  lr: 3.0e-3
  weight_decay: 0.0
  max_samples: 2000       # per rank (a 4^4 link field is 64 kB)
  validation_fraction: 0.2
  validate_every: 10
  patience: 4
  precision: float64
sampler:
  kind: hmc               # hmc (exact) | slhmc (MD on the effective action, the test with the exact one)
  chains_per_rank: 8
  trajectory_length: 1.0
  md_steps: auto          # MD steps per trajectory (auto: chosen for target_acceptance before thermalisation)
  integrator: omelyan     # omelyan | leapfrog
  target_acceptance: 0.8  # md_steps auto: the acceptance the step size is chosen for
  start: cold             # cold (all U = 1) | hot (Haar-random links)
  thermalization: 50      # trajectories before measuring (after md_steps is chosen)
  measurements: 1000
  measure_every: 1
output:
  dir: runs/su2
  checkpoint_every: 300   # seconds
seed: 1234
"""


def _shape(path: str, value: Any) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 4:
        raise ConfigError(f"{path}: expected four lattice extents [Lx, Ly, Lz, Lt], got {show(value)}")
    extents = [at_least(2)(f"{path}[{k}]", v) for k, v in enumerate(value)]
    odd = [v for v in extents if v % 2]
    if odd:
        raise ConfigError(
            f"{path}: every extent must be even (staggered fermions need even and odd sites), got {show(value)}"
        )
    return extents


def _flavors(path: str, value: Any) -> int:
    if isinstance(value, bool) or value not in FLAVORS:
        raise ConfigError(f"{path}: must be one of 4 | 2 | 0, got {show(value)}")
    return int(value)


def _loops(path: str, value: Any) -> list[str] | str:
    if value == AUTO:
        return AUTO
    known = LOOP_CLASSES + EXTRA_CLASSES
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ConfigError(
            f"{path}: expected auto or a list of loop classes out of {', '.join(known)}, got {show(value)}"
        )
    for item in value:
        choice(*known)(path, item)
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}: a loop class is listed twice, got {show(value)}")
    return list(value)


RULES = {
    "model": {
        "shape": _shape,
        "beta": bounded(number, lambda v: v >= 0, ">= 0"),
        "mass": positive_number,
        "n_flavors": _flavors,
    },
    "evaluator": {"kind": choice(*EVALUATOR_KINDS)},
    "effective": {
        "kind": choice(*EFFECTIVE_KINDS),
        "n_layers": at_least(0),
        "loops": _loops,
        "mass": positive_number,
    },
    "sampler": {
        "kind": choice(*SAMPLER_KINDS),
        "trajectory_length": positive_number,
        "md_steps": auto_or(at_least(1), "chosen for sampler.target_acceptance before thermalisation"),
        "integrator": choice(*INTEGRATORS),
        "target_acceptance": bounded(number, lambda v: 0 < v < 1, "> 0 and < 1"),
        "start": choice("cold", "hot"),
    },
}

EVALUATOR_OPTIONS = {
    "dense": {},
    "cg": {
        "tol": bounded(number, lambda v: 0 < v < 1e-3, "> 0 and < 1e-3 (|r|/|b| of every solve)"),
        "max_iter": at_least(1),
        "n_noise": at_least(1),
    },
}


def check(cfg) -> None:
    slhmc_with_pseudofermions = cfg.sampler.kind == "slhmc" and cfg.evaluator.kind == "cg" and cfg.model.n_flavors
    trains_on_pseudofermions = slhmc_with_pseudofermions and cfg.effective.load is None
    if trains_on_pseudofermions and cfg.effective.kind == "loops":
        raise ConfigError(
            "effective.load: effective.kind loops has no fermion, so it cannot learn the pseudofermion action "
            "phi^dag M^-1 phi that evaluator.kind cg tests with (its targets change with every trajectory's phi). "
            "Train loops with evaluator.kind: dense (the exact log det) and name that run's run.h5 here, or use "
            "effective.kind stout or cask"
        )
    if cfg.evaluator.kind == "cg" and cfg.model.n_flavors == 2:
        raise ConfigError(
            "model.n_flavors: 2 (the square root of the staggered determinant) with evaluator.kind cg needs "
            "rational HMC, which this code does not have; use evaluator.kind: dense (the exact log det, any "
            "n_flavors) or n_flavors: 4"
        )


SCHEMA = Schema(
    defaults_yaml=DEFAULT_YAML,
    rules=RULES,
    check=check,
    evaluator_options=EVALUATOR_OPTIONS,
    list_keys=frozenset({"effective.loops"}),
)
