"""The settings of value-model training, declared once: what `vm train` and `vm distill` share (the network, the
optimiser, the split, the output) in FitConfig, and what each adds (labelled data; sampling and a reward).

Standard library only, so the CLI reads the defaults for `--help` without importing numpy or torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

INPUTS = ("tokens", "bytes", "hidden")  # hidden: a head on the base model's own hidden state (contract 3)
ARCHITECTURES = ("bag", "gru")
DEFAULT_ARCH = {"tokens": "gru", "bytes": "gru"}  # vm train: gru beat bag on Gemma tokens (docs/results.md)
DISTILL_ARCH = {"tokens": "bag", "bytes": "gru"}  # vm distill: bag for tokens, as the shipped distilled models
BYTES_PER_TOKEN = 4  # with input bytes, max_tokens and context_tokens count this many bytes per token
# Distillation sets are hundreds of samples, not tens of thousands of tweets: 3 epochs (vm train's default) is ~20
# optimiser steps. Measured on 480 tweets scored by the shipped sentiment model (held-out full-text R²): 3 epochs
# 0.06, 10 0.42, 20 0.51, 30 0.48, 60 0.45.
DISTILL_EPOCHS = 20


@dataclass(kw_only=True)
class FitConfig:
    """A value model's network and its fit: shared by TrainingConfig (`vm train`) and DistillConfig (`vm distill`)."""

    out: Path
    model: Path | None  # the GGUF whose tokenizer a token-level model reads
    input: str = "tokens"
    arch: str | None = None  # None: the command's default for the input (DEFAULT_ARCH, DISTILL_ARCH)
    objective: str | None = None
    description: str | None = None
    seed: int = 0
    holdout: float = 0.1  # share held out for the reported metrics (texts, or prompts with all their samples)
    epochs: int = 3
    dim: int = 64
    hidden: int = 64
    ema_decay: float = 0.9
    min_count: int = 2
    batch_size: int = 64  # texts per optimisation step
    learning_rate: float = 3e-3
    token_dropout: float = 0.1
    context_prob: float = 0.1
    context_tokens: int = 64
    recurrent_size: int = 128  # GRU hidden size H (the state) of the gru architecture
    rank: int = 15  # input hidden: numbers per candidate token in the head's table (+1 bias; float16)
    look_ahead: int = 0  # input hidden: positions per text where the head also learns every top-k candidate
    pooling: str = "none"  # input hidden: mean = also read the mean hidden state over the continuation so far
    scoring: str = "candidate"  # input hidden: look-ahead = export the value of the state after each candidate
    layer: int | None = None  # scoring look-ahead: the block whose output it reads (None: the final state)
    value_width: int = 0  # input hidden: hidden units of the head's value term (0: linear)
    memory_decay: float = 1.0  # pooling mean+tokens: AdamW weight decay of the free per-token memory weights
    teacher_weight: float = 3.0  # input hidden: weight of the pull of q toward the look-ahead teacher V (hidden_fit)
    threads: int = 1  # torch threads (reproducible for a given count)
    # bce: binary cross-entropy per prefix (labels in [0, 1]); prefix: squared error per prefix (regression onto an
    # unbounded target, e.g. a standardised reward); mean: squared error of the mean over prefixes (paper, Eq. 6).
    loss: str = "bce"


@dataclass(kw_only=True)
class TrainingConfig(FitConfig):
    """`vm train`: labelled texts."""

    data: Path
    text_column: str = "text"
    label_column: str = "label"
    positive: str | None = None
    weight_column: str | None = None
    label_type: str = "auto"
    max_tokens: int = 128  # each text is cut to this many tokens (4x as many bytes)
    max_texts: int | None = None  # input hidden: a seeded subset of at most this many training texts


@dataclass(kw_only=True)
class DistillConfig(FitConfig):
    """`vm distill`: the base model's own continuations of prompts (or given texts), scored by a reward."""

    prompts: Path | None  # openings the base model continues (on-policy) ...
    reward: str
    samples_per_prompt: int = 4
    max_tokens: int = 64  # tokens per continuation
    top_k: int = 10
    temperature: float = 1.0
    steered_share: float = 0.0  # share of samples drawn with steering (entropy gate) instead of gate none
    steer_value_model: Path | None = None  # value model for the steered samples [default: the shipped one]
    reward_on: str = "full"  # full: prompt + continuation; continuation: the generated text alone
    cache: Path | None = None  # [default: OUT with suffix .samples.jsonl]
    sample_batch_size: int = 8  # sequences decoded together while sampling
    llama_threads: int | None = None  # llama.cpp threads while sampling [default: all cores; 1 per Ray actor]
    texts: Path | None = None  # ... or finished texts used as they are (off-policy), instead of prompts
    text_column: str = "text"  # the column of `texts` when it is CSV or JSONL
    max_texts: int | None = None  # a seeded random subset of `texts` of at most this many
    ray_address: str | None = None  # sample on Ray actors: "local" (this machine) or a cluster address
    ray_actors: int = 2
    epochs: int = DISTILL_EPOCHS
    loss: str = "prefix"
    holdout_among: int | None = None  # hold out prompts among the first N only (None: all), so appended ones train

    @property
    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.out).with_suffix(".samples.jsonl")


@dataclass(kw_only=True)
class FitReport:
    """What `vm train` and `vm distill` both report about the model they wrote."""

    out: str
    objective: str
    n_train: int
    n_holdout: int
    vocab_rows: int = 0  # embedding rows (256 for bytes)
    state_size: int = 0
    input: str = "tokens"
    arch: str = "bag"
    file_bytes: int = 0
    seconds: float = 0.0
    graph: object = field(default=None, repr=False)  # the exported torch module, for tests

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "graph"}


def default(config_class, name: str):
    """A field's default, for the CLI's --help."""
    return next(f.default for f in fields(config_class) if f.name == name)
