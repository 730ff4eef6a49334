"""mpq: hardware-aware mixed-precision planning for integer accelerators."""
from .errors import MpqError
from .graph import Group, Layer, LayerGraph, load_graph

__all__ = ["Group", "Layer", "LayerGraph", "MpqError", "load_graph"]
__version__ = "0.1.0"
