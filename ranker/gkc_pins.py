"""The ranker's pins on GKC: one lease per loaded model on the knowledge version it was trained with.

GKC never retires a pinned version (docs/gkc.md, "Pins"), so a model keeps reading its own knowledge
however many versions are published after it. After every model (re)load the ranker calls
:meth:`ModelPins.sync` with the loaded snapshots: a lease is taken (or moved) for each model that reads
GKC knowledge and dropped for models that went away; leases renew in the background (``ttl_s / 3``) and
end ``ttl_s`` after the ranker dies. Without ``RANKER_GKC_API_URL`` nothing is pinned (logged once).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Protocol

from gkc.client import GkcOpsClient
from gkc.leases import LeaseSet
from services.errors import KeepError

log = logging.getLogger(__name__)


class PinnedModel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def knowledge_version(self) -> int: ...

    @property
    def knowledge_publish_id(self) -> str: ...


def holder_name(port: int) -> str:
    """``ranker@<host>:<port>``: who holds the leases (shown by ``GET /v1/versions``)."""
    return f"ranker@{socket.gethostname()}:{port}"


class ModelPins:
    def __init__(
        self,
        api_url: str | None,
        token: str | None,
        *,
        holder: str,
        ttl_s: float = 60.0,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.leases: LeaseSet | None = None
        if api_url:
            ops = GkcOpsClient(api_url, token or "", timeout_s=5.0, ca_file=ca_file)
            self.leases = LeaseSet(ops, holder, ttl_s=ttl_s)
        else:
            log.warning("RANKER_GKC_API_URL is unset: the models' knowledge versions are not pinned in GKC")
        #: model name -> why its version is not pinned ("" = pinned).
        self.problems: dict[str, str] = {}
        self._held: set[str] = set()

    def sync(self, models: Iterable[PinnedModel]) -> dict[str, str]:
        """Hold a lease per model on its knowledge version; drop the others. Returns the problems."""
        if self.leases is None:
            return {}
        wanted = {
            m.name: (m.knowledge_version, m.knowledge_publish_id) for m in models if m.knowledge_version > 0
        }
        problems: dict[str, str] = {}
        for name, (version, publish_id) in wanted.items():
            try:  # naming the publish: a pin on another publish of this number is refused (409)
                self.leases.hold(name, version, publish_id or None)
                problems[name] = ""
            except KeepError as err:
                problems[name] = err.message
                if self.problems.get(name) != err.message:
                    log.error("model %s: could not pin GKC version %d: %s", name, version, err)
        for name in self._held - set(wanted):
            self.leases.release(name)
        self._held = {n for n, p in problems.items() if not p}
        self.problems = problems
        return problems

    def describe(self) -> dict[str, object]:
        return self.leases.describe() if self.leases is not None else {}

    def close(self) -> None:
        if self.leases is not None:
            self.leases.close()
