"""Benchmarks and their shared fixtures (synthetic histories, a git smart-HTTP anchor)."""
