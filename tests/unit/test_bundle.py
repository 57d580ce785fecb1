"""The knowledge bundle format (gkc.bundle): round trip and refusal of corrupt bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gkc import bundle as B
from services.errors import InvalidArgument


def _build(seed: int = 0, users: int = 5, items: int = 7) -> B.Bundle:
    rng = np.random.default_rng(seed)
    return B.build(
        user_ids=np.arange(users),
        user_vectors=rng.normal(size=(users, 4)),
        item_ids=[f"i{i}" for i in range(items)],
        item_vectors=rng.normal(size=(items, 4)),
        uc_user_ids=[0, 0, 1],
        uc_category_ids=["a", "b", "a"],
        uc_vectors=rng.normal(size=(3, 3)),
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    built = _build()
    loaded = B.load(B.save(built, tmp_path / "b"))
    assert loaded.user_ids.tolist() == ["0", "1", "2", "3", "4"]
    for name, arr in built.arrays().items():
        assert np.array_equal(loaded.arrays()[name], arr), name
    assert loaded.manifest.counts == B.Counts(users=5, items=7, user_categories=3)
    assert set(loaded.manifest.checksums) == set(B.ARRAY_FILES)


def test_truncated_array_is_refused(tmp_path: Path) -> None:
    path = B.save(_build(), tmp_path / "b")
    data = (path / "item_vectors.npy").read_bytes()
    (path / "item_vectors.npy").write_bytes(data[:-16])
    with pytest.raises(B.BundleError, match="checksum"):
        B.load(path)
    with pytest.raises(B.BundleError):
        B.load(path, verify_checksums=False)


def test_wrong_dims_in_manifest_is_refused(tmp_path: Path) -> None:
    path = B.save(_build(), tmp_path / "b")
    manifest = json.loads((path / B.MANIFEST).read_text())
    manifest["dims"]["item"] = 5
    (path / B.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(B.BundleError, match=r"item_vectors\.npy: header says shape"):
        B.load(path)


def test_wrong_dtype_is_refused(tmp_path: Path) -> None:
    path = B.save(_build(), tmp_path / "b")
    np.save(path / "user_vectors.npy", np.zeros((5, 4), dtype=np.float64))
    with pytest.raises(B.BundleError, match="dtype"):
        B.load(path, verify_checksums=False)


def test_duplicates_and_floats_are_refused() -> None:
    with pytest.raises(B.BundleError, match="not unique"):
        B.build(
            user_ids=[1, 1],
            user_vectors=np.zeros((2, 2)),
            item_ids=[1],
            item_vectors=np.zeros((1, 2)),
            uc_user_ids=[],
            uc_category_ids=[],
            uc_vectors=np.zeros((0, 2)),
        )
    with pytest.raises(InvalidArgument, match="floats"):
        B.build(
            user_ids=[1.5],
            user_vectors=np.zeros((1, 2)),
            item_ids=[1],
            item_vectors=np.zeros((1, 2)),
            uc_user_ids=[],
            uc_category_ids=[],
            uc_vectors=np.zeros((0, 2)),
        )


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    B.save(_build(), tmp_path / "b")
    with pytest.raises(B.BundleError, match="exists"):
        B.save(_build(1), tmp_path / "b")
    assert B.load(tmp_path / "b").manifest.counts.users == 5
