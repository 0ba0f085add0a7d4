"""Benchmarks: each prints a table and writes CSV; none is a timed test."""
