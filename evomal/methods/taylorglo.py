"""TaylorGLO (Gonzalez & Miikkulainen, GECCO 2021), as the EvoMAL paper compares with it (DESIGN §1.8).

The 8 parameters θ of a third-order Taylor polynomial loss (evomal.losses.taylor) are evolved by CMA-ES
(evomal.methods.cmaes, the ``cma`` library; ``search.population`` samples per generation for
``search.generations`` generations, initial step size ``taylorglo.sigma``, mean 0 as in the reference).
Each sample is scored by EvoMAL's partial-training fitness through the same per-candidate stages
(compile, optimize: skipped, there is no local search, evaluate), so a generation has EvoMAL's file
contract and is tracked, reported and shown like one.
"""
from __future__ import annotations

from evomal.methods.registry import Method, register_method

#: the origin of every TaylorGLO individual in population.json
ORIGIN = "cma-es"


def candidate_loss(path, record: dict, kind: str, **extra) -> None:
    """The compile stage's loss.json of a sample: the Taylor loss with the record's θ."""
    from evomal.losses.families import write_document
    from evomal.losses.taylor import document

    write_document(path, document(kind, record["theta"], **extra))


def check(exp: dict) -> list[str]:
    """CMA-ES recombines the better half of a generation: it needs two samples at least."""
    n = exp["search"]["population"]
    return [] if n >= 2 else [f"search.population: CMA-ES (TaylorGLO) needs at least 2 samples per generation, got {n}"]


@register_method("taylorglo")
def taylorglo_method() -> Method:
    return Method(name="taylorglo", description="TaylorGLO", stages=("cmaes_search", "meta_test", "transfer"),
                  local_search=False, candidate_loss=candidate_loss, check=check)


def cmaes_settings(exp: dict):
    """The CMA-ES settings of an experiment's resolved config."""
    from evomal.losses.taylor import NUM_PARAMETERS
    from evomal.methods.cmaes import CMAESSettings

    return CMAESSettings(dimension=NUM_PARAMETERS, popsize=exp["search"]["population"],
                         sigma=exp["taylorglo"]["sigma"], seed=exp["seed"])
