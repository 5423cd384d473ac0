"""OadTR (Wang et al., ICCV 2021) in PyTorch: encoder over the recent window with a task
token, decoder of learned future queries; the streaming graph keeps the window as state."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn, dropout: float = 0.0):
        super().__init__()
        self.norm, self.fn, self.dropout = nn.LayerNorm(dim), fn, nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fn(self.norm(x)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Encoder(nn.Module):
    """Pre-norm ViT blocks; keys ``net.{2i}.fn.fn.qkv`` / ``net.{2i+1}.fn.fn.net.{0,3}`` as OadTR's."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [Residual(PreNorm(dim, SelfAttention(dim, heads), dropout)),
                       Residual(PreNorm(dim, FeedForward(dim, mlp_dim, dropout)))]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class AttentionLayer(nn.Module):
    """Informer's AttentionLayer around full (optionally causal) attention."""

    def __init__(self, d_model: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        b, lq, _ = queries.shape
        lk = keys.shape[1]
        q = self.query_projection(queries).view(b, lq, self.heads, -1).transpose(1, 2)
        k = self.key_projection(keys).view(b, lk, self.heads, -1).transpose(1, 2)
        v = self.value_projection(values).view(b, lk, self.heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if self.causal:
            # Informer's TriangularCausalMask (torch.triu exports as Trilu): built by index
            # comparison instead, which every runtime supports.
            i = torch.arange(lq, device=q.device)[:, None]
            j = torch.arange(lk, device=q.device)[None, :]
            scores = scores.masked_fill(j > i, float("-inf"))
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, lq, -1)
        return self.out_projection(out)


class DecoderLayer(nn.Module):
    """Post-norm Informer decoder layer: causal self-attention, cross-attention, 1x1-conv FFN (GELU)."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.self_attention = AttentionLayer(d_model, heads, causal=True)
        self.cross_attention = AttentionLayer(d_model, heads, causal=False)
        self.conv1 = nn.Conv1d(d_model, d_ff, 1)
        self.conv2 = nn.Conv1d(d_ff, d_model, 1)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, cross):
        x = self.norm1(x + self.dropout(self.self_attention(x, x, x)))
        x = self.norm2(x + self.dropout(self.cross_attention(x, cross, cross)))
        y = self.dropout(F.gelu(self.conv1(x.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm3(x + y)


class Decoder(nn.Module):
    def __init__(self, layers, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, cross):
        for layer in self.layers:
            x = layer(x, cross)
        return self.norm(x)


class LearnedPositionalEncoding(nn.Module):
    def __init__(self, positions: int, dim: int):
        super().__init__()
        self.pe = nn.Embedding(positions, dim)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))

    def forward(self, x):
        return x + self.pe(self.position_ids)


class OadTR(nn.Module):
    """OadTR, as the official ``VisionTransformer_v3``: features of the last ``window`` chunks
    projected to ``dim``; the task token appended last; learned positions; pre-norm encoder;
    ``pre_head_ln``; an Informer decoder whose ``queries`` learned tokens (one per future step)
    attend causally to each other and to the encoded window; current scores from
    [task-token output ‖ mean of decoder outputs], anticipated scores per query.
    Paper sizes: window 64, dim 1024, 3 encoder layers x 8 heads, 5 decoder layers x 4 heads,
    8 queries, MLP/FFN 1024. Dropout is training-only.
    """

    def __init__(self, feature_dim: int = 3072, num_classes: int = 22, window: int = 64, dim: int = 1024,
                 layers: int = 3, heads: int = 8, mlp_dim: int = 1024, dec_layers: int = 5, dec_heads: int = 4,
                 queries: int = 8, dec_ff: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.window = window
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.linear_encoding = nn.Linear(feature_dim, dim)
        self.position_encoding = LearnedPositionalEncoding(window + 1, dim)
        self.pe_dropout = nn.Dropout(dropout)
        self.encoder = Encoder(dim, layers, heads, mlp_dim, dropout)
        self.pre_head_ln = nn.LayerNorm(dim)
        self.decoder = Decoder([DecoderLayer(dim, dec_heads, dec_ff, dropout) for _ in range(dec_layers)], dim)
        self.decoder_cls_token = nn.Parameter(torch.zeros(1, queries, dim))
        self.classifier = nn.Linear(dim, num_classes)
        self.after_dropout = nn.Dropout(dropout)
        self.mlp_head = nn.Linear(2 * dim, num_classes)

    def forward(self, window: torch.Tensor):
        """(B, window, D) -> (scores (B, C), anticipated (B, queries, C))."""
        x = self.linear_encoding(window)
        x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
        x = self.pre_head_ln(self.encoder(self.pe_dropout(self.position_encoding(x))))
        dec = self.after_dropout(self.decoder(self.decoder_cls_token.expand(x.shape[0], -1, -1), x))
        scores = self.mlp_head(torch.cat([x[:, -1], dec.mean(dim=1)], dim=1))
        return scores, self.classifier(dec)


class StreamingOadTR(nn.Module):
    """One chunk in: the window of the last ``window`` features is state (shifted by one, the
    new chunk appended), so each chunk costs one graph run and the session holds no logic."""

    def __init__(self, model: OadTR):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, window: torch.Tensor):
        window = torch.cat([window[:, 1:], features[:, None]], dim=1)
        scores, anticipated = self.model(window)
        return scores, anticipated, window
