"""TeSTra in PyTorch (Zhao and Krähenbühl, "Real-time Online Video Detection with Temporal Smoothing
Transformers", ECCV 2022), checked against the official code, github.com/zhaoyue-zephyrus/TeSTra at
dfb475454c96ecfd2988d119c81f8d7fe1eeb1b0 (``models/lstr.py``, ``models/transformer/``,
``datasets/perframe_data_layers.py`` ``LSTRBatchInferenceDataLayer``, configs/THUMOS/TESTRA).

:class:`TeSTra` is the official ``LSTR`` module as its THUMOS TeSTra configs build it, key for
key (``feature_head_long``, ``feature_head_work``, ``pos_encoding.pe``, ``enc_queries``,
``enc_modules``, ``dec_modules``, ``classifier``), run on one window the way its batch inference
runs it (which is how the paper's numbers are measured):
- the long memory: ``long`` samples every ``rate`` frames before the work window (THUMOS: 512
  every 4 = 2,048 frames), frames before the video's start padded with frame 0 and masked except
  one (the data layer's ``uniform_sampler`` and ``memory_key_padding_mask``);
- its compression: ``enc_modules[0]``, one decoder layer whose learned queries (16) attend to the
  long memory under the kernel — ``box``: plain softmax over the window; ``laplace``: the softmax
  weighted by ``decay^age`` (the official ``ENC_ATTENTION_DECAY``, 0.97, its ``log(vander + 1e-10)``
  bias) — then ``enc_modules[1]``, two layers of 32 queries over those 16;
- the work memory: the last ``work`` frames (32) with sinusoidal positions, decoded causally
  against [compressed long memory ‖ work memory] (``LONG_MEMORY_INCLUDE_WORK``) by ``dec_modules``;
  the classifier on every work position.
Choices: RGB ‖ flow features concatenated in that order (the official ``visual+motion`` feature
head); no anticipation queries and no verb/noun heads (the THUMOS configs have neither).

:class:`TeSTraStep` is TeSTra's streaming inference, one frame per call, with its state carried
between calls: the compressed-memory attention keeps, per sampling phase (``rate`` of them: the
long memory of consecutive frames samples different frames), the kernel's running sums
``sum_j w_j exp(s_j - c) v_j`` and ``sum_j w_j exp(s_j - c)``; a frame entering the long memory is
added, the one leaving it subtracted, and the Laplace kernel's weights decay by one factor per
update — constant work per frame whatever the memory's length. It equals the window
computation above: the official stream mode (``LSTRStream.stream_inference``) is its run-time
demonstration and differs from it (it drops the value projection's bias, and never removes what
leaves the memory, so its box kernel grows over the whole video), so the batch computation, which
the paper reports, is the reference. Over the batch computation, two choices: the sums are kept
divided by their total, with ``c`` the log of that total (the official stream fixes ``c`` at the
first frame's maximum, which overflows once a later score exceeds it by ~88; a running maximum
only climbs, so its terms may sink towards subnormal floats over a long stream), and the Laplace
weights are ``decay^age`` without the official bias's ``+ 1e-10`` (a relative change below 1e-7
at THUMOS sizes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """The official attention's parameters (``in_proj_weight`` [3d, d], ``in_proj_bias``,
    ``out_proj``); queries scaled by head_dim^-0.5 after their projection."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.d, self.heads, self.head_dim = d, heads, d // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """(B, T, d) -> (B, heads, T, head_dim): the query (0), key (1) or value (2) projection."""
        d = self.d
        y = F.linear(x, self.in_proj_weight[part * d:(part + 1) * d], self.in_proj_bias[part * d:(part + 1) * d])
        if part == 0:
            y = y * self.head_dim ** -0.5
        return y.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, head_dim) attention output -> (B, T, d) after ``out_proj``."""
        return self.out_proj(y.transpose(1, 2).flatten(2))

    def forward(self, q, k, v, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: additive, broadcast to (B, heads, Tq, Tk): masks (-inf) and kernel weights."""
        scores = self.project(q, 0) @ self.project(k, 1).transpose(-1, -2)
        if bias is not None:
            scores = scores + bias
        return self.merge(torch.softmax(scores, dim=-1) @ self.project(v, 2))


class DecoderLayer(nn.Module):
    """The official (post-norm) ``TransformerDecoderLayer``, ReLU feed-forward."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.self_attn, self.multihead_attn = MultiheadAttention(d, heads), MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def attend_self(self, tgt, bias=None):
        return self.norm1(tgt + self.self_attn(tgt, tgt, tgt, bias))

    def finish(self, tgt, attended):
        """After the cross-attention's output: residual, norm2, feed-forward, norm3."""
        tgt = self.norm2(tgt + attended)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))

    def forward(self, tgt, memory, self_bias=None, memory_bias=None):
        tgt = self.attend_self(tgt, self_bias)
        return self.finish(tgt, self.multihead_attn(tgt, memory, memory, memory_bias))


