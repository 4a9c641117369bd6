"""The order-aware value model (torch): an embedding, a GRU over the sequence, a small tanh head on its hidden state.

It reads bytes (`--input bytes`: 256 rows, one per byte value, no tokenizer) or compact token rows (`--input tokens
--arch gru`). The state the runtime carries is the GRU hidden state h (S = H floats); the score of a text is
head(h). Unlike the bag of embeddings it sees order: "not good" and "good, not" differ.

Training runs `nn.GRU` over right-padded batches and scores every prefix at once; the exported graph
(`export.export_recurrent_value_model`) runs the ONNX GRU operator from the carried state. `RecurrentValueGraph`
here is the step-by-step reference of that graph in torch (mask blending, padding anywhere), used to check the export.
"""

from __future__ import annotations

import torch
from torch import nn

UNKNOWN_ROW = 0  # token input: every id not kept; byte input: byte 0 (NUL, which text never contains)


class RecurrentValueNet(nn.Module):
    def __init__(self, n_rows: int, dim: int, hidden: int, head: int) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.embedding = nn.Embedding(n_rows, dim)
        nn.init.normal_(self.embedding.weight, std=0.3)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, head), nn.Tanh(), nn.Linear(head, 1))

    @property
    def state_size(self) -> int:
        return self.hidden

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit of a text from its hidden state.  (..., H) -> (...)"""
        return self.head(hidden).squeeze(-1)

    def score_every_prefix(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of every prefix of right-padded sequences, from the empty text.  rows, mask (B, L) -> (B, L)

        Entries at padding are meaningless (mask them out): padding must only sit on the right here.
        """
        outputs, _ = self.gru(self.embedding(rows))  # (B, L, H)
        return self.score(outputs)

    def step(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One GRU step for a batch: (B, H), (B,) -> (B, H), the same arithmetic as nn.GRU and ONNX's GRU."""
        x = self.embedding(rows)
        w_ih, w_hh = self.gru.weight_ih_l0, self.gru.weight_hh_l0
        b_ih, b_hh = self.gru.bias_ih_l0, self.gru.bias_hh_l0
        gi = x @ w_ih.T + b_ih
        gh = hidden @ w_hh.T + b_hh
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return (1 - update) * candidate + update * hidden


class RecurrentValueGraph(nn.Module):
    """Reference of the exported graph: (state, tokens, mask) -> (new_state, score), models/README.md contract.

    A padded position (mask 0) leaves the hidden state as it was: h = m * step(h, x) + (1 - m) * h, so padding may
    sit anywhere and k candidates of different lengths share one call. `row_of_token` maps base-model ids to compact
    rows (token input); None means the input is bytes, read as they are.
    """

    def __init__(self, net: RecurrentValueNet, row_of_token: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.row_of_token = None if row_of_token is None else row_of_token.to(torch.int32)

    def forward(self, state: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        rows = self.rows(tokens)
        hidden = state
        for t in range(tokens.shape[1]):
            keep = mask[:, t : t + 1]
            hidden = keep * self.net.step(hidden, rows[:, t]) + (1 - keep) * hidden
        return hidden, self.net.score(hidden)

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.row_of_token is None:
            return tokens.clamp(0, 255)
        n_vocab = self.row_of_token.shape[0]
        inside = (tokens >= 0) & (tokens < n_vocab)
        rows = self.row_of_token[tokens.clamp(0, n_vocab - 1)].to(torch.int64)
        return torch.where(inside, rows, torch.full_like(rows, UNKNOWN_ROW))
