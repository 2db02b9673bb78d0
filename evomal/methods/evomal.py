"""EvoMAL (Raymond et al., TPAMI 2023): GP over loss expressions, edge weights tuned by unrolled
differentiation before each candidate's fitness is measured."""
from evomal.methods.registry import Method, register_method


@register_method("evomal")
def evomal_method() -> Method:
    return Method(name="evomal", description="EvoMAL", stages=("gp_search", "meta_test", "transfer"),
                  local_search=True, weight_noise=1e-3)
