"""The contract-3 value head: scores k candidate tokens from the base model's hidden state, in one small call.

    q(h, a) = v(x) + b_a + u(x) . z_a        x = (h - mean) / sd  (statistics of the training split)

- v(x) = w . x + c: the value of the text so far, linear in the standardised state (a linear probe reads sentiment,
  negation included, from it: ../shared notes, arXiv 2310.15154); it moves all k candidates alike. With a
  `value_width` it is a small MLP instead (one hidden layer, GELU, dropout in training): `clean`'s reward is a
  non-linear function of which words the pooled mean remembers;
- z_a = P e_a and b_a = p . e_a: the candidate through the base model's own input-embedding row e_a, projected to r
  numbers, so tokens never seen in training still get a representation; exported as one (n_vocab, r + 1) float16
  table, so the ONNX file holds r + 1 numbers per token instead of the d-wide rows;
- u(x) = tanh(x U1) U2: what the context asks of the next token (after "not", a positive word should score low).

With `pooled` statistics the head also reads the mean of the hidden states over the continuation so far (contract 3's
optional `pooled` input), and v reads [x | standardised pool]: a last-layer state forgets what appeared 40 tokens
ago; the mean keeps it (what `clean` needs, docs/distillation.md).

With a token memory (pooling mean+tokens) the head also adds m(s + t_a): s is the sum of a learned weight t over the
tokens generated so far (contract 3's optional `continuation` input), t_a the candidate's own, and m a small curve
(1 -> 8 tanh -> 1) so one offensive word can count as much as several. A mean of states blurs which words were written;
`clean`'s reward is a linear model over word n-grams, and a ridge on the continuation's token counts beside the mean
state explains 0.69 of it against 0.48 for the state alone (tools/pooling_ridge.py). t = a free weight per token id
plus a projection of its input-embedding row (so rare tokens borrow from similar ones); the free weights get a
weight decay of their own (hidden_fit.HiddenFitConfig.memory_decay), else rare tokens' noise adds up along a text.
Exported as a vector beside the candidate table. Appending candidate a adds only t_a: the k candidates cost k reads.

Trained CD-FUDGE style: every prefix of every text is an example (the hidden state before token j, candidate = token
j, target = the text's label or reward), plus a look-ahead teacher: a linear V on the state *after* token j, trained
on the same target, whose score q should match (the look-ahead is what the candidate's state will say).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class CandidateHead(nn.Module):
    def __init__(self, hidden_size: int, embedding_size: int, rank: int, width: int,
                 mean: np.ndarray, sd: np.ndarray, embedding_scale: float,
                 pooled_stats: tuple[np.ndarray, np.ndarray] | None = None, value_width: int = 0,
                 memory_vocab: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float32))
        self.pooled = pooled_stats is not None
        if self.pooled:
            self.register_buffer("pooled_mean", torch.as_tensor(pooled_stats[0], dtype=torch.float32))
            self.register_buffer("pooled_sd", torch.as_tensor(pooled_stats[1], dtype=torch.float32))
        self.embedding_scale = float(embedding_scale)  # rows standardised by one scalar, so P starts well-sized
        value_size = hidden_size * (2 if self.pooled else 1)
        self.value = value_term(value_size, value_width)
        self.lookahead = value_term(value_size, value_width)  # the teacher V(h after the candidate)
        self.context = nn.Sequential(nn.Linear(hidden_size, width), nn.Tanh(), nn.Linear(width, rank))
        self.project = nn.Linear(embedding_size, rank + 1, bias=False)  # [z_a | b_a]
        nn.init.normal_(self.project.weight, std=0.02)
        self.rank = rank
        self.remembers = memory_vocab > 0  # the token memory m(s + t_a), over a vocabulary this large
        if self.remembers:
            self.token_weight = nn.Embedding(memory_vocab, 1)
            self.token_project = nn.Linear(embedding_size, 1, bias=False)
            nn.init.zeros_(self.token_weight.weight)
            nn.init.zeros_(self.token_project.weight)
            self.memory_curve = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))

    def standardise(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.mean) / self.sd

    def value_input(self, x: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        """What v (and the teacher) read: the standardised state, and the standardised pool if the head has one."""
        if not self.pooled:
            return x
        if pooled is None:
            raise ValueError("this head reads the pooled hidden states: pass them")
        return torch.cat([x, (pooled - self.pooled_mean) / self.pooled_sd], dim=-1)

    def candidate_rows(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(..., e) input-embedding rows -> (..., r + 1): what the exported table holds per token."""
        return self.project(embeddings / self.embedding_scale)

    def score(self, hidden: torch.Tensor, rows: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, d), rows (B, k, r + 1), pooled (B, d) if the head pools -> (B, k) scores."""
        x = self.standardise(hidden)
        u = self.context(x)
        return (self.value(self.value_input(x, pooled)) + rows[..., self.rank]
                + torch.einsum("br,bkr->bk", u, rows[..., :self.rank]))

    def token_weights(self, ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """t of each id (any shape), from the base model's (n_vocab, e) embedding table; each distinct id once."""
        distinct, where = torch.unique(ids, return_inverse=True)
        weights = (self.token_weight(distinct).squeeze(-1)
                   + self.token_project(embeddings[distinct].float() / self.embedding_scale).squeeze(-1))
        return weights[where]

    def memory(self, total: torch.Tensor) -> torch.Tensor:
        """m(s + t_a): total (...) -> (...)."""
        return self.memory_curve(total.unsqueeze(-1)).squeeze(-1)

    def look_ahead(self, hidden_after: torch.Tensor, pooled_after: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_after (..., d) -> (...): the teacher's value of the state after a candidate."""
        return self.lookahead(self.value_input(self.standardise(hidden_after), pooled_after)).squeeze(-1)


def value_term(size: int, width: int) -> nn.Module:
    """v (and the teacher V): linear, or with `width` hidden units one GELU layer (dropout 0.2 while training)."""
    if not width:
        return nn.Linear(size, 1)
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(size, width), nn.GELU(), nn.Dropout(0.2), nn.Linear(width, 1))


