"""Benchmark scripts: each compares against a baseline in the same run and writes its figures
to docs/ (they are scripts to run, not tests)."""
