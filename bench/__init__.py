"""Benchmarks: `make bench` prints the figures and saves them to bench/results.json."""
