"""A tiny MNIST task for tests: 600 training digits, a narrow ResNet, a few hundred steps."""
import torch

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


class NoEvaluate:
    name = "broken"

    def model(self):
        return torch.nn.Linear(2, 2)

    def train_data(self):
        return []

    def eval_data(self):
        return []
