"""Pure fold arithmetic: tensors in, tensors out, no graph in sight.

At inference a BatchNorm is the per-channel affine

    y = γ · (x − μ) / √(σ² + ε) + β  =  s · x + t,   s = γ / √(σ² + ε),   t = β − μ · s

Forward fold, into the layer P that produces x (conv, transposed conv, linear), per output channel c:

    W'[c] = W[c] · s[c]          b'[c] = b[c] · s[c] + t[c]

Backward fold, into the layer Q that consumes y (conv or linear, every output position sees the whole
kernel, i.e. no zero padding), per output channel o over the input channels i and kernel taps k it reads:

    W'[o, i, k] = W[o, i, k] · s[i]          b'[o] = b[o] + Σ_{i,k} W[o, i, k] · t[i]

Identity absorption (RepVGG): a BN on the identity branch of ``conv(x) + bn(x)`` becomes a centred one-hot
kernel added to the conv: W'[o, o mod C_in/groups, centre] += s[o], b'[o] += t[o].

Every function computes in float64 and casts back to the dtype of the weight it replaces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnfold.errors import FoldError

F64 = torch.float64


def batchnorm_affine(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    channels: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(s, t) in float64 such that BN(x) = s·x + t per channel. Missing γ is 1, missing β is 0."""
    if running_mean is None or running_var is None:
        raise ValueError("a BatchNorm without running statistics is not a fixed affine")
    mean = running_mean.detach().to(F64)
    var = running_var.detach().to(F64)
    n = channels if channels is not None else mean.numel()
    gamma = torch.ones(n, dtype=F64) if weight is None else weight.detach().to(F64)
    beta = torch.zeros(n, dtype=F64) if bias is None else bias.detach().to(F64)
    lengths = {"running_mean": mean.numel(), "running_var": var.numel(), "weight": gamma.numel(), "bias": beta.numel()}
    if len(set(lengths.values())) > 1 or (channels is not None and mean.numel() != channels):
        detail = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise FoldError(f"BatchNorm parameters of different lengths ({detail}): each holds one value per channel")
    scale = gamma / torch.sqrt(var + eps)
    return scale, beta - mean * scale


def statistics_problem(running_mean: Tensor, running_var: Tensor, eps: float) -> str | None:
    """Why these running statistics cannot define an inference affine, or None when they can."""
    if not torch.isfinite(running_mean).all():
        return "running_mean holds NaN or Inf"
    if not torch.isfinite(running_var).all():
        return "running_var holds NaN or Inf"
    if (running_var < 0).any():
        return "running_var has negative entries"
    zero = int(((running_var.to(F64) + eps) <= 0).sum())
    if zero:
        return f"running_var + eps is 0 in {zero} of {running_var.numel()} channels (the BN divides by zero)"
    return None


def _along(vector: Tensor, axis: int, ndim: int) -> Tensor:
    shape = [1] * ndim
    shape[axis] = vector.numel()
    return vector.reshape(shape)


def _bias64(bias: Tensor | None, n: int) -> Tensor:
    return torch.zeros(n, dtype=F64) if bias is None else bias.detach().to(F64)


def fold_into_producer(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Forward fold into a conv or linear whose weight's axis 0 is the output channel."""
    w = weight.detach().to(F64) * _along(scale, 0, weight.dim())
    b = _bias64(bias, weight.shape[0]) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def transposed_output_channel(weight: Tensor, groups: int) -> Tensor:
    """For a transposed-conv weight [C_in, C_out/groups, k...]: the output channel of each (i, j) pair."""
    c_in, c_out_g = weight.shape[0], weight.shape[1]
    group = torch.arange(c_in) // (c_in // groups)
    return group[:, None] * c_out_g + torch.arange(c_out_g)[None, :]


def fold_into_transposed_producer(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, groups: int
) -> tuple[Tensor, Tensor]:
    """Forward fold into a ConvTranspose: weight [C_in, C_out/groups, k...], any groups."""
    channel = transposed_output_channel(weight, groups)
    per_pair = scale[channel].reshape(*channel.shape, *([1] * (weight.dim() - 2)))
    w = weight.detach().to(F64) * per_pair
    b = _bias64(bias, scale.numel()) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def consumer_input_channel(weight: Tensor, groups: int) -> Tensor:
    """For a conv/linear weight [C_out, C_in/groups, k...]: the input channel each (o, j) pair reads."""
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    group = torch.arange(c_out) // (c_out // groups)
    return group[:, None] * c_in_g + torch.arange(c_in_g)[None, :]


def fold_into_consumer(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """Backward fold of y = s·x + t into the conv or linear that reads y (no zero padding)."""
    channel = consumer_input_channel(weight, groups)
    tail = [1] * (weight.dim() - 2)
    w64 = weight.detach().to(F64)
    w = w64 * scale[channel].reshape(*channel.shape, *tail)
    contribution = (w64 * shift[channel].reshape(*channel.shape, *tail)).flatten(1).sum(1)
    b = _bias64(bias, weight.shape[0]) + contribution
    return w.to(weight.dtype), b.to(weight.dtype)


def absorb_identity(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, groups: int
) -> tuple[Tensor, Tensor]:
    """Add the identity branch s·x + t to a same-shape conv as a centred one-hot kernel."""
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    centre = tuple(k // 2 for k in weight.shape[2:])
    w = weight.detach().to(F64).clone()
    out = torch.arange(c_out)
    taps = (out, out % c_in_g) + centre
    w[taps] += scale
    b = _bias64(bias, c_out) + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def affine_reference(x: Tensor, scale: Tensor, shift: Tensor, axis: int = 1) -> Tensor:
    """s·x + t along ``axis``, in float64: the definition the folds must reproduce."""
    x64 = x.to(F64)
    return x64 * _along(scale, axis, x.dim()) + _along(shift, axis, x.dim())


def channel_vector(value: Tensor, axis: int, rank: int, channels: int) -> Tensor | None:
    """The per-channel values of a constant that broadcasts along ``axis`` of a rank-``rank`` tensor only.

    None when it would vary along another axis or grow the tensor's rank or shape.
    """
    if value.dim() > rank:
        return None
    shape = (1,) * (rank - value.dim()) + tuple(value.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return torch.broadcast_to(value.reshape(-1), (channels,)).clone()


def channel_shape(ndim: int, axis: int, rank: int, channels: int) -> list[int]:
    """The shape of a constant of at least ``ndim`` dims holding one value per channel along ``axis``."""
    dims = max(ndim, rank - axis)
    shape = [1] * dims
    shape[dims - (rank - axis)] = channels
    return shape
