"""Benchmarks: `make bench` (REST latency and throughput) and `make nlu-report` (NLU figures)."""
