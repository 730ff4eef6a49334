"""mpq: hardware-aware mixed-precision planning for integer accelerators.

``import planner`` is light (the layer graph and its dependencies load on first use), so the
command line can answer a Ctrl-C while it starts."""
from planner.errors import MpqError

__all__ = ["Group", "Layer", "LayerGraph", "MpqError", "load_graph"]
__version__ = "0.1.0"
_FROM_GRAPH = ("Group", "Layer", "LayerGraph", "load_graph")


def __getattr__(name: str):
    if name in _FROM_GRAPH:
        from planner import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'planner' has no attribute '{name}'")
