"""The baseline: no search; the task's own loss (cross-entropy / MSE) is meta-tested and transferred."""
from evomal.methods.registry import Method, register_method


@register_method("baseline")
def baseline_method() -> Method:
    return Method(name="baseline", description="baseline", stages=("meta_test", "transfer"))
