"""Registers the shared fixtures (real Redis, GKC and ranker processes, latency proxies) for every suite."""

pytest_plugins = ["tests.support.fixtures"]
