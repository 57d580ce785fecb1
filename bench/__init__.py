"""Benchmarks (``keep bench gkc``, ...): harness code kept out of the runtime packages."""
