"""EvoMAL: meta-learned symbolic loss functions.

For people who only want the result::

    import evomal
    loss_fn = evomal.load_loss("results/digits-mlp/best/loss.json")   # an nn.Module
    loss = loss_fn(model(x), y)                                       # logits / outputs, targets

Heavy modules (torch) load on first use, so ``import evomal.pipeline.config`` stays cheap for Snakemake.
"""
__version__ = "0.1.0"

__all__ = ["load_loss", "CompiledLoss", "parse", "__version__"]


def __getattr__(name):
    if name == "load_loss":
        from evomal.losses.lossfile import load_loss

        return load_loss
    if name == "CompiledLoss":
        from evomal.losses.modules import CompiledLoss

        return CompiledLoss
    if name == "parse":
        from evomal.gp.expressions import parse

        return parse
    raise AttributeError(f"module 'evomal' has no attribute {name!r}")
