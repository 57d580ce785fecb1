"""Clients: :class:`GkcClient` (gRPC reads → :class:`gkc.lookup.Lookup`) and :class:`GkcOpsClient` (REST).

numpy + grpc + httpx only. Status codes come back as the matching :mod:`services.errors` class, so a
caller handles ``NotFound`` / ``Unavailable`` / ``InvalidArgument`` without importing grpc.
"""

from __future__ import annotations

import os
import ssl
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx

from contract.ids import canonical_ids
from gkc import bundle as gkc_bundle
from gkc.lookup import Lookup
from gkc.wire import lookup_from_proto
from protos import gkc_pb2, gkc_pb2_grpc
from services.errors import (
    Conflict,
    DeadlineExceeded,
    InsufficientStorage,
    InvalidArgument,
    KeepError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.settings import MIN_TOKEN_LENGTH

_BY_CODE: dict[grpc.StatusCode, type[KeepError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}
_BY_HTTP: dict[int, type[KeepError]] = {
    401: Unauthenticated,
    404: NotFound,
    409: Conflict,
    413: ResourceExhausted,
    422: InvalidArgument,
    503: Unavailable,
    507: InsufficientStorage,
}


def from_rpc_error(err: grpc.RpcError) -> KeepError:
    code = err.code()
    cls = _BY_CODE.get(code, KeepError)
    details = str(err.details())
    if "HTTP/2" in details or "http1" in details.lower():
        details += " (an HTTP/1 server answered: is this GKC's REST port? --gkc takes the gRPC address)"
    return cls(f"GKC {code.name}: {details}")


def channel_credentials(
    ca_file: str | os.PathLike[str] | None = None, tls: bool = False
) -> grpc.ChannelCredentials | None:
    """TLS credentials for a GKC channel (sync or aio): trust ``ca_file`` (PEM), or the system roots
    when only ``tls`` is set; ``None`` = plaintext."""
    if ca_file is None and not tls:
        return None
    roots = Path(ca_file).read_bytes() if ca_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def open_channel(
    kind: Any,
    addr: str,
    options: list[tuple[str, Any]],
    *,
    ca_file: str | os.PathLike[str] | None = None,
    tls: bool = False,
) -> Any:
    """A channel to GKC from ``kind`` = ``grpc`` (blocking) or ``grpc.aio``: TLS as
    :func:`channel_credentials` says, plaintext otherwise."""
    creds = channel_credentials(ca_file, tls)
    if creds is not None:
        return kind.secure_channel(addr, creds, options=options)
    return kind.insecure_channel(addr, options=options)


class GkcClient:
    """Blocking gRPC client. Thread-safe; one channel per instance.

    TLS: ``ca_file`` (PEM) = trust that CA (e.g. a self-signed GKC certificate); ``tls=True`` without
    ``ca_file`` = trust the system roots. The server is then verified against the host in ``addr``.
    """

    def __init__(
        self,
        addr: str,
        timeout_s: float = 1.0,
        *,
        float16: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        tls: bool = False,
    ) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.float16 = float16
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        self.channel = open_channel(grpc, addr, options, ca_file=ca_file, tls=tls)
        self._call = gkc_pb2_grpc.GkcStub(self.channel).BatchGet

    def batch_get_raw(
        self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str], version: int = 0
    ) -> gkc_pb2.BatchGetResponse:
        """The response message as received (benchmarks, byte-level tests)."""
        request = gkc_pb2.BatchGetRequest(
            user_id=user_id,
            item_ids=item_ids,
            category_ids=category_ids,
            version=version,
            format=gkc_pb2.WIRE_FORMAT_FLOAT16 if self.float16 else gkc_pb2.WIRE_FORMAT_FLOAT32,
        )
        try:
            return self._call(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def batch_get(
        self,
        user_id: str | int,
        item_ids: Sequence[str | int],
        category_ids: Sequence[str | int],
        version: int = 0,
    ) -> Lookup:
        """K̂_u, K̂_i, K̂_uc for one user's candidates. Repeated items/categories come back once
        (``Lookup.item_index`` / ``uc_index`` map candidates to rows); the server does the dedupe.

        Ids are int64 or strings (the data contract): ints travel as their canonical strings."""
        return lookup_from_proto(
            self.batch_get_raw(_id_text(user_id), _id_texts(item_ids), _id_texts(category_ids), version)
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GkcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id_text(value: str | int) -> str:
    if isinstance(value, str):
        return value
    return str(canonical_ids([value])[0])


def _id_texts(values: Sequence[str | int]) -> list[str]:
    if all(isinstance(v, str) for v in values):
        return list(values)  # type: ignore[arg-type]
    return [str(v) for v in canonical_ids(list(values)).tolist()]


def tar_bundle(bundle_dir: str | os.PathLike[str], out: Path) -> Path:
    """The bundle directory as an uncompressed tar (the ``POST /v1/versions`` body)."""
    root = Path(bundle_dir)
    if not (root / "manifest.json").is_file():
        raise InvalidArgument(f"{root} is not a bundle directory (no manifest.json)")
    with tarfile.open(out, "w") as tar:  # in the order GKC streams into its store without spooling
        for name in gkc_bundle.stream_order([f.name for f in root.iterdir() if f.is_file()]):
            tar.add(root / name, arcname=name)
    return out


class GkcOpsClient:
    """REST ops: publish / list / get / activate / delete. ``token`` defaults to ``GKC_API_TOKEN``.

    ``ca_file`` (PEM): trust that CA for an ``https://`` GKC (default: the system roots).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 600.0,
        *,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        token = token if token is not None else os.environ.get("GKC_API_TOKEN")
        self.token = token or ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, verify=verify)

    def _check(self, response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        try:
            reason = response.json().get("error", response.text)
        except ValueError:
            reason = response.text
        cls = _BY_HTTP.get(response.status_code, KeepError)
        raise cls(f"GKC HTTP {response.status_code}: {reason}")

    def check_token(self) -> None:
        """A cheap authenticated request, so that a wrong or missing token is told before an upload."""
        if not self.token:
            raise Unauthenticated(
                f"no GKC token: pass --token or set GKC_API_TOKEN (the GKC at {self.base_url} was started "
                f"with it; at least {MIN_TOKEN_LENGTH} characters, not a placeholder)"
            )
        try:
            response = self.http.get("/v1/auth")
        except httpx.TransportError as err:
            raise Unavailable(f"GKC at {self.base_url} unreachable: {err}") from err
        if response.status_code == 401:
            raise Unauthenticated(
                f"GKC at {self.base_url} refused the token: it must equal the server's GKC_API_TOKEN "
                f"(at least {MIN_TOKEN_LENGTH} characters, not a placeholder such as 'changeme')"
            )
        if response.status_code != 404:  # 404: a GKC without /v1/auth; the upload tells then
            self._check(response)

    def publish(
        self, bundle_dir: str | os.PathLike[str], *, progress: bool = True, dtype: str | None = None
    ) -> dict[str, Any]:
        """Check the token, upload the bundle (streamed, with a progress bar) and return
        ``{"version": N, "identity": {...}, ...}``. ``dtype``: store a float32 bundle as float16 / int8
        (GKC converts it; the version's checksum is that of the converted bundle)."""
        from tqdm import tqdm

        self.check_token()
        with tempfile.TemporaryDirectory(prefix="gkc-publish-") as tmp:
            tar_path = tar_bundle(bundle_dir, Path(tmp) / "bundle.tar")
            size = tar_path.stat().st_size
            bar = tqdm(total=size, unit="B", unit_scale=True, desc="upload", disable=not progress)

            def chunks() -> Iterator[bytes]:
                with tar_path.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        bar.update(len(chunk))
                        yield chunk
                bar.set_description("publishing (server side)")

            try:
                # 503: the store failed mid-way and GKC removed the version; the upload (a stream GKC
                # cannot read twice) is sent once more. Nothing else is retried: after a transport
                # error the version may exist.
                for attempt in (1, 2):
                    bar.reset()
                    response = self.http.post(
                        "/v1/versions" if dtype is None else f"/v1/versions?dtype={dtype}",
                        content=chunks(),
                        headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
                    )
                    if response.status_code != 503 or attempt == 2:
                        break
            except httpx.TransportError as err:
                raise Unavailable(f"GKC at {self.base_url} unreachable: {err}") from err
            finally:
                bar.close()
        return dict(self._check(response))

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return self._check(self.http.request(method, path, json=body))
        except httpx.TransportError as err:
            raise Unavailable(f"GKC at {self.base_url} unreachable: {err}") from err

    def versions(self, include_all: bool = False) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/versions?all={str(include_all).lower()}")["versions"])

    def version(self, version: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/versions/{version}"))

    def activate(self, version: int) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/versions/{version}/activate"))

    def delete(self, version: int) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/versions/{version}"))

    def pin(self, version: int, holder: str, ttl_s: float = 60.0, publish_id: str = "") -> dict[str, Any]:
        """Take or renew ``holder``'s lease on ``version`` (GKC never retires a pinned version); with
        ``publish_id``, 409 unless the version is that publish (it is other knowledge)."""
        body = {"holder": holder, "ttl_s": ttl_s, "publish_id": publish_id}
        return dict(self._request("PUT", f"/v1/versions/{version}/pins", body))

    def unpin(self, version: int, holder: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/versions/{version}/pins/{quote(holder, safe='')}"))

    def close(self) -> None:
        self.http.close()
