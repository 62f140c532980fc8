"""Training H_eff on exactly evaluated configurations, across MPI ranks (DESIGN §3).

Every rank keeps its own data. The linear fit sums the normal equations over ranks; gradient
training sums the gradients of the *sum* of squared errors and the sample counts over ranks, so a
step equals a step on the union of all ranks' minibatches, and every rank applies the same step.
Rank 0's parameters are broadcast after every `train` call, so the ranks can never drift apart.
MPI goes through `slmc_hpc.parallel`; nothing here touches files.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass

import numpy as np
import torch

from slmc_hpc import parallel
from slmc_hpc.errors import TrainingError

#: spawn_key tags of the minibatch streams and of the proposal refit on a new lattice (chain streams
#: use spawn_key=(chain,), a 1-tuple, so these 2- and 3-tuples never collide with them).
MINIBATCH_STREAM = 0x5452
PROPOSAL_STREAM = 0x5052


def fit_linear(model, spins: np.ndarray, omega: np.ndarray, comm=None, features: np.ndarray | None = None) -> float:
    """Least-squares fit of E_0 and J_n (the read-out; for the transformer also K_n) to Ω; returns the global loss.

    Features are [1, -Σ_<ij>_1 S·S, ...] of `model.features` (the effective spins of a transformer,
    which are the bare spins while W^V = 0, and their biquadratic columns Σ_<ij>_n (S·S)²); pass
    them as `features` where they are already known (`FeatureCache`). The loss is the mean of
    ((Ω - H_eff)/N)², with H_eff = features @ coefficients (no second pass over the data).
    """
    if features is None:
        features = model.features(spins) if len(omega) else np.zeros((0, model.n_readout))
    prediction = features @ fit_readout(model, features, omega, comm)
    return readout_error(prediction, omega, model.lattice.n_sites, comm)


def fit_readout(model, features: np.ndarray, omega: np.ndarray, comm=None) -> np.ndarray:
    """Solve the read-out from its features and set it on `model`; returns the coefficients c (H_eff = features @ c).

    The normal equations X^T X c = X^T Ω are summed over ranks, so the fit equals a fit of all data
    on one rank; `lstsq` gives the minimum-norm solution where small lattices make shells
    indistinguishable.
    """
    features = np.asarray(features, dtype=np.float64).reshape(len(omega), -1)
    omega = np.asarray(omega, dtype=np.float64)
    k = features.shape[1]
    packed = np.concatenate([(features.T @ features).ravel(), features.T @ omega])
    # Broadcast rank 0's sums: an allreduce need not round identically on every rank.
    packed = parallel.broadcast_array(comm, parallel.allreduce_sum(comm, packed))
    normal_matrix, rhs = packed[: k * k].reshape(k, k), packed[k * k :]
    coefficients = np.linalg.lstsq(normal_matrix, rhs, rcond=None)[0]
    model.set_readout(coefficients[0], coefficients[1:])
    return coefficients


def readout_error(prediction: np.ndarray, omega: np.ndarray, n_sites: int, comm=None) -> float:
    """Global mean of ((Ω - prediction)/N)² over every rank's rows (nan without any)."""
    local = ((np.asarray(omega, dtype=np.float64) - prediction) / n_sites) ** 2 if len(omega) else np.zeros(0)
    total, count = parallel.allreduce_sum(comm, np.array([local.sum(), float(local.size)]))
    return float(total / count) if count else float("nan")


def predict(model, spins: np.ndarray) -> np.ndarray:
    """H_eff of a whole data set, in chunks where the model needs them ([B, N, N] per layer)."""
    return model.energy_chunked(spins) if hasattr(model, "energy_chunked") else model.energy(spins)


def mean_squared_error(model, spins: np.ndarray, omega: np.ndarray, comm=None) -> float:
    """Global mean of ((Ω - H_eff)/N)² over every rank's data."""
    prediction = predict(model, spins) if len(omega) else np.zeros(0)
    return readout_error(prediction, omega, model.lattice.n_sites, comm)


