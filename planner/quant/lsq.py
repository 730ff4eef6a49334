"""Learned Step Size Quantization (Esser et al., arXiv 1902.08153) for weights and activations.

A quantizer at b bits maps v to round(clip(v / s, -Q_N, Q_P)) * s with a learned step s:
weights are signed (Q_N = 2^(b-1), Q_P = 2^(b-1) - 1); activations are unsigned (Q_N = 0,
Q_P = 2^b - 1) when the first batch they see is non-negative (after a ReLU) and signed
otherwise. The step starts at 2 * mean(|v|) / sqrt(Q_P) on the first batch and its gradient is
scaled by 1 / sqrt(N * Q_P); rounding passes gradients straight through.

``QConv2d`` and ``QLinear`` are Conv2d / Linear layers that quantize their weight and their
input activation at the layer's bits. ``MatMul`` is ``torch.matmul`` of two activations as a
module (attention's Q·Kᵀ and P·V); its quantized form ``QMatMul`` quantizes both inputs at the
layer's bits, each with its own learned step and signedness. ``apply_bits`` swaps quantized
layers in on a copy of a model.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from planner.errors import MpqError


class _GradScale(torch.autograd.Function):
    """Identity forward (bit for bit), gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, its gradient scaled by ``scale``. The forward value is exactly ``x``: the
    usual ``(x - x * scale).detach() + x * scale`` moves about one step in 10^4 by a float32 ulp
    (depending on the batch size), and the network then computes other integer levels than an
    export whose QuantizeLinear divides by the stored step."""
    return _GradScale.apply(x, scale)


def _round_pass(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


class LsqQuantizer(nn.Module):
    """Per-tensor LSQ quantizer. ``signed=None`` decides from the first batch (activations)."""

    def __init__(self, bits: int, signed: bool | None):
        super().__init__()
        self.bits = int(bits)
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed_flag", torch.tensor(-1 if signed is None else int(signed)))

    @property
    def signed(self) -> bool:
        """Whether the levels are signed (True until a first batch decides an activation's sign)."""
        return bool(self.signed_flag.item() != 0)

    def levels(self) -> tuple[int, int]:
        """(Q_N, Q_P): levels run from -Q_N to Q_P."""
        if self.signed:
            return 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        return 0, 2 ** self.bits - 1

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Decide the sign from ``x`` where it was left open (unsigned when all of ``x`` is >= 0) and set
        the step to 2 mean(|x|) / sqrt(Q_P), at least 1e-8."""
        if int(self.signed_flag) == -1:
            self.signed_flag.fill_(0 if bool((x >= 0).all()) else 1)
        _, qp = self.levels()
        self.step.copy_(torch.clamp(2 * x.abs().mean() / math.sqrt(max(qp, 1)), min=1e-8))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` quantized to the learned grid (same shape); the first call initializes from ``x``."""
        if not bool(self.initialized):
            self.initialize(x.detach())
        qn, qp = self.levels()
        step = _grad_scale(self.step, 1.0 / math.sqrt(x.numel() * max(qp, 1)))
        return _round_pass(torch.clamp(x / step, -qn, qp)) * step

    def integer_levels(self, x: torch.Tensor) -> torch.Tensor:
        """The integer levels of ``x`` (no gradient)."""
        qn, qp = self.levels()
        return torch.clamp(torch.round(x / self.step.detach()), -qn, qp)

    def extra_repr(self) -> str:
        """``bits=4, signed=auto`` for the module's repr."""
        return f"bits={self.bits}, signed={'auto' if int(self.signed_flag) == -1 else self.signed}"


class _Quantized:
    """Adds the weight (signed) and input (sign from the data) quantizers at ``bits`` to a layer."""

    def __init__(self, *args, bits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.bits = bits
        self.weight_quantizer = LsqQuantizer(bits, signed=True)
        self.input_quantizer = LsqQuantizer(bits, signed=None)


class QConv2d(_Quantized, nn.Conv2d):
    """Conv2d with its weight and input quantized at ``bits`` (W_b A_b); depthwise included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of the quantized input with the quantized weight (plus the float bias)."""
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QLinear(_Quantized, nn.Linear):
    """Linear with its weight and input quantized at ``bits`` (W_b A_b)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The linear map of the quantized input by the quantized weight (plus the float bias)."""
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class MatMul(nn.Module):
    """``torch.matmul(input, other)`` of two activations as a module (attention's Q·Kᵀ and P·V).

    Written as a module, the product maps to its ONNX MatMul layer and runs at its planned bits
    (as :class:`QMatMul`) like any Conv2d or Linear; a bare ``torch.matmul`` has no module to
    quantize, and mpq refuses to plan-run or measure such a layer in torch."""

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``torch.matmul(input, other)``."""
        return torch.matmul(input, other)


class QMatMul(MatMul):
    """``MatMul`` with both inputs quantized at ``bits`` (A_b x A_b), each by its own LSQ quantizer
    with its own step and signedness decided from the first batch: ``input_quantizer`` for the
    first input (ONNX input 0; e.g. Q, or the softmax output P, which is unsigned),
    ``other_quantizer`` for the second (ONNX input 1; e.g. Kᵀ or V, signed)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.input_quantizer = LsqQuantizer(bits, signed=None)
        self.other_quantizer = LsqQuantizer(bits, signed=None)

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``torch.matmul`` of the two inputs, each quantized by its own quantizer."""
        return torch.matmul(self.input_quantizer(input), self.other_quantizer(other))

    def extra_repr(self) -> str:
        """``bits=4`` for the module's repr."""
        return f"bits={self.bits}"


QUANTIZED = (QConv2d, QLinear, QMatMul)


MIN_BITS, MAX_BITS = 2, 16  # levels up to 2^16 - 1 are exact in float32 (exact to 2^24)


def _quantized_copy(module: nn.Module, bits: int) -> nn.Module:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise MpqError(f"cannot run a layer at {bits} bits; LSQ layers take {MIN_BITS} to {MAX_BITS} bits")
    if type(module) is MatMul:
        q = QMatMul(bits)
        q.train(module.training)
        return q
    if isinstance(module, nn.Conv2d):
        q = QConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, module.bias is not None, module.padding_mode, bits=bits)
    elif isinstance(module, nn.Linear):
        q = QLinear(module.in_features, module.out_features, module.bias is not None, bits=bits)
    else:
        raise MpqError(f"cannot quantize a {type(module).__name__}; mpq quantizes Conv2d, Linear and "
                       "planner.quant.lsq.MatMul layers")
    q.to(module.weight.device, module.weight.dtype)
    with torch.no_grad():
        q.weight.copy_(module.weight)
        if module.bias is not None:
            q.bias.copy_(module.bias)
    q.train(module.training)
    return q


def plain(module: nn.Module) -> nn.Module:
    """The float Conv2d / Linear / MatMul behind a quantized layer (same weights)."""
    if isinstance(module, QMatMul):
        p = MatMul()
        p.train(module.training)
        return p
    if isinstance(module, QConv2d):
        p = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                      module.dilation, module.groups, module.bias is not None, module.padding_mode)
    elif isinstance(module, QLinear):
        p = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    else:
        return module
    p.load_state_dict({k: v for k, v in module.state_dict().items() if k in ("weight", "bias")})
    p.train(module.training)
    return p


