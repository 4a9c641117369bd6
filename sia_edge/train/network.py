"""The value model's network (torch). Imported only by the training code, after torch was found.

The text so far is summarised by a state of size S = 2D + 1:

    state = [ sum of token embeddings (D) | token count (1) | exponential moving average of embeddings (D) ]

and scored by a small MLP on [mean embedding, bias-corrected EMA, log(1 + count)]. The mean carries the whole text; the EMA
(decay alpha) keeps the last few tokens influential however long the text is, so the k one-token candidates at a
junction still get different scores late in a long generation (with a mean alone their effect shrinks as 1/length).
Folding in n tokens costs O(n * D), whatever the length of the text before them.
"""

from __future__ import annotations

import torch
from torch import nn

UNKNOWN_ROW = 0  # compact embedding row of every token id not seen (often enough) in training


class PrefixValueNet(nn.Module):
    """Embeddings over a compact vocabulary + the scoring MLP. Both training and export go through `score`."""

    def __init__(self, n_rows: int, dim: int, hidden: int, ema_decay: float) -> None:
        super().__init__()
        self.dim = dim
        self.ema_decay = ema_decay
        self.embedding = nn.Embedding(n_rows, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.head = nn.Sequential(nn.Linear(2 * dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    @property
    def state_size(self) -> int:
        return 2 * self.dim + 1

    def score(self, sums: torch.Tensor, counts: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
        """Logit of a summarised text.  sums, ema (..., D); counts (..., 1) -> (...)"""
        mean = sums / counts.clamp(min=1.0)
        # Undo the EMA's pull towards its zero start (as Adam does), so short and long texts look alike.
        ema_hat = ema / (1.0 - torch.pow(self.ema_decay, counts)).clamp(min=1e-6)
        # The length tells the MLP how diluted the mean is (a long prompt) and so how much to trust the EMA.
        return self.head(torch.cat([mean, ema_hat, torch.log1p(counts)], dim=-1)).squeeze(-1)

    def score_every_prefix(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of every prefix of right-padded sequences, from the empty text.  rows, mask (B, L) -> (B, L)

        Entry [b, t] scores tokens 0..t of sequence b; entries at padding are meaningless (mask them out).
        """
        embedded = self.embedding(rows) * mask.unsqueeze(-1)  # (B, L, D)
        sums = embedded.cumsum(dim=1)  # (B, L, D)
        counts = mask.cumsum(dim=1).unsqueeze(-1)  # (B, L, 1)
        ema = torch.einsum("ts,bsd->btd", self._ema_weights(rows.shape[1]), embedded)  # (B, L, D)
        return self.score(sums, counts, ema)

    def _ema_weights(self, length: int) -> torch.Tensor:
        """W[t, s] = (1 - alpha) alpha^(t - s) for s <= t: the EMA at every position as one matrix product
        (a cumulative sum of alpha^-s terms would overflow for long texts).  -> (L, L)"""
        steps = torch.arange(length, dtype=torch.float32)
        lag = steps.unsqueeze(1) - steps.unsqueeze(0)  # (L, L)
        return torch.where(lag >= 0, (1 - self.ema_decay) * torch.pow(self.ema_decay, lag.clamp(min=0)), 0.0)


class IncrementalValueGraph(nn.Module):
    """The exported graph: (state, tokens, mask) -> (new_state, score), as models/README.md specifies."""

    def __init__(self, net: PrefixValueNet, row_of_token: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        # Base-model token id -> compact embedding row (int32 halves the table: 1 MB for Gemma's 262,144 ids).
        self.register_buffer("row_of_token", row_of_token.to(torch.int32))  # (n_vocab,)

    def forward(self, state: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        """state (B, S), tokens (B, n) int64, mask (B, n) -> new_state (B, S), score (B)"""
        dim, alpha = self.net.dim, self.net.ema_decay
        sums, counts, ema = state[:, :dim], state[:, dim : dim + 1], state[:, dim + 1 :]  # (B,D) (B,1) (B,D)
        embedded = self.net.embedding(self.rows(tokens)) * mask.unsqueeze(-1)  # (B, n, D)
        n_new = mask.sum(dim=1, keepdim=True)  # (B, 1)
        # Closed-form EMA over a chunk with padding anywhere: a real token at real-position p_j (1-based) of n_new
        # is decayed n_new - p_j times; padding has weight 0 and does not advance the clock.
        position = mask.cumsum(dim=1)  # (B, n)
        token_weight = mask * (1 - alpha) * torch.pow(alpha, n_new - position)  # (B, n)
        ema = torch.pow(alpha, n_new) * ema + (token_weight.unsqueeze(-1) * embedded).sum(dim=1)  # (B, D)
        sums = sums + embedded.sum(dim=1)  # (B, D)
        counts = counts + n_new  # (B, 1)
        return torch.cat([sums, counts, ema], dim=1), self.net.score(sums, counts, ema)

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """Compact rows of base-model ids; ids outside the vocabulary count as unknown.  (B, n) -> (B, n)"""
        n_vocab = self.row_of_token.shape[0]
        inside = (tokens >= 0) & (tokens < n_vocab)
        rows = self.row_of_token[tokens.clamp(0, n_vocab - 1)].to(torch.int64)
        return torch.where(inside, rows, torch.full_like(rows, UNKNOWN_ROW))
