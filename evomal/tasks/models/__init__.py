"""Base networks: a registry (``registry``), deterministic initialisation (``init``) and the networks
(``small``: linear, mlp, lenet5, cnn; ``cifar``: allcnnc, vgg16, resnet18, wideresnet).

Importing this package imports every network module, which registers its models
(``register_model``). ``build_model(name, input_shape, num_outputs, seed=...)`` draws the parameters
from a private generator seeded with ``seed``; ``reinitialize(model, seed)`` re-draws them in place
and gives exactly what ``build_model(..., seed=seed)`` gives. Every network works under
``torch.func.functional_call``. Image networks want ``(C, H, W)`` inputs (``cnn`` also ``(C, L)``);
flat inputs need the ``image_shape`` option.
"""

from __future__ import annotations

from evomal.tasks.models import cifar, small  # noqa: F401  (registration)
from evomal.tasks.models.cifar import BasicBlock, WideBlock
from evomal.tasks.models.init import reinitialize
from evomal.tasks.models.layers import Network, Reshape
from evomal.tasks.models.registry import build_model, list_models, model_options, register_model

__all__ = [
    "build_model",
    "list_models",
    "reinitialize",
    "register_model",
    "model_options",
    "Network",
    "Reshape",
    "BasicBlock",
    "WideBlock",
]
