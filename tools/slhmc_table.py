"""Self-learning HMC of SU(2) at the seeds' point: every effective action against exact HMC, one table.

4^4, beta = 2.7, m = 0.3, Nf = 4 (docs/design.md §9). One process, `--threads` torch threads, everything drawn
from `--seed`, so the table is bit for bit reproducible. The chains are thermalised once by exact HMC (dense);
every row starts from those links. Rows:

- exact HMC at m = 0.3;
- untrained SLHMC: identity links (no layers) at m_eff = 0.4, read-out (0, 1, 1);
- `loops` (plaquette, rectangle, chair, the Polyakov lines in t, x, y, z; least squares);
- `stout0`: no layers, the read-out alone trained (c_g, c_f at m_eff = 0.4, with `cg` the hopping terms too);
- `stout` with 1, 2 and 4 layers, `cask` with 1, 2 and 4 layers (m_eff = 0.4; plaquette and rectangle kernels).

Each self-learning row is trained with the framework's own loop (`core.learning.SelfLearning`: exact-HMC
warm-up, SLHMC rounds under the current model, AdamW on the seeds' loss (S_eff - S)^2 / (2V) with held-out
validation and a cosine schedule, the read-out by least squares) with the evaluator it then runs with: `dense` on
the exact log det, `cg` on the pseudofermion action under each trajectory's phi; then it is frozen. Production
runs every row on the same trajectory (length 1, 20 leapfrog steps, as the seeds' table) with both evaluators:
`dense` (the test with the exact log det) and `cg` (the pseudofermion drawn with the true operator and held fixed
through the MD and the test; not for `loops`, which has no fermion to follow it with). With `--tuned`, also on its
own trajectory (Omelyan, md_steps chosen for acceptance 0.8).

Columns: parameters, training and test loss (per 2V), acceptance, <exp(-dH)>, seconds per trajectory per chain,
CG iterations per trajectory (cg: every solve of the MD, the refresh and the test), ESS/s of plaquette and pbp in
production alone and with the training's seconds included. The plot `--plot` shows the test loss against the
number of parameters for stout and CASK.

    .venv/bin/python tools/slhmc_table.py                                   # the full table
    .venv/bin/python tools/slhmc_table.py --rows hmc loops stout1 --trajectories 40 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from slmc_hpc.analysis import gamma_analysis
from slmc_hpc.config import config_from_dict
from slmc_hpc.core.chains import ChainState, chain_streams, initial_state
from slmc_hpc.core.learning import SelfLearning

ROWS = ("hmc", "untrained", "loops", "stout0", "stout1", "stout2", "stout4", "cask1", "cask2", "cask4")
TRAINING = {
    "warmup_sweeps": 4,
    "rounds": 4,
    "outer_steps_per_round": 4,
    "steps_per_round": 30,
    "batch_size": 8,
    "lr": 5.0e-3,
    "validate_every": 5,
    "patience": 4,
    "max_samples": 2000,
}


def job(row: str, evaluator: str, chains: int, seed: int) -> dict:
    settings = {
        "model": {"kind": "su2_staggered", "shape": [4, 4, 4, 4], "beta": 2.7, "mass": 0.3, "n_flavors": 4},
        "evaluator": {"kind": evaluator},
        "sampler": {"kind": "hmc", "chains_per_rank": chains, "integrator": "leapfrog", "md_steps": 20},
        "training": TRAINING,
        "seed": seed,
    }
    if row != "hmc":
        kind = "stout" if row == "untrained" else row.rstrip("0124")
        layers = 0 if row == "untrained" else int(row[-1]) if row[-1].isdigit() else 0
        loops = "auto" if kind == "loops" else ["plaquette", "rectangle"]  # loops: every class
        settings["effective"] = {"kind": kind, "n_layers": layers, "loops": loops, "mass": 0.4}
        settings["sampler"]["kind"] = "slhmc"
    return settings


def simulation(settings: dict):
    from slmc_hpc.systems.su2_staggered.simulation import GaugeSimulation

    return GaugeSimulation(config_from_dict(settings))


def copy_state(state: ChainState) -> ChainState:
    return copy.deepcopy(state)


def sample(stepper, sim, state: ChainState, trajectories: int) -> dict:
    """`trajectories` steps of every chain: acceptance, dH, CG iterations and the observables per step."""
    series = {name: [] for name in ("plaquette", "polyakov", "pbp")}
    accepted, dh, cg = [], [], []
    started = time.perf_counter()
    for _ in range(trajectories):
        info = stepper.step(state)
        accepted.append(info.accepted)
        dh.append(info.samples["dH"])
        if "cg_iterations" in info.samples:
            cg.append(info.samples["cg_iterations"])
        for name, values in sim.measure(state).items():
            series[name].append(values)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "accepted": np.array(accepted), "dH": np.array(dh), "cg": np.array(cg)} | {
        name: np.array(values) for name, values in series.items()
    }


def ess(series: np.ndarray) -> tuple[float, float]:
    """(ESS, tau_int) of [steps, chains] by the run analysis' own Gamma method (`analysis.gamma_analysis`)."""
    stats = gamma_analysis(np.ascontiguousarray(series.T))
    return float(stats["ess"]), float(stats["tau_int"])


