"""The registry of loss-learning methods (DESIGN §1.8), looked up by the config's ``method:`` name.

A method module registers a factory with ``@register_method("name")`` (as timm registers its networks);
the factory returns a :class:`Method`, which tells the workflow which stages run and tells the stages
how a candidate expression becomes a trainable loss. Importing this module costs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: Stage groups a method can run; the Snakemake rules of a group are requested only for such methods:
#: gp_search (workflow/rules/search.smk, evaluation.smk), cmaes_search (taylorglo.smk, which shares the
#: per-candidate stages of evaluation.smk), meta_train (ml3.smk), meta_test and transfer (testing.smk).
STAGE_GROUPS = ("gp_search", "cmaes_search", "meta_train", "meta_test", "transfer")
#: groups that write generation folders (gen_<g>/ in the file contract, DESIGN §3)
GENERATION_GROUPS = ("gp_search", "cmaes_search")
#: groups that end in a learned loss (best/loss.json)
LEARNING_GROUPS = GENERATION_GROUPS + ("meta_train",)


@dataclass(frozen=True)
class Method:
    """What the pipeline needs to know of one method."""

    name: str
    description: str
    #: stage groups this method runs (a subset of STAGE_GROUPS)
    stages: tuple[str, ...]
    #: edge weights tuned by the unrolled local search (the ``optimize`` stage); else kept as initialised
    local_search: bool = False
    #: initial edge weights are 1 + weight_noise * N(0, 1) (DESIGN §1.3); 0 keeps them exactly 1
    weight_noise: float = 0.0
    #: how the compile stage writes a candidate's loss.json from its filter record:
    #: ``candidate_loss(path, record, kind, **extra)``; None: the symbolic expression with initial weights
    candidate_loss: Callable[..., object] | None = None
    #: ``check(exp) -> ["<key>: <problem>", ...]`` for the method's own needs of a resolved experiment
    check: Callable[[dict], list[str]] | None = None

    @property
    def searches(self) -> bool:
        """Whether the method learns a loss (a best loss file) or only trains the baseline."""
        return any(group in LEARNING_GROUPS for group in self.stages)

    @property
    def has_generations(self) -> bool:
        """Whether the method writes generation folders (population, filter, candidates, fitness table)."""
        return any(group in GENERATION_GROUPS for group in self.stages)

    def initial_weights(self, tree, *, seed: int):
        """The compiled loss's starting edge weights for a candidate."""
        from evomal.losses.modules import initial_weights

        return initial_weights(tree, seed=seed, noise=self.weight_noise)

    def config_problems(self, exp: dict) -> list[str]:
        """What this method cannot run in the resolved experiment ``exp``, each as "<key>: <problem>"."""
        return [] if self.check is None else list(self.check(exp))

    def save_candidate_loss(self, path, record: dict, kind: str, *, seed: int, **extra) -> None:
        """Write a candidate's loss.json (the compile stage); ``extra`` fields are stored as given."""
        if self.candidate_loss is not None:
            self.candidate_loss(path, record, kind, **extra)
            return
        from evomal.gp.expressions import parse
        from evomal.losses.lossfile import save_loss

        tree = parse(record["expression"])
        save_loss(path, tree, kind, self.initial_weights(tree, seed=seed), **extra)

    def skip_local_search_reason(self, meta_steps: int) -> str | None:
        """Why the ``optimize`` stage keeps a candidate's initial weights, or None if it tunes them."""
        if not self.local_search:
            return f"no local search ({self.description})"
        if meta_steps == 0:
            return "meta_steps is 0"
        return None


_REGISTRY: dict[str, Callable[[], Method]] = {}


def register_method(name: str) -> Callable[[Callable[[], Method]], Callable[[], Method]]:
    """Decorator: register ``factory() -> Method`` under ``name``."""

    def decorate(factory: Callable[[], Method]) -> Callable[[], Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name fails listing the known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}") from None
    method = factory()
    if method.name != name or not set(method.stages) <= set(STAGE_GROUPS):
        raise ValueError(f"method {name!r}: factory returned {method}")
    return method


def method_searches(name: str) -> bool:
    """Whether an experiment of method ``name`` has a best loss.

    For readers of results folders: a name this version does not know (a folder written by another
    version) counts as a search unless it is the baseline, so its files are still shown.
    """
    return get_method(name).searches if name in _REGISTRY else name != "baseline"


def method_generations(name: str) -> bool:
    """Whether an experiment of method ``name`` has generation folders (unknown names: as method_searches)."""
    return get_method(name).has_generations if name in _REGISTRY else name != "baseline"
