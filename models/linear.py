"""Linear baselines (Wiener filter, steady-state Kalman filter) on the streaming contract.

They are fitted in closed form, not trained by gradient, but they are StreamingDecoders so
that training, the runtime and export treat them like the networks; the Wiener filter is
also every network artifact's fallback decoder.

Both `fit` methods work in the model's normalised space, like `core_forward`: `z` is
z-scored counts and `y` z-scored velocity, computed with the statistics installed by
`set_normalization` (fitted on training data only). A fit takes a list of contiguous
segments (`fit_segments`) or one contiguous block (`fit`); no lag window or transition pair
ever spans two segments, and bins with `valid` False (or non-finite velocity) are skipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor, nn

from models.base import State, StreamingDecoder

Segment = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _checked(segments: Sequence[Segment], n_channels: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Validate (z, y, valid) segments; returns float64 arrays and a full validity mask."""
    if len(segments) == 0:
        raise ValueError("fit needs at least one (z, y, valid) segment")
    out = []
    for i, (z, y, valid) in enumerate(segments):
        z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != n_channels:
            raise ValueError(f"segment {i}: z must be [T, {n_channels}] (z-scored counts), got shape {z.shape}")
        if y.shape != (z.shape[0], 2):
            raise ValueError(f"segment {i}: y must be [T, 2] matching z's {z.shape[0]} bins, got shape {y.shape}")
        if not np.isfinite(z).all():
            raise ValueError(f"segment {i}: z contains NaN or inf")
        ok = np.isfinite(y).all(axis=1)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != (z.shape[0],):
                raise ValueError(f"segment {i}: valid must be bool[{z.shape[0]}], got shape {valid.shape}")
            ok &= valid
        out.append((z, np.where(ok[:, None], y, 0.0), ok))
    return out


class WienerDecoder(StreamingDecoder):
    """Ridge regression from the last `history` z-scored bins to z-scored velocity.

    `self.linear` acts on the window flattened OLDEST FIRST ([z_{t-H+1}, ..., z_t]), a
    layout the runtime relies on to run a numpy fallback from `linear.weight`/`linear.bias`.
    Bins before the start of a stream are zeros (in z-space), in `forward` and `init_state`.
    """

    name = "wiener"
    state_names = ("window",)

    def __init__(self, n_channels: int, history: int = 10, ridge: float = 100.0) -> None:
        super().__init__(n_channels)
        if history < 2:
            raise ValueError(f"history must be at least 2 bins, got {history}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.history, self.ridge = history, ridge
        self.linear = nn.Linear(history * n_channels, 2)

    def hparams(self) -> dict:
        return {"history": self.history, "ridge": self.ridge}

    def init_state(self, batch: int = 1) -> State:
        return (self._ref().new_zeros(batch, self.history - 1, self.n_channels),)

    def core_forward(self, z: Tensor) -> Tensor:
        # A cross-correlation over time with kernel [2, C, H] is exactly the oldest-first
        # window times linear.weight, without materialising the windows.
        kernel = self.linear.weight.reshape(2, self.history, self.n_channels).transpose(1, 2)
        padded = F.pad(z.transpose(1, 2), (self.history - 1, 0))
        return F.conv1d(padded, kernel, self.linear.bias).transpose(1, 2)

    def core_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat([state[0], z.unsqueeze(1)], dim=1)           # [B, H, C], oldest first
        return self.linear(window.reshape(window.shape[0], -1)), (window[:, 1:],)

    def fit(self, z: np.ndarray, y: np.ndarray, valid: np.ndarray | None = None, ridge: float | None = None) -> None:
        """Fit on one contiguous block: z [T, C] z-scored counts, y [T, 2] z-scored velocity."""
        self.fit_segments([(z, y, valid)], ridge=ridge)

    def fit_segments(self, segments: Sequence[Segment], ridge: float | None = None, rows: int = 4096) -> None:
        """Closed-form ridge on the lagged design of every segment (unpenalised intercept).

        The first history-1 bins of each segment have no full window and are not fitted.
        The normal equations are accumulated `rows` windows at a time, so memory stays
        bounded however long the session.
        """
        ridge = self.ridge if ridge is None else float(ridge)
        h, c = self.history, self.n_channels
        d = h * c + 1
        xtx, xty, n = np.zeros((d, d)), np.zeros((d, 2)), 0
        for z, y, ok in _checked(segments, c):
            if z.shape[0] < h:
                continue
            windows = sliding_window_view(z, h, axis=0)                 # [T-H+1, C, H]
            target, keep = y[h - 1:], np.flatnonzero(ok[h - 1:])
            for start in range(0, keep.size, rows):
                idx = keep[start:start + rows]
                x = windows[idx].transpose(0, 2, 1).reshape(idx.size, h * c)
                x = np.concatenate([x, np.ones((idx.size, 1))], axis=1)
                xtx += x.T @ x
                xty += x.T @ target[idx]
                n += idx.size
        if n <= 1:
            raise ValueError(f"no valid bins with a full {h}-bin history to fit the Wiener filter on")
        penalty = np.full(d, ridge)
        penalty[-1] = 0.0
        coef = np.linalg.solve(xtx + np.diag(penalty) + 1e-9 * np.eye(d), xty)  # [d, 2]
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(coef[:-1].T.copy()))
            self.linear.bias.copy_(torch.from_numpy(coef[-1]))


class KalmanDecoder(StreamingDecoder):
    """Velocity-state Kalman filter run with its steady-state gain.

    Model (z-scored units): v_t = A v_{t-1} + w, w ~ N(0, W); z_t = H v_t + d + q,
    q ~ N(0, Q). With the gain K fixed at its Riccati limit, filtering is the linear
    recurrence v_t = M v_{t-1} + K z_t + b with M = (I - K H) A and b = -K d, so a step is
    two small matrix products and `forward` is the same recurrence over time.
    """

    name = "kalman"
    state_names = ("filtered",)
    learned_buffers = ("transition", "gain", "offset")

    def __init__(self, n_channels: int, obs_reg: float = 1e-3) -> None:
        super().__init__(n_channels)
        if obs_reg <= 0:
            raise ValueError(f"obs_reg must be > 0 (it keeps Q invertible), got {obs_reg}")
        self.obs_reg = obs_reg
        self.register_buffer("transition", torch.zeros(2, 2))          # M
        self.register_buffer("gain", torch.zeros(2, n_channels))       # K
        self.register_buffer("offset", torch.zeros(2))                 # b

    def hparams(self) -> dict:
        return {"obs_reg": self.obs_reg}

    def init_state(self, batch: int = 1) -> State:
        return (self._ref().new_zeros(batch, 2),)

    def core_forward(self, z: Tensor) -> Tensor:
        drive = z @ self.gain.t() + self.offset                         # [B, T, 2]
        v, out = drive.new_zeros(z.shape[0], 2), []
        for t in range(z.shape[1]):
            v = v @ self.transition.t() + drive[:, t]
            out.append(v)
        return torch.stack(out, dim=1)

    def core_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        v = state[0] @ self.transition.t() + (z @ self.gain.t() + self.offset)
        return v, (v,)

    def fit(self, z: np.ndarray, y: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Fit on one contiguous block: z [T, C] z-scored counts, y [T, 2] z-scored velocity."""
        self.fit_segments([(z, y, valid)])

    def fit_segments(self, segments: Sequence[Segment], tol: float = 1e-10, max_iter: int = 10_000) -> None:
        """Least-squares A, W (valid consecutive pairs), H, d, Q (valid bins); steady-state K."""
        segs = _checked(segments, self.n_channels)
        prev = np.concatenate([y[:-1][ok[:-1] & ok[1:]] for _, y, ok in segs])
        curr = np.concatenate([y[1:][ok[:-1] & ok[1:]] for _, y, ok in segs])
        vel = np.concatenate([y[ok] for _, y, ok in segs])
        obs = np.concatenate([z[ok] for z, _, ok in segs])
        if prev.shape[0] < 3 or vel.shape[0] < 3:
            raise ValueError("too few valid bins (and consecutive valid pairs) to fit the Kalman filter")
        a = np.linalg.lstsq(prev, curr, rcond=None)[0].T                  # curr ~ prev A^T
        w = np.cov((curr - prev @ a.T).T, bias=True)
        design = np.concatenate([vel, np.ones((vel.shape[0], 1))], axis=1)
        hd = np.linalg.lstsq(design, obs, rcond=None)[0].T                # [C, 3] = [H | d]
        h, d = hd[:, :2], hd[:, 2]
        resid = obs - design @ hd.T
        q = resid.T @ resid / obs.shape[0] + self.obs_reg * np.eye(self.n_channels)
        k = self._steady_state_gain(a, w, h, q, tol, max_iter)
        with torch.no_grad():
            self.transition.copy_(torch.from_numpy((np.eye(2) - k @ h) @ a))
            self.gain.copy_(torch.from_numpy(k))
            self.offset.copy_(torch.from_numpy(-k @ d))

    @staticmethod
    def _steady_state_gain(a: np.ndarray, w: np.ndarray, h: np.ndarray, q: np.ndarray,
                           tol: float, max_iter: int) -> np.ndarray:
        """Iterate the Riccati recursion to its fixed point, in information form.

        With H^T Q^-1 H and H^T Q^-1 precomputed, every iteration inverts only 2x2 matrices.
        """
        q_inv_h = np.linalg.solve(q, h)                                   # Q^-1 H  [C, 2]
        info = h.T @ q_inv_h                                              # H^T Q^-1 H
        w = w + 1e-9 * np.eye(2)  # a degenerate velocity component must not make W singular
        prior = w.copy()
        for _ in range(max_iter):
            post = np.linalg.inv(np.linalg.inv(prior) + info)
            nxt = a @ post @ a.T + w
            done = np.abs(nxt - prior).max() <= tol * max(1.0, np.abs(prior).max())
            prior = nxt
            if done:
                break
        else:
            raise RuntimeError(f"Kalman Riccati iteration did not converge in {max_iter} steps")
        post = np.linalg.inv(np.linalg.inv(prior) + info)
        return post @ q_inv_h.T                                            # K = P H^T Q^-1  [2, C]
