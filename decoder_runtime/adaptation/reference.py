"""What "in distribution" means for a decoder: the training statistics in its artifact.

Every adaptive stage maps today's input back onto these numbers, so they are read once,
in one place, from `config["normalization"]` (written by training, fitted on training data
only) rather than re-derived by each stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.artifact import Artifact, ArtifactError


@dataclass(frozen=True)
class TrainingReference:
    """Per-channel count statistics and output scale of the data a decoder was trained on."""

    x_mean: np.ndarray  # float64[C], counts per bin
    x_std: np.ndarray  # float64[C], counts per bin (> 0)
    y_mean: np.ndarray  # float64[2]
    y_std: np.ndarray  # float64[2] (> 0)
    bin_width: float  # seconds

    def __post_init__(self) -> None:
        c = self.x_mean.shape
        if len(c) != 1 or self.x_std.shape != c:
            raise ValueError(f"x_mean/x_std must both be [C]; got {self.x_mean.shape} and {self.x_std.shape}")
        if self.y_mean.shape != self.y_std.shape:
            raise ValueError(f"y_mean/y_std shapes differ: {self.y_mean.shape} vs {self.y_std.shape}")
        if not np.all(np.isfinite(self.x_mean)) or not np.all(self.x_std > 0):
            raise ValueError("x_mean must be finite and x_std strictly positive")
        if not np.all(self.y_std > 0):
            raise ValueError("y_std must be strictly positive")
        if not self.bin_width > 0:
            raise ValueError(f"bin_width must be > 0 seconds, got {self.bin_width}")

    @property
    def n_channels(self) -> int:
        return int(self.x_mean.shape[0])

    @classmethod
    def from_arrays(cls, x_mean, x_std, y_mean, y_std, bin_width: float) -> "TrainingReference":
        """Build from any array-likes; a zero std (a channel silent in training) becomes 1,
        exactly as the model's own normalisation treats it."""
        x_std = np.asarray(x_std, dtype=np.float64)
        y_std = np.asarray(y_std, dtype=np.float64)
        return cls(
            x_mean=np.asarray(x_mean, dtype=np.float64),
            x_std=np.where(x_std > 1e-6, x_std, 1.0),
            y_mean=np.asarray(y_mean, dtype=np.float64),
            y_std=np.where(y_std > 1e-6, y_std, 1.0),
            bin_width=float(bin_width),
        )

    @classmethod
    def from_config(cls, config: dict) -> "TrainingReference":
        norm = config.get("normalization")
        if not norm:
            raise ArtifactError("artifact config has no 'normalization' block; adaptation needs the training statistics")
        try:
            return cls.from_arrays(norm["x_mean"], norm["x_std"], norm["y_mean"], norm["y_std"], config["bin_width"])
        except KeyError as e:
            raise ArtifactError(f"artifact config is missing {e} needed by adaptation") from None

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> "TrainingReference":
        return cls.from_config(artifact.config)
