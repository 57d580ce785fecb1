"""Consumer pins through the REST API: leases held and renewed by :mod:`gkc.leases` and the ranker's
:class:`ranker.gkc_pins.ModelPins`, shown by ``GET /v1/versions``, protecting versions from retirement,
and ending when the holder stops renewing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gkc.client import GkcOpsClient
from gkc.leases import Lease, LeaseSet, wait_pinned
from ranker.gkc_pins import ModelPins
from services.errors import Conflict, NotFound


@dataclass(frozen=True)
class Model:
    name: str
    knowledge_version: int
    knowledge_publish_id: str = ""


def test_leases_protect_versions_and_end_with_their_holder(
    start_gkc: Callable[..., object], make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    svc = start_gkc(None, GKC_MAX_READY_VERSIONS="2")
    ops = GkcOpsClient(svc.http_url, svc.token)  # type: ignore[attr-defined]
    bundle = make_bundle(tmp_path / "b", users=5, items=10)
    first, second = (int(ops.publish(bundle, progress=False)["version"]) for _ in range(2))
    lease = Lease(ops, second, "keep-train@test", ttl_s=2.0).start()
    assert wait_pinned(ops, second, "keep-train@test")
    pin = ops.version(second)["pins"][0]
    assert pin["publish_id"] == ops.version(second)["identity"]["publish_id"]
    with pytest.raises(Conflict, match="keep-train@test"):
        ops.publish(bundle, progress=False)  # v1 active, v2 pinned: nothing can be retired
    with pytest.raises(Conflict, match="pinned"):
        ops.delete(second)
    time.sleep(3.0)  # longer than ttl_s: the background renewals keep it
    assert [p["holder"] for p in ops.version(second)["pins"]] == ["keep-train@test"]
    with pytest.raises(Conflict, match="not the knowledge pinned"):
        Lease(ops, second, "other", publish_id="0" * 16).start()  # another publish of this number
    with pytest.raises(NotFound):
        Lease(ops, 999, "other").start()
    lease.close()
    assert ops.version(second)["pins"] == []
    third = int(ops.publish(bundle, progress=False)["version"])
    assert [v["version"] for v in ops.versions()] == [first, third]  # v2 retired once unpinned

    pins = ModelPins(svc.http_url, svc.token, holder="ranker@test", ttl_s=1.5)  # type: ignore[attr-defined]
    assert pins.sync([Model("ctr", first), Model("cvr", third), Model("base", 0)]) == {"ctr": "", "cvr": ""}
    holders = {v["version"]: [p["holder"] for p in v["pins"]] for v in ops.versions()}
    assert holders == {first: ["ranker@test:ctr"], third: ["ranker@test:cvr"]}
    assert pins.sync([Model("ctr", first)]) == {"ctr": ""}  # cvr unloaded: its lease goes
    assert ops.version(third)["pins"] == []
    assert pins.leases is not None
    pins.leases._leases["ctr"]._stop.set()  # the holder "dies": no more renewals
    deadline = time.monotonic() + 20  # the lease ends after ttl_s; the janitor drops it
    while ops.version(first)["pins"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ops.version(first)["pins"] == []
    pins.close()
    # a model trained on another publish of that number is not pinned (and serves version_mismatch)
    other = ModelPins(svc.http_url, svc.token, holder="ranker@other", ttl_s=1.5)  # type: ignore[attr-defined]
    assert "not the knowledge pinned" in other.sync([Model("bad", first, "0" * 16)])["bad"]
    assert ops.version(first)["pins"] == []
    other.close()


def test_a_lease_set_moves_a_key_to_a_new_version(
    start_gkc: Callable[..., object], make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    svc = start_gkc(None)
    ops = GkcOpsClient(svc.http_url, svc.token)  # type: ignore[attr-defined]
    bundle = make_bundle(tmp_path / "b", users=5, items=10)
    a, b = (int(ops.publish(bundle, progress=False)["version"]) for _ in range(2))
    leases = LeaseSet(ops, "ranker@x", ttl_s=30)
    leases.hold("ctr", a)
    leases.hold("ctr", b)  # a new artifact on another version: the lease moves
    assert ops.version(a)["pins"] == [] and [p["holder"] for p in ops.version(b)["pins"]] == ["ranker@x:ctr"]
    leases.close()
    assert ops.version(b)["pins"] == []
