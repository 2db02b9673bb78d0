"""TaylorGLO's loss (Gonzalez & Miikkulainen, GECCO 2021): a third-order Taylor polynomial in (y, f).

With y the target, f the prediction and θ = (θ0, ..., θ7), the expansion around the centre (θ0, θ1) keeps
only the terms that depend on the prediction (the others add a constant and give no gradient):

    L(y, f) = θ2 (f - θ1) + θ3/2 (f - θ1)^2 + θ4/6 (f - θ1)^3
              + θ5 (y - θ0)(f - θ1) + θ6/2 (y - θ0)(f - θ1)^2 + θ7/2 (y - θ0)^2 (f - θ1)

Every term has the factor (f - θ1), so L(y, θ1) = 0 for every y. Classification applies it per class to
f_c = softmax(logits)_c and y_c = one-hot(target)_c, sums over classes and averages over the batch;
regression applies it to the raw output and target. docs/methods.md says why this is the paper's form and
not the EvoMAL authors' re-implementation, which builds the three pure terms around the target.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from evomal.losses.codegen import check_kind
from evomal.losses.modules import loss_value

FAMILY = "taylor"
FIELDS = ("order", "parameters")
#: θ0 target centre, θ1 prediction centre, θ2..θ7 the coefficients of the six prediction terms
NUM_PARAMETERS = 8
PARAMETER_NAMES = ("c_y", "c_f", "f", "f^2", "f^3", "y*f", "y*f^2", "y^2*f")


def taylor_elementwise(w: Tensor, y: Tensor, f: Tensor) -> Tensor:
    """The polynomial for parameters ``w`` (8,), element-wise; written exactly as the standalone export."""
    w = w.to(f.dtype)
    d = f - w[1]
    t = y - w[0]
    return (w[2] * d + w[3] / 2 * d ** 2 + w[4] / 6 * d ** 3
            + w[5] * t * d + w[6] / 2 * t * d ** 2 + w[7] / 2 * t ** 2 * d)


def check_parameters(theta: Tensor | Sequence[float]) -> list[float]:
    from evomal.losses.families import as_floats

    values = as_floats(theta, "Taylor loss")
    if len(values) != NUM_PARAMETERS:
        raise ValueError(f"a third-order Taylor loss has {NUM_PARAMETERS} parameters, got {len(values)}")
    return values


class TaylorLoss(nn.Module):
    """TaylorGLO's polynomial as a loss module; ``weights`` is θ (8 values, float64 as CMA-ES samples
    them: the batch loss casts them to the outputs' dtype, as the standalone export does)."""

    family = FAMILY

    def __init__(self, kind: str, theta: Tensor | Sequence[float] | None = None, *, trainable: bool = True) -> None:
        super().__init__()
        self.kind = check_kind(kind)
        theta = torch.zeros(NUM_PARAMETERS) if theta is None else torch.as_tensor(theta, dtype=torch.float64)
        theta = theta.detach().clone().reshape(-1).double()
        if theta.numel() != NUM_PARAMETERS:
            raise ValueError(f"a third-order Taylor loss has {NUM_PARAMETERS} parameters, got {theta.numel()}")
        self.weights = nn.Parameter(theta, requires_grad=trainable)
        self.compiled = taylor_elementwise
        #: extra fields of the loss file this loss was loaded from
        self.info: dict = {}

    @property
    def expression(self) -> str:
        return describe(self.weights.detach().tolist())

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return loss_value(taylor_elementwise, self.kind, self.weights, output, target)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, theta={[round(float(t), 4) for t in self.weights]}"


def describe(theta: Sequence[float]) -> str:
    """The candidate's text form: unique per θ (full precision), so it can key files and fingerprints."""
    return "taylor3(" + ", ".join(repr(float(t)) for t in theta) + ")"


def _shift(var: str, centre: float, latex: bool = False) -> str:
    if centre == 0:
        return var
    return f"({var} {'-' if centre > 0 else '+'} {_num(abs(centre), latex)})"


def _num(x: float, latex: bool = False) -> str:
    text = f"{x:.4g}"
    if latex and "e" in text:
        mantissa, exp = text.split("e")
        text = rf"{mantissa} \cdot 10^{{{int(exp)}}}"
    return text


def _polynomial(theta: Sequence[float], latex: bool = False) -> str:
    """The polynomial with θ folded in, 4 significant digits: the factorials are in the coefficients."""
    c_y, c_f, *coef = theta
    d, t = _shift("f", c_f, latex), _shift("y", c_y, latex)
    mul = " " if latex else "*"
    power = (lambda b, k: f"{b}^{{{k}}}") if latex else (lambda b, k: f"{b}^{k}")
    terms = [(coef[0], d), (coef[1] / 2, power(d, 2)), (coef[2] / 6, power(d, 3)), (coef[3], f"{t}{mul}{d}"),
             (coef[4] / 2, f"{t}{mul}{power(d, 2)}"), (coef[5] / 2, f"{power(t, 2)}{mul}{d}")]
    text = ""
    for c, term in terms:
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        text += f" {sign} " if text else ("-" if c < 0 else "")
        text += f"{_num(abs(c), latex)}{mul}{term}"
    return text or "0"


def formula_text(theta: Sequence[float], doc: dict | None = None) -> str:
    return _polynomial(theta)


def document(kind: str, theta: Tensor | Sequence[float], **extra) -> dict:
    """The JSON content of a TaylorGLO loss file: θ as ``weights``, with the readable polynomial."""
    from evomal.losses.families import family_document

    values = check_parameters(theta)
    return family_document(FAMILY, kind, values, expression=describe(values), formula=_polynomial(values),
                           latex=_polynomial(values, latex=True),
                           fields={"order": 3, "parameters": list(PARAMETER_NAMES)}, extra=extra)


def from_document(doc: dict, *, source, trainable: bool = False) -> TaylorLoss:
    try:
        if doc.get("order") != 3:
            raise ValueError(f"order {doc.get('order')!r}; this evomal builds third-order polynomials")
        return TaylorLoss(doc["kind"], [float(t) for t in doc["weights"]], trainable=trainable)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: damaged Taylor loss file ({type(exc).__name__}: {exc})") from None


def torch_source(doc: dict, *, meta: dict | None = None) -> str:
    """Standalone PyTorch source (see evomal.losses.export) with θ baked in."""
    from evomal.losses.export import family_source

    theta = check_parameters(doc["weights"])
    body = [
        "# θ0, θ1: the centre (target, prediction); θ2..θ7: coefficients of the prediction terms",
        "WEIGHTS = (",
        "    " + " ".join(f"{t!r}," for t in theta[:4]),
        "    " + " ".join(f"{t!r}," for t in theta[4:]),
        ")",
        "",
        "",
        "def elementwise(y, f, weights):",
        '    """The third-order Taylor polynomial; every term has the factor (f - θ1)."""',
        "    w = weights",
        "    d = f - w[1]",
        "    t = y - w[0]",
        "    return (w[2] * d + w[3] / 2 * d ** 2 + w[4] / 6 * d ** 3",
        "            + w[5] * t * d + w[6] / 2 * t * d ** 2 + w[7] / 2 * t ** 2 * d)",
    ]
    return family_source(doc, body, title="Learned loss exported by EvoMAL (TaylorGLO: a third-order Taylor "
                         "polynomial)", weights_doc="θ", meta=meta)
