"""Shared test molecules and helpers, reused by tests, examples and benchmarks."""
