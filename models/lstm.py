"""LSTM decoder: the validated winner of the research this project builds on.

Stateful by nature, so streaming is exact: `step` carries (h, c) for every layer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.base import State, StreamingDecoder


class LSTMDecoder(StreamingDecoder):
    name = "lstm"
    state_names = ("h", "c")

    def __init__(self, n_channels: int, hidden: int = 128, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__(n_channels)
        self.hidden, self.layers, self.dropout = hidden, layers, dropout
        self.lstm = nn.LSTM(n_channels, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def hparams(self) -> dict:
        return {"hidden": self.hidden, "layers": self.layers, "dropout": self.dropout}

    def init_state(self, batch: int = 1) -> State:
        z = self._ref().new_zeros(self.layers, batch, self.hidden)
        return z, z.clone()

    def core_forward(self, z: Tensor) -> Tensor:
        out, _ = self.lstm(z)
        return self.head(out)

    def core_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        out, (h, c) = self.lstm(z.unsqueeze(1), (state[0], state[1]))
        return self.head(out[:, 0]), (h, c)