class Trainer:
    """AdamW on MSE((Ω - H_eff)/N), data-parallel over the ranks of `comm`.

    Minibatches: each rank draws `batch_size` of its own samples per step (without replacement)
    from a generator seeded by (seed, rank, call counter); the counter is part of the state, so a
    restart from `state_dict()` continues bit for bit.

    Only the parameters named in the model's `GRADIENT_PARAMETERS` (all, if it has none) are
    optimized. The transformer's read-out (E_0, J_n) is linear and solved exactly by `fit_linear`
    around every round; AdamW steps of size ~lr on couplings of size ~1e-2 and on an extensive
    E_0 would only spoil it (measured: a 40x worse validation loss after 300 steps at L = 12).
    """

    def __init__(self, model, training_config, n_sites: int, comm=None, seed: int = 0):
        self.model, self.n_sites, self.comm, self.seed = model, n_sites, comm, int(seed)
        self.rank = comm.Get_rank() if comm is not None else 0
        self.batch_size = int(training_config.batch_size)
        self.module = model.torch_module()
        trained = getattr(model, "GRADIENT_PARAMETERS", None)
        self.named = [(name, p) for name, p in self.module.named_parameters() if trained is None or name in trained]
        for name, p in self.module.named_parameters():
            p.requires_grad_(trained is None or name in trained)
        self.params = [p for _, p in self.named]
        # Mixed precision: forward and backward passes in a float32 copy of the network (2.2-2.7x faster per
        # step at L = 12-16), gradients applied to the float64 parameters, the only ones H_eff ever uses.
        self.precision = str(getattr(training_config, "precision", "float64"))
        self.compute_module = self.module
        if self.precision == "float32":
            self.compute_module = copy.deepcopy(self.module).to(torch.float32)
        computed = dict(self.compute_module.named_parameters())
        self.compute_params = [computed[name] for name, _ in self.named]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=float(training_config.lr), weight_decay=float(training_config.weight_decay), foreach=False
        )
        self.step_count = 0
        self.call_count = 0
        #: Wall seconds spent in optimizer steps and, within them, in the gradient allreduce (for scaling).
        self.seconds = {"step": 0.0, "allreduce": 0.0}

    # -- gradients ------------------------------------------------------------------------------
    def _local_sums(self, spins: np.ndarray, omega: np.ndarray) -> np.ndarray:
        """[sum of squared errors, count, gradient of that sum (flattened)] on this rank's samples.

        In float32 the network's output is cast to float64 before Ω is subtracted, so the residual
        (a small difference of two large numbers) keeps its digits.
        """
        module = self.compute_module
        if module is not self.module:  # the float32 copy takes the current float64 parameters
            with torch.no_grad():
                for copy_, master in zip(module.parameters(), self.module.parameters(), strict=True):
                    copy_.copy_(master)
        module.zero_grad(set_to_none=False)
        if len(omega):
            dtype = next(module.parameters()).dtype
            prediction = module(torch.from_numpy(np.ascontiguousarray(spins)).to(dtype)).to(torch.float64)
            residual = (torch.from_numpy(np.asarray(omega, dtype=np.float64)) - prediction) / self.n_sites
            sse = (residual * residual).sum()
            sse.backward()
            sse_value = sse.item()
        else:
            sse_value = 0.0
        grads = [
            p.grad.reshape(-1).to(torch.float64) if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64)
            for p in self.compute_params
        ]
        return np.concatenate([[sse_value, float(len(omega))], torch.cat(grads).numpy()])

    def gradient(self, spins: np.ndarray, omega: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Global loss and mean gradient over every rank's (spins, Ω) (no step taken)."""
        sums = parallel.allreduce_sum(self.comm, self._local_sums(spins, omega))
        return float(sums[0] / sums[1]), self._unflatten(sums[2:] / sums[1])

    def _unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for name, p in self.named:
            out[name] = flat[start : start + p.numel()].reshape(p.shape)
            start += p.numel()
        return out

    # -- training -------------------------------------------------------------------------------
    def _minibatch_rng(self) -> np.random.Generator:
        sequence = np.random.SeedSequence(self.seed, spawn_key=(MINIBATCH_STREAM, self.rank, self.call_count))
        return np.random.Generator(np.random.PCG64(sequence))

    def train(self, spins: np.ndarray, omega: np.ndarray, steps: int) -> np.ndarray:
        """`steps` AdamW steps on minibatches of every rank's data; returns the global loss per step.

        Raises TrainingError (after restoring the last good state) on a non-finite loss, gradient
        or parameter: NaN parameters are never kept.
        """
        rng = self._minibatch_rng()
        self.call_count += 1
        losses = np.array([self._step(rng, spins, omega) for _ in range(steps)])
        self._synchronise()
        return losses

    def _step(self, rng: np.random.Generator, spins: np.ndarray, omega: np.ndarray) -> float:
        """One AdamW step on a minibatch of every rank's data; the global minibatch loss."""
        started = time.perf_counter()
        n_local = len(omega)
        batch = rng.choice(n_local, size=min(self.batch_size, n_local), replace=False) if n_local else []
        local = self._local_sums(spins[batch], np.asarray(omega)[batch])
        reducing = time.perf_counter()
        sums = parallel.allreduce_sum(self.comm, local)
        self.seconds["allreduce"] += time.perf_counter() - reducing
        count = sums[1]
        if count == 0:
            raise TrainingError("no training data on any rank")
        loss, gradient = sums[0] / count, sums[2:] / count
        if not (np.isfinite(loss) and np.all(np.isfinite(gradient))):
            self._fail(f"non-finite loss or gradient at training step {self.step_count}: loss = {loss}")
        last_good = self.state_dict()
        self._apply(gradient)
        if not all(torch.isfinite(p).all() for p in self.params):
            self.load_state_dict(last_good)
            self._fail(f"non-finite parameters after training step {self.step_count}: loss = {loss}")
        self.step_count += 1
        self.seconds["step"] += time.perf_counter() - started
        return float(loss)

    def train_round(
        self, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray], schedule
    ) -> tuple[np.ndarray, np.ndarray]:
        """At most `schedule.steps_per_round` steps under a cosine learning rate (lr -> lr/10), stopped
        when the validation loss has not improved for `schedule.patience` validations (every
        `schedule.validate_every` steps); the parameters with the best validation loss are kept.

        Returns (minibatch loss per step, validation loss per validation). The decision to stop is
        taken on rank 0's validation loss (broadcast), so every rank stops at the same step.
        """
        rng = self._minibatch_rng()
        self.call_count += 1
        steps, every = int(schedule.steps_per_round), int(getattr(schedule, "validate_every", 10))
        patience = int(getattr(schedule, "patience", 4))
        peak = float(schedule.lr)
        best, best_loss, since_best = None, np.inf, 0
        losses, validation_losses = [], []
        for k in range(-1, steps):  # k = -1: the validation loss of the starting point
            if k >= 0:
                self.set_learning_rate(peak * (0.1 + 0.45 * (1.0 + np.cos(np.pi * k / steps))))
                losses.append(self._step(rng, *train))
                if (k + 1) % every and k + 1 < steps:
                    continue
            loss = float(parallel.broadcast(self.comm, mean_squared_error(self.model, *validation, self.comm)))
            validation_losses.append(loss)
            if not np.isfinite(loss):  # no validation data (validation_fraction 0): train every step
                continue
            if loss < best_loss:
                best, best_loss, since_best = [p.detach().clone() for p in self.params], loss, 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
        if best is not None:
            with torch.no_grad():
                for p, value in zip(self.params, best, strict=True):
                    p.copy_(value)
        self.set_learning_rate(peak)
        self._synchronise()
        return np.array(losses), np.array(validation_losses)

    def set_learning_rate(self, lr: float) -> None:
        """For a schedule driven by the caller (e.g. decay over rounds); not part of `state_dict`."""
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)

    def _apply(self, gradient: np.ndarray) -> None:
        start = 0
        for p in self.params:
            p.grad = torch.from_numpy(gradient[start : start + p.numel()].reshape(p.shape).copy())
            start += p.numel()
        self.optimizer.step()

    def _fail(self, message: str) -> None:
        self._sync_model()
        raise TrainingError(message)

    def _synchronise(self) -> None:
        """Rank 0's parameters and optimizer moments on every rank, bit for bit."""
        if self.comm is not None and self.comm.Get_size() > 1:
            state = self.state_dict()
            keys = sorted(k for k, v in state.items() if v.dtype == np.float64)
            flat = parallel.broadcast_array(self.comm, np.concatenate([state[k].ravel() for k in keys]))
            start = 0
            for key in keys:
                state[key] = flat[start : start + state[key].size].reshape(state[key].shape)
                start += state[key].size
            self.load_state_dict(state)
        self._sync_model()

    def _sync_model(self) -> None:
        """Copy the module's parameters into the model (a no-op for the transformer, whose module is live)."""
        trained = {name: p.detach().numpy().copy() for name, p in self.named}
        self.model.set_parameters({**self.model.parameters(), **trained})

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat dict of numpy arrays: counters, every parameter of the module, AdamW moments and step counts."""
        state = {"step_count": np.array(self.step_count), "call_count": np.array(self.call_count)}
        state.update({f"param/{name}": p.detach().numpy().copy() for name, p in self.module.named_parameters()})
        adam = self.optimizer.state
        for name, p in self.named:
            if p in adam and "exp_avg" in adam[p]:
                state[f"exp_avg/{name}"] = adam[p]["exp_avg"].numpy().copy()
                state[f"exp_avg_sq/{name}"] = adam[p]["exp_avg_sq"].numpy().copy()
                state[f"adam_step/{name}"] = np.array(float(adam[p]["step"]))
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.step_count, self.call_count = int(state["step_count"]), int(state["call_count"])
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        optimizer_state = self.optimizer.state_dict()
        optimizer_state["state"] = {}
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                if f"param/{name}" in state:
                    p.copy_(torch.from_numpy(np.asarray(state[f"param/{name}"], dtype=np.float64)).reshape(p.shape))
            for index, (name, _) in enumerate(self.named):
                if f"exp_avg/{name}" in state:
                    optimizer_state["state"][index] = {
                        "step": torch.tensor(float(state[f"adam_step/{name}"]), dtype=step_dtype),
                        "exp_avg": torch.from_numpy(np.array(state[f"exp_avg/{name}"], dtype=np.float64)),
                        "exp_avg_sq": torch.from_numpy(np.array(state[f"exp_avg_sq/{name}"], dtype=np.float64)),
                    }
        self.optimizer.load_state_dict(optimizer_state)
        self._sync_model()


class TrainingData:
    """This rank's exactly evaluated configurations (spins, Ω), at most `max_samples` (oldest dropped).

    Appends are O(batch) (chunks are joined lazily, once per `arrays()` after new data), because
    the SLMC loop appends after every outer step. The oldest `unfitted` samples are kept but left
    out of `fitted()` (the bootstrap's uniform configurations, see SelfLearning).
    """

    def __init__(self, n_sites: int, max_samples: int | None = None):
        self.n_sites, self.max_samples = n_sites, max_samples
        self._spins: list[np.ndarray] = []
        self._omega: list[np.ndarray] = []
        self._count = 0
        self.unfitted = 0
        #: One past the number of the newest row: rows are numbered in the order they were appended (in
        #: this process; a load renumbers), so `FeatureCache` can tell which rows it has already seen.
        self.end_row = 0

    def __len__(self) -> int:
        return self._count

    def append(self, spins: np.ndarray, omega: np.ndarray) -> None:
        omega = np.array(omega, dtype=np.float64).reshape(-1)
        self._spins.append(np.array(spins, dtype=np.float64).reshape(len(omega), self.n_sites, 3))
        self._omega.append(omega)
        self._count += len(omega)
        self.end_row += len(omega)
        excess = self._count - self.max_samples if self.max_samples is not None else 0
        while excess > 0:
            drop = min(excess, len(self._omega[0]))
            self._spins[0], self._omega[0] = self._spins[0][drop:], self._omega[0][drop:]
            if not len(self._omega[0]):
                del self._spins[0], self._omega[0]
            self._count -= drop
            self.unfitted = max(0, self.unfitted - drop)
            excess -= drop

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples, oldest first: spins [M, N, 3] and Ω [M]."""
        if len(self._omega) != 1:
            spins = np.concatenate(self._spins) if self._spins else np.zeros((0, self.n_sites, 3))
            omega = np.concatenate(self._omega) if self._omega else np.zeros(0)
            self._spins, self._omega = [spins], [omega]
        return self._spins[0], self._omega[0]

    def fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples that fits and training use: all but the oldest `unfitted` (all, if nothing else is left)."""
        spins, omega = self.arrays()
        skip = self.unfitted if self.unfitted < len(omega) else 0
        return spins[skip:], omega[skip:]

    def state_dict(self) -> dict[str, np.ndarray]:
        spins, omega = self.arrays()
        return {"spins": spins.copy(), "omega": omega.copy(), "unfitted": np.array(self.unfitted)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._spins, self._omega, self._count = [], [], 0
        self.unfitted = int(state.get("unfitted", 0))  # checkpoints before the bootstrap cut fit everything
        self.append(state["spins"], state["omega"])  # (a smaller max_samples drops the oldest, the cut moves)


#: Parameters that set the read-out's coefficients rather than its features (and the proposal's, a sampling aid).
READOUT_PARAMETERS = ("e0", "couplings", "biquadratic")


def feature_key(model) -> bytes:
    """The parameters a model's read-out features depend on (the transformer's attention; none for a linear model)."""
    parameters = model.parameters()
    names = sorted(n for n in parameters if n not in READOUT_PARAMETERS and not n.startswith("proposal_"))
    return b"".join(np.ascontiguousarray(parameters[n], dtype=np.float64).tobytes() for n in names)


class FeatureCache:
    """A model's read-out features of one `TrainingData`'s fitted rows, each row computed once per feature map.

    Rows join a TrainingData at the end and leave at the front, and the features depend only on
    the parameters outside the read-out (`feature_key`). So between two gradient rounds only the
    new rows need a pass through the network, and for a linear model (the proposal) no row is ever
    computed twice. A row's features are the same bits whatever batch it is computed in (the
    models' per-row reductions), so a cached row equals a fresh one and a resumed run, whose cache
    starts empty, stays bitwise the same.
    """

    def __init__(self, data: TrainingData, model):
        self.data, self.model = data, model
        self._key: bytes | None = None
        self._first = 0
        self._features = np.zeros((0, model.n_readout))

    def fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`data.fitted()` with the model's features of those rows: spins [M, N, 3], Ω [M], features [M, k]."""
        spins, omega = self.data.fitted()
        first, key = self.data.end_row - len(omega), feature_key(self.model)
        # Rows numbered from `first` on that the cache holds (none past its end, none under another key).
        reusable = key == self._key and first >= self._first
        known = self._features[first - self._first :] if reusable else self._features[:0]
        fresh = self.model.features(spins[len(known) :]) if len(omega) > len(known) else self._features[:0]
        self._key, self._first, self._features = key, first, np.concatenate([known, fresh])
        return spins, omega, self._features


