"""The cheap fallback decoder: what the engine sends when the model misses its deadline.

An artifact carries a Wiener filter fitted beside the network (`fallback.safetensors`,
models.linear.WienerDecoder). Here it runs outside torch and outside the model's worker
thread, so it can answer while the model is still busy: `push` z-scores every decoded bin
into a ring of the last H bins, in one numba pass since it is paid on every bin (40 Hz,
inline: the stage around it 5.2 -> 3.4 us p50 against three NumPy calls), `predict` is one
[2, H*C] NumPy matvec, paid only on a miss. The ring is zero-initialised and reset with the
model, exactly like WienerDecoder.init_state, so its outputs equal the module's own `step`.

The ring is stored twice over (2H rows, each bin written at i and i+H) so the last H bins
are always one contiguous oldest-first slice: no copy or roll per bin.
"""
from __future__ import annotations

import copy

import numpy as np
from numba import njit

from models.artifact import Artifact


@njit("void(float32[::1], float32[::1], float32[::1], float32[:, ::1], int64, int64)", cache=True, nogil=True)
def _push(counts, x_mean, x_std, ring, i, history):  # pragma: no cover - numba
    """z-score one bin into ring rows i and i + history, in one pass."""
    for k in range(counts.shape[0]):
        z = (counts[k] - x_mean[k]) / x_std[k]
        ring[i, k] = z
        ring[i + history, k] = z


class WienerFallback:
    """numpy Wiener filter over the last `history` z-scored bins (oldest first)."""

    name = "wiener"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, history: int, x_mean: np.ndarray, x_std: np.ndarray,
                 y_mean: np.ndarray, y_std: np.ndarray) -> None:
        c = np.asarray(x_mean).shape[0]
        if weight.shape != (2, history * c):
            raise ValueError(f"Wiener weight must be [2, {history}*{c}], got {weight.shape}")
        self.history = history
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.x_mean = np.asarray(x_mean, dtype=np.float32)
        self.x_std = np.asarray(x_std, dtype=np.float32)
        self.y_mean = np.asarray(y_mean, dtype=np.float32)
        self.y_std = np.asarray(y_std, dtype=np.float32)
        self._ring = np.zeros((2 * history, c), dtype=np.float32)
        self._next = 0  # ring row the next bin goes to; the window starts there
        self._y = np.zeros(2, dtype=np.float32)

    @classmethod
    def from_module(cls, module) -> "WienerFallback":
        """From a models.linear.WienerDecoder (weights and normalisation buffers)."""
        def arr(t):
            return t.detach().cpu().numpy()
        return cls(arr(module.linear.weight), arr(module.linear.bias), int(module.history),
                   arr(module.x_mean), arr(module.x_std), arr(module.y_mean), arr(module.y_std))

    def scratch(self) -> "WienerFallback":
        """The same filter over its own (zeroed) ring and output: for the keep-warm pass (decoder_runtime.warm)."""
        twin = copy.copy(self)
        twin._ring = np.zeros_like(self._ring)
        twin._y = np.zeros_like(self._y)
        twin._next = 0
        return twin

    def reset(self) -> None:
        self._ring[:] = 0.0
        self._next = 0

    def push(self, counts: np.ndarray) -> None:
        """Add one decoded bin (raw counts float32[C]) to the history."""
        i = self._next
        _push(counts, self.x_mean, self.x_std, self._ring, i, self.history)
        self._next = i + 1 if i + 1 < self.history else 0

    def predict(self) -> np.ndarray:
        """Velocity float32[2] for the last pushed bin (a view of an internal buffer)."""
        window = self._ring[self._next:self._next + self.history].reshape(-1)
        y = self._y
        np.matmul(self.weight, window, out=y)
        y += self.bias
        y *= self.y_std
        y += self.y_mean
        return y


def make_fallback(artifact: Artifact) -> tuple[WienerFallback | None, str]:
    """The artifact's fallback as a numpy decoder, or None and the reason the last value is used."""
    module = artifact.fallback
    if module is None:
        return None, "the artifact has no fallback decoder; a missed deadline repeats the last velocity"
    if getattr(module, "name", None) != "wiener":
        return None, (f"the artifact's fallback is {getattr(module, 'name', type(module).__name__)!r}, "
                      "not a Wiener filter; a missed deadline repeats the last velocity")
    return WienerFallback.from_module(module), "Wiener filter from the artifact (numpy)"
