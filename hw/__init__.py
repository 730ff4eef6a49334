"""Accelerator specifications (YAML) and their loader/validator."""
from .spec import HardwareSpec, load_spec, parse_spec, shipped_specs

__all__ = ["HardwareSpec", "load_spec", "parse_spec", "shipped_specs"]
