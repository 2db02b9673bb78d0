"""ML3 (Bechtle et al., ICPR 2020), as the EvoMAL paper compares with it (DESIGN §1.8).

A neural loss (evomal.losses.neural: 2 -> 50 -> 50 -> 1, ReLU, no biases, Softplus, per class on
(f_c, y_c), summed over classes) is meta-learned by exactly EvoMAL's local search
(evomal.learning.training.unrolled_local_search: ``local_search.meta_steps`` meta steps, Adam with
``local_search.meta_lr``, the inner SGD of ``training``), with the network's weights in place of the
edge weights. There is no population: one loss is learned, then meta-tested and transferred.
"""
from __future__ import annotations

from dataclasses import dataclass

from evomal.methods.registry import Method, register_method


@register_method("ml3")
def ml3_method() -> Method:
    return Method(name="ml3", description="ML3", stages=("meta_train", "meta_test", "transfer"))


@dataclass
class ML3Result:
    """The meta-learned loss (weights fixed), its local-search record and its partial-training fitness."""

    loss: object  # evomal.losses.neural.NeuralLoss
    search: object  # evomal.learning.training.LocalSearchResult
    fitness: object  # evomal.learning.training.FitnessResult


def meta_train(task, build, *, seed: int, meta_steps: int, meta_lr: float, inner_steps: int, settings) -> ML3Result:
    """Meta-learn ML3's network on ``task`` (``build(seed)`` -> base network; ``settings``: a
    evomal.learning.context.TrainingSettings) and score it with EvoMAL's partial-training fitness."""
    from evomal.learning.devices import derive_seed
    from evomal.learning.training import fitness, unrolled_local_search
    from evomal.losses.neural import LAYERS, NeuralLoss, initial_weights

    device = task.x_train.device
    loss = NeuralLoss(task.kind, initial_weights(LAYERS, seed=derive_seed(seed, "ml3-init"))).to(device)
    search = unrolled_local_search(loss, task, build(seed), steps=meta_steps, meta_lr=meta_lr, inner_steps=inner_steps,
                                   seed=seed, **settings.optimizer_kwargs())
    learned = NeuralLoss(task.kind, search.weights.cpu(), trainable=False).to(device)
    fit = fitness(learned, task, build(seed), steps=settings.steps, seed=seed, **settings.optimizer_kwargs())
    return ML3Result(learned, search, fit)
