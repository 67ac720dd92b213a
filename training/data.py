"""Splits, normalisation statistics and training chunks: where leakage would creep in.

Three rules, each tested on a hand-made session:

- Splits are contiguous, chronological blocks (train, then validation, then test), never
  shuffled bins: neighbouring 25 ms bins are nearly copies of each other, so a shuffled
  split scores memory, not decoding. When the session has trials, each boundary is moved to
  the nearest bin where no trial straddles it, so every trial lies wholly in one block.
- Normalisation statistics (x mean/std per channel, y mean/std) come from training bins
  only. The research this builds on fitted them on the whole recording, letting the test
  block leak into the model.
- Training sees contiguous chunks drawn from inside the training block, each with a
  burn-in prefix the loss ignores, so a network learns from the state it will carry at run
  time (DESIGN.md: "stateful training with shuffled batches teaches the model nonsense").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from replay.scoring import scored_mask
from replay.session import BinnedSession

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
BLOCKS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Half-open bin ranges [start, stop) of the three chronological blocks."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    by: str  # "time" (plain time blocks) or "trials" (boundaries moved between trials)

    def block(self, name: str) -> tuple[int, int]:
        if name not in BLOCKS:
            raise ValueError(f"unknown block {name!r}; choose one of {', '.join(BLOCKS)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(train=tuple(d["train"]), val=tuple(d["val"]), test=tuple(d["test"]), by=d["by"])


def _between_trials(trial_of_bin: np.ndarray) -> np.ndarray:
    """bool[T+1]: True at boundary b if cutting before bin b splits no trial."""
    ok = np.ones(trial_of_bin.size + 1, dtype=bool)
    prev, nxt = trial_of_bin[:-1], trial_of_bin[1:]
    ok[1:-1] = (prev < 0) | (prev != nxt)
    return ok


def make_split(
    session: BinnedSession, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, min_bins: int = 20
) -> Split:
    """Chronological train/val/test blocks in the given proportions, trial-aligned when possible."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f <= 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    n = session.n_bins
    cuts = [int(round(n * f[0])), int(round(n * (f[0] + f[1])))]
    by = "time"
    if session.trials:
        ok = np.flatnonzero(_between_trials(session.trial_of_bin()))
        cuts = [int(ok[np.argmin(np.abs(ok - c))]) for c in cuts]
        by = "trials"
    bounds = [0, *cuts, n]
    blocks = [(bounds[i], bounds[i + 1]) for i in range(3)]
    for name, (a, b) in zip(BLOCKS, blocks):
        if b - a < min_bins:
            raise ValueError(
                f"session of {n} bins is too short to split {fractions}: the {name} block would "
                f"hold {b - a} bins (< {min_bins})"
            )
    return Split(*blocks, by=by)


@dataclass(frozen=True)
class Normalization:
    x_mean: np.ndarray  # float32[C]
    x_std: np.ndarray  # float32[C]
    y_mean: np.ndarray  # float32[2]
    y_std: np.ndarray  # float32[2]

    def as_args(self) -> tuple[np.ndarray, ...]:
        """Positional arguments for StreamingDecoder.set_normalization."""
        return self.x_mean, self.x_std, self.y_mean, self.y_std


def fit_normalization(session: BinnedSession, block: tuple[int, int]) -> Normalization:
    """Per-channel count and per-component velocity statistics over one block (training).

    Velocity statistics use only the block's scored bins (finite, valid), so a gap never
    enters them as zeros.
    """
    a, b = block
    x = session.counts[a:b].astype(np.float64)
    if session.velocity is None:
        raise ValueError(f"{session.source or 'session'}: has no velocity to train on")
    y = session.velocity[a:b].astype(np.float64)
    mask = scored_mask(y, None if session.valid is None else session.valid[a:b])
    if mask.sum() < 2:
        raise ValueError(f"training block [{a}, {b}) has {int(mask.sum())} bins with behaviour; need at least 2")
    return Normalization(
        x_mean=x.mean(axis=0).astype(np.float32),
        x_std=x.std(axis=0).astype(np.float32),
        y_mean=y[mask].mean(axis=0).astype(np.float32),
        y_std=y[mask].std(axis=0).astype(np.float32),
    )


def loss_mask(session: BinnedSession) -> np.ndarray:
    """bool[T]: bins whose behaviour may enter a loss or a score (finite and valid)."""
    return scored_mask(session.velocity, session.valid)


@dataclass(frozen=True)
class ChunkSampler:
    """Contiguous training chunks from inside one block, re-tiled with a random offset per epoch.

    Each chunk is `chunk_len` bins; the first `burn_in` are context only (not scored). The
    scored parts of one epoch's chunks tile the block (stride = chunk_len - burn_in), plus one
    chunk flush with the block's end, so every training bin after the first `burn_in + offset`
    is scored once per epoch (a few tail bins twice).
    """

    block: tuple[int, int]
    chunk_len: int = 160
    burn_in: int = 32

    def __post_init__(self) -> None:
        a, b = self.block
        if not 0 <= self.burn_in < self.chunk_len:
            raise ValueError(f"need 0 <= burn_in < chunk_len, got burn_in={self.burn_in}, chunk_len={self.chunk_len}")
        if b - a < self.chunk_len:
            raise ValueError(
                f"training block [{a}, {b}) holds {b - a} bins, fewer than one chunk of {self.chunk_len}; "
                "use a longer session or a shorter --chunk"
            )

    @property
    def stride(self) -> int:
        return self.chunk_len - self.burn_in

    def epoch(self, rng: np.random.Generator) -> np.ndarray:
        """int64[N, chunk_len]: absolute bin indices of this epoch's chunks, in shuffled order."""
        a, b = self.block
        offset = int(rng.integers(0, self.stride))
        last = b - self.chunk_len
        starts = np.arange(a + min(offset, last - a), last + 1, self.stride)
        if starts[-1] != last:  # one more chunk ending at the block's end, so no tail is left out
            starts = np.append(starts, last)
        starts = rng.permutation(starts)
        return starts[:, None] + np.arange(self.chunk_len)[None, :]

    def scored(self) -> np.ndarray:
        """bool[chunk_len]: which positions of a chunk count in the loss (after burn-in)."""
        out = np.zeros(self.chunk_len, dtype=bool)
        out[self.burn_in:] = True
        return out