class Decoder(nn.Module):
    def __init__(self, layers: int, d: int, heads: int, ff: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d, heads, ff) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, tgt, memory, self_bias=None, memory_bias=None):
        for layer in self.layers:
            tgt = layer(tgt, memory, self_bias, memory_bias)
        return self.norm(tgt)


class FeatureHead(nn.Module):
    def __init__(self, feature_dim: int, d: int):
        super().__init__()
        self.input_linear = nn.Sequential(nn.Linear(feature_dim, d), nn.ReLU())

    def forward(self, x):
        return self.input_linear(x)


def sinusoid(max_len: int, d: int) -> torch.Tensor:
    """The official ``PositionalEncoding.pe`` buffer: (max_len, 1, d)."""
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(1)


def causal_bias(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)


class TeSTra(nn.Module):
    def __init__(self, feature_dim: int = 3072, num_classes: int = 22, d: int = 1024, heads: int = 16,
                 ff: int = 1024, long: int = 512, work: int = 32, compressed: tuple[int, int] = (16, 32),
                 enc_layers: int = 2, dec_layers: int = 2, kernel: str = "box", decay: float = 0.97):
        super().__init__()
        self.feature_head_long, self.feature_head_work = FeatureHead(feature_dim, d), FeatureHead(feature_dim, d)
        self.pos_encoding = nn.Module()
        self.pos_encoding.register_buffer("pe", sinusoid(5000, d))
        self.enc_queries = nn.ModuleList(nn.Embedding(n, d) for n in compressed)
        self.enc_modules = nn.ModuleList([Decoder(1, d, heads, ff), Decoder(enc_layers, d, heads, ff)])
        self.dec_modules = Decoder(dec_layers, d, heads, ff)
        self.classifier = nn.Linear(d, num_classes)
        self.long, self.work = long, work
        self.alpha = decay if kernel == "laplace" else 1.0
        # the Laplace kernel's log-weights, oldest first, as the official
        # log(vander([decay] * heads, long) + 1e-10); made here (not a checkpoint's tensor)
        decay_bias = torch.log(torch.vander(torch.tensor([self.alpha]), N=long)[0] + 1e-10)
        self.register_buffer("decay_bias", decay_bias, persistent=False)

    def kernel_bias(self, n: int) -> torch.Tensor | None:
        """The kernel's log-weights over a memory of ``n`` (at most ``long``); None for the box kernel."""
        return None if self.alpha == 1.0 else self.decay_bias[self.long - n:]

    def compress(self, long_memory: torch.Tensor, long_bias: torch.Tensor) -> torch.Tensor:
        """(B, long, d) long-head features and (B, long) additive mask -> (B, 32, d) compressed."""
        b = long_memory.shape[0]
        bias = long_bias[:, None, None, :]
        kernel = self.kernel_bias(long_memory.shape[1])
        if kernel is not None:
            bias = bias + kernel
        q0 = self.enc_queries[0].weight.expand(b, -1, -1)
        memory = self.enc_modules[0](q0, long_memory, memory_bias=bias)
        return self.enc_modules[1](self.enc_queries[1].weight.expand(b, -1, -1), memory)

    def decode(self, compressed: torch.Tensor, work_memory: torch.Tensor) -> torch.Tensor:
        """(B, 32, d) compressed memory and (B, work, d) work-head features (no positions yet) ->
        (B, work, num_classes) scores of every work position."""
        n = work_memory.shape[1]
        work_memory = work_memory + self.pos_encoding.pe[:n, 0]
        causal = causal_bias(n).to(work_memory)
        extended = torch.cat([compressed, work_memory], dim=1)
        memory_bias = torch.cat([causal.new_zeros(n, compressed.shape[1]), causal], dim=1)
        return self.classifier(self.dec_modules(work_memory, extended, causal, memory_bias))

    def forward(self, long_features: torch.Tensor, long_mask: torch.Tensor, work_features: torch.Tensor):
        """One window of the official batch inference: long (B, long, D) features and their
        (B, long) additive padding mask, work (B, work, D) -> (B, work, num_classes) scores."""
        compressed = self.compress(self.feature_head_long(long_features), long_mask)
        return self.decode(compressed, self.feature_head_work(work_features))


