"""A bundle's manifest (:class:`Manifest`): what GKC lists about a version and what a consumer checks
before using it, parsed strictly (anything malformed is a :class:`BundleError` naming the field).
:mod:`gkc.bundle` re-exports everything here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from contract import quantize as quant
from contract.knowledge import Dims
from gkc.store import VersionIdentity
from services.errors import InvalidArgument

FORMAT_VERSION = 1
#: Largest ``manifest.json`` accepted (bytes): every GKC worker re-reads the registry's manifests.
MAX_MANIFEST_BYTES = 256 * 1024


class BundleError(InvalidArgument):
    """A bundle that is malformed, truncated, inconsistent or fails its checksums."""


@dataclass(frozen=True)
class Counts:
    users: int
    items: int
    user_categories: int


@dataclass(frozen=True)
class Manifest:
    """Everything GKC lists about a version, and everything a consumer must check before using it."""

    dims: Dims
    counts: Counts
    dtype: str = "float32"
    interaction: bool = True
    strategy: str = "serving"
    #: Where the knowledge came from: data files, day window, extractor checkpoint.
    source: dict[str, Any] = field(default_factory=dict)
    #: Extractor quality on a held-out day, e.g. ``{"click": {"gauc": 0.61}}``.
    metrics: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    format_version: int = FORMAT_VERSION
    #: A *delta* bundle names the identity of the version it falls through to for every entry it does
    #: not hold (:mod:`gkc.delta`); ``None`` for a full bundle.
    base: VersionIdentity | None = None

    def schema(self) -> dict[str, Any]:
        """What a downstream model depends on: block dims and layout, not counts or checksums."""
        return {
            "format_version": self.format_version,
            "dims": asdict(self.dims),
            "interaction": self.interaction,
            "dtype": self.dtype,
        }

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.base is None:  # full bundles' manifests stay what they were before deltas existed
            del out["base"]
        return out

    def content_checksum(self) -> str:
        """SHA-256 of what the bundle holds (format, dims, counts, stored dtype, per-array checksums):
        the same bytes give the same checksum, wherever they were exported or published."""
        body = {
            "format_version": self.format_version,
            "dims": asdict(self.dims),
            "counts": asdict(self.counts),
            "checksums": dict(sorted(self.checksums.items())),
        }
        if self.dtype != quant.FLOAT32:  # float32 identities stay what they were before dtypes existed
            body["dtype"] = self.dtype
        if self.base is not None:  # a delta's content is its rows *and* the base they complete
            body["base"] = self.base.to_json()
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse a manifest; anything malformed (wrong types, missing keys, huge numbers) is a
        :class:`BundleError` naming the field, never another exception."""
        if not isinstance(data, dict):
            raise BundleError(f"manifest must be a JSON object, not {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"manifest format_version {data.get('format_version')!r} is not {FORMAT_VERSION}"
            )
        try:
            return cls(
                dims=Dims(**_ints(data.get("dims"), "dims", ("user", "item", "uc"), low=1)),
                counts=Counts(
                    **_ints(data.get("counts"), "counts", ("users", "items", "user_categories"), low=0)
                ),
                dtype=_dtype(data.get("dtype", quant.FLOAT32)),
                interaction=_typed(data.get("interaction", True), bool, "interaction"),
                strategy=_typed(data.get("strategy", "serving"), str, "strategy"),
                source=_typed(data.get("source", {}), dict, "source"),
                metrics=_typed(data.get("metrics", {}), dict, "metrics"),
                checksums=_str_map(data.get("checksums", {}), "checksums"),
                created=float(_typed(data.get("created", 0.0), (int, float), "created")),
                base=_base(data.get("base")),
            )
        except (OverflowError, ValueError) as err:
            raise BundleError(f"manifest is malformed: {err}") from err

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """:meth:`from_json` of a manifest file's bytes (size, UTF-8, JSON and nesting checked)."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"manifest is {len(raw)} bytes; at most {MAX_MANIFEST_BYTES} are accepted")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise BundleError(f"manifest is not UTF-8: {err}") from err
        except RecursionError as err:
            raise BundleError("manifest is nested too deeply") from err
        except json.JSONDecodeError as err:
            raise BundleError(f"manifest is not JSON: {err}") from err
        return cls.from_json(data)


def _typed(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    # bool is an int: a number where a bool is expected (or the reverse) is refused too
    if not isinstance(value, kind) or (kind in (int, (int, float)) and isinstance(value, bool)):
        raise BundleError(f"manifest field {name!r} has type {type(value).__name__}")
    return value


def _base(value: Any) -> VersionIdentity | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != {"number", "publish_id", "checksum"}
        or isinstance(value["number"], bool)
        or not isinstance(value["number"], int)
        or not 1 <= value["number"] < 2**53
        or not all(isinstance(value[k], str) and value[k] for k in ("publish_id", "checksum"))
    ):
        raise BundleError(
            "manifest field 'base' must be {number (>= 1), publish_id, checksum} (the base's identity)"
        )
    return VersionIdentity.from_json(value)


def _dtype(value: Any) -> str:
    if value not in quant.DTYPES:
        raise BundleError(f"manifest dtype {value!r} is not one of {', '.join(quant.DTYPES)}")
    return str(value)


def _ints(value: Any, name: str, keys: tuple[str, ...], *, low: int) -> dict[str, int]:
    if not isinstance(value, dict) or set(value) != set(keys):
        raise BundleError(f"manifest field {name!r} must be an object with exactly {list(keys)}")
    out = {}
    for key in keys:
        v = value[key]
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v < 2**53:
            raise BundleError(f"manifest {name}.{key} = {v!r} is not an integer >= {low}")
        out[key] = v
    return out


def _str_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BundleError(f"manifest field {name!r} must map names to strings")
    return dict(value)
