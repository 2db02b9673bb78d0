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
    if name in ("load_loss", "CompiledLoss"):
        from evomal.losses import compile as _compile

        return getattr(_compile, name)
    if name == "parse":
        from evomal.gp.expressions import parse

        return parse
    raise AttributeError(f"module 'evomal' has no attribute {name!r}")