class TeSTraStep(nn.Module):
    """One frame of :class:`TeSTra`'s stream (see the module docstring). State, batch first:
    ``work`` (work-head features of the window, by position), ``delay`` (long-head features of
    the ``work + rate - 1`` newest frames, not yet in the long memory), ``long`` (per phase, the
    long memory's long-head features, oldest first), ``first`` (frame 0's, which stands in for
    the frames before the video), ``num`` / ``den`` / ``ref`` (per phase, head and query: the
    kernel's running sums over the real frames > 0, kept divided by their total (``den`` is then
    1, or 0 while there is none), and the log of that total), ``step`` (frames seen)."""

    def __init__(self, model: TeSTra, rate: int = 4):
        super().__init__()
        self.model, self.rate = model, rate
        layer = model.enc_modules[0].layers[0]
        self.layer = layer
        self.n_long, self.n_work = model.long, model.work

    def forward(self, features, work, delay, long, first, num, den, ref, step):
        m, layer, r, n, w = self.model, self.layer, self.rate, self.n_long, self.n_work
        attn = layer.multihead_attn
        t = step[:, 0]                                   # this frame's index, (B,)
        b = features.shape[0]
        rows = torch.arange(b, device=features.device)
        x_long, x_work = m.feature_head_long(features), m.feature_head_work(features)
        first = torch.where((t == 0)[:, None], x_long, first)

        # the work window, filled left to right, then shifted: this frame at position min(t, w - 1)
        pos = torch.clamp(t, max=w - 1)
        work = torch.where((t >= w)[:, None, None], torch.roll(work, -1, dims=1), work)
        work = work.index_put((rows, pos), x_work)

        # the long memory of this frame's phase: work_start = t - w + 1 (0 in the first window)
        ws = torch.clamp(t - w + 1, min=0)
        phase = ws % r
        entering, leaving = delay[:, 0], long[rows, phase, 0]  # frames ws - rate and ws - rate * (n + 1)
        updates = t >= w - 1 + r                         # the phase's memory moves once ws >= rate
        push = updates & (ws - r > 0)                    # frame 0 and the padding are the stand-in
        pop = updates & (ws - r * (n + 1) > 0)
        delay = torch.roll(delay, -1, dims=1).index_put((rows, torch.full_like(t, delay.shape[1] - 1)), x_long)
        moved = torch.cat([long[rows, phase, 1:], entering[:, None]], dim=1)
        long = long.index_put((rows, phase), torch.where(updates[:, None, None], moved, long[rows, phase]))

        q = layer.attend_self(m.enc_queries[0].weight.expand(b, -1, -1))     # the same every frame
        qh = attn.project(q, 0)                                              # (B, H, Q, hd)

        def scores_values(x):                        # (B, d) -> scores (B, H, Q), values (B, H, 1, hd)
            k, v = attn.project(x[:, None], 1), attn.project(x[:, None], 2)
            return (qh @ k.transpose(-1, -2))[..., 0], v

        s_in, v_in = scores_values(entering)
        s_out, v_out = scores_values(leaving)
        s_0, v_0 = scores_values(first)
        alpha = m.alpha
        p_num, p_den, p_ref = num[rows, phase], den[rows, phase], ref[rows, phase]
        new_ref = torch.maximum(torch.maximum(p_ref, s_0), torch.where(push[:, None, None], s_in, p_ref))
        rescale = torch.exp(p_ref - new_ref)
        decay = torch.where(updates, torch.tensor(alpha), torch.tensor(1.0))[:, None, None]
        e_in = torch.where(push[:, None, None], torch.exp(s_in - new_ref), torch.zeros_like(s_in))
        e_out = torch.where(pop[:, None, None], torch.exp(s_out - new_ref) * alpha ** n, torch.zeros_like(s_out))
        p_den = p_den * rescale * decay + e_in - e_out
        p_num = (p_num * (rescale * decay)[..., None] + e_in[..., None] * v_in.expand_as(p_num)
                 - e_out[..., None] * v_out.expand_as(p_num))
        # frame 0 stands in for the frames before the video while the memory reaches back that far
        standing = (ws - r * n <= 0)[:, None, None]
        age = torch.clamp((ws + r - 1) // r - 1, min=0, max=n).to(features.dtype)[:, None, None]
        e_0 = torch.where(standing, torch.exp(s_0 - new_ref) * alpha ** age, torch.zeros_like(s_0))
        attended = (p_num + e_0[..., None] * v_0) / (p_den + e_0)[..., None]

        # kept normalised: the sums divided by their total and the stabiliser moved to its log
        # (a log-sum-exp), so they stay near 1 however far the scores drift over a long stream;
        # a running maximum only climbs, and the terms kept against it may sink towards
        # float32's subnormals
        filled = p_den > 0
        total = torch.where(filled, p_den, torch.ones_like(p_den))
        num = num.index_put((rows, phase), p_num / total[..., None])
        den = den.index_put((rows, phase), filled.to(p_den.dtype))
        ref = ref.index_put((rows, phase), new_ref + torch.log(total))
        memory = layer.finish(q, attn.merge(attended))
        compressed = m.enc_modules[1](m.enc_queries[1].weight.expand(b, -1, -1), m.enc_modules[0].norm(memory))
        scores = m.decode(compressed, work)[rows, pos]
        return scores, work, delay, long, first, num, den, ref, step + 1
