"""NorthPole-style cost: compute-bound MAC arrays, every weight in on-chip memory.

latency_s    = MACs / (cores x MACs/cycle/core at b bits x clock)
weight_bytes = weights x b / 8
energy_j     = MACs x energy/MAC at b + (weight + activation bytes) x energy/byte on chip
               (only where the spec gives energies)

An option whose weights do not fit in the chip's on-chip memory is not offered.
"""
from __future__ import annotations

from . import activation_bytes, weight_bytes


class NorthPoleCost:
    """Compute-bound MAC arrays with every weight on chip (see the module docstring)."""

    name = "northpole"
    metrics = ("latency_s", "weight_bytes", "energy_j")

    def layer_cost(self, layer, bits: int, spec) -> dict[str, float] | None:
        """``latency_s`` (s), ``weight_bytes`` (bytes) and, where the spec gives energies, ``energy_j``
        (J) of ``layer`` at ``bits``; None when the chip has no MAC units for ``bits`` or the layer's
        weights alone exceed the on-chip memory."""
        if bits not in spec.macs_per_cycle:
            return None
        weights = weight_bytes(layer, bits)
        if spec.on_chip_bytes is not None and weights > spec.on_chip_bytes:
            return None
        cost = {"latency_s": layer.macs / spec.macs_per_second(bits) + spec.launch_overhead_s,
                "weight_bytes": weights}
        if spec.has_energy:
            moved = weights + activation_bytes(layer, bits, None)
            cost["energy_j"] = layer.macs * spec.energy_per_mac_j[bits] + moved * (spec.energy_per_byte_onchip_j or 0.0)
        return cost
