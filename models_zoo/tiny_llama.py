"""tiny_llama: LLaMA-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied head.

Couplings: grouped-query attention: 4 query heads share 2 key/value heads (k/v are expanded
(B,2,1,S,D) → (B,2,2,S,D) → reshaped to 4 heads), so a KV head couples with the two query heads
that read it; RoPE's rotate-half pairs channel i with i + D/2 inside each head (Slice → Neg →
Concat), so within-head channels are coupled in pairs; SwiGLU ties the gate and up projections'
output channels (Mul) with the down projection's inputs; RMSNorm written by hand
(pow → mean → add eps → rsqrt → mul → mul weight); shared weights: the embedding is the LM head
(`MatMul(embed.weight, hᵀ)ᵀ`, as in tiny_gpt).

    input_ids: (batch, sequence) int64 in [0, 256) → logits: (batch, sequence, 256);
    batch and sequence dynamic, sequence ≤ 64 (RoPE table). hidden 64, 4 query heads and
    2 key/value heads of 16, SwiGLU intermediate 128, 2 layers, no biases. About 90k parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x², -1) + eps) · weight, written out (no fused op)."""

    is_rms_norm = True  # lets the zoo randomise `weight` like other norms

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1) on the last axis, halves of D/2."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, KV, S, D) → (B, KV·n_rep, S, D), each KV head repeated n_rep times consecutively."""
    batch, kv_heads, seq, head_dim = x.shape
    x = x[:, :, None, :, :].expand(batch, kv_heads, n_rep, seq, head_dim)
    return x.reshape(batch, kv_heads * n_rep, seq, head_dim)


class GqaAttention(nn.Module):
    """Grouped-query attention with RoPE and a causal mask built from positions."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = hidden // num_heads
        self.q_proj = nn.Linear(hidden, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        n_rep = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))


class SwiGluMlp(nn.Module):
    """down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    """x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, intermediate: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(hidden)
        self.self_attn = GqaAttention(hidden, num_heads, num_kv_heads)
        self.post_attention_norm = RMSNorm(hidden)
        self.mlp = SwiGluMlp(hidden, intermediate)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_norm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_norm(x))


class TinyLlama(nn.Module):
    """Embedding → LLaMA layers → RMSNorm → LM head tied to the embedding."""

    rope_cos: torch.Tensor  # (max_positions, head_dim) buffers
    rope_sin: torch.Tensor

    def __init__(
        self,
        vocab_size: int = 256,
        max_positions: int = 64,
        hidden: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate: int = 128,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(
            LlamaLayer(hidden, num_heads, num_kv_heads, intermediate) for _ in range(num_layers)
        )
        self.norm = RMSNorm(hidden)
        head_dim = hidden // num_heads
        inv_freq = 1.0 / rope_theta ** (
            torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
        )
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (max_positions, head_dim)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]  # (S, D), broadcast over (B, H)
        positions = torch.arange(seq, device=input_ids.device)
        mask = positions[None, :] <= positions[:, None]  # (S, S) causal: key ≤ query
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        return torch.matmul(self.embed_tokens.weight, x.transpose(1, 2)).transpose(1, 2)
