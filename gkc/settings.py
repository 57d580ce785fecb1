"""GKC settings (env prefix ``GKC_``, docs/gkc.md). Built by the CLI / ``__main__`` and passed in."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from services.errors import InvalidArgument
from services.settings import MIN_TOKEN_LENGTH, ServiceSettings, is_placeholder, prefixed_env


class GkcSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GKC_", extra="ignore")

    grpc_port: int = 50051
    http_port: int = 8081
    #: Unset: start a private redis-server under ``data_dir`` (the embedded default).
    redis_url: str | None = None
    #: Treat ``redis_url`` as a Redis Cluster seed node.
    redis_cluster: bool = False
    data_dir: Path = Path(".keep/gkc")
    api_token: SecretStr | None = None
    #: Candidates per BatchGet; more is INVALID_ARGUMENT.
    max_candidates: int = 1000
    #: Largest accepted bundle upload (bytes); more is 413.
    max_upload_bytes: int = 4 * 1024**3
    #: Bytes of item vectors (with their ids) kept in process per worker (LRU, all versions together).
    cache_bytes: int = 128 * 1024**2
    #: gRPC server processes sharing the port with SO_REUSEPORT (the first one also serves REST).
    workers: int = 1
    #: Redis socket timeout: a dead or stuck Redis gives UNAVAILABLE after about this long.
    redis_timeout_s: float = 0.5
    #: How long a cached view of the version registry is trusted (other processes may activate).
    registry_ttl_s: float = 1.0
    #: When the registry cannot be read, the last good view serves for at most this long; a retired
    #: version's keys are deleted only this long (plus a grace) after it was retired.
    registry_stale_s: float = 10.0
    #: Serve from a Redis whose eviction policy may drop GKC's keys (then key counts are verified).
    accept_eviction: bool = False
    #: Threads per gRPC process that run reads (a stuck Redis call holds one, not the event loop).
    read_threads: int = 8
    #: How long a publish waits for replicas to acknowledge its writes (deployments with replicas).
    replica_timeout_s: float = 10.0
    #: Longest lease a consumer may take on a version in one request (it renews before it ends).
    max_pin_ttl_s: float = 3600.0
    #: A staging version whose publisher has not written for this long is abandoned and cleaned up.
    publish_lease_s: float = 120.0
    #: Entries per pipelined write batch when publishing.
    publish_batch: int = 2000
    #: Threads writing a publish's batches in parallel (one builds a batch while another waits on Redis).
    publish_writers: int = 2
    #: Ready versions kept; publishing one more retires the oldest non-active one.
    max_ready_versions: int = 5

    def check(self) -> None:
        """Refuse to run with settings that are unsafe outside dev mode."""
        if is_placeholder(self.api_token) and not self.dev_mode:
            raise InvalidArgument(
                f"GKC_API_TOKEN is unset, shorter than {MIN_TOKEN_LENGTH} characters or a placeholder; "
                "set a real one, e.g. export GKC_API_TOKEN=$(openssl rand -hex 16) "
                "(or GKC_DEV_MODE=true for local use)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("set both GKC_TLS_CERT and GKC_TLS_KEY, or neither")
        if (
            self.workers < 1
            or self.max_candidates < 1
            or self.max_ready_versions < 1
            or self.read_threads < 1
        ):
            raise InvalidArgument(
                "GKC_WORKERS, GKC_MAX_CANDIDATES, GKC_MAX_READY_VERSIONS and GKC_READ_THREADS must be >= 1"
            )

    @property
    def delete_after_s(self) -> float:
        """How long a retiring version's keys stay: every process re-reads the registry within
        ``registry_stale_s`` or stops answering; the grace covers a read already under way."""
        return self.registry_stale_s + 2.0 + 4 * self.redis_timeout_s


def gkc_env(
    grpc_port: int,
    http_port: int,
    token: str,
    *,
    data_dir: Path | None = None,
    redis_url: str | None = None,
    host: str | None = "127.0.0.1",
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a GKC process (``python -m gkc``) on ``host`` (None: its default) and ports.

    ``base`` (default: this process's environment) is copied; an inherited ``GKC_REDIS_URL`` is
    dropped, so the GKC uses ``redis_url`` or else its embedded Redis under ``data_dir``. ``extra``
    (``GKC_*=value``) is added last, before the Redis URL.
    """
    values = {"HOST": host, "GRPC_PORT": grpc_port, "HTTP_PORT": http_port, "API_TOKEN": token}
    env = {**prefixed_env("GKC", {**values, "DATA_DIR": data_dir}, base), **extra}
    env.pop("GKC_REDIS_URL", None)
    if redis_url:
        env["GKC_REDIS_URL"] = redis_url
    return env
