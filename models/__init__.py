"""Streaming velocity decoders: one module per architecture, one contract (base.py)."""
from models.base import State, StreamingDecoder
from models.registry import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "State", "StreamingDecoder", "build_model"]
