"""GKC, the General Knowledge Center: versioned knowledge in Redis behind gRPC reads and REST ops.

This package never imports torch: its image ships without it. ``from gkc import GkcClient`` (and
``GkcOpsClient``, ``BundleReader``) work; they are imported on first use, so ``import gkc.bundle``
stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gkc.bundle_reader import BundleReader
    from gkc.client import GkcClient, GkcOpsClient

_LAZY = {"GkcClient": "gkc.client", "GkcOpsClient": "gkc.client", "BundleReader": "gkc.bundle_reader"}

__all__ = ["BundleReader", "GkcClient", "GkcOpsClient"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gkc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
