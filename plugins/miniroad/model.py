"""MiniROAD in PyTorch (An, Kang et al., "MiniROAD: Minimal RNN Framework for Online Action
Detection", ICCV 2023), checked against the official code, github.com/jbistanbul/MiniROAD at
8307131c1304952d786116ed477c267320ad58f1 (``model/rnn/rnn.py``, class ``MROAD``).

The network is the official one, key for key:
- ``layer1``: Linear(feature_dim, embedding) → LayerNorm → ReLU → Dropout;
- ``gru``: a ``num_layers`` GRU (batch first) from a zero initial state (the official ``h0`` is a
  plain zero tensor, not a parameter, so no checkpoint holds it);
- ReLU on every hidden state, then ``f_classification``: Linear(hidden, num_classes).
The official forward takes RGB and flow features and concatenates them in that order; here the
input is that concatenation (how THUMOS'14 / TVSeries features are laid side by side). In eval
mode the official forward returns the softmax of the logits; these modules return the logits, and
edgert's postprocessing and ``edgert eval`` take the softmax (the same numbers).

What the paper changes is training (whole-stream inference after windowed training, with the
loss weighting that makes them match), not the network: the official evaluation runs the GRU
once over the whole test video from the zero state, which is exactly what stepping it one chunk
at a time computes. So the bundle carries two graphs over the same weights:
:class:`MiniROAD` (``offline``: a whole video in one run, ONNX's GRU op) and
:class:`MiniROADStep` (``main``: one chunk, the hidden state in and out, the GRU cell's equations
written out so int8 quantizes its matrix products).
"""

from __future__ import annotations

import torch
from torch import nn


class MiniROAD(nn.Module):
    def __init__(self, feature_dim: int = 3072, num_classes: int = 22, embedding: int = 2048, hidden: int = 1024,
                 layers: int = 1, dropout: float = 0.2):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(feature_dim, embedding), nn.LayerNorm(embedding), nn.ReLU(),
                                    nn.Dropout(dropout))
        self.gru = nn.GRU(embedding, hidden, layers, batch_first=True)
        self.f_classification = nn.Sequential(nn.Linear(hidden, num_classes))
        self.hidden, self.layers = hidden, layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, feature_dim) chunk features of a whole video -> (B, T, num_classes) logits."""
        x = self.layer1(features)
        h0 = x.new_zeros(self.layers, x.shape[0], self.hidden)
        # nn.GRU's own computation (one ONNX GRU op), called with its parameters by name: its
        # forward() re-assigns its flat weight list, which torch.export warns of on every export
        gru = self.gru
        weights = [getattr(gru, name) for name in gru._flat_weights_names]
        states, _ = torch.gru(x, h0, weights, gru.bias, gru.num_layers, 0.0, self.training, False, True)
        return self.f_classification(torch.relu(states))


class MiniROADStep(nn.Module):
    """One chunk of :class:`MiniROAD`'s stream: ``(features (B, D), hidden (B, layers, H))`` ->
    ``(logits (B, C), next hidden)``. PyTorch's GRU cell, gate order (reset, update, new) as in
    ``weight_ih_l{k}``: r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(… z …),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h."""

    def __init__(self, model: MiniROAD):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gru = self.model.gru
        x = self.model.layer1(features)
        states = []
        for k in range(gru.num_layers):
            h = hidden[:, k]
            gi = nn.functional.linear(x, getattr(gru, f"weight_ih_l{k}"), getattr(gru, f"bias_ih_l{k}"))
            gh = nn.functional.linear(h, getattr(gru, f"weight_hh_l{k}"), getattr(gru, f"bias_hh_l{k}"))
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            x = (1 - z) * n + z * h
            states.append(x)
        return self.model.f_classification(torch.relu(x)), torch.stack(states, dim=1)
