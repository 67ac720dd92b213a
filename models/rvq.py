"""RVQ codec decoder: causal LSTM encoder -> residual vector quantiser -> velocity head.

The velocity head only ever sees the quantised code (the sum of one codeword per stage),
so the decoder is a discrete neural codec with a streaming encoder. The quantiser is
written here rather than taken from vector-quantize-pytorch, whose ResidualVQ cannot be
exported: per stage the nearest codeword is an argmin over squared distances plus a
lookup, with no data-dependent branch, so `core_step` exports to TorchScript and ONNX.

Training is progressive (the research found codebooks collapse to a handful of codes
otherwise); the API the training loop uses:
1. `model.use_quantizer = False`: forward/step bypass the quantiser; pre-train encoder+head.
2. `model.encode(x)` (raw counts [B, T, C] -> encoder outputs [B, T, code_dim]) over the
   training set, then `model.init_codebooks_kmeans(outputs)`: stage 1 by k-means on the
   outputs, every later stage by k-means on what the earlier stages left.
3. `model.use_quantizer = True`; fine-tune with loss + `model.pop_aux_loss()` (commitment,
   0.25 x MSE between encoder output and its stop-gradient quantisation; the head gets
   straight-through gradients). In training mode every forward also updates the codebooks by EMA (decay
   0.99, Laplace-smoothed) and re-seeds dead codes from the batch's residuals.
4. `model.code_usage(x)`: per-stage utilisation and perplexity over a dataset.
Codebooks and EMA statistics are buffers, so they live in the state dict and the artifact.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.base import State, StreamingDecoder


def _argmin_distance(residual: Tensor, sq_norms: Tensor, neg2_codebook_t: Tensor) -> Tensor:
    """argmin_k |c_k|^2 - 2 r.c_k: |r|^2 is the same for every codeword, so it is dropped."""
    return torch.argmin(sq_norms + residual @ neg2_codebook_t, dim=-1)


def nearest_code(residual: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codeword ([..., D] vs [K, D] -> [...]) by squared distance."""
    return _argmin_distance(residual, codebook.pow(2).sum(-1), -2.0 * codebook.t())


