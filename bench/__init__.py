"""Benchmarks (results in docs/benchmarks.md); what they share with the tests is in
``observer.testing``."""
