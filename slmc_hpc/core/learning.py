"""The self-learning loop: H_eff trained on exactly evaluated configurations, across MPI ranks, for any system.

Data are configurations with their exact `target` (Ω for spins, S for the gauge theory); the loss is the
mean of ((target - H_eff)/scale)², `scale` the system's (`LearningPlan.loss_scale`: N for configs). What a
round samples with and what counts as a trivial model come from the system's `LearningPlan`; a model's
optional abilities (`LinearReadout`, `Trainable`, `NestedProposal`, `Chunked`) decide what the loop does
with it. Every rank keeps its own data. The linear fit sums the normal equations over ranks; gradient
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
from slmc_hpc.core.protocols import Chunked, EffectiveModel, LearningPlan, LinearReadout, NestedProposal, Trainable
from slmc_hpc.errors import TrainingError

#: spawn_key tag of the minibatch streams (chain streams use spawn_key=(chain,), a 1-tuple, so these
#: 3-tuples never collide with them).
MINIBATCH_STREAM = 0x5452


def fit_linear(
    model, configs: np.ndarray, targets: np.ndarray, comm=None, features: np.ndarray | None = None, *, scale: float
) -> float:
    """Least-squares fit of a `LinearReadout` model's read-out to the targets; returns the global loss.

    Pass the features as `features` where they are already known (`FeatureCache`). The loss is the mean
    of ((target - H_eff)/scale)², with H_eff = features @ coefficients (no second pass over the data).
    """
    if features is None:
        features = model.features(configs) if len(targets) else np.zeros((0, model.n_readout))
    prediction = features @ fit_readout(model, features, targets, comm)
    return readout_error(prediction, targets, scale, comm)


def fit_readout(model, features: np.ndarray, targets: np.ndarray, comm=None) -> np.ndarray:
    """Solve the read-out from its features and set it on `model`; returns the coefficients c (H_eff = features @ c).

    The normal equations X^T X c = X^T y (y the targets) are summed over ranks, so the fit equals a fit of all data
    on one rank; `lstsq` gives the minimum-norm solution where small lattices make shells
    indistinguishable.
    """
    features = np.asarray(features, dtype=np.float64).reshape(len(targets), -1)
    targets = np.asarray(targets, dtype=np.float64)
    k = features.shape[1]
    packed = np.concatenate([(features.T @ features).ravel(), features.T @ targets])
    # Broadcast rank 0's sums: an allreduce need not round identically on every rank.
    packed = parallel.broadcast_array(comm, parallel.allreduce_sum(comm, packed))
    normal_matrix, rhs = packed[: k * k].reshape(k, k), packed[k * k :]
    coefficients = np.linalg.lstsq(normal_matrix, rhs, rcond=None)[0]
    model.set_readout(coefficients[0], coefficients[1:])
    return coefficients


def readout_error(prediction: np.ndarray, targets: np.ndarray, scale: float, comm=None) -> float:
    """Global mean of ((target - prediction)/scale)² over every rank's rows (nan without any)."""
    local = ((np.asarray(targets, dtype=np.float64) - prediction) / scale) ** 2 if len(targets) else np.zeros(0)
    total, count = parallel.allreduce_sum(comm, np.array([local.sum(), float(local.size)]))
    return float(total / count) if count else float("nan")


def predict(model, configs: np.ndarray) -> np.ndarray:
    """H_eff of a whole data set, in chunks where the model needs them ([B, N, N] per layer)."""
    return model.energy_chunked(configs) if isinstance(model, Chunked) else model.energy(configs)


def mean_squared_error(model, configs: np.ndarray, targets: np.ndarray, comm=None, *, scale: float) -> float:
    """Global mean of ((target - H_eff)/scale)² over every rank's data."""
    prediction = predict(model, configs) if len(targets) else np.zeros(0)
    return readout_error(prediction, targets, scale, comm)


