"""TRN for online action detection (Xu et al., ICCV 2019) in PyTorch: one step per chunk."""

from __future__ import annotations

import torch
from torch import nn


class TemporalRecurrentNetwork(nn.Module):
    """Encoder LSTM cell over [chunk feature ‖ anticipated future], a decoder LSTM cell that
    looks ``dec_steps`` chunks ahead, one classifier shared by both; the decoder's averaged
    future projection is the next step's future input (TRN.pytorch's ``generalized_trn``).

    Keys as TRN.pytorch: ``feature_extractor.input_linear.0``, ``hx_trans.0``, ``cx_trans.0``,
    ``fusion_linear.0``, ``future_linear.0``, ``enc_cell``, ``dec_cell``, ``classifier``.
    The input is one feature vector per chunk (e.g. THUMOS' RGB 2048 ‖ flow 1024, concatenated
    in that order); the paper's "future gate" and STA are left out, as in the official code.
    """

    def __init__(self, feature_dim: int = 3072, hidden: int = 4096, num_classes: int = 22, dec_steps: int = 8,
                 fusion_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        fusion = fusion_dim or feature_dim
        self.hidden, self.future_dim, self.dec_steps = hidden, fusion, dec_steps
        self.feature_extractor = nn.Module()
        self.feature_extractor.input_linear = nn.Sequential(nn.Linear(feature_dim, fusion), nn.ReLU(inplace=True))
        self.hx_trans = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.cx_trans = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.fusion_linear = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(inplace=True))
        self.future_linear = nn.Sequential(nn.Linear(hidden, fusion), nn.ReLU(inplace=True))
        self.enc_drop, self.dec_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.enc_cell = nn.LSTMCell(fusion + fusion, hidden)
        self.dec_cell = nn.LSTMCell(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features, future_input, enc_hx, enc_cx):
        """One chunk: returns (scores, anticipated scores (B, dec_steps, C), future_input, hx, cx)."""
        fused = self.feature_extractor.input_linear(features)
        enc_hx, enc_cx = self.enc_cell(torch.cat([fused, future_input], dim=1), (enc_hx, enc_cx))
        scores = self.classifier(self.enc_drop(enc_hx))
        dec_hx, dec_cx = self.hx_trans(enc_hx), self.cx_trans(enc_cx)
        dec_input = torch.zeros_like(enc_hx)
        future = torch.zeros_like(future_input)
        anticipated = []
        for _ in range(self.dec_steps):
            dec_hx, dec_cx = self.dec_cell(dec_input, (dec_hx, dec_cx))
            dec_scores = self.classifier(self.dec_drop(dec_hx))
            anticipated.append(dec_scores)
            dec_input = self.fusion_linear(dec_scores)
            future = future + self.future_linear(dec_hx)
        return scores, torch.stack(anticipated, dim=1), future / self.dec_steps, enc_hx, enc_cx

    def run_sequence(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of every chunk of a (B, T, D) sequence, stepping from a zero state."""
        b = features.shape[0]
        future = features.new_zeros(b, self.future_dim)
        hx = features.new_zeros(b, self.hidden)
        cx = features.new_zeros(b, self.hidden)
        out = []
        for t in range(features.shape[1]):
            scores, _, future, hx, cx = self(features[:, t], future, hx, cx)
            out.append(scores)
        return torch.stack(out, dim=1)
