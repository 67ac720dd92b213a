"""Name -> class, so artifacts and the CLI can rebuild a model from its config."""
from __future__ import annotations

import importlib

from models.base import StreamingDecoder

# name -> "module:Class"; imported lazily so one broken model never hides the others.
_MODELS = {
    "lstm": "models.lstm:LSTMDecoder",
    "transformer": "models.transformer:TransformerDecoder",
    "rvq": "models.rvq:RVQDecoder",
    "mamba": "models.mamba:MambaDecoder",
    "wiener": "models.linear:WienerDecoder",
    "kalman": "models.linear:KalmanDecoder",
}
MODEL_NAMES = tuple(_MODELS)
NETWORK_NAMES = ("lstm", "transformer", "rvq", "mamba")


def model_class(name: str) -> type[StreamingDecoder]:
    try:
        module, cls = _MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, n_channels: int, **hparams) -> StreamingDecoder:
    return model_class(name)(n_channels=n_channels, **hparams)
