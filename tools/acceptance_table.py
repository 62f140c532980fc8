"""Issue 3's table: SLMC outer acceptance of linear and transformer H_eff on the 6x6 double-exchange model.

    OMP_NUM_THREADS=1 .venv/bin/python tools/acceptance_table.py [--out runs/acceptance_table] [--quick]

Physics: L = 6, t = 1, J = 1, μ = 0, T = 0.05; one inner sweep (N proposals) per outer step.
Every model starts from the same exact-MC warm-up data and the same chains, runs the self-learning
rounds of `slmc_hpc.core.learning.SelfLearning`, is then frozen, and its outer acceptance is
measured over `--measure` outer steps of every chain (error: binned over time, chains averaged).
The "test loss" is the loss on the configurations proposed during that measurement, which the
model never saw. Writes `table.md`, `table.json` and `loss_vs_parameters.png` into `--out`.
One BLAS/torch thread; run it with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from slmc_hpc.core.learning import SelfLearning, mean_squared_error
from slmc_hpc.systems.double_exchange.effective import make_effective
from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange
from slmc_hpc.systems.double_exchange.samplers import init_chains, slmc_chain
from slmc_hpc.systems.double_exchange.simulation import learning_plan

LINEAR_SHELLS = (1, 2, 3, 6, 11)  # 11: every distinct distance of the 6x6 torus (shell 11 is (3, 3))
TRANSFORMER_LAYERS = (1, 2, 3, 4, 6)
N_ATT, TRANSFORMER_N_J = 6, (6, 11)  # read-out shells: as the best issue-3 linear row; every distance


def _integers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def binned_mean(series: np.ndarray, bins: int = 20) -> tuple[float, float]:
    """Mean and error of a [steps, chains] 0/1 series: chain-averaged, then binned in time."""
    per_step = series.mean(axis=1)
    blocks = np.array([b.mean() for b in np.array_split(per_step, bins)])
    return float(per_step.mean()), float(blocks.std(ddof=1) / np.sqrt(bins))


def run_row(kind, n_J, n_layers, evaluator, training, chains, data_state, args) -> dict:
    physics = evaluator.model
    start = time.perf_counter()
    model = make_effective(SimpleNamespace(kind=kind, n_J=n_J, n_layers=n_layers, n_att=N_ATT), physics.lattice)
    learner = SelfLearning(model, learning_plan(evaluator, 1, 0), training, seed=args.seed)
    learner.data.load_state_dict(data_state)
    fit_loss = learner.fit_initial()
    rounds = []
    for r in range(training.rounds):
        if learner.trainer is not None:  # cosine decay of the learning rate over the rounds, to lr/20
            progress = r / max(training.rounds - 1, 1)
            learner.trainer.set_learning_rate(training.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress))))
        rounds.append(learner.run_round(chains))
    train_loss = mean_squared_error(model, *learner.data.arrays(), scale=physics.n_sites)
    trained = time.perf_counter()

    sampler, accepted, proposed, omega = slmc_chain(evaluator, model, inner_sweeps=1), [], [], []
    for _ in range(args.measure):
        info = sampler.step(chains)
        accepted.append(info.accepted)
        proposed.append(info.proposed)
        omega.append(info.proposed_target)
    acceptance, error = binned_mean(np.array(accepted))
    test_loss = mean_squared_error(model, np.concatenate(proposed), np.concatenate(omega), scale=physics.n_sites)
    return {
        "model": f"linear ({n_J} shells)" if kind == "linear" else f"transformer ({n_layers} layers, n_J = {n_J})",
        "kind": kind,
        "n_J": n_J,
        "n_layers": n_layers,
        "n_parameters": model.n_parameters(),
        "initial_fit_loss": fit_loss,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "acceptance": acceptance,
        "acceptance_error": error,
        "round_acceptance": [r.acceptance for r in rounds],
        "n_samples": rounds[-1].n_samples if rounds else len(learner.data),
        "seconds_training": trained - start,
        "seconds_measuring": time.perf_counter() - trained,
        "parameters": {k: v.tolist() for k, v in model.parameters().items()},
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | shells n_J | layers | parameters | final training loss | test loss | outer acceptance |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['n_J']} | {r['n_layers']} | {r['n_parameters']} | {r['train_loss']:.2e} "
            f"| {r['test_loss']:.2e} | {r['acceptance']:.3f} ± {r['acceptance_error']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    families = [("linear", "s", [r for r in rows if r["kind"] == "linear"])]
    for n_J in sorted({r["n_J"] for r in rows if r["kind"] == "transformer"}):
        subset = [r for r in rows if r["kind"] == "transformer" and r["n_J"] == n_J]
        families.append((f"transformer, n_J = {n_J}", "o", subset))
    for kind, marker, subset in families:
        if not subset:
            continue
        x = np.array([r["n_parameters"] for r in subset], dtype=float)
        y = np.array([r["train_loss"] for r in subset])
        (line,) = ax.plot(x, y, marker, label=kind)
        if len(subset) >= 2:
            slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(
                grid,
                np.exp(intercept) * grid**slope,
                "-",
                color=line.get_color(),
                lw=1,
                label=f"{kind} fit: loss ∝ P^{slope:.2f}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("trainable parameters P")
    ax.set_ylabel("final training loss  ⟨((Ω - H_eff)/N)²⟩")
    ax.set_title("6x6 double exchange, T = 0.05")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/acceptance_table")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100, help="exact local MC sweeps (shared warm-up data)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--outer", type=int, default=50, help="SLMC outer steps per training round")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per training round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--measure", type=int, default=500, help="outer steps per chain with frozen parameters")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--linear-shells", type=_integers, default=LINEAR_SHELLS, help="e.g. 1,2,3,6")
    parser.add_argument("--layers", type=_integers, default=TRANSFORMER_LAYERS, help="transformer rows, e.g. 1,2,3")
    parser.add_argument("--transformer-n-j", type=_integers, default=TRANSFORMER_N_J, help="read-out shells, e.g. 6,11")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny budgets")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.rounds, args.outer, args.steps, args.measure = 5, 1, 5, 20, 20
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    physics = DoubleExchange(6, 6, {1: 1.0}, J=1.0, mu=0.0, T=0.05)
    evaluator = SpinAction(make_evaluator("dense", physics))
    training = SimpleNamespace(
        warmup_sweeps=args.warmup,
        rounds=args.rounds,
        outer_steps_per_round=args.outer,
        steps_per_round=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        weight_decay=1e-4,
        max_samples=20000,
        validation_fraction=0.0,
        linear_rounds=0,
    )
    start = time.perf_counter()
    chains = init_chains(evaluator, args.seed, range(args.chains))
    linear = make_effective(SimpleNamespace(kind="linear", n_J=1), physics.lattice)
    warm = SelfLearning(linear, learning_plan(evaluator, 1, 0), training)
    warm.warmup(chains, args.warmup)
    print(
        f"warm-up: {args.warmup} exact sweeps x {args.chains} chains, {time.perf_counter() - start:.0f} s", flush=True
    )

    rows = []
    specs = [("linear", n, 0) for n in args.linear_shells]
    specs += [("transformer", n_J, n) for n_J in args.transformer_n_j for n in args.layers]
    for kind, n_J, n_layers in specs:
        row = run_row(kind, n_J, n_layers, evaluator, training, copy.deepcopy(chains), warm.data.state_dict(), args)
        rows.append(row)
        print(
            f"{row['model']:<36} P={row['n_parameters']:<4} train {row['train_loss']:.2e} test {row['test_loss']:.2e} "
            f"acceptance {row['acceptance']:.3f} ± {row['acceptance_error']:.3f} "
            f"(rounds {np.round(row['round_acceptance'], 2)}) "
            f"[{row['seconds_training']:.0f} s + {row['seconds_measuring']:.0f} s]",
            flush=True,
        )
    table = markdown(rows)
    total = time.perf_counter() - start
    settings = {k: v for k, v in vars(args).items()}
    (out / "table.md").write_text(
        f"{table}\n\nL = 6, t = 1, J = 1, μ = 0, T = 0.05; 1 inner sweep per outer step; transformer n_att = {N_ATT}, "
        f"n_J = {args.transformer_n_j}; acceptance over {args.measure} outer steps x {args.chains} chains (frozen); "
        f"settings {settings}; {total:.0f} s in all.\n"
    )
    (out / "table.json").write_text(json.dumps({"settings": settings, "seconds": total, "rows": rows}, indent=1))
    plot(rows, out / "loss_vs_parameters.png")
    print(table)
    print(f"wrote {out}/table.md, table.json, loss_vs_parameters.png ({total:.0f} s)")


if __name__ == "__main__":
    main()
