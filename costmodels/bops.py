"""Hardware-agnostic proxies used by HAWQ-V3, AIMET and NNCF.

bops         = MACs x w_bits x a_bits (bit operations; here w_bits = a_bits = b)
weight_bytes = weights x b / 8 (model size)

Every precision the spec lists is offered.
"""
from __future__ import annotations


class BopsCost:
    name = "bops"
    metrics = ("bops", "weight_bytes")

    def layer_cost(self, layer, bits: int, spec) -> dict[str, float] | None:
        if bits not in spec.precisions:
            return None
        return {"bops": float(layer.macs * bits * bits), "weight_bytes": layer.params * bits / 8}