def apply_bits(model: nn.Module, bits_by_module: dict[str, int | None], *, copy_model: bool = True) -> nn.Module:
    """A copy of ``model`` whose modules at the given paths run at the given bits.

    ``None`` (or a module not named) leaves a layer at full precision; a layer that already is
    quantized keeps its learned steps when its bits do not change and is re-initialised
    (steps from its weights and the next batch) when they do.
    """
    model = copy.deepcopy(model) if copy_model else model
    modules = dict(model.named_modules())
    for path, bits in sorted(bits_by_module.items()):
        if path not in modules:
            raise MpqError(f"the model has no module '{path}'; the plan or checkpoint is for another model")
        current = modules[path]
        if isinstance(current, QUANTIZED) and current.bits == bits:
            continue
        replacement = plain(current) if bits is None else _quantized_copy(plain(current), bits)
        parent_path, _, name = path.rpartition(".")
        setattr(modules[parent_path] if parent_path else model, name, replacement)
    return model


def bits_of(model: nn.Module) -> dict[str, int]:
    """Module path -> bits of every quantized layer."""
    return {path: m.bits for path, m in model.named_modules() if isinstance(m, QUANTIZED)}


def input_quantizers(module: nn.Module) -> list[LsqQuantizer]:
    """A quantized layer's activation quantizers, in the order of the ONNX layer's activation
    inputs: [input] for QConv2d / QLinear, [input, other] for QMatMul."""
    if isinstance(module, QMatMul):
        return [module.input_quantizer, module.other_quantizer]
    return [module.input_quantizer]


