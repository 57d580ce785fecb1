"""The client side of ``keep publish``: upload a bundle to GKC's REST API and say what the version means.

Torch-free (the GKC image runs it too); :mod:`trainer.pipeline` re-exports it as the pipeline's publish step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.errors import InvalidArgument

#: GKC's REST ops API on its default port (``GKC_HTTP_PORT``).
DEFAULT_GKC_API = "http://127.0.0.1:8081"


@dataclass(frozen=True)
class PublishConfig:
    bundle: Path
    #: GKC's REST ops API (``http(s)://host:port``), not its gRPC read address.
    api_url: str = DEFAULT_GKC_API
    #: Bearer token; ``None`` reads ``GKC_API_TOKEN``.
    token: str | None = None
    ca_file: Path | None = None
    progress: bool = True
    #: Store a float32 bundle as float16 / int8 (GKC converts it); ``None``: as exported.
    dtype: str | None = None


@dataclass(frozen=True)
class PublishOutcome:
    version: int
    active: bool
    retired: tuple[int, ...]

    def describe(self) -> str:
        """What the new version means for readers, in one line."""
        if self.active:
            note = f"version {self.version} is ready and active (the first version published becomes active)"
        else:
            note = (
                f"version {self.version} is ready, not active: readers of version 0 keep the active one "
                f"until `keep versions activate {self.version}`"
            )
        if self.retired:
            note += f"; retired {list(self.retired)} (GKC keeps GKC_MAX_READY_VERSIONS)"
        return note


def check_api_url(url: str) -> str:
    """The REST URL, or a one-line refusal when it is a gRPC ``host:port``."""
    if not url.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"--gkc-api takes GKC's REST URL (e.g. {DEFAULT_GKC_API}), got {url!r}; a host:port is the "
            "gRPC address that keep train/evaluate take as --gkc"
        )
    return url


def publish(cfg: PublishConfig) -> PublishOutcome:
    """Check the token, upload the bundle and report the new version (and whether it is active)."""
    from gkc.client import GkcOpsClient

    ops = GkcOpsClient(check_api_url(cfg.api_url), cfg.token, ca_file=cfg.ca_file)
    try:
        result = ops.publish(cfg.bundle, progress=cfg.progress, dtype=cfg.dtype)
        version = int(result["version"])
        active = bool(ops.version(version).get("active"))
    finally:
        ops.close()
    return PublishOutcome(version, active, tuple(int(v) for v in result.get("retired", ())))
