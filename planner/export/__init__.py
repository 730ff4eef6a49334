"""Stage 5, the hand-off: the plan file and the formats the tools that run a plan read.

``plan`` builds, validates, writes and reads the plan JSON (schema ``mpq.plan/v1``) and the
bit-map CSV; ``qdq`` writes a QDQ ONNX model with true INT2/INT4/INT8 types; ``ortoverrides``
and ``aimet`` write onnxruntime tensor-quantization overrides and AIMET encodings; ``bnfold``
folds batch norms first; ``fidelity`` measures an export against its float model.
"""
from planner.export.plan import build_plan, read_plan, write_bitmap, write_plan

__all__ = ["build_plan", "read_plan", "write_bitmap", "write_plan"]
