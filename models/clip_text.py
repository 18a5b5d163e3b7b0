"""The SD1.5 text encoder: OpenAI CLIP ViT-L/14's text tower, with the Hugging Face module names.

Attribute paths equal the checkpoint keys under ``cond_stage_model.transformer.`` (``text_model.embeddings.
token_embedding``, ``text_model.encoder.layers.0.self_attn.q_proj``, ``text_model.final_layer_norm``, ...).
Position ids are always ``arange(n)``; there is no ``position_ids`` buffer (old files store one, and the loader
drops it, since its value can be stale or float-rounded).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.attention import attention
from models.config import CLIPTextConfig


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask=mask))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width)
        self.mlp = CLIPMLP(cfg.width, cfg.mlp_dim)
        self.layer_norm2 = nn.LayerNorm(cfg.width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.width)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(positions)  # [b, n, width]


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embeddings(ids)
        n = ids.shape[-1]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()  # True = may attend (keys <= query)
        for layer in self.encoder.layers:
            h = layer(h, causal)
        return self.final_layer_norm(h)


class CLIPTextModel(nn.Module):
    """Token ids ``[b, n]`` (``n <= 77``; SD1.5 always uses 77) -> ``last_hidden_state [b, n, width]``, the
    output after ``final_layer_norm`` that SD1.5's UNet cross-attends to. No padding mask: pad tokens are attended
    to causally like any other token, as in SD1.5."""

    def __init__(self, cfg: CLIPTextConfig | None = None):
        super().__init__()
        self.cfg = cfg or CLIPTextConfig()
        self.text_model = CLIPTextTransformer(self.cfg)

    def forward(self, ids: Tensor) -> Tensor:
        return self.text_model(ids)
