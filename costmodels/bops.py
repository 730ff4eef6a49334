"""Hardware-agnostic proxies used by HAWQ-V3, AIMET and NNCF.

bops         = MACs x w_bits x a_bits (bit operations; here w_bits = a_bits = b)
weight_bytes = weights x b / 8 (model size)

Every precision the spec lists is offered.
"""
from __future__ import annotations

from . import weight_bytes


class BopsCost:
    """Bit operations and weight bytes: hardware-agnostic proxies, offered at every precision of the spec."""

    name = "bops"
    metrics = ("bops", "weight_bytes")

    def layer_cost(self, layer, bits: int, spec) -> dict[str, float] | None:
        """``{"bops": MACs x bits x bits, "weight_bytes": bytes}`` of ``layer`` at ``bits``; None when
        ``spec`` does not list ``bits``."""
        if bits not in spec.precisions:
            return None
        return {"bops": float(layer.macs * bits * bits), "weight_bytes": weight_bytes(layer, bits)}
