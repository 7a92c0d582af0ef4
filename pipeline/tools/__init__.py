"""Command tools built on the core: benchmarks, run comparison, sweeps, the degradation study, data checks."""
