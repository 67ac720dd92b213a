"""The streaming-decoder contract, checked for every model, plus model-specific behaviour.

The central invariant: in eval mode, stepping a 500-bin sequence from `init_state` gives
what `forward` gives on it (max abs diff <= 1e-4 in float32), so offline metrics computed
with `forward` or `step` are the numbers the runtime delivers.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.base import StreamingDecoder
from models.linear import KalmanDecoder, WienerDecoder
from models.registry import MODEL_NAMES, NETWORK_NAMES, build_model
from models.rvq import RVQDecoder, code_stats
from models.transformer import TransformerDecoder

C = 24
TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def counts(batch: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(C, generator=g) * 3 + 0.2
    return torch.poisson(rates.expand(batch, t, C).contiguous(), generator=g)


def linear_system(t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 2-D velocity and counts-like channels linearly tuned to it (z-space)."""
    rng = np.random.default_rng(seed)
    v = np.zeros((t, 2))
    for i in range(1, t):
        v[i] = 0.95 * v[i - 1] + 0.3 * rng.standard_normal(2)
    tuning = rng.standard_normal((C, 2))
    z = v @ tuning.T + 0.5 * rng.standard_normal((t, C))
    return z.astype(np.float32), v.astype(np.float32)


def make(name: str, seed: int = 0) -> StreamingDecoder:
    """A model with non-trivial weights, normalisation and (where fitted) fitted maps, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, C)
    model.set_normalization(torch.full((C,), 1.5), torch.linspace(0.5, 2.0, C),
                            torch.tensor([0.3, -0.2]), torch.tensor([4.0, 6.0]))
    if isinstance(model, (WienerDecoder, KalmanDecoder)):
        model.fit(*linear_system(2000, seed))
    if isinstance(model, RVQDecoder):
        with torch.no_grad():
            model.init_codebooks_kmeans(model.encode(counts(4, 300, seed + 1)))
    return model.eval()


def stream(model: StreamingDecoder, x: torch.Tensor) -> torch.Tensor:
    state = model.init_state(x.shape[0])
    out = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        out.append(y)
    return torch.stack(out, dim=1)


# --- the contract, for every model --------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_step_equals_forward(name):
    model = make(name)
    x = counts(3, 500)
    with torch.no_grad():
        full, stepped = model(x), stream(model, x)
    assert full.shape == stepped.shape == (3, 500, 2)
    assert torch.isfinite(full).all()
    assert (full - stepped).abs().max().item() <= TOL
    assert full.std(dim=1).min() > 1e-3  # the invariant is not met by a constant output


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("t", [1, 3])
def test_sequences_shorter_than_any_context(name, t):
    model = make(name)
    x = counts(2, t)
    with torch.no_grad():
        assert (model(x) - stream(model, x)).abs().max().item() <= TOL


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_causal(name):
    model = make(name)
    x = counts(2, 120)
    k = 70
    changed = x.clone()
    changed[:, k + 1:] = counts(2, 120 - k - 1, seed=9) * 3
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.equal(a[:, : k + 1], b[:, : k + 1]) or (a[:, : k + 1] - b[:, : k + 1]).abs().max() < 1e-6
    assert (a[:, k + 1:] - b[:, k + 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_rows_are_independent(name):
    model = make(name)
    x = counts(4, 90)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i: i + 1]) for i in range(4)])
        one_step, _ = model.step(x[:, 0], model.init_state(4))
    assert (together - alone).abs().max() <= 1e-5
    assert one_step.shape == (4, 2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_contract(name):
    model = make(name)
    state = model.init_state(2)
    assert isinstance(state, tuple) and len(state) == len(model.state_names)
    assert len(set(model.state_names)) == len(model.state_names)
    assert all(s.dtype == torch.float32 and s.device == model.x_mean.device for s in state)
    assert all(not s.any() for s in state)  # zero state
    with torch.no_grad():
        _, new = model.step(counts(2, 1)[:, 0], state)
    assert [s.shape for s in new] == [s.shape for s in state]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rebuilds_from_hparams(name):
    model = make(name)
    clone = type(model)(n_channels=C, **model.hparams())
    clone.load_state_dict(model.state_dict(), strict=True)
    x = counts(1, 60)
    with torch.no_grad():
        assert torch.equal(model(x), clone.eval()(x))


def fit_steps(model: StreamingDecoder, x: torch.Tensor, target: torch.Tensor, steps: int,
              lr: float = 3e-3) -> list[float]:
    """A few Adam steps on MSE (+ the RVQ commitment loss); checks every gradient once."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), target)
        if isinstance(model, RVQDecoder):
            loss = loss + model.pop_aux_loss()
        opt.zero_grad()
        loss.backward()
        if not losses:
            for pname, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        opt.step()
        losses.append(loss.item())
    return losses


