"""The numba-compiled fused LSTM step used by the `numba` backend (imported only by it).

Kept in its own module so numba is imported (and its on-disk cache consulted) only when
that backend is built, and so the kernels can be cached: numba caches module-level
functions only.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

_SQRT_HALF = 0.7071067811865476
jit = nb.njit(fastmath=True, cache=True, nogil=True)


@jit
def affine(w, v, n, b, out):
    """out = w[:, :n] @ v[:n] + b, row by row (rows are contiguous, so this vectorises)."""
    for i in range(w.shape[0]):
        acc = b[i]
        for j in range(n):
            acc += w[i, j] * v[j]
        out[i] = acc


# tanh as the clamped rational approximation of Eigen's fast float tanh (max abs
# error 2.6e-7 over [-20, 20], measured): plain arithmetic, so the gate loops vectorise,
# where libm's scalar tanhf/expf calls made the gates 5 us of a ~40 us step per layer.
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_P = tuple(np.float32(a) for a in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                        5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                        4.89352455891786e-03))
_TANH_Q = tuple(np.float32(b) for b in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                        4.89352518554385e-03))
_HALF = np.float32(0.5)


@nb.njit(fastmath=True, cache=True, inline="always")
def tanh(x):
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = _TANH_P[0]
    for a in _TANH_P[1:]:
        p = p * x2 + a
    q = _TANH_Q[0]
    for b in _TANH_Q[1:]:
        q = q * x2 + b
    return p * x / q


@nb.njit(fastmath=True, cache=True, inline="always")
def sigmoid(x):
    return _HALF + _HALF * tanh(_HALF * x)


@jit
def lstm_step(x, x_mean, x_std, w_layers, b_layers, h, c, w1, b1, w2, b2, y_mean, y_std, buf, gates, hid, y):
    """One bin: normalise, every layer's gates and cell update, GELU head, de-normalise.

    h, c [layers, hidden] are updated in place; the velocity is written to y. buf, gates
    and hid are scratch. w_layers[l] is [W_ih | W_hh] side by side, b_layers[l] = b_ih + b_hh.
    """
    n_layers, hidden = h.shape
    n_in = x.shape[0]
    for j in range(n_in):
        buf[j] = (x[j] - x_mean[j]) / x_std[j]
    for layer in range(n_layers):
        for j in range(hidden):  # buf = [layer input | this layer's h]
            buf[n_in + j] = h[layer, j]
        affine(w_layers[layer], buf, n_in + hidden, b_layers[layer], gates)
        for j in range(hidden):  # PyTorch gate order: input, forget, cell, output
            i_g = sigmoid(gates[j])
            f_g = sigmoid(gates[hidden + j])
            g_g = tanh(gates[2 * hidden + j])
            o_g = sigmoid(gates[3 * hidden + j])
            c[layer, j] = f_g * c[layer, j] + i_g * g_g
            h[layer, j] = o_g * tanh(c[layer, j])
        for j in range(hidden):
            buf[j] = h[layer, j]
        n_in = hidden
    affine(w1, buf, hidden, b1, hid)
    for j in range(hid.shape[0]):  # exact (erf) GELU, as nn.GELU()
        hid[j] = 0.5 * hid[j] * (1.0 + math.erf(hid[j] * _SQRT_HALF))
    affine(w2, hid, hid.shape[0], b2, y)
    for j in range(y.shape[0]):
        y[j] = y[j] * y_std[j] + y_mean[j]
