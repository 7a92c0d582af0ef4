"""Data backends behind one factory: `build_data` returns train/val loaders of one batch interface."""
from pipeline.data.folder import DataError
from pipeline.data.loader import BatchLoader, DataBundle, Placement, build_data, resolve_backend

__all__ = ["BatchLoader", "DataBundle", "DataError", "Placement", "build_data", "resolve_backend"]
