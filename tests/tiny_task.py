"""Tiny tasks for tests on the 5,000 MNIST digits: a narrow ResNet (600 training digits) and a
one-block attention network over the rows of a digit."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from planner.quant.lsq import MatMul
from planner.tasks.mnist import MnistTask, SmallResNet


class TinyMnist(MnistTask):
    name = "tiny-mnist"
    batch_size = 50
    epochs = 2
    finetune_epochs = 1

    def model(self):
        torch.manual_seed(0)
        return SmallResNet(widths=(4, 8, 8))

    def train_data(self):
        return torch.utils.data.Subset(self._splits["train"], range(0, 3500, 6))

    def eval_data(self):
        return torch.utils.data.Subset(self._splits["val"], range(0, 500, 2))


task = TinyMnist()


class RowAttention(nn.Module):
    """A digit as a sequence of its 28 rows (28 pixels each): row embedding, one self-attention
    block (separate Q/K/V projections, the products Q·Kᵀ and P·V as MatMul modules, output
    projection, residual), a two-layer feed-forward block, mean pooling and a classifier."""

    def __init__(self, hidden: int = 16, heads: int = 2, ffn: int = 32, classes: int = 10):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.embed = nn.Linear(28, hidden)
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.scores, self.context = MatMul(), MatMul()
        self.out = nn.Linear(hidden, hidden)
        self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.fc = nn.Linear(hidden, classes)

    def _split(self, t):
        return t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        h = self.embed(x.flatten(1, 2))  # (batch, 1, 28, 28) -> (batch, 28 rows, hidden)
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        p = (self.scores(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)).softmax(-1)
        h = h + self.out(self.context(p, v).transpose(1, 2).flatten(2))
        h = h + self.down(F.relu(self.up(h)))
        return self.fc(h.mean(1))


class TinyAttentionMnist(TinyMnist):
    name = "tiny-attention-mnist"
    lr = 0.2
    epochs = 10

    def model(self):
        torch.manual_seed(0)
        return RowAttention()


attention_task = TinyAttentionMnist()


class NoEvaluate:
    name = "broken"

    def model(self):
        return torch.nn.Linear(2, 2)

    def train_data(self):
        return []

    def eval_data(self):
        return []
