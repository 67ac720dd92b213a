"""The streaming-decoder contract shared by every model.

Each decoder is trained on whole sequences (`forward`) but run one bin at a time
(`step`). Keeping both on one module, with the normalisation inside it, means an exported
step graph takes raw spike counts and returns velocity in the units it was trained on: the
runtime never has to guess a scaling.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


class StreamingDecoder(nn.Module):
    """Base class: counts[B, T, C] -> velocity[B, T, 2], causally, and one bin at a time.

    Subclasses implement `core_forward`, `core_step`, `init_state` and list their state
    tensors in `state_names`. The base class wraps both paths with the input z-scoring and
    output de-scaling held as buffers (fitted by training on training data only).
    """

    name: ClassVar[str] = "base"
    state_names: ClassVar[tuple[str, ...]] = ()
    #: buffers that are fitted, not trained by autograd (closed-form gains, EMA codebooks):
    #: they count towards the model's size as much as its parameters do.
    learned_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_channels: int, n_outputs: int = 2) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_outputs = n_outputs
        self.register_buffer("x_mean", torch.zeros(n_channels))
        self.register_buffer("x_std", torch.ones(n_channels))
        self.register_buffer("y_mean", torch.zeros(n_outputs))
        self.register_buffer("y_std", torch.ones(n_outputs))

    # --- what every subclass provides -------------------------------------------------
    def hparams(self) -> dict:
        """Constructor keyword arguments, so an artifact can rebuild the module."""
        raise NotImplementedError

    def core_forward(self, z: Tensor) -> Tensor:
        """z-scored counts [B, T, C] -> z-scored velocity [B, T, 2], causal."""
        raise NotImplementedError

    def core_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        """One z-scored bin [B, C] -> z-scored velocity [B, 2] and the next state."""
        raise NotImplementedError

    def init_state(self, batch: int = 1) -> State:
        """Fixed-shape zero state, on the module's device and dtype."""
        raise NotImplementedError

    def n_learned(self) -> int:
        """Model size: parameters plus fitted buffers (normalisation statistics excluded)."""
        buffers = dict(self.named_buffers())
        return sum(p.numel() for p in self.parameters()) + sum(buffers[n].numel() for n in self.learned_buffers)

    # --- the public contract ----------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.x_mean) / self.x_std

    def denormalize(self, y: Tensor) -> Tensor:
        return y * self.y_std + self.y_mean

    def forward(self, x: Tensor) -> Tensor:
        return self.denormalize(self.core_forward(self.normalize(x)))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, state = self.core_step(self.normalize(x), state)
        return self.denormalize(y), state

    def set_normalization(self, x_mean, x_std, y_mean, y_std) -> None:
        """Install training-set statistics; a zero std (silent channel) becomes 1."""
        for buf, value in (("x_mean", x_mean), ("x_std", x_std), ("y_mean", y_mean), ("y_std", y_std)):
            v = torch.as_tensor(value, dtype=torch.float32).to(getattr(self, buf).device)
            if buf.endswith("std"):
                v = torch.where(v > 1e-6, v, torch.ones_like(v))
            getattr(self, buf).copy_(v)

    def _ref(self) -> Tensor:
        """A buffer to take device and dtype from when building state."""
        return self.x_mean