def solves_per_trajectory(row: str, md_steps: int, integrator: str) -> int:
    """CG solves of one trajectory: the refresh and the test, and one per force of a fermion MD (leapfrog: n + 1)."""
    forces = md_steps + 1 if integrator == "leapfrog" else 2 * md_steps + 1
    return 2 + (0 if row == "loops" else forces)


def train(row: str, evaluator: str, state: ChainState, args) -> tuple:
    """The row's effective action trained with `evaluator` from the thermalised chains by the framework's loop:
    (effective or None, (train loss, test loss), seconds, the chains after training)."""
    trained_state = copy_state(state)
    train_seconds, losses, effective = 0.0, (float("nan"), float("nan")), None
    if row != "hmc":
        sim = simulation(job(row, evaluator, args.chains, args.seed))
        effective = sim.effective
        started = time.perf_counter()
        if row != "untrained":
            trained_state = initial_state(sim.action, trained_state.config, trained_state.rngs, trained_state.chains)
            learner = SelfLearning(effective, sim.learning(), sim.config.training, seed=args.seed)
            learner.warmup(trained_state, int(TRAINING["warmup_sweeps"]))
            learner.fit_initial()
            result = None
            for _ in range(int(TRAINING["rounds"])):
                result = learner.run_round(trained_state)
            losses = (result.data_loss, result.validation_loss)
            print(f"# {row} trained with {evaluator} in {time.perf_counter() - started:.0f} s", flush=True)
        train_seconds = time.perf_counter() - started
    return effective, losses, train_seconds, trained_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--evaluators", nargs="+", choices=("dense", "cg"), default=["dense", "cg"])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--thermalization", type=int, default=120, help="exact HMC trajectories shared by all rows")
    parser.add_argument("--trajectories", type=int, default=60, help="production trajectories per row and evaluator")
    parser.add_argument("--tuned", action="store_true", help="also each row on its own tuned trajectory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default="slhmc_loss.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# SLHMC table: 4^4, beta 2.7, m 0.3, Nf 4; {args.chains} chains, {args.threads} threads", flush=True)
    base = simulation(job("hmc", "dense", args.chains, args.seed))
    rngs = chain_streams(args.seed, range(args.chains))
    state = initial_state(base.action, base.initial_configurations(rngs), rngs, range(args.chains))
    # From the cold start (U = 1) even 8 steps of 1/8 give dH ~ 14 and accept nothing: 40 steps first, then the
    # table's 20 (dH ~ 0.1 once the links are disordered).
    started = time.perf_counter()
    for k in range(args.thermalization):
        base.hmc(40 if k < args.thermalization // 3 else 20).step(state)
    print(
        f"# thermalised by {args.thermalization} exact trajectories in {time.perf_counter() - started:.0f} s",
        flush=True,
    )

    rows, trained = [], {}
    for row in args.rows:
        for evaluator in args.evaluators:
            # stout and cask train with the evaluator they run with (cg: on the pseudofermion action under each
            # trajectory's phi); loops has no fermion to follow phi^dag M^-1 phi with (cg never accepts it)
            if row == "loops" and evaluator == "cg":
                continue
            if (row, evaluator) not in trained:
                trained[row, evaluator] = train(row, evaluator, state, args)
            effective, losses, train_seconds, trained_state = trained[row, evaluator]
            n_parameters = 0 if effective is None else int(effective.n_parameters())
            sim = simulation(job("hmc", evaluator, args.chains, args.seed))
            for trajectory in ("fixed", "tuned") if args.tuned else ("fixed",):
                chains = copy_state(trained_state)
                chains = initial_state(sim.action, chains.config.copy(), chains.rngs, chains.chains)
                used = sim
                if trajectory == "fixed":
                    md_steps, integrator = 20, "leapfrog"
                else:  # Omelyan, md_steps for acceptance 0.8 under this row's force (measured on these chains)
                    settings = job("hmc", evaluator, args.chains, args.seed)
                    settings["sampler"] = {"kind": "hmc", "integrator": "omelyan", "chains_per_rank": args.chains}
                    used = simulation(settings)
                    used.effective = effective
                    md_steps, integrator = int(used.tune(chains, None).settings["md_steps"]), "omelyan"
                stepper = used.hmc(md_steps, effective)
                out = sample(stepper, used, chains, args.trajectories)
                record = {
                    "row": row,
                    "evaluator": evaluator,
                    "trajectory": f"{integrator} {md_steps}",
                    "parameters": n_parameters,
                    "train_loss": losses[0],
                    "test_loss": losses[1],
                    "train_s": train_seconds,
                    "acceptance": float(out["accepted"].mean()),
                    "exp_minus_dH": float(np.exp(-out["dH"]).mean()),
                    "exp_minus_dH_error": float(np.exp(-out["dH"]).mean(axis=0).std(ddof=1) / np.sqrt(args.chains)),
                    "s_per_trajectory": out["seconds"] / (args.trajectories * args.chains),
                    "production_s": out["seconds"],
                }
                if evaluator == "cg":
                    record["cg_per_trajectory"] = float(out["cg"].mean()) * solves_per_trajectory(
                        row, md_steps, integrator
                    )
                for name in ("plaquette", "pbp"):
                    with contextlib.suppress(Exception):
                        n_eff, tau = ess(out[name])
                        record[f"tau_{name}"] = tau
                        record[f"ess_per_s_{name}"] = n_eff / out["seconds"]
                        record[f"ess_per_s_{name}_with_training"] = n_eff / (out["seconds"] + train_seconds)
                    record[f"mean_{name}"] = float(out[name].mean())
                rows.append(record)
                print(line(record), flush=True)
    print()
    print(HEADER)
    for record in rows:
        print(line(record))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    plot_losses(rows, args.plot)


HEADER = (
    "| row | evaluator | trajectory | parameters | train loss | test loss | acceptance | <exp(-dH)> "
    "| s/traj/chain | CG it/traj | ESS/s plaq (prod, +train) | ESS/s pbp (prod, +train) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def line(r: dict) -> str:
    def rate(name):
        if f"ess_per_s_{name}" not in r:
            return "-"
        return f"{r[f'ess_per_s_{name}']:.3g}, {r[f'ess_per_s_{name}_with_training']:.3g}"

    cg = f"{r['cg_per_trajectory']:.0f}" if "cg_per_trajectory" in r else "-"
    loss = "- | -" if np.isnan(r["train_loss"]) else f"{r['train_loss']:.3g} | {r['test_loss']:.3g}"
    return (
        f"| {r['row']} | {r['evaluator']} | {r['trajectory']} | {r['parameters']} | {loss} | {r['acceptance']:.3f} | "
        f"{r['exp_minus_dH']:.3f}({1000 * r['exp_minus_dH_error']:.0f}) | {r['s_per_trajectory']:.3g} | {cg} | "
        f"{rate('plaquette')} | {rate('pbp')} |"
    )


def plot_losses(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    targets = {"dense": "on log det", "cg": r"on $\phi^\dagger M^{-1}\phi$"}
    for kind, marker in (("stout", "o"), ("cask", "s")):
        for evaluator, style in (("dense", "-"), ("cg", "--")):
            chosen = [r for r in rows if r["row"].startswith(kind) and r["evaluator"] == evaluator]
            points = sorted({(r["parameters"], r["test_loss"]) for r in chosen})
            if points:
                label = f"{kind}, trained {targets[evaluator]} ({evaluator})"
                ax.plot(*zip(*points, strict=True), marker=marker, linestyle=style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("trainable parameters (network + read-out)")
    ax.set_ylabel(r"test loss $(S_\mathrm{eff} - S)^2 / 2V$")
    ax.set_title(r"SLHMC effective actions, $4^4$, $\beta = 2.7$, $m = 0.3 \to m_\mathrm{eff} = 0.4$")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