def toy_problem() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return counts(4, 64), torch.cumsum(torch.randn(4, 64, 2) * 0.2, dim=1)


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_trains(name):
    """Train mode: every parameter gets a finite gradient, and a few steps reduce the loss."""
    x, target = toy_problem()
    model = build_model(name, C).train()
    if isinstance(model, RVQDecoder):
        model.use_quantizer = False  # stage 1 of progressive training; the rest is tested below
    losses = fit_steps(model, x, target, 25)
    assert losses[-1] < 0.7 * losses[0]


def test_rvq_progressive_training():
    """Pre-train without quantiser -> k-means init -> fine-tune with codes still in use."""
    x, target = toy_problem()
    # 256 toy bins: small codebooks, or each of 128 codes would hold ~2 of them.
    model = build_model("rvq", C, codes=32, code_dim=16).train()
    model.use_quantizer = False
    fit_steps(model, x, target, 25)
    model.eval()
    with torch.no_grad():
        bypassed = model(x)
        model.init_codebooks_kmeans(model.encode(x))
        model.use_quantizer = True
        quantised = model(x)
    # Right after k-means the quantised decoder says nearly what the pre-trained one said,
    # with every stage's codes in use.
    assert (quantised - bypassed).pow(2).mean() < 0.1 * bypassed.var()
    assert min(model.code_usage(x)["utilisation"]) >= 0.9
    model.train()
    finetuned = fit_steps(model, x, target, 10, lr=1e-3)  # a fresh Adam at 3e-3 jolts the codes
    assert finetuned[-1] < finetuned[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_step_equals_forward_cuda(name):
    model = make(name).cuda()
    x = counts(2, 300).cuda()
    with torch.no_grad():
        diff = (model(x) - stream(model, x)).abs().max().item()
    assert diff <= TOL


# --- Transformer -------------------------------------------------------------------------
def test_transformer_sees_exactly_its_window():
    model = make("transformer")
    w, t = model.window, 60
    x = counts(1, 80)
    with torch.no_grad():
        base = model(x)[0, t]
        outside, inside = x.clone(), x.clone()
        outside[0, t - w] += 5.0
        inside[0, t - w + 1] += 5.0
        assert torch.equal(model(outside)[0, t], base)
        assert (model(inside)[0, t] - base).abs().max() > 1e-4


def test_transformer_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        TransformerDecoder(C, d_model=30, heads=4)
    with pytest.raises(ValueError, match="window"):
        TransformerDecoder(C, window=1)


# --- Mamba -------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [1, 7, 8, 9, 41])
def test_mamba_chunk_boundaries(t):
    model = make("mamba")
    x = counts(2, t)
    with torch.no_grad():
        assert (model(x) - stream(model, x)).abs().max() <= TOL


def test_mamba_long_memory_and_fast_reset_stay_finite():
    """Extreme dt (very slow and very fast decay) keeps the chunked scan finite and exact."""
    model = make("mamba")
    with torch.no_grad():
        for i, mixer in enumerate(model.mixers):
            mixer.dt_proj.bias.fill_(8.0 if i == 0 else -8.0)
    x = counts(2, 200)
    model.train()
    y = model(x)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert (model(x) - stream(model, x)).abs().max() <= TOL


# --- RVQ ---------------------------------------------------------------------------------
def test_rvq_kmeans_init_uses_codes_and_shrinks_residuals():
    torch.manual_seed(0)
    model = RVQDecoder(C, codes=32, stages=3)
    with torch.no_grad():
        e = model.encode(counts(4, 300))
        model.init_codebooks_kmeans(e)
        q, codes, residuals = model.rvq(e)
    stats = code_stats(codes, 32)
    assert min(stats["utilisation"]) >= 0.9
    assert all(1.0 < p <= 32.0 for p in stats["perplexity"])
    errors = [r.pow(2).mean().item() for r in residuals] + [(e - q).pow(2).mean().item()]
    assert all(b < a for a, b in zip(errors, errors[1:]))  # every stage explains more


def test_rvq_bypass_and_aux_loss():
    model = make("rvq").train()
    x = counts(2, 50)
    model.use_quantizer = False
    plain = model(x)
    assert model.pop_aux_loss().item() == 0.0
    model.use_quantizer = True
    quantised = model(x)
    aux = model.pop_aux_loss()
    assert aux.item() > 0 and aux.requires_grad
    assert model.pop_aux_loss().item() == 0.0  # cleared once read
    copy.deepcopy(model)  # holds no graph
    assert not torch.allclose(plain, quantised)
    model.eval().use_quantizer = False
    with torch.no_grad():
        assert (model(x) - stream(model, x)).abs().max() <= TOL


def test_rvq_ema_updates_only_in_training():
    model = make("rvq")
    x = counts(2, 80)
    before = model.rvq.codebooks.clone()
    with torch.no_grad():
        model(x)
    assert torch.equal(model.rvq.codebooks, before)
    model.train()
    with torch.no_grad():
        model(x)
    assert not torch.equal(model.rvq.codebooks, before)
    assert torch.allclose(model.rvq.usage.sum(-1), torch.ones(model.stages), atol=1e-5)


def test_rvq_revives_dead_codes_from_batch_residuals():
    model = make("rvq").train()
    dead = torch.tensor([3, 17, 90])
    with torch.no_grad():
        model.rvq.usage[0, dead] = 0.0
        x = counts(2, 80)
        e = model.encode(x)
        model(x)
    cb = model.rvq.codebooks[0, dead]
    # Each revived code is one of this batch's encoder outputs (the stage-1 residuals).
    rows = e.reshape(-1, model.code_dim)
    assert (cb[:, None] == rows[None]).all(-1).any(-1).all()
    assert torch.allclose(model.rvq.usage[0, dead], torch.full((3,), 1.0 / model.codes))


def test_rvq_code_usage_report():
    model = make("rvq")
    stats = model.code_usage(counts(2, 200))
    assert set(stats) == {"utilisation", "perplexity"}
    assert len(stats["utilisation"]) == len(stats["perplexity"]) == model.stages
    assert code_stats(torch.zeros(50, 2, dtype=torch.long), 8) == {"utilisation": [0.125, 0.125],
                                                                   "perplexity": [1.0, 1.0]}


def test_rvq_kmeans_rejects_bad_outputs():
    model = RVQDecoder(C, codes=16)
    with pytest.raises(ValueError, match="at least 16 points"):
        model.init_codebooks_kmeans(torch.randn(10, model.code_dim))
    with pytest.raises(ValueError, match="NaN"):
        model.init_codebooks_kmeans(torch.full((100, model.code_dim), float("nan")))


# --- Wiener and Kalman -------------------------------------------------------------------
def lagged_targets(z: np.ndarray, weight: np.ndarray, bias: np.ndarray, history: int) -> np.ndarray:
    """y[t] = weight @ [z_{t-H+1}, ..., z_t] + bias, with zeros before the segment start."""
    padded = np.concatenate([np.zeros((history - 1, z.shape[1])), z])
    windows = np.stack([padded[t: t + history].reshape(-1) for t in range(len(z))])
    return windows @ weight.T + bias


def test_wiener_recovers_a_known_filter_across_segments_and_gaps():
    rng = np.random.default_rng(0)
    h = 4
    weight, bias = rng.standard_normal((2, h * C)), np.array([0.5, -1.0])
    segments = []
    for n in (300, 250):
        z = rng.standard_normal((n, C))
        y = lagged_targets(z, weight, bias, h)
        valid = rng.random(n) > 0.2
        y[~valid] = np.nan  # masked bins carry NaN velocity
        segments.append((z, y, valid))
    model = WienerDecoder(C, history=h, ridge=0.0)
    model.fit_segments(segments)
    np.testing.assert_allclose(model.linear.weight.detach().numpy(), weight, atol=1e-4)
    np.testing.assert_allclose(model.linear.bias.detach().numpy(), bias, atol=1e-4)


def test_wiener_weight_layout_is_oldest_first():
    """The runtime's numpy fallback: window (oldest first) @ weight.T + bias, denormalised."""
    model = make("wiener")
    x = counts(1, 40)
    with torch.no_grad():
        y = model(x)[0].numpy()
    z = ((x[0] - model.x_mean) / model.x_std).numpy()
    w, b = model.linear.weight.detach().numpy(), model.linear.bias.detach().numpy()
    ref = lagged_targets(z, w, b, model.history) * model.y_std.numpy() + model.y_mean.numpy()
    np.testing.assert_allclose(y, ref, atol=1e-4)


def test_linear_fit_input_errors():
    model = WienerDecoder(C)
    z, y = linear_system(100)
    with pytest.raises(ValueError, match=f"z must be \\[T, {C}\\]"):
        model.fit(z[:, :5], y)
    with pytest.raises(ValueError, match="y must be"):
        model.fit(z, y[:50])
    with pytest.raises(ValueError, match="valid must be"):
        KalmanDecoder(C).fit(z, y, valid=np.ones(3, bool))
    with pytest.raises(ValueError, match="no valid bins"):
        model.fit(z, y, valid=np.zeros(100, bool))


def test_kalman_decodes_a_linear_gaussian_system():
    z, v = linear_system(4000, seed=1)
    model = KalmanDecoder(C)
    model.fit(z[:3000], v[:3000])
    assert np.abs(np.linalg.eigvals(model.transition.numpy())).max() < 1.0
    with torch.no_grad():
        pred = model.core_forward(torch.from_numpy(z[None, 3000:]))[0].numpy()
    truth = v[3000:]
    r2 = 1 - ((pred - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    assert r2.min() > 0.8
