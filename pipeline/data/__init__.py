"""Data backends behind one factory: `build_data` returns train/val loaders of one batch interface."""
from pipeline.data.factory import build_data, resolve_backend
from pipeline.data.types import BatchLoader, DataBundle, DataError, Placement

__all__ = ["BatchLoader", "DataBundle", "DataError", "Placement", "build_data", "resolve_backend"]
