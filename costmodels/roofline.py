"""Roofline cost: a layer takes the longer of its compute time and its memory-traffic time.

compute_s    = MACs / (cores x MACs/cycle/core at b x clock)
memory_s     = (weights x b/8 + inputs x b/8 + outputs x output_bits/8) / off-chip bandwidth
latency_s    = max(compute_s, memory_s) + launch overhead
weight_bytes = weights x b / 8
energy_j     = MACs x energy/MAC at b + bytes moved x energy/byte off chip (where given)

Memory-bound layers (depthwise convs, batch-1 fully connected layers) gain less than 2x from a
halving of precision because their outputs and the fixed overhead do not shrink.
"""
from __future__ import annotations

from planner.errors import MpqError

from . import activation_bytes, weight_bytes


class RooflineCost:
    """The longer of compute time and off-chip memory traffic time (see the module docstring)."""

    name = "roofline"
    metrics = ("latency_s", "weight_bytes", "energy_j")

    def check(self, graph, spec) -> None:
        """Raise MpqError when ``spec`` gives no off-chip bandwidth."""
        if spec.offchip_bandwidth is None:
            raise MpqError(f"{spec.path}: memory.offchip_bandwidth_bytes_per_s is missing; the roofline "
                           "cost model needs it (use --cost-model northpole for an on-chip-only part)")

    def layer_cost(self, layer, bits: int, spec) -> dict[str, float] | None:
        """``latency_s`` (s), ``weight_bytes`` (bytes) and, where the spec gives energies, ``energy_j``
        (J) of ``layer`` at ``bits``; None when the chip has no MAC units for ``bits``."""
        if bits not in spec.macs_per_cycle:
            return None
        weights = weight_bytes(layer, bits)
        moved = weights + activation_bytes(layer, bits, spec.output_bits)
        compute_s = layer.macs / spec.macs_per_second(bits)
        memory_s = moved / spec.offchip_bandwidth
        cost = {"latency_s": max(compute_s, memory_s) + spec.launch_overhead_s, "weight_bytes": weights}
        if spec.has_energy:
            cost["energy_j"] = layer.macs * spec.energy_per_mac_j[bits] + moved * (spec.energy_per_byte_offchip_j or 0.0)
        return cost