def lstm_step(lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One time step of a (unidirectional, batch-first) nn.LSTM, written out per layer.

    Same function as `lstm(x[:, None], (h, c))` in eval mode, but about 4x cheaper per bin
    in eager CPU torch (the fused sequence kernel has a large fixed cost per call) and
    plain matmul/sigmoid/tanh ops for the exporters. x [B, in], h/c [layers, B, hidden].
    """
    hs, cs = [], []
    for k in range(lstm.num_layers):
        gates = (x @ getattr(lstm, f"weight_ih_l{k}").t() + getattr(lstm, f"bias_ih_l{k}")
                 + h[k] @ getattr(lstm, f"weight_hh_l{k}").t() + getattr(lstm, f"bias_hh_l{k}"))
        i, f, g, o = gates.chunk(4, dim=-1)
        c_k = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
        x = torch.sigmoid(o) * torch.tanh(c_k)
        hs.append(x)
        cs.append(c_k)
    return x, torch.stack(hs), torch.stack(cs)


def kmeans(points: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding; points [N, D] -> (centroids [k, D], counts [k]).

    A cluster that empties during the iterations is re-seeded at a random point, so every
    centroid ends on data.
    """
    n = points.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least {k} points (one per code), got {n}")
    first = torch.randint(n, (1,), generator=generator)
    centroids = points[first]
    nearest_d2 = (points - centroids).pow(2).sum(-1)
    for _ in range(k - 1):
        pick = torch.multinomial(nearest_d2.clamp_min(0) + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
        nearest_d2 = torch.minimum(nearest_d2, (points - points[pick]).pow(2).sum(-1))
    for _ in range(iters):
        assign = nearest_code(points, centroids)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        empty = counts == 0
        reseed = points[torch.randint(n, (int(empty.sum()),), generator=generator)]
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        centroids[empty] = reseed
    assign = nearest_code(points, centroids)
    return centroids, torch.bincount(assign, minlength=k).to(points.dtype)


class ResidualVQ(nn.Module):
    """`stages` codebooks of `codes` x `dim`, applied to successive residuals.

    EMA state per stage: `usage` is the EMA of each code's share of a batch (sums to 1)
    and `embed_sum` the EMA of the (share-weighted) mean of the vectors assigned to it,
    so codebook = embed_sum / smoothed usage, independent of the batch size. A code is
    dead when its usage falls below `dead_threshold` x the uniform share 1/codes.
    """

    def __init__(self, stages: int, codes: int, dim: int, decay: float = 0.99,
                 dead_threshold: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.stages, self.codes, self.dim = stages, codes, dim
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        codebooks = torch.randn(stages, codes, dim)
        self.register_buffer("codebooks", codebooks)
        self.register_buffer("usage", torch.full((stages, codes), 1.0 / codes))
        self.register_buffer("embed_sum", codebooks / codes)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """e [..., D] -> (quantised [..., D], codes [..., stages], residual entering each stage)."""
        residual, quantised = e, torch.zeros_like(e)
        codes, residuals = [], []
        sq_norms = self.codebooks.pow(2).sum(-1)                      # [S, K]
        neg2_t = self.codebooks.transpose(1, 2) * -2.0                # [S, D, K]
        for s in range(self.stages):
            idx = _argmin_distance(residual, sq_norms[s], neg2_t[s])
            q = nn.functional.embedding(idx, self.codebooks[s])
            residuals.append(residual)
            codes.append(idx)
            quantised = quantised + q
            residual = residual - q
        return quantised, torch.stack(codes, dim=-1), residuals

    @torch.no_grad()
    def ema_update(self, codes: Tensor, residuals: list[Tensor]) -> None:
        """One EMA step of every codebook from a batch's assignments, then dead-code revival."""
        codes = codes.reshape(-1, self.stages)
        n = codes.shape[0]
        for s in range(self.stages):
            r = residuals[s].detach().reshape(-1, self.dim)
            share = torch.bincount(codes[:, s], minlength=self.codes).to(r.dtype) / n
            mean_sum = torch.zeros(self.codes, self.dim, dtype=r.dtype, device=r.device).index_add_(0, codes[:, s], r) / n
            self.usage[s].lerp_(share, 1 - self.decay)
            self.embed_sum[s].lerp_(mean_sum, 1 - self.decay)
            smoothed = (self.usage[s] + self.eps) / (1 + self.codes * self.eps)
            self.codebooks[s] = self.embed_sum[s] / smoothed[:, None]
            dead = self.usage[s] < self.dead_threshold / self.codes
            n_dead = int(dead.sum())
            if n_dead:
                seeds = r[torch.randint(r.shape[0], (n_dead,), device=r.device)]
                self.codebooks[s, dead] = seeds
                self.usage[s, dead] = 1.0 / self.codes
                self.embed_sum[s, dead] = seeds / self.codes

    @torch.no_grad()
    def init_kmeans(self, e: Tensor, iters: int, seed: int) -> None:
        """Stage 1 by k-means on e [N, D], each later stage on the residual left before it."""
        gen = torch.Generator(device=e.device).manual_seed(seed)
        residual = e.reshape(-1, self.dim).to(self.codebooks)
        for s in range(self.stages):
            centroids, counts = kmeans(residual, self.codes, iters, gen)
            self.codebooks[s] = centroids
            self.usage[s] = counts / counts.sum()
            self.embed_sum[s] = centroids * self.usage[s][:, None]
            residual = residual - centroids[nearest_code(residual, centroids)]


def code_stats(codes: Tensor, n_codes: int) -> dict[str, list[float]]:
    """Per-stage utilisation (fraction of codes used) and perplexity of codes [N, stages].

    Perplexity exp(H) of the empirical code distribution: n_codes when usage is uniform,
    1 when a stage has collapsed onto one code.
    """
    codes = codes.reshape(-1, codes.shape[-1])
    util, perp = [], []
    for s in range(codes.shape[-1]):
        p = torch.bincount(codes[:, s], minlength=n_codes).double() / codes.shape[0]
        util.append(float((p > 0).double().mean()))
        perp.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
    return {"utilisation": util, "perplexity": perp}


class RVQDecoder(StreamingDecoder):
    name = "rvq"
    state_names = ("h", "c")
    learned_buffers = ("rvq.codebooks",)

    def __init__(
        self,
        n_channels: int,
        hidden: int = 128,
        layers: int = 1,
        code_dim: int = 64,
        stages: int = 4,
        codes: int = 128,
        commitment: float = 0.25,
        ema_decay: float = 0.99,
        dead_threshold: float = 0.1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(n_channels)
        self.hidden, self.layers, self.code_dim = hidden, layers, code_dim
        self.stages, self.codes, self.commitment = stages, codes, commitment
        self.ema_decay, self.dead_threshold, self.dropout = ema_decay, dead_threshold, dropout
        self.lstm = nn.LSTM(n_channels, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.to_code = nn.Linear(hidden, code_dim)
        self.rvq = ResidualVQ(stages, codes, code_dim, decay=ema_decay, dead_threshold=dead_threshold)
        self.head = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, 2))
        # A training-time switch, not an hparam: a finished model always quantises.
        self.use_quantizer = True
        self._aux_loss: Tensor | None = None

    def hparams(self) -> dict:
        return {"hidden": self.hidden, "layers": self.layers, "code_dim": self.code_dim,
                "stages": self.stages, "codes": self.codes, "commitment": self.commitment,
                "ema_decay": self.ema_decay, "dead_threshold": self.dead_threshold, "dropout": self.dropout}

    def init_state(self, batch: int = 1) -> State:
        z = self._ref().new_zeros(self.layers, batch, self.hidden)
        return z, z.clone()

    def core_encode(self, z: Tensor) -> Tensor:
        """z-scored counts [B, T, C] -> encoder outputs [B, T, code_dim] (from zero state)."""
        out, _ = self.lstm(z)
        return self.to_code(out)

    def encode(self, x: Tensor) -> Tensor:
        """Raw counts [B, T, C] -> encoder outputs, e.g. to collect k-means data."""
        return self.core_encode(self.normalize(x))

    def core_forward(self, z: Tensor) -> Tensor:
        e = self.core_encode(z)
        if not self.use_quantizer:
            self._aux_loss = None
            return self.head(e)
        q, codes, residuals = self.rvq(e.detach())  # the argmin path needs no gradient
        if self.training:
            self.rvq.ema_update(codes, residuals)
        self._aux_loss = self.commitment * nn.functional.mse_loss(e, q)
        return self.head(e + (q - e).detach())  # straight-through: gradients skip the argmin

    def pop_aux_loss(self) -> Tensor:
        """The commitment loss of the last forward (0 when bypassed), cleared once read.

        Cleared so the module never holds on to a graph (and stays deep-copyable).
        """
        loss, self._aux_loss = self._aux_loss, None
        return loss if loss is not None else self._ref().new_zeros(())

    def core_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        out, h, c = lstm_step(self.lstm, z, state[0], state[1])
        e = self.to_code(out)
        if self.use_quantizer:
            e = self.rvq(e)[0]
        return self.head(e), (h, c)

    @torch.no_grad()
    def init_codebooks_kmeans(self, encoder_outputs: Tensor, iters: int = 25, seed: int = 0,
                              max_points: int = 65536) -> None:
        """k-means initialisation of every stage from encoder outputs [..., code_dim].

        At most `max_points` rows (a seeded random subset) are clustered: k-means cost grows
        with N x codes and more points than that do not move 128 centroids measurably.
        """
        e = encoder_outputs.detach().reshape(-1, self.code_dim)
        if not torch.isfinite(e).all():
            raise ValueError("encoder outputs contain NaN or inf; cannot initialise codebooks")
        if e.shape[0] > max_points:
            gen = torch.Generator(device=e.device).manual_seed(seed)
            e = e[torch.randperm(e.shape[0], generator=gen, device=e.device)[:max_points]]
        self.rvq.init_kmeans(e, iters=iters, seed=seed)

    @torch.no_grad()
    def code_usage(self, x: Tensor) -> dict[str, list[float]]:
        """Per-stage utilisation and perplexity of the codes chosen for raw counts [B, T, C]."""
        return code_stats(self.rvq(self.encode(x))[1], self.codes)
