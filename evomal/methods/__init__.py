"""Loss-learning methods, one module each, registered by name (see :mod:`evomal.methods.registry`)."""
from evomal.methods import baseline, evomal, gplfl, ml3, taylorglo  # noqa: F401  (registration)
from evomal.methods.registry import (Method, get_method, list_methods, method_generations, method_searches,
                                     register_method)

__all__ = ["Method", "get_method", "list_methods", "method_generations", "method_searches", "register_method"]