def learned_steps(model: nn.Module) -> dict[str, dict]:
    """Module path -> learned steps of every quantized layer:

    - ``bits``;
    - ``input_steps`` / ``inputs_signed``: one step (float) and one signedness (bool) per
      activation input, in the order of the ONNX layer's ``activation_inputs`` (two for QMatMul:
      state_dict keys ``PATH.input_quantizer.step`` and ``PATH.other_quantizer.step``, signedness
      in ``PATH.*_quantizer.signed_flag``);
    - ``input_step`` / ``input_signed``: the first input's (the same as ``input_steps[0]``);
    - ``weight_step``: for layers with a weight only (QConv2d, QLinear; ``PATH.weight_quantizer.step``).
    """
    out = {}
    for path, m in model.named_modules():
        if not isinstance(m, QUANTIZED):
            continue
        quantizers = input_quantizers(m)
        entry = {"bits": m.bits, "input_steps": [float(q.step.detach()) for q in quantizers],
                 "inputs_signed": [q.signed for q in quantizers]}
        entry["input_step"], entry["input_signed"] = entry["input_steps"][0], entry["inputs_signed"][0]
        if not isinstance(m, QMatMul):
            entry["weight_step"] = float(m.weight_quantizer.step.detach())
        out[path] = entry
    return out


@torch.no_grad()
def calibrate(model: nn.Module, batches, *, sample: int = 1 << 16, full_range_bits: int | None = 8) -> nn.Module:
    """Set every LSQ step of ``model`` in place from data, as post-training quantization does
    (and as :func:`planner.export.qdq.calibrate` calibrates an export without a checkpoint).

    ``batches``: the model's inputs, each a tensor or a tuple of tensors. The full-precision
    network (every quantizer passed through) runs on them while forward hooks collect, per
    activation quantizer, up to ``sample`` evenly spaced values per batch, the largest magnitude
    and whether every value is >= 0 (then the quantizer is unsigned, else signed). Each step is
    the one of :func:`planner.export.qdq.grid_steps` (the least squared round-and-clip error over
    clipping ranges of 5% .. 100% of the largest magnitude) at the quantizer's bits; activations
    at ``full_range_bits`` bits and above span their largest magnitude instead (None: search at
    every width). Weights get the search over all their values. Steps learned before are
    replaced; LSQ fine-tuning may start from these. Returns ``model``. Raises MpqError when
    ``batches`` is empty."""
    import numpy as np

    from planner.export.qdq import grid_steps

    layers = [m for m in model.modules() if isinstance(m, QUANTIZED)]
    activations = [q for m in layers for q in input_quantizers(m)]
    seen: dict[LsqQuantizer, list] = {q: [[], 0.0, True] for q in activations}

    def record(quantizer, args):
        flat = args[0].detach().float().reshape(-1)
        entry = seen[quantizer]
        entry[0].append(flat[::max(1, flat.numel() // sample)].numpy().astype(np.float32))
        entry[1] = max(entry[1], float(flat.abs().max()) if flat.numel() else 0.0)
        entry[2] &= bool((flat >= 0).all())

    quantizers = activations + [m.weight_quantizer for m in layers if hasattr(m, "weight_quantizer")]
    hooks = [q.register_forward_pre_hook(record) for q in activations]
    hooks += [q.register_forward_hook(lambda module, args, out: args[0]) for q in quantizers]
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            model(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if any(not entry[0] for entry in seen.values()):
        raise MpqError("calibration needs at least one input batch")
    for quantizer, (values, peak, nonneg) in seen.items():
        quantizer.signed_flag.fill_(0 if nonneg else 1)
        _, qp = quantizer.levels()
        if full_range_bits is not None and quantizer.bits >= full_range_bits:
            step = max(peak, 1e-8) / qp
        else:
            step = float(grid_steps(np.concatenate(values), quantizer.bits, not nonneg, peak=peak))
        quantizer.step.fill_(step)
        quantizer.initialized.fill_(True)
    for m in layers:
        if hasattr(m, "weight_quantizer"):
            w = m.weight.detach().float().numpy()
            m.weight_quantizer.step.fill_(float(grid_steps(w, m.bits, True)))
            m.weight_quantizer.initialized.fill_(True)
    return model
