"""Benchmarks (not tests): see bench/README.md. Run them from the repository root."""
