"""tiny_bert: a BERT-style encoder: token + position embeddings, 2 post-LN layers, pooler.

Couplings: attention heads through Reshape/Transpose (as in tiny_vit) with an additive padding
mask; post-LN: each sub-layer's output projection, the residual and the LayerNorm after it share
the hidden channels, as do the word/position embeddings (Gather rows) and the embedding
LayerNorm; the FFN's intermediate channels (Linear→GELU→Linear) form a free group per layer.

    input_ids: (batch, sequence) int64 in [0, 256); attention_mask: (batch, sequence) int64 of
    1 (attend) / 0 (padding) → last_hidden_state: (batch, sequence, 64), pooler_output:
    (batch, 64). batch and sequence are dynamic, sequence ≤ 64 (position table).
    hidden 64, 4 heads of 16, FFN 128 with GELU, pooler tanh(Linear(h[:, 0])). About 92k params.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BertSelfAttention(nn.Module):
    """Multi-head attention with an additive mask of shape (B, 1, 1, S)."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(batch, seq, hidden)
        return self.output(ctx)


class BertLayer(nn.Module):
    """Post-LN layer: LN(x + Attn(x)), then LN(x + FFN(x)) with a GELU FFN."""

    def __init__(self, hidden: int, num_heads: int, intermediate: int) -> None:
        super().__init__()
        self.attention = BertSelfAttention(hidden, num_heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask_bias))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class TinyBert(nn.Module):
    """Embeddings (word + position, LayerNorm) → encoder layers → (hidden states, pooled cls)."""

    def __init__(
        self,
        vocab_size: int = 256,
        max_positions: int = 64,
        hidden: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate: int = 128,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(
            BertLayer(hidden, num_heads, intermediate) for _ in range(num_layers)
        )
        self.pooler = nn.Linear(hidden, hidden)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = self.embedding_norm(x)
        # (B, S) 1/0 → (B, 1, 1, S) additive bias: 0 where attended, dtype-min at padding.
        mask = attention_mask[:, None, None, :].to(x.dtype)
        mask_bias = (1.0 - mask) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask_bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled
