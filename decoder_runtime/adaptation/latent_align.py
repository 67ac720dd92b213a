"""Learned adaptation: align today's low-dimensional latent space to the training one.

The method is Degenhart et al. 2020 (Nature BME), simplified and moved into channel space
so that it works in front of any decoder that reads channels:

1. Reference (once, from training data): factor analysis of the z-scored training counts,
   x = L0 f + e, f ~ N(0, I), e ~ N(0, diag(psi0)).
2. Today (in periodic blocks, off the per-bin path): factor analysis of the last few
   minutes of adapted input on the channels that were not masked, warm-started from the
   last fit so the latent axes stay put, giving L1, psi1.
3. Alignment: an orthogonal Procrustes rotation O with L1 O ~ L0, fitted on the channels
   whose loadings agree best ("stable" channels, the worst `drop_frac` left out, refitted a
   few times as in the paper).
4. Use: each bin's latent f1 = E[f | x] under today's model; the channel-space shared
   component today, L1 f1, is replaced with the training-shaped one, A f1 with A = L0 O^T:
       x' = x + (A - L1) f1             for live channels,
       x' = mean + A f1                 for masked channels (imputed from the latent).
   With no drift L1 ~ A and the map is the identity; a channel whose coupling to the
   population changed gets its training coupling back; a dead channel gets its expected
   value given all the others instead of a flat mean.

Everything per bin is one small numba kernel (two k x C products); a fit (a few ms of
numpy) runs in a worker thread that yields the GIL after every EM iteration, and its
parameters are swapped in between bins, at the first bin at least `swap_delay_s` after the
block closed. `threaded=False` runs the fit
inline and swaps at exactly that bin, which is what an offline evaluation uses to be
deterministic (it equals the threaded result whenever a fit takes less than the delay).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit
from safetensors.numpy import load_file, save_file

from decoder_runtime.adaptation.reference import TrainingReference
from models.artifact import Artifact, ArtifactError, update_config, verify_file

LATENT_FILE = "adaptation_latent.safetensors"


@dataclass(frozen=True)
class LatentModel:
    """A factor-analysis model of z-scored counts: loadings [C, k] and uniquenesses [C]."""

    loadings: np.ndarray
    psi: np.ndarray

    @property
    def k(self) -> int:
        return int(self.loadings.shape[1])

    def posterior_weights(self, live: np.ndarray | None = None) -> np.ndarray:
        """beta [k, C] with E[f | z] = beta z, using only `live` channels (others weigh 0)."""
        L = self.loadings if live is None else self.loadings * live[:, None]
        lp = L / self.psi[:, None]
        m = np.eye(self.k) + L.T @ lp
        return np.linalg.solve(m, lp.T)


def fit_factor_analysis(S: np.ndarray, k: int, *, init: LatentModel | None = None, iters: int = 100,
                        min_psi: float = 1e-3) -> LatentModel:
    """EM for factor analysis on a covariance matrix (Rubin & Thayer 1982).

    Started from `init` when given (keeps today's latent axes where the last fit left them);
    otherwise from the top principal components.
    """
    c = S.shape[0]
    if S.shape != (c, c) or not 0 < k < c:
        raise ValueError(f"need a square covariance and 0 < k < C; got {S.shape}, k={k}")
    diag = np.clip(np.diag(S), min_psi, None)
    if init is None:
        w, v = np.linalg.eigh(S)
        w, v = w[::-1][:k], v[:, ::-1][:, :k]
        noise = max(float(np.mean(np.linalg.eigvalsh(S)[: c - k])), min_psi)
        L = v * np.sqrt(np.clip(w - noise, min_psi, None))
        psi = np.clip(diag - (L**2).sum(1), min_psi, None)
    else:
        L, psi = init.loadings.copy(), init.psi.copy()
    eye, floor = np.eye(k), min_psi * diag
    for _ in range(iters):
        lp = L / psi[:, None]
        beta = np.linalg.solve(eye + L.T @ lp, lp.T)  # k x C: E[f | z] = beta z
        sb = S @ beta.T  # C x k
        ezz = eye - beta @ L + beta @ sb  # E[f f^T], averaged over the data
        L = np.linalg.solve(ezz, sb.T).T
        psi = np.maximum(diag - (L * sb).sum(1), floor)
        _yield_gil()
    return LatentModel(L, psi)


def _yield_gil() -> None:
    """Let the per-bin loop in: a fit in a worker thread holds the GIL between numpy calls,
    and a waiting thread otherwise gets it only after the 5 ms switch interval."""
    time.sleep(0)


def procrustes_stable(L1: np.ndarray, L0: np.ndarray, live: np.ndarray, drop_frac: float = 0.2,
                      rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rotation O (k x k) with L1 O ~ L0 on the channels whose loadings agree best.

    Returns (O, stable mask). Like Degenhart et al., the channels that disagree most after a
    rotation (the worst `drop_frac` of the live ones) are set aside and the rotation is
    refitted without them, `rounds` times.
    """
    if not 0 <= drop_frac < 1:
        raise ValueError(f"drop_frac must be in [0, 1), got {drop_frac}")
    if live.sum() < L0.shape[1]:
        raise ValueError(f"need at least k={L0.shape[1]} live channels to align, got {int(live.sum())}")
    stable = np.asarray(live, dtype=bool).copy()
    O = np.eye(L0.shape[1])
    for _ in range(rounds):
        u, _, vt = np.linalg.svd(L1[stable].T @ L0[stable])
        O = u @ vt
        resid = np.linalg.norm(L1 @ O - L0, axis=1)
        stable = live & (resid <= np.quantile(resid[live], 1.0 - drop_frac))
        _yield_gil()
    return O, stable


# --- the reference latent, stored in the artifact -----------------------------------------
def fit_training_latent(counts: np.ndarray, ref: TrainingReference, k: int = 10) -> LatentModel:
    """The reference: factor analysis of training counts z-scored with the artifact's stats."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != ref.n_channels:
        raise ValueError(f"counts must be [T, {ref.n_channels}], got {counts.shape}")
    z = (counts - ref.x_mean) / ref.x_std
    S = np.cov(z, rowvar=False, bias=True)
    return fit_factor_analysis(S, k, iters=300)


def save_latent(artifact_path: str | Path, model: LatentModel, provenance: dict) -> None:
    """Write the reference into the artifact (hash-recorded, like every artifact file)."""
    path = Path(artifact_path)
    save_file({"loadings": np.ascontiguousarray(model.loadings), "psi": np.ascontiguousarray(model.psi)},
              path / LATENT_FILE)
    from models.artifact import read_config

    adaptation = dict(read_config(path).get("adaptation", {}))
    adaptation["latent"] = {"file": LATENT_FILE, "k": model.k, **provenance}
    update_config(path, files={LATENT_FILE: ""}, adaptation=adaptation)


def load_latent(artifact: Artifact) -> LatentModel | None:
    """The artifact's reference latent, or None if `spikestream adapt-fit` never ran on it."""
    if "latent" not in artifact.config.get("adaptation", {}):
        return None
    f = verify_file(artifact.path, artifact.config, LATENT_FILE)
    t = load_file(f)
    try:
        model = LatentModel(t["loadings"].astype(np.float64), t["psi"].astype(np.float64))
    except KeyError as e:
        raise ArtifactError(f"{f}: missing tensor {e}") from None
    if model.loadings.shape[0] != artifact.n_channels or model.psi.shape != (artifact.n_channels,):
        raise ArtifactError(f"{f}: latent is for {model.loadings.shape[0]} channels, artifact has {artifact.n_channels}")
    return model


# --- the per-bin kernel -----------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _latent_step(x, out, mask, W, block, row, seen):  # pragma: no cover - numba
    """W [C, 3k+1] packs, per channel: read-out (k), live correction (k), imputation (k),
    training mean; packed because each array passed into numba costs ~0.1 us."""
    C = x.shape[0]
    k = (W.shape[1] - 1) // 3
    m = 3 * k
    f = np.zeros(k)
    for c in range(C):
        d = x[c] - W[c, m]
        for j in range(k):
            f[j] += W[c, j] * d
    for c in range(C):
        block[row, c] = x[c]
        if mask[c]:
            seen[c] = True
            acc = W[c, m]
            for j in range(k):
                acc += W[c, 2 * k + j] * f[j]
        else:
            acc = x[c]
            for j in range(k):
                acc += W[c, k + j] * f[j]
        out[c] = acc


@njit(cache=True, nogil=True)
def _block_moments(block, mu, sd):  # pragma: no cover - numba
    """(sum z, sum z z^T) of a block's z-scored rows. Single-threaded and GIL-free on
    purpose: numpy's z.T @ z goes to a multi-threaded BLAS whose threads compete with the
    per-bin loop for the cores (measured: multi-ms stalls in the loop while a fit ran)."""
    n, c = block.shape
    s1 = np.zeros(c)
    s2 = np.zeros((c, c))
    z = np.empty(c)
    for t in range(n):
        for i in range(c):
            z[i] = (block[t, i] - mu[i]) / sd[i]
            s1[i] += z[i]
        for i in range(c):
            zi = z[i]
            for j in range(c):
                s2[i, j] += zi * z[j]
    return s1, s2


@dataclass(frozen=True)
class _Params:
    """One set of alignment parameters, in count units; swapped in whole, never edited.

    W [C, 3k+1] = [ (beta / sd)^T | sd * (A - L1) | sd * A | training mean ]: the latent
    read-out, the correction for live channels and the imputation for masked ones.
    """

    W: np.ndarray
    today: LatentModel  # the fit these came from (warm start of the next fit)
    n_live: int  # channels the fit used (never masked during its window)
    n_stable: int  # of those, channels the rotation was fitted on
    rotation_deg: float  # largest rotation angle of O: how far today's axes moved

    def describe(self) -> str:
        return f"refit on {self.n_live} live channels, {self.n_stable} stable, axes rotated {self.rotation_deg:.1f} deg"


class LatentAlign:
    """Periodic FA re-fit + Procrustes alignment to the training latent, applied per bin."""

    name = "latent"

    def __init__(
        self,
        ref: TrainingReference,
        latent: LatentModel,
        *,
        period_s: float = 30.0,
        window_blocks: int = 4,
        min_blocks: int = 2,
        swap_delay_s: float = 1.0,
        fit_iters: int = 50,
        drop_frac: float = 0.2,
        impute: bool = True,
        threaded: bool = True,
    ) -> None:
        if latent.loadings.shape[0] != ref.n_channels:
            raise ValueError(f"latent has {latent.loadings.shape[0]} channels, reference {ref.n_channels}")
        if not 1 <= min_blocks <= window_blocks:
            raise ValueError(f"need 1 <= min_blocks <= window_blocks, got {min_blocks}, {window_blocks}")
        self.ref, self.latent = ref, latent
        self.block_bins = max(2, math.ceil(period_s / ref.bin_width))
        self.window_blocks, self.min_blocks = int(window_blocks), int(min_blocks)
        self.swap_delay = math.ceil(swap_delay_s / ref.bin_width)
        self.fit_iters, self.drop_frac, self.impute, self.threaded = fit_iters, drop_frac, impute, threaded
        self._mu = ref.x_mean.astype(np.float64)
        self._sd = ref.x_std.astype(np.float64)
        c = ref.n_channels
        self._out = np.empty(c, dtype=np.float32)
        self._lock = threading.Lock()
        self._generation = 0  # bumped by reset() and restore(), so a fit started before is discarded
        # two block buffers: one fills while the worker may still read the other
        self._blocks = np.empty((2, self.block_bins, c), dtype=np.float64)
        self._seens = np.zeros((2, c), dtype=bool)
        self.reset()

    # -- parameters ------------------------------------------------------------------------
    def _params_from(self, today: LatentModel, live: np.ndarray) -> _Params:
        O, stable = procrustes_stable(today.loadings, self.latent.loadings, live, self.drop_frac)
        A = self.latent.loadings @ O.T
        beta = today.posterior_weights(live)
        Pd = np.where(live[:, None], A - today.loadings, 0.0)
        Pi = A if self.impute else np.zeros_like(A)
        # ||O - I||_2 = 2 sin(theta / 2) for the largest rotation angle theta of O
        half_chord = np.clip(np.linalg.svd(O - np.eye(O.shape[0]), compute_uv=False).max() / 2, 0, 1)
        sd = self._sd[:, None]
        W = np.hstack([beta.T / sd, Pd * sd, Pi * sd, self._mu[:, None]])
        return _Params(
            W=np.ascontiguousarray(W),
            today=today, n_live=int(live.sum()), n_stable=int(stable.sum()),
            rotation_deg=float(np.degrees(2 * np.arcsin(half_chord))),
        )

    def reset(self) -> None:
        """Back to the training latent: identity for live channels, imputation for masked."""
        self.params = self._params_from(self.latent, np.ones(self.ref.n_channels, dtype=bool))
        with self._lock:
            self._pending: _Params | None = None
            self._generation += 1
        self._fill = 0  # which of the two block buffers is filling
        self._seens[:] = False
        self._row = 0
        self._bin = 0
        self._stats: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []  # per block: sum, sum xx^T, n, masked
        self._swap_at = 0
        self._frozen_until = 0
        self._worker: threading.Thread | None = None
        self.n_swaps = 0  # parameter sets swapped in since reset (each one is an event)

    # -- per bin ---------------------------------------------------------------------------
    def process(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        i = self._fill
        _latent_step(x, self._out, mask, self.params.W, self._blocks[i], self._row, self._seens[i])
        self._row += 1
        self._bin += 1
        if self._row == self.block_bins:
            self._close_block()
        if self._pending is not None and self._bin >= self._swap_at:
            self._swap()
        return self._out

    def _close_block(self) -> None:
        """Hand the full block to a fit (unless frozen, or the last fit still runs: then the
        block is dropped and its buffer refilled) and start filling the other buffer."""
        i = self._fill
        self._row = 0
        busy = self.threaded and self._worker is not None and self._worker.is_alive()
        if self._bin < self._frozen_until or busy:
            self._seens[i] = False
            return
        block, seen = self._blocks[i], self._seens[i].copy()
        self._fill = 1 - i
        self._seens[self._fill] = False
        if self.threaded:
            self._worker = threading.Thread(target=self._fit_block, args=(block, seen, self._generation),
                                            daemon=True)
            self._worker.start()
        else:
            self._fit_block(block, seen, self._generation)
        self._swap_at = self._bin + self.swap_delay

    def _swap(self) -> None:
        with self._lock:
            new, self._pending = self._pending, None
        if new is not None:
            self.params = new
            self.n_swaps += 1

    # -- off the per-bin path ----------------------------------------------------------------
    def _fit_block(self, block: np.ndarray, seen: np.ndarray, generation: int) -> None:
        stats = self._stats
        if generation != self._generation:
            return
        s1, s2 = _block_moments(block, self._mu, self._sd)
        stats.append((s1, s2, block.shape[0], seen))
        del stats[: -self.window_blocks]
        if len(stats) < self.min_blocks:
            return
        n = sum(s[2] for s in stats)
        m = sum(s[0] for s in stats) / n
        S = sum(s[1] for s in stats) / n - np.outer(m, m)
        live = ~np.logical_or.reduce([s[3] for s in stats]) & (np.diag(S) > 1e-3)
        prev = self.params.today
        init = LatentModel(prev.loadings[live], np.where(prev.psi[live] > 0, prev.psi[live], 1.0))
        fit = fit_factor_analysis(S[np.ix_(live, live)], self.latent.k, init=init, iters=self.fit_iters)
        L1 = np.zeros_like(self.latent.loadings)
        L1[live] = fit.loadings
        psi1 = np.ones(self.ref.n_channels)
        psi1[live] = fit.psi
        params = self._params_from(LatentModel(L1, psi1), live)
        with self._lock:
            if generation == self._generation:
                self._pending = params

    # -- guard hooks -------------------------------------------------------------------------
    def snapshot(self) -> _Params:
        return self.params

    def restore(self, snap: _Params, freeze_s: float = 0.0) -> None:
        """Put back earlier parameters, drop any fit in flight, and stop refitting for a while."""
        with self._lock:
            self._pending = None
            self._generation += 1
        self.params = snap
        self._stats = []
        self._frozen_until = self._bin + math.ceil(freeze_s / self.ref.bin_width)
