"""Causal Transformer over a sliding window of the last W bins (default 10 = 250 ms).

Each output y[t] is a function of the window z[t-W+1 .. t] only (bins before the session
start are zeros in z-space). That finite context is what makes streaming exact and cheap:
`step` keeps the last W-1 z-scored bins in a ring (state "window") and runs the very same
window through the encoder, so a step costs one window, never the whole history, and
`forward` is the same computation batched over every window of a sequence.

The attention block is written out by hand (no nn.MultiheadAttention / TransformerEncoder
fast paths, which take different kernels in train and eval and complicate export), using
out-of-place ops only. Inside the window attention is causal, and only the last slot is
read out, so the final layer computes its query, feed-forward and output for that slot only.

Defaults (d_model 64, 2 layers, 4 heads, feed-forward 128; ~77k parameters at 142 channels)
keep a step well under a millisecond on one CPU core and let a 20k-bin session train in
minutes on two cores; the research's own windowed decoders used the same 250 ms context.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import State, StreamingDecoder


class _Block(nn.Module):
    """Pre-norm self-attention + feed-forward over windows [N, W, D].

    With `last_only`, only the last window slot is computed and returned ([N, 1, D]): the
    other slots' outputs would be discarded by the read-out anyway.
    """

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads, self.d_head = heads, d_model // heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        # tanh-GELU: exact (erf) GELU costs ~7x more per call on small CPU tensors.
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(approximate="tanh"), nn.Linear(d_ff, d_model))
        self.dropout = dropout

    def forward(self, h: Tensor, mask: Tensor, last_only: bool) -> Tensor:
        n, w, d = h.shape
        x = self.norm1(h)
        if last_only:  # queries (and everything after attention) for the last slot only
            h, mask = h[:, -1:], mask[-1:]
            q = F.linear(x[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d])
            k, v = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).split(d, dim=-1)
        else:
            q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.reshape(n, -1, self.heads, self.d_head).transpose(1, 2)  # [N, heads, W or 1, d_head]
        k = k.reshape(n, w, self.heads, self.d_head).transpose(1, 2)
        v = v.reshape(n, w, self.heads, self.d_head).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d_head))
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, -1, d)
        h = h + F.dropout(self.proj(out), self.dropout, self.training)
        return h + F.dropout(self.ff(self.norm2(h)), self.dropout, self.training)


class TransformerDecoder(StreamingDecoder):
    name = "transformer"
    state_names = ("window",)

    def __init__(
        self,
        n_channels: int,
        window: int = 10,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        d_ff: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(n_channels)
        if window < 2:
            raise ValueError(f"window must be at least 2 bins, got {window}")
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.window, self.d_model, self.layers = window, d_model, layers
        self.heads, self.d_ff, self.dropout = heads, d_ff, dropout
        self.embed = nn.Linear(n_channels, d_model)
        self.pos = nn.Parameter(torch.randn(window, d_model) * 0.02)
        self.blocks = nn.ModuleList(_Block(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2)
        # True above the diagonal: slot i may not attend to later slots j > i.
        self.register_buffer("causal_mask", torch.ones(window, window, dtype=torch.bool).triu(1), persistent=False)

    def hparams(self) -> dict:
        return {"window": self.window, "d_model": self.d_model, "layers": self.layers,
                "heads": self.heads, "d_ff": self.d_ff, "dropout": self.dropout}

    def init_state(self, batch: int = 1) -> State:
        return (self._ref().new_zeros(batch, self.window - 1, self.n_channels),)

    def _run_windows(self, e: Tensor) -> Tensor:
        """Embedded windows [N, W, D] -> z-scored velocity [N, 2] read from the last slot."""
        h = F.dropout(e + self.pos, self.dropout, self.training)
        for i, block in enumerate(self.blocks):
            h = block(h, self.causal_mask, last_only=i == self.layers - 1)
        return self.head(self.norm(h[:, -1]))

    def core_forward(self, z: Tensor) -> Tensor:
        b, t, _ = z.shape
        # Embedding is per bin, so embed once and slice windows out of the embedded sequence.
        e = self.embed(F.pad(z, (0, 0, self.window - 1, 0)))           # [B, T+W-1, D]
        windows = e.unfold(1, self.window, 1).transpose(-1, -2)         # [B, T, W, D]
        return self._run_windows(windows.reshape(b * t, self.window, self.d_model)).reshape(b, t, 2)

    def core_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat([state[0], z.unsqueeze(1)], dim=1)           # [B, W, C], oldest first
        return self._run_windows(self.embed(window)), (window[:, 1:],)
