"""Real architectures built in torch for the tests and benchmarks (no downloads).

Each builder returns ``(module, example_inputs)`` in eval mode with seeded random weights.
The layouts follow the reference implementations (torchvision's ResNet, BERT-base,
MobileNetV2, GoogLeNet's Inception block) so that the exported ONNX graphs have the
same structure as the real thing.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout (stem, four stages, global pool, fc)."""

    def __init__(self, block, layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def resnet50(size: int = 224):
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [3, 4, 6, 3])
    _randomize_bn(model, 0)
    return model.eval(), (torch.randn(1, 3, size, size),)


def resnet18(size: int = 224):
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 2, 2, 2])
    _randomize_bn(model, 0)
    return model.eval(), (torch.randn(1, 3, size, size),)


class SelfAttention(nn.Module):
    """BERT self-attention: separate Q, K, V projections, explicit score and context matmuls."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def _split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, mask):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).flatten(2)
        return self.norm(x + self.output(context))


class EncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.intermediate = nn.Linear(hidden, ffn)
        self.out = nn.Linear(ffn, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.norm(x + self.out(nn.functional.gelu(self.intermediate(x))))


class BertEncoder(nn.Module):
    """BERT-base-shaped encoder: embeddings, ``blocks`` encoder blocks, attention mask input."""

    def __init__(self, blocks: int = 12, hidden: int = 768, heads: int = 12, ffn: int = 3072, vocab: int = 30522):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(512, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList(EncoderBlock(hidden, heads, ffn) for _ in range(blocks))

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.norm(self.word(input_ids) + self.position(positions))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for block in self.blocks:
            x = block(x, mask)
        return x


def bert(blocks: int = 12, hidden: int = 768, heads: int = 12, seq: int = 128):
    torch.manual_seed(0)
    model = BertEncoder(blocks, hidden, heads, 4 * hidden)
    ids = torch.randint(0, 30522, (1, seq))
    return model.eval(), (ids, torch.ones(1, seq, dtype=torch.long))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual when shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Small(nn.Module):
    """A shortened MobileNetV2: stem, five inverted residual blocks, 1x1 head, classifier."""

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(
            InvertedResidual(32, 16, 1, 1), InvertedResidual(16, 24, 2, 6), InvertedResidual(24, 24, 1, 6),
            InvertedResidual(24, 32, 2, 6), InvertedResidual(32, 32, 1, 6),
        )
        self.head = nn.Sequential(nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6(inplace=True))
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


def mobilenet(size: int = 96):
    torch.manual_seed(0)
    model = MobileNetV2Small()
    _randomize_bn(model, 0)
    return model.eval(), (torch.randn(1, 3, size, size),)


class InceptionBlock(nn.Module):
    """GoogLeNet's Inception block: four branches over one input, joined by Concat."""

    def __init__(self, inp: int):
        super().__init__()
        self.b1 = nn.Conv2d(inp, 64, 1)
        self.b2 = nn.Sequential(nn.Conv2d(inp, 96, 1), nn.ReLU(), nn.Conv2d(96, 128, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(inp, 16, 1), nn.ReLU(), nn.Conv2d(16, 32, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(inp, 32, 1))

    def forward(self, x):
        return torch.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class InceptionNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU())
        self.inception = InceptionBlock(64)
        self.mix = nn.Conv2d(256, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.mix(self.inception(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def inception(size: int = 64):
    torch.manual_seed(0)
    return InceptionNet().eval(), (torch.randn(1, 3, size, size),)


def hf_bert(config=None) -> nn.Module:
    """Hugging Face ``transformers``' BertModel (``config``: a BertConfig, default BERT-base: 12 x
    768, 12 heads, FFN 3072; random weights from seed 0, no download) in eval mode, as a module
    (input_ids, attention_mask) -> last hidden state."""
    from transformers import BertConfig, BertModel

    class LastHidden(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    return LastHidden(BertModel(config or BertConfig(), add_pooling_layer=False)).eval()


def count_macs_params(model: nn.Module, inputs: tuple) -> tuple[int, int]:
    """Independent count with forward hooks: MACs and weight elements of every Conv/Linear,
    plus the two attention matmuls of every SelfAttention (counted from the module's shapes)."""
    totals = {"macs": 0, "params": 0}

    def conv_hook(m, args, out):
        totals["macs"] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        totals["params"] += m.weight.numel()

    def linear_hook(m, args, out):
        totals["macs"] += out.numel() * m.in_features
        totals["params"] += m.weight.numel()

    def attention_hook(m, args, out):
        b, s, _ = args[0].shape
        totals["macs"] += 2 * b * m.heads * s * s * m.head_dim

    handles = []
    for m in model.modules():
        hook = {nn.Conv2d: conv_hook, nn.Linear: linear_hook, SelfAttention: attention_hook}.get(type(m))
        if hook:
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return totals["macs"], totals["params"]


def decoder_onnx(path, *, blocks: int = 2, hidden: int = 64, ffn: int = 176, heads: int = 4, vocab: int = 1000,
                 seed: int = 0, chunk_elements: int = 1 << 22) -> dict:
    """Write a decoder-only transformer (LLaMA-like: pre-norm, Q/K/V and gated MLP, fp32) as ONNX
    with every weight in one external data file, streaming: no more than one tensor is ever held.

    Inputs: ``input_ids`` [batch, seq] (both symbolic). Returns {"data": data path, "bytes": size,
    "largest": bytes of the largest tensor, "params": weight count}.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    data_path = path.with_suffix(".data")
    rng = np.random.default_rng(seed)
    initializers, nodes = [], []
    stats = {"bytes": 0, "largest": 0, "params": 0}
    with open(data_path, "wb") as data:
        def weight(name: str, shape: tuple[int, ...], scale: float = 0.02) -> str:
            count = int(np.prod(shape))
            offset = data.tell()
            for start in range(0, count, chunk_elements):
                block = rng.standard_normal(min(chunk_elements, count - start), dtype=np.float32) * np.float32(scale)
                data.write(block.tobytes())
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(count * 4))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            stats["bytes"] += count * 4
            stats["largest"] = max(stats["largest"], count * 4)
            stats["params"] += count
            return name

        def const(name: str, values, dtype=np.float32) -> str:
            initializers.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
            return name

        def node(op: str, inputs: list[str], name: str, **attrs) -> str:
            nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
            return name

        head = hidden // heads
        ones, zeros = const("norm_scale", np.ones(hidden)), const("norm_bias", np.zeros(hidden))
        split_shape = const("split_shape", [0, 0, heads, head], np.int64)
        merge_shape = const("merge_shape", [0, 0, hidden], np.int64)
        scale = const("attn_scale", 1.0 / math.sqrt(head))
        x = node("Gather", [weight("embed.weight", (vocab, hidden)), "input_ids"], "embed")
        for b in range(blocks):
            p = f"layers.{b}"
            h = node("LayerNormalization", [x, ones, zeros], f"{p}.attn_norm", axis=-1)
            q, k, v = (node("MatMul", [h, weight(f"{p}.{n}_proj.weight", (hidden, hidden))], f"{p}.{n}_proj") for n in "qkv")
            q, k, v = (node("Transpose", [node("Reshape", [t, split_shape], f"{t}.split")], f"{t}.heads", perm=[0, 2, 1, 3])
                       for t in (q, k, v))
            kt = node("Transpose", [k], f"{p}.k_t", perm=[0, 1, 3, 2])
            scores = node("Mul", [node("MatMul", [q, kt], f"{p}.scores"), scale], f"{p}.scaled")
            probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
            context = node("MatMul", [probs, v], f"{p}.context")
            merged = node("Reshape", [node("Transpose", [context], f"{p}.merge_t", perm=[0, 2, 1, 3]), merge_shape], f"{p}.merged")
            x = node("Add", [x, node("MatMul", [merged, weight(f"{p}.o_proj.weight", (hidden, hidden))], f"{p}.o_proj")], f"{p}.attn_res")
            h = node("LayerNormalization", [x, ones, zeros], f"{p}.mlp_norm", axis=-1)
            gate = node("MatMul", [h, weight(f"{p}.gate_proj.weight", (hidden, ffn))], f"{p}.gate_proj")
            up = node("MatMul", [h, weight(f"{p}.up_proj.weight", (hidden, ffn))], f"{p}.up_proj")
            act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{p}.sigmoid")], f"{p}.silu"), up], f"{p}.gated")
            x = node("Add", [x, node("MatMul", [act, weight(f"{p}.down_proj.weight", (ffn, hidden))], f"{p}.down_proj")], f"{p}.mlp_res")
        x = node("LayerNormalization", [x, ones, zeros], "final_norm", axis=-1)
        node("MatMul", [x, weight("lm_head.weight", (hidden, vocab))], "logits")
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mpq-synthetic")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return {"data": data_path, **stats}
