"""Accelerator specifications (YAML) and their loader/validator."""
from .spec import SUPPORTED_BITS, HardwareSpec, check_bits, load_spec, parse_spec, shipped_specs

__all__ = ["SUPPORTED_BITS", "HardwareSpec", "check_bits", "load_spec", "parse_spec", "shipped_specs"]
