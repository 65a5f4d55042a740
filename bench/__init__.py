"""Benchmarks against the peers named in the issues; results go in docs/benchmarks.md."""
