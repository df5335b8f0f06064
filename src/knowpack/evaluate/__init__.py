"""Evaluation: reliability, generalisation, knowledge shift, collapse, refusals, locality, benchmarks."""
