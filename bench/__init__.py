"""Benchmarks of otelgate: `python -m bench` runs the side-by-side comparison (see docs/performance.md)."""
