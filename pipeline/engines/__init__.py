"""Engines: how a micro-batch becomes gradients and an optimizer step (PyTorch/DDP or DeepSpeed)."""
from pipeline.engines.base import Engine
from pipeline.engines.parallelize import build_engine, compile_model, compile_mode_for, wrap_model

__all__ = ["Engine", "build_engine", "compile_model", "compile_mode_for", "wrap_model"]