class ExportedHead(nn.Module):
    """What goes into the ONNX file: the head plus the (n_vocab, r + 1) float16 candidate table, and with a token
    memory the (n_vocab,) float16 vector t (candidate_table's last column, kept apart)."""

    def __init__(self, head: CandidateHead, table: np.ndarray) -> None:
        super().__init__()
        self.head = head
        table = torch.as_tensor(table, dtype=torch.float16)
        self.register_buffer("table", table[:, :head.rank + 1].contiguous())
        if head.remembers:  # t apart, so the graph gathers it without a second copy of the column
            self.register_buffer("token_weights", table[:, -1].contiguous())

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor, pooled: torch.Tensor | None = None,
                continuation: torch.Tensor | None = None,
                continuation_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.head.score(hidden, self.table[candidates].float(), pooled)
        if not self.head.remembers:
            return scores
        written = (self.token_weights[continuation].float() * continuation_mask).sum(1)  # s: the memory so far
        return scores + self.head.memory(written[:, None] + self.token_weights[candidates].float())


class ExportedLookAhead(nn.Module):
    """What a look-ahead model's ONNX file holds (scoring = look-ahead): the teacher V alone. Each row's `hidden` is
    already the state after its candidate, so the candidate ids only give the output its shape."""

    def __init__(self, head: CandidateHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        value = self.head.look_ahead(hidden, pooled)
        return value.unsqueeze(1).expand(-1, candidates.shape[1])


def candidate_table(head: CandidateHead, embeddings: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Every token's (r + 1) row, and its memory weight t with a token memory, computed in chunks (Gemma's
    embedding table is 262,144 x 640)."""
    out = np.empty((len(embeddings), head.rank + 1 + head.remembers), dtype=np.float16)
    table = torch.as_tensor(embeddings)
    with torch.no_grad():
        for start in range(0, len(embeddings), chunk):
            rows = table[start:start + chunk].float()
            out[start:start + chunk, :head.rank + 1] = head.candidate_rows(rows).numpy().astype(np.float16)
            if head.remembers:
                ids = torch.arange(start, min(start + chunk, len(embeddings)))
                out[start:start + chunk, -1] = head.token_weights(ids, table).numpy().astype(np.float16)
    return out
