"""Ranker settings (env prefix ``RANKER_``, docs/ranker.md). Built by the CLI / ``__main__`` and passed in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from contract.schema import DEFAULT_MAX_LEN
from services.errors import InvalidArgument
from services.settings import ServiceSettings, is_placeholder, prefixed_env


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RankerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="ignore")

    grpc_port: int = 50052
    http_port: int = 8082
    gkc_addr: str = "127.0.0.1:50051"
    #: GKC's read path behind TLS (``GKC_TLS_CERT``): trust this CA / self-signed cert (PEM) ...
    gkc_ca_file: Path | None = None
    #: ... or, with no CA file, the system roots. Off with no CA file: plaintext.
    gkc_tls: bool = False
    #: Ask GKC for float16 vectors on the wire (half the bytes of every answer; each knowledge value
    #: rounded to float16, ~5e-4 relative: docs/ranker.md, "Speed"); false: float32.
    gkc_float16: bool = False
    #: Either one model artifact (``artifact.json`` inside; the model is named after its task) or a
    #: directory of artifacts / symlinks to artifacts (each model is named after its entry).
    model_dir: Path = Path(".keep/models")
    #: Model used when a request names none; "" = ``click`` if loaded, else the first name in order.
    default_model: str = ""
    #: The behaviour-sequence store (its own Redis database or instance, never GKC's knowledge keys).
    #: Unset: a private redis-server under ``data_dir``/features (AOF on), as GKC starts its own.
    features_redis_url: str | None = None
    #: Where the embedded feature store keeps its data.
    data_dir: Path = Path(".keep/ranker")
    #: Clicks kept per user in the store (the bound of each user's list; >= the models' ``max_len``).
    features_max_len: int = DEFAULT_MAX_LEN
    #: A user's clicks expire this long after their last write (30 days).
    features_ttl_s: int = 30 * 86_400
    #: Budget of the one store read per request; slower or down: empty history, degraded.
    features_timeout_s: float = 0.05
    #: How long an ingested event id is remembered (a redelivery within it is not recorded twice).
    events_dedup_ttl_s: int = 86_400
    #: Bearer token for ``POST /v1/events`` and gRPC ``RecordEvents``; unset: ingest is refused.
    events_token: SecretStr | None = None
    #: Redis Stream of click events the ranker consumes (on the feature store's Redis); "" = none.
    events_stream: str = "keep:events"
    #: Consumer group on ``events_stream`` (every ranker replica in it shares the stream's work).
    events_group: str = "ranker"
    #: Candidates per request; more is INVALID_ARGUMENT.
    max_candidates: int = 1000
    #: GKC BatchGet timeout; slower answers are dropped and the request is served degraded.
    gkc_timeout_s: float = 0.1
    #: Whole-request budget when the caller sets no deadline (gRPC deadlines are honoured as well).
    request_deadline_s: float = 0.25
    #: Time kept back for the model when the GKC call is budgeted against the deadline.
    model_reserve_s: float = 0.02
    #: Consecutive GKC failures (unavailable, timeout) that open the circuit breaker.
    breaker_failures: int = 5
    #: How long an open breaker waits before letting one probe request through (half-open).
    breaker_reset_s: float = 2.0
    #: Model directory poll interval for hot reload (0 = only ``POST /v1/models/reload``).
    reload_poll_s: float = 2.0
    #: How long ``POST /v1/models/reload`` waits for the other serving processes to confirm their reload
    #: (``RANKER_GRPC_PROCESSES > 1``); a process that does not is named in a 503.
    reload_timeout_s: float = 60.0
    #: torch intra-op threads per scoring worker.
    torch_threads: int = 1
    #: Threads running models concurrently (0 = one per CPU core).
    model_workers: int = 0
    #: Processes serving gRPC on the one port (SO_REUSEPORT; each with its own models, GKC channel and
    #: RANKER_MODEL_WORKERS threads; the first also serves REST and the event stream). Python threads
    #: share one interpreter lock: a second process measured 1.44x the requests/s at concurrency 16.
    #: The kernel spreads connections, not calls: clients need several channels (as many callers have).
    grpc_processes: int = 1
    #: Back-pressure (``ranker.admission``): requests in the GKC + model pipeline at once (0 = two per
    #: model worker; -1 = no limit), requests waiting for a slot beyond those, and the longest wait; a
    #: request beyond either bound is refused at once (RESOURCE_EXHAUSTED / 503 + Retry-After).
    max_in_flight: int = 0
    #: Run the model's knowledge-free part (features, attention, MLP up to the plug-in layer) while GKC
    #: answers, then the plug-in and the rest: latency ≈ max(GKC, that part) + the rest, not the sum.
    #: Only while no request is queued for admission (under saturation the extra hand-off costs).
    overlap_knowledge: bool = True
    #: Score through the TorchScript serving graph (``ranker.scripted``: the same operations, the same
    #: scores, run without the interpreter lock); false: eager PyTorch.
    torchscript: bool = True
    max_queue: int = 64
    queue_timeout_s: float = 1.0
    #: GKC's REST URL: each loaded model holds a lease (pin) there on its knowledge version, so GKC never
    #: retires it while the model serves. Unset: nothing is pinned (logged).
    gkc_api_url: str | None = None
    #: Token for the pins: GKC's own ``GKC_API_TOKEN`` (read under that name too, so one secret serves).
    gkc_api_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("RANKER_GKC_API_TOKEN", "GKC_API_TOKEN")
    )
    #: A pin ends this long after the ranker stops renewing it (it renews every third of it).
    pin_ttl_s: float = 60.0
    #: Bearer token for ``POST /v1/models/reload``. Unset: the call is open while ``host`` is loopback
    #: and refused otherwise (the image binds 0.0.0.0); a placeholder (``changeme``, < 8 characters)
    #: refuses to start outside dev mode, as GKC does.
    admin_token: SecretStr | None = None

    def reload_open(self) -> bool:
        """Whether ``POST /v1/models/reload`` needs no token: none is set and only loopback listens."""
        return self.admin_token is None and is_loopback(self.host)

    @field_validator("features_redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def features_data_dir(self) -> Path:
        return self.data_dir / "features"

    def workers(self) -> int:
        return self.model_workers if self.model_workers > 0 else max(1, os.cpu_count() or 1)

    def in_flight_limit(self) -> int:
        """Admission slots: ``max_in_flight``, 0 = two per worker (one scoring while one waits on GKC),
        -1 = unlimited (returned as 0)."""
        if self.max_in_flight < 0:
            return 0
        return self.max_in_flight or 2 * self.workers()

    def check(self) -> None:
        """Refuse settings that cannot work, with the variable's name in the message."""
        if self.admin_token is not None and is_placeholder(self.admin_token) and not self.dev_mode:
            raise InvalidArgument(
                "RANKER_ADMIN_TOKEN is a placeholder; set a real token (at least 8 characters) or unset it "
                "(then POST /v1/models/reload is open on loopback only)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("set both RANKER_TLS_CERT and RANKER_TLS_KEY, or neither")
        for name, path in (("RANKER_TLS_CERT", self.tls_cert), ("RANKER_TLS_KEY", self.tls_key)):
            if path is not None and not path.is_file():
                raise InvalidArgument(f"{name} {path} is not a readable file")
        if self.gkc_ca_file is not None and not self.gkc_ca_file.is_file():
            raise InvalidArgument(f"RANKER_GKC_CA_FILE {self.gkc_ca_file} is not a readable file")
        if self.max_candidates < 1:
            raise InvalidArgument("RANKER_MAX_CANDIDATES must be >= 1")
        if self.gkc_timeout_s <= 0 or self.request_deadline_s <= 0:
            raise InvalidArgument("RANKER_GKC_TIMEOUT_S and RANKER_REQUEST_DEADLINE_S must be > 0")
        if self.model_reserve_s < 0 or self.model_reserve_s >= self.request_deadline_s:
            raise InvalidArgument("RANKER_MODEL_RESERVE_S must be in [0, RANKER_REQUEST_DEADLINE_S)")
        if self.breaker_failures < 1 or self.breaker_reset_s <= 0:
            raise InvalidArgument("RANKER_BREAKER_FAILURES must be >= 1 and RANKER_BREAKER_RESET_S > 0")
        if self.grpc_processes < 1:
            raise InvalidArgument(f"RANKER_GRPC_PROCESSES must be >= 1, got {self.grpc_processes}")
        if self.torch_threads < 1 or self.model_workers < 0 or self.features_max_len < 1:
            raise InvalidArgument(
                "RANKER_TORCH_THREADS and RANKER_FEATURES_MAX_LEN must be >= 1, RANKER_MODEL_WORKERS >= 0"
            )
        if self.max_queue < 0 or self.queue_timeout_s < 0 or self.max_in_flight < -1:
            raise InvalidArgument(
                "RANKER_MAX_IN_FLIGHT must be >= -1, RANKER_MAX_QUEUE and RANKER_QUEUE_TIMEOUT_S >= 0"
            )
        if self.features_ttl_s < 1 or self.events_dedup_ttl_s < 1 or self.features_timeout_s <= 0:
            raise InvalidArgument(
                "RANKER_FEATURES_TTL_S and RANKER_EVENTS_DEDUP_TTL_S must be >= 1, "
                "RANKER_FEATURES_TIMEOUT_S > 0"
            )


def ranker_env(
    grpc_port: int,
    http_port: int,
    gkc_addr: str,
    model_dir: Path,
    *,
    host: str | None = "127.0.0.1",
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a ranker process (``python -m ranker``) on ``host`` (None: its default) and
    ports, reading knowledge from the GKC at ``gkc_addr`` and models from ``model_dir``; ``extra``
    (``RANKER_*=value``) is added last."""
    values = {"HOST": host, "GRPC_PORT": grpc_port, "HTTP_PORT": http_port, "GKC_ADDR": gkc_addr}
    return {**prefixed_env("RANKER", {**values, "MODEL_DIR": model_dir}, base), **extra}