def pack_state(state: dict[str, np.ndarray]) -> bytes:
    """A flat dict of arrays as bytes (npz, no pickle), for the checkpoint's opaque blobs."""
    buffer = io.BytesIO()
    np.savez(buffer, **{key.replace("/", "|"): np.asarray(value) for key, value in state.items()})
    return buffer.getvalue()


def unpack_state(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {key.replace("|", "/"): archive[key] for key in archive.files}


@dataclass
class RoundResult:
    """One self-learning round: global outer acceptance, global number of stored samples, the loss per
    optimizer step (minibatches; none for linear rounds), the loss on the training data and on the
    held-out validation data after the round's fit."""

    acceptance: float
    n_samples: int
    losses: np.ndarray
    data_loss: float = float("nan")
    validation_loss: float = float("nan")


#: Training history (DESIGN §5 `/training`): loss per optimizer step; per round the outer acceptance,
#: the number of stored samples (all ranks, training + validation), the loss on the training data and
#: on the held-out validation data after the round's fit, and the optimizer steps it took.
HISTORY = ("loss", "round_acceptance", "round_samples", "round_loss", "round_validation_loss", "round_steps")

#: Inner chain of the training rounds where the sampler's is `auto` (tuned only after training):
#: 4 sweeps decorrelate the proposals from the chain they start from; sub-chains of N/2 moves.
TRAINING_INNER_SWEEPS = 4


def training_inner_chain(inner_sweeps, inner_block, n_sites: int) -> tuple[int, int]:
    """(inner sweeps, inner block) of the training rounds for the sampler's settings (`auto` allowed)."""
    sweeps = TRAINING_INNER_SWEEPS if inner_sweeps == "auto" else int(inner_sweeps)
    block = max(1, n_sites // 2) if inner_block == "auto" else int(inner_block)
    return sweeps, block


class SelfLearning:
    """The resumable sample-then-train loop (DESIGN §3); the driver calls it between checkpoints.

    Every exactly evaluated configuration becomes data: a fixed fraction (`validation_fraction`, by a
    deterministic count) is held out for validation and never trained on, not even by the linear fits.
    Bootstrap without exact sweeps: an untrained model is H_eff = 0, so the first round's proposals
    are random configurations (one diagonalisation each). They give the first fit, and are then kept
    (stored, counted) but not fitted again: uniform configurations carry no weight under exp(-Ω/T)
    at the temperatures SLMC is for (at L = 12, T = 0.05 their Ω/N lies 4σ above the chains'), and
    least squares spends its parameters on them. Measured at L = 12 on 1600 configurations of the
    chains' distribution: the all-shell fit's residual rises from 0.051 to 0.063 with 480 of them,
    which lowers the predicted outer acceptance from 0.47 to 0.38. The first `linear_rounds` rounds fit only
    the linear read-out (for the transformer: the all-shell Heisenberg model its attention starts
    from), each round sampling with the previous fit. Later rounds take at most `steps_per_round`
    AdamW steps (cosine schedule, stopped on the validation loss), refit the read-out exactly, and
    refit the proposal model of the nested inner chain to the new H_eff.

    Explicit state (`state_dict`): this rank's data, the round index, the histories and the
    trainer (rank 0's copy is the one to store; `load_state_dict` broadcasts it). No file I/O.

    >>> learner = SelfLearning(effective, evaluator, config.training, comm, seed, inner_sweeps)
    >>> learner.warmup(state, config.training.warmup_sweeps); learner.fit_initial()
    >>> for _ in range(config.training.rounds): result = learner.run_round(state)
    """

    def __init__(
        self,
        effective,
        evaluator,
        training_config,
        comm=None,
        seed: int = 0,
        inner_sweeps: int | str = 1,
        inner_block: int | str = 0,
    ):
        self.effective, self.evaluator, self.config, self.comm = effective, evaluator, training_config, comm
        n_sites = evaluator.model.n_sites
        self.inner_sweeps, self.inner_block = training_inner_chain(inner_sweeps, inner_block, n_sites)
        self.data = TrainingData(n_sites, getattr(training_config, "max_samples", None))
        self.validation = TrainingData(n_sites, getattr(training_config, "max_samples", None))
        self.validation_fraction = float(getattr(training_config, "validation_fraction", 0.0))
        self.linear_rounds = int(getattr(training_config, "linear_rounds", 0))
        self.seen = 0  # configurations this rank has split into training and validation data
        self.trainer = None
        if effective.kind != "linear":
            self.trainer = Trainer(effective, training_config, n_sites, comm=comm, seed=seed)
        self.round = 0
        self.history: dict[str, list[float]] = {name: [] for name in HISTORY}
        # Features of the stored rows for the read-out fits and for the proposal's (computed once per row).
        self.features = FeatureCache(self.data, effective)
        self.validation_features = FeatureCache(self.validation, effective)
        proposal = effective.new_proposal() if hasattr(effective, "new_proposal") else None
        self.proposal_features = FeatureCache(self.data, proposal) if proposal is not None else None

    def _global_mean(self, values: np.ndarray) -> float:
        total, count = parallel.allreduce_sum(self.comm, np.array([np.sum(values), float(np.size(values))]))
        return float(total / count)

    def _global_samples(self) -> int:
        return int(parallel.allreduce_sum(self.comm, np.array([float(len(self.data) + len(self.validation))]))[0])

    def add(self, spins: np.ndarray, omega: np.ndarray) -> None:
        """New exactly evaluated configurations: every k-th (k = 1/validation_fraction, by this rank's
        running count, so the split survives restarts) goes to the validation data."""
        omega = np.asarray(omega, dtype=np.float64).reshape(-1)
        count = np.arange(self.seen, self.seen + len(omega))
        held_out = np.floor((count + 1) * self.validation_fraction) > np.floor(count * self.validation_fraction)
        self.seen += len(omega)
        spins = np.asarray(spins, dtype=np.float64).reshape(len(omega), -1, 3)
        if held_out.any():
            self.validation.append(spins[held_out], omega[held_out])
        if (~held_out).any():
            self.data.append(spins[~held_out], omega[~held_out])

    def _samples_uniformly(self) -> bool:
        """True while H_eff = 0 (no coupling fitted yet): SLMC proposals are then uniform on the spheres."""
        return not np.any(self.effective.parameters()["couplings"])

    def warmup(self, state, sweeps: int) -> float:
        """`sweeps` exact local MC sweeps, keeping the configuration after every sweep; global acceptance."""
        from slmc_hpc.samplers import ExactLocalSampler

        sampler, accepted = ExactLocalSampler(self.evaluator), []
        for _ in range(sweeps):
            info = sampler.sweep(state)
            self.add(info.proposed_spins, info.proposed_omega)
            accepted.append(info.accepted)
        return self._global_mean(np.array(accepted)) if sweeps else float("nan")

    def fit_initial(self) -> float:
        """Linear least-squares fit of E_0, J_n on all ranks' warm-up data (the transformer's read-out).

        Without warm-up data the model stays H_eff = 0 (the first round samples random configurations).
        """
        if self._global_samples() == 0:
            return float("nan")
        return self._refit()[1]

    def _refit(self) -> tuple[np.ndarray, float]:
        """Solve the read-out on the fitted data and refit the nested chain's proposal to the new H_eff
        (models that have one), from the cached features; returns (read-out coefficients, global loss)."""
        spins, omega, features = self.features.fitted()
        coefficients = fit_readout(self.effective, features, omega, self.comm)
        energy = features @ coefficients
        if self.proposal_features is not None:
            _, _, proposal_features = self.proposal_features.fitted()
            self.effective.fit_proposal(spins, comm=self.comm, energy=energy, features=proposal_features)
        return coefficients, readout_error(energy, omega, self.effective.lattice.n_sites, self.comm)

    def run_round(self, state) -> RoundResult:
        """`outer_steps_per_round` SLMC steps under the current model, store every exactly evaluated
        configuration (accepted or not), then train; the parameters change only between the steps."""
        from slmc_hpc.samplers import SLMCSampler

        sampler = SLMCSampler(self.evaluator, self.effective, self.inner_sweeps, self.inner_block)
        uniform = self._samples_uniformly()
        accepted = []
        for _ in range(int(self.config.outer_steps_per_round)):
            info = sampler.step(state)
            self.add(info.proposed_spins, info.proposed_omega)
            accepted.append(info.accepted)
        acceptance = self._global_mean(np.array(accepted))
        losses = np.zeros(0)
        if self.trainer is not None and self.round >= self.linear_rounds:
            # Start from the exact read-out of the current attention on all data gathered so far.
            _, omega, features = self.features.fitted()
            fit_readout(self.effective, features, omega, self.comm)
            losses, _ = self.trainer.train_round(self.data.fitted(), self.validation.fitted(), self.config)
        # The read-out is linear in E_0, J_n: solve it exactly (for the transformer: for the trained
        # attention; this also removes the optimizer's noise on the small couplings).
        coefficients, data_loss = self._refit()
        _, held_out, held_out_features = self.validation_features.fitted()
        prediction = held_out_features @ coefficients
        validation_loss = readout_error(prediction, held_out, self.effective.lattice.n_sites, self.comm)
        if uniform:  # the bootstrap's configurations served this first fit; later fits leave them out
            self.data.unfitted, self.validation.unfitted = len(self.data), len(self.validation)
        n_samples = self._global_samples()
        self.round += 1
        self.history["loss"].extend(losses.tolist())
        self.history["round_acceptance"].append(acceptance)
        self.history["round_samples"].append(float(n_samples))
        self.history["round_loss"].append(data_loss)
        self.history["round_validation_loss"].append(validation_loss)
        self.history["round_steps"].append(float(len(losses)))
        return RoundResult(acceptance, n_samples, losses, data_loss, validation_loss)

    def state_dict(self) -> dict:
        state = {
            "data": self.data.state_dict(),
            "validation": {**self.validation.state_dict(), "seen": np.array(self.seen)},
            "round": self.round,
            "history": {name: np.array(values) for name, values in self.history.items()},
        }
        if self.trainer is not None:
            state["trainer"] = self.trainer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore; `trainer` may be present on rank 0 only (it is broadcast), so every rank must call this."""
        self.data.load_state_dict(state["data"])
        if "validation" in state:
            validation = dict(state["validation"])
            self.seen = int(validation.pop("seen"))
            self.validation.load_state_dict(validation)
        else:
            self.seen = len(self.data)
        self.round = int(state["round"])
        self.history = {name: list(np.asarray(state["history"].get(name, []), dtype=np.float64)) for name in HISTORY}
        if self.trainer is not None:
            trainer_state = parallel.broadcast(self.comm, state.get("trainer"))
            if trainer_state is not None:
                self.trainer.load_state_dict(trainer_state)


def proposal_for_lattice(model, temperature: float, seed: int, configurations: int = 64, sweeps: int = 20) -> None:
    """Refit a transferred model's proposal (nested inner chain) on this lattice without any diagonalisation.

    H_eff itself gives the targets (`fit_proposal`); the configurations come from the compiled
    Metropolis chain under the model's own linear read-out, then once more under the first fit.
    Every rank draws the same configurations from `seed`, so every rank gets the same proposal.
    """
    from slmc_hpc.effective.linear import LinearModel
    from slmc_hpc.physics import random_spins

    if not hasattr(model, "fit_proposal"):
        return
    lattice = model.lattice
    n = lattice.n_sites
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(PROPOSAL_STREAM, 0))))
    chain = LinearModel(lattice, model.n_J)
    chain.set_readout(0.0, model.parameters()["couplings"])
    spins = np.stack([random_spins(rng, (n,)) for _ in range(configurations)])
    for _ in range(2):
        moves = sweeps * n
        sites = rng.integers(0, n, (configurations, moves))
        dirs = rng.standard_normal((configurations, moves, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        chain.metropolis_chain(spins, sites, dirs, rng.random((configurations, moves)), temperature)
        model.fit_proposal(spins)
        chain = model.proposal
