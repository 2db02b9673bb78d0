"""What every candidate's local search computes alike, computed once per job: :class:`LocalSearchPlan`.

Each meta step of the unrolled local search (DESIGN §1.4) starts from a base network re-initialised
from ``derive_seed(seed, "meta-init", step)`` and draws its training and validation batches from seeded
samplers: none of it depends on the candidate. Re-drawing the initial parameters is about a tenth of a
candidate's local search on an MLP [1000, 1000]; a plan draws them once for all the candidates of a
shard and hands every candidate the same tensors (never written to: the inner SGD steps are out of
place), so results are bitwise those of a search without a plan.

Memory: one copy of the network per meta step. ``max_bytes`` caps it; the steps beyond the cap
re-initialise the network as a search without a plan does (same values).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evomal.learning.devices import derive_seed
from evomal.learning.training import BatchSampler, Reinit, _default_reinit, _split

#: default cap on the stored initial networks of one plan (a job holds one plan at a time)
MAX_PLAN_BYTES = 1 << 30


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@dataclass(frozen=True, eq=False)
class LocalSearchPlan:
    """Per meta step: the training-batch indices (``inner_steps`` each), the validation-batch indices,
    and, for the first ``len(states)`` steps, the re-initialised network's parameters and buffers."""

    seed: int
    steps: int
    inner_steps: int
    batch_size: int
    sizes: tuple[int, int]  # (training, validation) examples the indices were drawn for
    train_indices: tuple[tuple[Tensor, ...], ...]
    val_indices: tuple[Tensor, ...]
    states: tuple[dict[str, Tensor], ...]

    @classmethod
    def build(cls, task, model: nn.Module, *, steps: int, inner_steps: int = 1, batch_size: int = 128,
              seed: int, reinit: Reinit | None = None, max_bytes: int = MAX_PLAN_BYTES) -> "LocalSearchPlan":
        """Draw the batches of ``steps`` meta steps and the initial networks that fit in ``max_bytes``
        (``model`` is re-initialised in place to make them; 0 stores none)."""
        reinit = reinit or _default_reinit()
        x, _ = _split(task, "train")
        x_val, _ = _split(task, "val")
        device = x.device
        train = BatchSampler(x.shape[0], batch_size, derive_seed(seed, "meta-train-batches"), device)
        val = BatchSampler(x_val.shape[0], batch_size, derive_seed(seed, "meta-val-batches"), device)
        train_indices, val_indices = [], []
        for _ in range(steps):
            train_indices.append(tuple(train.next() for _ in range(inner_steps)))
            val_indices.append(val.next())
        per_state = max(_state_bytes(model), 1)
        states = []
        with torch.no_grad():
            for step in range(min(steps, max_bytes // per_state)):
                reinit(model, derive_seed(seed, "meta-init", step))
                states.append({n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]})
        return cls(seed, steps, inner_steps, batch_size, (x.shape[0], x_val.shape[0]), tuple(train_indices),
                   tuple(val_indices), tuple(states))

    def check(self, task, *, steps: int, inner_steps: int, batch_size: int, seed: int) -> None:
        """Raise ValueError unless this plan was built for these settings (a shorter search may use it)."""
        sizes = (_split(task, "train")[0].shape[0], _split(task, "val")[0].shape[0])
        want = {"seed": seed, "inner_steps": inner_steps, "batch_size": batch_size, "sizes": sizes}
        have = {k: getattr(self, k) for k in want}
        if have != want or steps > self.steps:
            raise ValueError(f"local-search plan built for {have} and {self.steps} steps, used for {want} "
                             f"and {steps} steps")

    def initial_params(self, step: int, model: nn.Module, reinit: Reinit) -> dict[str, Tensor]:
        """The meta step's starting parameters (fresh leaves); ``model``'s buffers are reset as by a re-init."""
        if step < len(self.states):
            state = self.states[step]
            with torch.no_grad():
                for name, buf in model.named_buffers():
                    buf.copy_(state[name])
            return {n: state[n].detach().requires_grad_(True) for n, _ in model.named_parameters()}
        reinit(model, derive_seed(self.seed, "meta-init", step))
        return {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}

    def meta_step(self, step: int, model: nn.Module, reinit: Reinit, task) -> tuple[dict[str, Tensor], list, Tensor]:
        """Meta step ``step``'s starting parameters (fresh leaves), training batches and validation indices."""
        x, y = _split(task, "train")
        return (self.initial_params(step, model, reinit), [(x[idx], y[idx]) for idx in self.train_indices[step]],
                self.val_indices[step])
