"""GKC's operations, transport-free: receive and publish a bundle upload, list, activate, delete, pin.

The REST routes (:mod:`gkc.rest`) only convert HTTP to these calls. Upload format for a publish: the
bundle directory as an uncompressed tar stream (files at the top level or under one folder), under a size
cap. It is written into a staging version as it arrives (:mod:`gkc.publish_stream`: the ids in memory,
the vectors batch by batch, each member checked against the manifest), or, to be stored at another
dtype, spooled to a temp dir, extracted with a whitelist of file names and fully verified
(:func:`gkc.bundle.load`) before anything is written. Either way a corrupt bundle is a 422 with the
reason, never becomes visible, and leaves existing versions untouched. Publishes run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from contract import quantize as quant
from gkc import bundle as gkc_bundle
from gkc.bundle_writer import convert
from gkc.integrity import Shadow
from gkc.publish import PublishResult, PublishStore, publish
from gkc.publish_stream import ALLOWED_FILES, BytesPipe, PipeClosed, StreamedPublish, StreamSettings
from gkc.serving_view import ServingView
from gkc.store import READY, STAGING, Pin
from services.errors import InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)
REQUIRED_FILES = {gkc_bundle.MANIFEST, *gkc_bundle.ARRAY_FILES}
EMPTY_UPLOAD = "empty upload: send the bundle directory as a tar stream"
#: Longest pin holder name.
MAX_HOLDER_CHARS = 200


class Kickable(Protocol):
    def kick(self) -> None: ...

    def sweep_soon(self) -> None: ...


@dataclass(frozen=True)
class PublishLimits:
    max_upload_bytes: int = 4 * 1024**3
    batch: int = 2000
    writers: int = 2
    max_ready: int = 5
    replica_timeout_s: float = 10.0
    max_pin_ttl_s: float = 3600.0


def extract_bundle_tar(tar_path: Path, dest: Path) -> Path:
    """Extract only the bundle's known regular files (no links, no paths outside ``dest``)."""
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isdir():
                    continue
                if not member.isfile() or name not in ALLOWED_FILES or name in seen:
                    raise gkc_bundle.BundleError(f"unexpected entry in the bundle upload: {member.name!r}")
                src = tar.extractfile(member)
                assert src is not None
                with src, (dest / name).open("wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                seen.add(name)
    except (tarfile.TarError, EOFError, UnicodeError) as err:
        raise gkc_bundle.BundleError(f"the upload is not a readable tar stream: {err}") from err
    missing = REQUIRED_FILES - seen
    if missing:
        raise gkc_bundle.BundleError(f"the upload lacks {sorted(missing)} (truncated?)")
    return dest


async def _hand_over(pipe: BytesPipe, chunk: bytes | Exception | None) -> bool:
    """Give ``chunk`` to the publishing thread, waiting (without blocking the loop) while it is
    behind; False once it has stopped."""
    while (taken := pipe.offer(chunk)) is False:
        await asyncio.sleep(0.002)
    return bool(taken)


def _settle(
    future: asyncio.Future[PublishResult], result: PublishResult | None, err: BaseException | None
) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(err)
    else:
        assert result is not None
        future.set_result(result)


class VersionOps:
    def __init__(
        self,
        store: PublishStore,
        view: ServingView,
        limits: PublishLimits,
        *,
        janitor: Kickable | None = None,
        shadow: Shadow | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.limits = limits
        self.janitor = janitor
        self.shadow = shadow or Shadow()
        self._publish_lock = threading.Lock()

    # --- publish --------------------------------------------------------------------------------
    async def publish_upload(
        self, body: AsyncIterator[bytes], declared: str | None, dtype: str | None = None
    ) -> dict[str, Any]:
        """Publish an upload under the size cap: streamed into the store as it arrives
        (:mod:`gkc.publish_stream`), or, to store it at another ``dtype`` (a float32 bundle converted
        first, which needs all of it), spooled to disk, verified and published (a thread)."""
        if dtype is not None:
            quant.check_dtype(dtype)
        cap = self.limits.max_upload_bytes
        if declared is not None:
            if not declared.isdigit():
                raise InvalidArgument(f"Content-Length {declared!r} is not a number")
            if int(declared) > cap:
                raise ResourceExhausted(f"upload of {declared} bytes exceeds {cap}")
        loop = asyncio.get_running_loop()
        if dtype is None:
            return (await self._publish_streamed(body, cap)).to_json()
        with tempfile.TemporaryDirectory(prefix="gkc-upload-") as tmp:
            tar_path = Path(tmp) / "bundle.tar"
            size = 0
            with tar_path.open("wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > cap:
                        raise ResourceExhausted(f"upload exceeds {cap} bytes")
                    out.write(chunk)
            if size == 0:
                raise InvalidArgument(EMPTY_UPLOAD)
            result = await loop.run_in_executor(None, self.publish_tar, tar_path, Path(tmp) / "bundle", dtype)
        return result.to_json()

    async def _publish_streamed(self, body: AsyncIterator[bytes], cap: int) -> PublishResult:
        """Feed the upload to :meth:`publish_stream` on a thread of its own (it may wait for another
        publish to finish; no pool thread is held meanwhile, and the receiving side only awaits)."""
        loop = asyncio.get_running_loop()
        pipe = BytesPipe()
        done: asyncio.Future[PublishResult] = loop.create_future()

        def work() -> None:
            try:
                result = self.publish_stream(pipe)
            except BaseException as err:  # handed to the request, which answers with it
                loop.call_soon_threadsafe(_settle, done, None, err)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        threading.Thread(target=work, name="gkc-publish-stream", daemon=True).start()
        size = 0
        try:
            async for chunk in body:
                size += len(chunk)
                if size > cap:
                    raise ResourceExhausted(f"upload exceeds {cap} bytes")
                if not await _hand_over(pipe, chunk):
                    break  # the publish stopped early (a bad bundle): its error is the answer
            await _hand_over(pipe, None)
        except BaseException as err:  # too large, or the client went away: the publish is aborted
            await _hand_over(pipe, PipeClosed(f"upload interrupted: {err}"))
            with contextlib.suppress(Exception):
                await done
            raise
        try:
            return await done
        except gkc_bundle.BundleError:
            if size == 0:
                raise InvalidArgument(EMPTY_UPLOAD) from None
            raise

    def publish_stream(self, pipe: BytesPipe) -> PublishResult:
        """The publishing side of a streamed upload (a thread): one publish at a time."""
        try:
            with self._publishing(), tempfile.TemporaryDirectory(prefix="gkc-stream-") as spool:
                settings = StreamSettings(
                    batch=self.limits.batch,
                    max_ready=self.limits.max_ready,
                    replica_timeout_s=self.limits.replica_timeout_s,
                    floor=self.shadow.floor,
                )
                upload = io.BufferedReader(pipe, 1 << 20)
                result = StreamedPublish(self.store, settings, Path(spool)).run(upload)
        finally:
            pipe.reader_gone.set()
        return self._published(result)

    def publish_tar(self, tar_path: Path, dest: Path, dtype: str | None = None) -> PublishResult:
        bundle = gkc_bundle.load(extract_bundle_tar(tar_path, dest), mmap=True)
        if dtype is not None and dtype != bundle.manifest.dtype:
            converted = convert(bundle, dtype, dest.with_name(f"{dest.name}-{dtype}"))
            bundle = gkc_bundle.load(converted, mmap=True)
        with self._publishing():
            result = publish(
                self.store,
                bundle,
                batch=self.limits.batch,
                writers=self.limits.writers,
                max_ready=self.limits.max_ready,
                progress=False,
                floor=self.shadow.floor,
                replica_timeout_s=self.limits.replica_timeout_s,
            )
        return self._published(result)

    @contextlib.contextmanager
    def _publishing(self) -> Iterator[None]:
        """One publish at a time; after a failed one the janitor sweeps what it could not remove."""
        with self._publish_lock:
            try:
                yield
            except BaseException:
                if self.janitor is not None:
                    self.janitor.sweep_soon()
                raise

    def _published(self, result: PublishResult) -> PublishResult:
        self.shadow.floor = max(self.shadow.floor, result.version)
        # known as ready from now on: if Redis later loses it, it is listed "lost", never silently gone
        self.shadow.observe(self.store.records()[0], None)
        self.shadow.save()
        self._changed()
        return result

    # --- registry -------------------------------------------------------------------------------
    def listing(self, include_all: bool) -> dict[str, Any]:
        records, active = self.store.records()
        shown = [r.to_json(active) for r in records if include_all or r.state == READY]
        return {"versions": shown, "active": active}

    def one(self, version: int) -> dict[str, Any]:
        records, active = self.store.records()
        for r in records:
            if r.version == version:
                return r.to_json(active)
        raise NotFound(f"version {version} does not exist")

    def activate(self, version: int) -> dict[str, Any]:
        self.store.activate(version)
        log.info("activated version %d", version)
        self._changed()
        return self.one(version)

    def delete(self, version: int) -> dict[str, Any]:
        """Retire a version (its keys go once no process can still answer from it); a staging one
        stops its publish at the next batch."""
        records, _ = self.store.records()
        for r in records:
            if r.version == version:
                self.shadow.tombstone(r.identity.publish_id)
                self.shadow.save()
        former = self.store.retire(version, "deleted through the API")
        log.info("retired version %d (was %s)", version, former)
        self._changed()
        note = (
            "its publish stops at the next batch"
            if former == STAGING
            else "keys are deleted once no reader uses it"
        )
        return {"version": version, "state": "retiring", "was": former, "note": note}

    # --- pins -----------------------------------------------------------------------------------
    def pin(self, version: int, holder: str, ttl_s: float, publish_id: str = "") -> Pin:
        if not holder or len(holder) > MAX_HOLDER_CHARS or "|" in holder:
            raise InvalidArgument(f"holder must be 1-{MAX_HOLDER_CHARS} characters without '|'")
        if not 1.0 <= ttl_s <= self.limits.max_pin_ttl_s:
            raise InvalidArgument(f"ttl_s must be within [1, {self.limits.max_pin_ttl_s:.0f}]")
        return self.store.pin(version, holder, ttl_s, publish_id)

    def unpin(self, version: int, holder: str) -> dict[str, Any]:
        if not self.store.unpin(version, holder):
            raise NotFound(f"version {version} has no pin held by {holder!r}")
        return {"version": version, "holder": holder, "unpinned": True}

    def _changed(self) -> None:
        if self.janitor is not None:
            self.janitor.kick()
        try:
            self.view.refresh()
        except Exception as err:  # the view refreshes itself within its TTL anyway
            log.debug("view refresh after a change failed: %s", err)
