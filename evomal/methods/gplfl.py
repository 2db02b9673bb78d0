"""GP-LFL: the same GP search and filters as EvoMAL without the local search; every edge weight is 1."""
from evomal.methods.registry import Method, register_method


@register_method("gplfl")
def gplfl_method() -> Method:
    return Method(name="gplfl", description="GP-LFL", stages=("gp_search", "meta_test", "transfer"),
                  local_search=False, weight_noise=0.0)
