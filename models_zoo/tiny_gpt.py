"""tiny_gpt: a GPT-2-style causal decoder: 2 pre-LN layers, causal mask, tied LM head.

Couplings: shared weights: the token embedding `wte.weight` (vocab, hidden) is used twice in the
exported graph, by the Gather of the embedding and by the LM head, written
`MatMul(wte.weight, hᵀ)ᵀ` so that neither exporter constant-folds a transposed copy: pruning hidden
channels must slice that one initializer consistently for both consumers. Heads go through
Reshape/Transpose; the residual stream ties the embeddings, every LayerNorm and every
out/fc_out projection; the causal mask is a (max, max) bool buffer sliced to (S, S).

    input_ids: (batch, sequence) int64 in [0, 256) → logits: (batch, sequence, 256);
    batch and sequence dynamic, sequence ≤ 64. hidden 64, 4 heads of 16, MLP 64→256→64 GELU.
    About 121k parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CausalSelfAttention(nn.Module):
    """Fused QKV Linear → split → heads → masked softmax(QKᵀ/√D)V → out projection."""

    causal_mask: torch.Tensor  # (1, 1, max_positions, max_positions) bool buffer

    def __init__(self, hidden: int, num_heads: int, max_positions: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        causal = torch.tril(torch.ones(max_positions, max_positions, dtype=torch.bool))
        self.register_buffer(
            "causal_mask", causal.view(1, 1, max_positions, max_positions), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(x).split(hidden, dim=2)
        q = q.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = self.causal_mask[:, :, :seq, :seq]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(out.transpose(1, 2).reshape(batch, seq, hidden))


class GptBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, hidden: int, num_heads: int, max_positions: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, num_heads, max_positions)
        self.ln_2 = nn.LayerNorm(hidden)
        self.fc_in = nn.Linear(hidden, 4 * hidden)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.fc_out(self.act(self.fc_in(self.ln_2(x))))


class TinyGpt(nn.Module):
    """wte + wpe → pre-LN blocks → final LN → LM head tied to wte."""

    def __init__(
        self,
        vocab_size: int = 256,
        max_positions: int = 64,
        hidden: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, hidden)
        self.wpe = nn.Embedding(max_positions, hidden)
        self.blocks = nn.ModuleList(
            GptBlock(hidden, num_heads, max_positions) for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        # Tied head: logits = x @ wteᵀ, written so the (vocab, hidden) weight is used as is.
        return torch.matmul(self.wte.weight, x.transpose(1, 2)).transpose(1, 2)
