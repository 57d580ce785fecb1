"""K̂ assembly (ranker.knowledge) and model artifacts (contract.artifact): one path, mismatches refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contract import artifact as artifact_mod
from contract.artifact import Artifact, ArtifactError
from contract.downstream import DownstreamConfig
from contract.ids import Vocab, Vocabs
from contract.knowledge import GKC_BLOCKS, Dims, KnowledgeMismatch, KnowledgeSchema, KnowledgeSpec
from gkc import bundle as bundle_mod
from gkc.bundle_reader import BundleReader
from ranker.knowledge import assemble, knowledge_for_rows, manifest_schema
from ranker.model import DownstreamModel
from services.errors import NotFound


def _bundle(tmp_path: Path, d: int = 4, d_uc: int = 3) -> Path:
    rng = np.random.default_rng(0)
    b = bundle_mod.build(
        user_ids=[10, 11],
        user_vectors=rng.normal(size=(2, d)),
        item_ids=[100, 101, 102],
        item_vectors=rng.normal(size=(3, d)),
        uc_user_ids=[10, 10, 11],
        uc_category_ids=[7, 8, 7],
        uc_vectors=rng.normal(size=(3, d_uc)),
    )
    return bundle_mod.save(b, tmp_path / "bundle")


def test_assemble_layout_and_missing_rows_are_zero(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    raw = bundle_mod.load(path)
    reader = BundleReader.open(path)
    schema = manifest_schema(reader.manifest)
    assert [n for n, _ in schema.blocks] == list(GKC_BLOCKS)
    k = assemble(reader.batch_get("10", ["101", "999", "101"], ["8", "7", "9"]), schema)
    assert k.shape == (3, 4 + 4 + 4 + 3) and k.dtype == np.float32
    u, i101 = raw.user_vectors[0], raw.item_vectors[1]
    np.testing.assert_array_equal(k[0], np.concatenate([u, i101, u * i101, raw.uc_vectors[1]]))
    np.testing.assert_array_equal(k[1, :4], u)  # unknown item: ki and ku*ki zero
    assert not k[1, 4:12].any()
    np.testing.assert_array_equal(k[1, 12:], raw.uc_vectors[0])
    assert not k[2, 12:].any()  # (10, 9) was never seen
    cold = assemble(reader.batch_get("nobody", ["100"], ["7"]), schema)
    np.testing.assert_array_equal(cold[0, 4:8], raw.item_vectors[0])
    assert not cold[0, :4].any() and not cold[0, 8:].any()


def test_assemble_refuses_lookup_with_other_dims(tmp_path: Path) -> None:
    reader = BundleReader.open(_bundle(tmp_path))
    other = KnowledgeSchema.gkc(Dims(5, 5, 3), interaction=True)
    with pytest.raises(KnowledgeMismatch, match="dim"):
        assemble(reader.batch_get("10", ["100"], ["7"]), other)


def test_rows_grouped_by_user_and_chunked_match_one_call_per_row(tmp_path: Path) -> None:
    reader = BundleReader.open(_bundle(tmp_path))
    schema = manifest_schema(reader.manifest)
    users = np.array([11, 10, 11, 10, 10, 12])
    items = np.array([100, 101, 102, 102, 100, 100])
    cats = np.array([7, 8, 7, 7, 9, 7])
    whole = knowledge_for_rows(reader, 0, schema, users, items, cats, max_batch=2)
    for r in range(len(users)):
        one = assemble(reader.batch_get(str(users[r]), [str(items[r])], [str(cats[r])]), schema)
        np.testing.assert_array_equal(whole[r], one[0])


def test_pinned_version_must_be_what_the_reader_answers(tmp_path: Path) -> None:
    reader = BundleReader.open(_bundle(tmp_path), version=3)
    schema = manifest_schema(reader.manifest)
    with pytest.raises((NotFound, KnowledgeMismatch), match="version"):
        knowledge_for_rows(reader, 4, schema, [10], [100], [7])
    pinned = knowledge_for_rows(reader, 3, schema, [10], [100], [7])
    assert pinned.shape == (1, schema.dim) and pinned.any()


def _artifact(schema: KnowledgeSchema, version: int) -> Artifact:
    cfg = DownstreamConfig(n_users=4, n_items=5, n_categories=3, mlp=(8, 4)).with_plugin("gkc", schema.dim)
    model = DownstreamModel(cfg)
    vocab = Vocab.build([1, 2])
    return Artifact(
        config=cfg,
        task="click",
        vocabs=Vocabs(user=vocab, item=vocab, category=vocab, shop=None),
        state=model.state_dict(),
        knowledge={"gkc": KnowledgeSpec(schema=schema, version=version)},
    )


def test_artifact_round_trip_and_refusals(tmp_path: Path) -> None:
    schema = KnowledgeSchema.gkc(Dims(4, 4, 3), interaction=True)
    art = _artifact(schema, version=2)
    artifact_mod.save(art, tmp_path / "model")
    back = artifact_mod.load(tmp_path / "model")
    assert back.config == art.config and back.knowledge == art.knowledge and back.vocabs == art.vocabs
    for key, value in art.state.items():
        assert torch.equal(back.state[key], value)
    back.require_knowledge("gkc", schema, 2)
    wider = KnowledgeSchema.gkc(Dims(8, 8, 3), interaction=True)
    with pytest.raises(KnowledgeMismatch, match="schema mismatch"):
        back.require_knowledge("gkc", wider, 2)
    no_interaction = KnowledgeSchema.gkc(Dims(4, 4, 3), interaction=False)
    with pytest.raises(KnowledgeMismatch):
        back.require_knowledge("gkc", no_interaction)
    with pytest.raises(KnowledgeMismatch, match="pinned to version 2"):
        back.require_knowledge("gkc", schema, 5)
    with pytest.raises(KnowledgeMismatch, match="needs knowledge"):
        back.require_knowledge("gkc", None)
    with pytest.raises(KnowledgeMismatch, match="no plug-in"):
        back.require_knowledge("other", schema)


def test_load_refuses_non_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a model artifact"):
        artifact_mod.load(tmp_path)
    (tmp_path / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        artifact_mod.load(tmp_path)