class Trainer:
    """AdamW on MSE((target - H_eff)/scale), data-parallel over the ranks of `comm`.

    Minibatches: each rank draws `batch_size` of its own samples per step (without replacement)
    from a generator seeded by (seed, rank, call counter); the counter is part of the state, so a
    restart from `state_dict()` continues bit for bit.

    Only the parameters named in the model's `GRADIENT_PARAMETERS` (all, if it has none) are
    optimized. The transformer's read-out (E_0, J_n) is linear and solved exactly by `fit_linear`
    around every round; AdamW steps of size ~lr on couplings of size ~1e-2 and on an extensive
    E_0 would only spoil it (measured: a 40x worse validation loss after 300 steps at L = 12).
    """

    def __init__(self, model, training_config, scale: float, comm=None, seed: int = 0):
        self.model, self.scale, self.comm, self.seed = model, scale, comm, int(seed)
        self.rank = comm.Get_rank() if comm is not None else 0
        self.batch_size = int(training_config.batch_size)
        self.module = model.torch_module()
        trained = model.GRADIENT_PARAMETERS if isinstance(model, Trainable) else None
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
    def _local_sums(self, configs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """[sum of squared errors, count, gradient of that sum (flattened)] on this rank's samples.

        In float32 the network's output is cast to float64 before it is subtracted from the target, so the residual
        (a small difference of two large numbers) keeps its digits.
        """
        module = self.compute_module
        if module is not self.module:  # the float32 copy takes the current float64 parameters
            with torch.no_grad():
                for copy_, master in zip(module.parameters(), self.module.parameters(), strict=True):
                    copy_.copy_(master)
        module.zero_grad(set_to_none=False)
        if len(targets):
            dtype = next(module.parameters()).dtype
            inputs = torch.from_numpy(np.ascontiguousarray(configs))
            if inputs.is_complex():  # link fields: the complex type of the network's precision
                inputs = inputs.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
            else:
                inputs = inputs.to(dtype)
            prediction = module(inputs).to(torch.float64)
            residual = (torch.from_numpy(np.asarray(targets, dtype=np.float64)) - prediction) / self.scale
            sse = (residual * residual).sum()
            sse.backward()
            sse_value = sse.item()
        else:
            sse_value = 0.0
        grads = [
            p.grad.reshape(-1).to(torch.float64) if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64)
            for p in self.compute_params
        ]
        return np.concatenate([[sse_value, float(len(targets))], torch.cat(grads).numpy()])

    def gradient(self, configs: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Global loss and mean gradient over every rank's (configs, targets) (no step taken)."""
        sums = parallel.allreduce_sum(self.comm, self._local_sums(configs, targets))
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

    def train(self, configs: np.ndarray, targets: np.ndarray, steps: int) -> np.ndarray:
        """`steps` AdamW steps on minibatches of every rank's data; returns the global loss per step.

        Raises TrainingError (after restoring the last good state) on a non-finite loss, gradient
        or parameter: NaN parameters are never kept.
        """
        rng = self._minibatch_rng()
        self.call_count += 1
        losses = np.array([self._step(rng, configs, targets) for _ in range(steps)])
        self._synchronise()
        return losses

    def _step(self, rng: np.random.Generator, configs: np.ndarray, targets: np.ndarray) -> float:
        """One AdamW step on a minibatch of every rank's data; the global minibatch loss."""
        started = time.perf_counter()
        n_local = len(targets)
        batch = rng.choice(n_local, size=min(self.batch_size, n_local), replace=False) if n_local else []
        local = self._local_sums(configs[batch], np.asarray(targets)[batch])
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
            error = mean_squared_error(self.model, *validation, self.comm, scale=self.scale)
            loss = float(parallel.broadcast(self.comm, error))
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
    """This rank's exactly evaluated configurations and their targets, at most `max_samples` (oldest dropped).

    Appends are O(batch) (chunks are joined lazily, once per `arrays()` after new data), because
    the loop appends after every outer step. The oldest `unfitted` samples are kept but left out of
    `fitted()` (the bootstrap's configurations, see SelfLearning).
    """

    def __init__(self, config_shape: tuple[int, ...], max_samples: int | None = None, dtype=np.float64):
        self.config_shape, self.max_samples, self.dtype = tuple(config_shape), max_samples, np.dtype(dtype)
        self._configs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._count = 0
        self.unfitted = 0
        #: One past the number of the newest row: rows are numbered in the order they were appended (in
        #: this process; a load renumbers), so `FeatureCache` can tell which rows it has already seen.
        self.end_row = 0

    def __len__(self) -> int:
        return self._count

    def append(self, configs: np.ndarray, targets: np.ndarray) -> None:
        targets = np.array(targets, dtype=np.float64).reshape(-1)
        self._configs.append(np.array(configs, dtype=self.dtype).reshape(len(targets), *self.config_shape))
        self._targets.append(targets)
        self._count += len(targets)
        self.end_row += len(targets)
        excess = self._count - self.max_samples if self.max_samples is not None else 0
        while excess > 0:
            drop = min(excess, len(self._targets[0]))
            self._configs[0], self._targets[0] = self._configs[0][drop:], self._targets[0][drop:]
            if not len(self._targets[0]):
                del self._configs[0], self._targets[0]
            self._count -= drop
            self.unfitted = max(0, self.unfitted - drop)
            excess -= drop

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples, oldest first: configurations [M, ...] and targets [M]."""
        if len(self._targets) != 1:
            empty = np.zeros((0, *self.config_shape), dtype=self.dtype)
            configs = np.concatenate(self._configs) if self._configs else empty
            targets = np.concatenate(self._targets) if self._targets else np.zeros(0)
            self._configs, self._targets = [configs], [targets]
        return self._configs[0], self._targets[0]

    def fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples that fits and training use: all but the oldest `unfitted` (all, if nothing else is left)."""
        configs, targets = self.arrays()
        skip = self.unfitted if self.unfitted < len(targets) else 0
        return configs[skip:], targets[skip:]

    def state_dict(self) -> dict[str, np.ndarray]:
        configs, targets = self.arrays()
        return {"configs": configs.copy(), "targets": targets.copy(), "unfitted": np.array(self.unfitted)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._configs, self._targets, self._count = [], [], 0
        self.unfitted = int(state.get("unfitted", 0))  # checkpoints before the bootstrap cut fit everything
        # Checkpoints written before there were systems name the data spins and omega.
        configs = state["configs"] if "configs" in state else state["spins"]
        targets = state["targets"] if "targets" in state else state["omega"]
        self.append(configs, targets)  # (a smaller max_samples drops the oldest, the cut moves)


#: Parameters of a `NestedProposal`'s proposal model are stored with this prefix (a sampling aid, not H_eff).
PROPOSAL_PREFIX = "proposal_"


def feature_key(model) -> bytes:
    """The parameters a `LinearReadout` model's features depend on: all but its read-out's and its proposal's."""
    parameters = model.parameters()
    readout = set(model.READOUT_PARAMETERS)
    names = sorted(n for n in parameters if n not in readout and not n.startswith(PROPOSAL_PREFIX))
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
        """`data.fitted()` with the model's features of those rows: configs [M, ...], targets [M], features [M, k]."""
        configs, targets = self.data.fitted()
        first, key = self.data.end_row - len(targets), feature_key(self.model)
        # Rows numbered from `first` on that the cache holds (none past its end, none under another key).
        reusable = key == self._key and first >= self._first
        known = self._features[first - self._first :] if reusable else self._features[:0]
        fresh = self.model.features(configs[len(known) :]) if len(targets) > len(known) else self._features[:0]
        self._key, self._first, self._features = key, first, np.concatenate([known, fresh])
        return configs, targets, self._features


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


#: Training history (`/training` of run.h5): loss per optimizer step; per round the outer acceptance,
#: the number of stored samples (all ranks, training + validation), the loss on the training data and
#: on the held-out validation data after the round's fit, and the optimizer steps it took.
HISTORY = ("loss", "round_acceptance", "round_samples", "round_loss", "round_validation_loss", "round_steps")


class SelfLearning:
    """The resumable sample-then-train loop; the driver calls it between checkpoints.

    Every exactly evaluated configuration becomes data: a fixed fraction (`validation_fraction`, by a
    deterministic count) is held out for validation and never trained on, not even by the linear fits.
    While the model is trivial (`LearningPlan.trivial`: for spins H_eff = 0, whose proposals are
    uniform configurations, one exact evaluation each), its configurations give the first fit, and are
    then kept (stored, counted) but not fitted again: configurations without weight under the exact
    action make least squares spend its parameters on them (measured for spins at L = 12, T = 0.05:
    480 uniform configurations among 1600 of the chains' distribution raise the all-shell fit's
    residual from 0.051 to 0.063, and lower the predicted outer acceptance from 0.47 to 0.38). The
    first `linear_rounds` rounds fit only the linear read-out, each round sampling with the previous
    fit. Later rounds of a `Trainable` model take at most `steps_per_round` AdamW steps (cosine
    schedule, stopped on the validation loss), refit the read-out exactly, and refit the proposal
    model of a `NestedProposal`.

    Explicit state (`state_dict`): this rank's data, the round index, the histories and the
    trainer (rank 0's copy is the one to store; `load_state_dict` broadcasts it). No file I/O.

    >>> learner = SelfLearning(effective, simulation.learning(), config.training, comm, seed)
    >>> learner.warmup(state, config.training.warmup_sweeps); learner.fit_initial()
    >>> for _ in range(config.training.rounds): result = learner.run_round(state)
    """

    def __init__(self, effective: EffectiveModel, plan: LearningPlan, training_config, comm=None, seed: int = 0):
        self.effective, self.plan, self.config, self.comm = effective, plan, training_config, comm
        self.scale = plan.loss_scale
        self.data = TrainingData(plan.config_shape, training_config.max_samples, plan.dtype)
        self.validation = TrainingData(plan.config_shape, training_config.max_samples, plan.dtype)
        self.validation_fraction = float(training_config.validation_fraction)
        self.linear_rounds = int(training_config.linear_rounds)
        self.seen = 0  # configurations this rank has split into training and validation data
        self.trainer = None
        if isinstance(effective, Trainable) and effective.GRADIENT_PARAMETERS:  # a network of no layers: read-out
            self.trainer = Trainer(effective, training_config, self.scale, comm=comm, seed=seed)
        self.round = 0
        self.history: dict[str, list[float]] = {name: [] for name in HISTORY}
        # Features of the stored rows for the read-out fits and for the proposal's (computed once per row).
        self.features = FeatureCache(self.data, effective)
        self.validation_features = FeatureCache(self.validation, effective)
        proposal = effective.new_proposal() if isinstance(effective, NestedProposal) else None
        self.proposal_features = FeatureCache(self.data, proposal) if proposal is not None else None

    def _global_mean(self, values: np.ndarray) -> float:
        total, count = parallel.allreduce_sum(self.comm, np.array([np.sum(values), float(np.size(values))]))
        return float(total / count)

    def _global_samples(self) -> int:
        return int(parallel.allreduce_sum(self.comm, np.array([float(len(self.data) + len(self.validation))]))[0])

    def add(self, configs: np.ndarray, targets: np.ndarray) -> None:
        """New exactly evaluated configurations: every k-th (k = 1/validation_fraction, by this rank's
        running count, so the split survives restarts) goes to the validation data."""
        targets = np.asarray(targets, dtype=np.float64).reshape(-1)
        count = np.arange(self.seen, self.seen + len(targets))
        held_out = np.floor((count + 1) * self.validation_fraction) > np.floor(count * self.validation_fraction)
        self.seen += len(targets)
        configs = np.asarray(configs).reshape(len(targets), *self.data.config_shape)
        if held_out.any():
            self.validation.append(configs[held_out], targets[held_out])
        if (~held_out).any():
            self.data.append(configs[~held_out], targets[~held_out])

    def _rows(self, info) -> np.ndarray:
        """The data rows of a step's exactly evaluated configurations (`LearningPlan.training_rows`)."""
        return info.proposed if self.plan.training_rows is None else self.plan.training_rows(info)

    def warmup(self, state, steps: int) -> float:
        """`steps` exact steps (`LearningPlan.warmup_stepper`), keeping the configuration after every step."""
        stepper, accepted = self.plan.warmup_stepper(), []
        for _ in range(steps):
            info = stepper.step(state)
            self.add(self._rows(info), info.proposed_target)
            accepted.append(info.accepted)
        return self._global_mean(np.array(accepted)) if steps else float("nan")

    def fit_initial(self) -> float:
        """Linear least-squares fit of the read-out on all ranks' warm-up data.

        Without warm-up data the model stays as it is (for spins H_eff = 0: the first round samples
        random configurations).
        """
        if self._global_samples() == 0 or not isinstance(self.effective, LinearReadout):
            return float("nan")
        return self._refit()[1]

    def _refit(self) -> tuple[np.ndarray, float]:
        """Solve the read-out on the fitted data and refit the nested chain's proposal to the new H_eff
        (models that have one), from the cached features; returns (read-out coefficients, global loss)."""
        configs, targets, features = self.features.fitted()
        coefficients = fit_readout(self.effective, features, targets, self.comm)
        energy = features @ coefficients
        if self.proposal_features is not None:
            _, _, proposal_features = self.proposal_features.fitted()
            self.effective.fit_proposal(configs, comm=self.comm, energy=energy, features=proposal_features)
        return coefficients, readout_error(energy, targets, self.scale, self.comm)

    def run_round(self, state) -> RoundResult:
        """`outer_steps_per_round` steps under the current model, store every exactly evaluated
        configuration (accepted or not), then train; the parameters change only between the steps."""
        stepper = self.plan.round_stepper(self.effective)
        trivial = self.plan.trivial(self.effective)
        accepted = []
        for _ in range(int(self.config.outer_steps_per_round)):
            info = stepper.step(state)
            self.add(self._rows(info), info.proposed_target)
            accepted.append(info.accepted)
        acceptance = self._global_mean(np.array(accepted))
        losses = np.zeros(0)
        if self.trainer is not None and self.round >= self.linear_rounds:
            if isinstance(self.effective, LinearReadout):
                # Start from the exact read-out of the current network on all data gathered so far.
                _, targets, features = self.features.fitted()
                fit_readout(self.effective, features, targets, self.comm)
            losses, _ = self.trainer.train_round(self.data.fitted(), self.validation.fitted(), self.config)
        if isinstance(self.effective, LinearReadout):
            # The read-out is linear in its coefficients: solve it exactly (for the transformer: for the
            # trained attention; this also removes the optimizer's noise on the small couplings).
            coefficients, data_loss = self._refit()
            _, held_out, held_out_features = self.validation_features.fitted()
            prediction = held_out_features @ coefficients
            validation_loss = readout_error(prediction, held_out, self.scale, self.comm)
        else:
            data_loss = mean_squared_error(self.effective, *self.data.fitted(), self.comm, scale=self.scale)
            validation_loss = mean_squared_error(self.effective, *self.validation.fitted(), self.comm, scale=self.scale)
        if trivial:  # the trivial model's configurations served this first fit; later fits leave them out
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
