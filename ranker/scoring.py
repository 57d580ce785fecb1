"""One model's serving adapter: request ids → a :class:`ranker.model.Batch` → probabilities.

Ids are encoded through each vocabulary's :class:`contract.ids.IdEncoder` (a dict keyed by the canonical
string id, built once per model load): the rows of the trainer's ``Vocab.lookup``, PAD 0, OOV 1.

The user's history is encoded once per request with leading dimension 1 and broadcast over the
candidates by the model (``DownstreamModel.score_user``'s layout): the same last ``max_len`` clicks as
``trainer.data.sequences.HistoryIndex.gather``, without its left padding (masked slots contribute exact
zeros), so serving and ``keep evaluate`` agree to float rounding (tested to 1e-6).

Degraded mode runs the base model: ``over(base_features)`` with no plug-in addend, which is what zeroing
the plug-in's output means (``h'_m = h_m + 0``); it is *not* the plug-in fed with zero knowledge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contract.artifact import Artifact, ArtifactError
from contract.ids import OOV, IdEncoder
from contract.knowledge import GKC_KIND, KnowledgeSpec
from gkc.lookup import Lookup
from ranker import scripted
from ranker.history import EMPTY_HISTORY, History
from ranker.knowledge import assemble
from ranker.model import Batch, DownstreamModel, build_model

#: Known items scored by the load-time probe batch.
PROBE_ITEMS = 8


@dataclass
class Encoded:
    """A request encoded for one model (no knowledge yet)."""

    batch: Batch
    n: int
    #: Candidates whose item id the model never saw (scored from category and history alone).
    unknown_items: int = 0
    #: Clicks in the user's history (0: a user the features do not know, scored as a cold user).
    history_len: int = 0


class Scorer:
    """A loaded model plus its id maps, history length and (at most one) GKC knowledge plug-in."""

    def __init__(self, artifact: Artifact, *, torchscript: bool = False) -> None:
        self.artifact = artifact
        self.model: DownstreamModel = build_model(artifact)
        #: The TorchScript serving graph (:mod:`ranker.scripted`), used for two candidates or more.
        self.graph = scripted.script(self.model) if torchscript else None
        self.max_len = artifact.max_len
        vocabs = artifact.vocabs
        self.items, self.categories = vocabs.item.encoder(), vocabs.category.encoder()
        self.shops: IdEncoder | None = vocabs.shop.encoder() if vocabs.shop is not None else None
        self.users = vocabs.user.encoder() if self.model.cfg.use_user_id else None
        self.knowledge: tuple[str, KnowledgeSpec] | None = None
        for name, spec in artifact.knowledge.items():
            if spec.schema.kind != GKC_KIND:
                raise ArtifactError(f"knowledge {name!r} is {spec.schema.kind!r}; the ranker serves GKC only")
            if self.knowledge is not None:
                raise ArtifactError("the ranker serves models with at most one GKC knowledge plug-in")
            self.knowledge = (name, spec)

    @property
    def knowledge_version(self) -> int:
        return self.knowledge[1].version if self.knowledge else 0

    def encode(
        self,
        user_id: str,
        history: History,
        item_ids: Sequence[str],
        category_ids: Sequence[str],
        shop_ids: Sequence[str],
    ) -> Encoded:
        """``history``: the request's window from the sequence store (the shared rule, oldest first);
        a model with a shorter ``max_len`` keeps its newest clicks, the same window cut shorter."""
        n = len(item_ids)
        hist_items, hist_cats = history.items[-self.max_len :], history.categories[-self.max_len :]
        # Only the real clicks (at least one padding slot for an empty history): masked slots add exact
        # zeros in the model, so trimming the left padding keeps the result and saves the work.
        k = len(hist_items)
        hist = np.zeros((2, max(k, 1)), dtype=np.int64)
        if k:
            hist[0] = self.items.encode(hist_items)
            hist[1] = self.categories.encode(hist_cats)
        if self.shops is not None and shop_ids:
            shop = self.shops.encode(shop_ids, empty_is_pad=True)
        else:
            shop = np.zeros(n, dtype=np.int64)
        user = self.users.encode([user_id]) if self.users is not None else np.zeros(1, dtype=np.int64)
        items = self.items.encode(item_ids)
        batch = Batch(
            user=torch.from_numpy(user),
            item=torch.from_numpy(items),
            category=torch.from_numpy(self.categories.encode(category_ids)),
            shop=torch.from_numpy(shop),
            hist_item=torch.from_numpy(hist[0:1]),
            hist_category=torch.from_numpy(hist[1:2]),
        )
        return Encoded(batch=batch, n=n, unknown_items=int((items == OOV).sum()), history_len=k)

    def knowledge_matrix(self, lookup: Lookup) -> np.ndarray:
        """K̂ for the candidates, assembled by the one code path the trainer uses."""
        assert self.knowledge is not None
        return assemble(lookup, self.knowledge[1].schema)

    def prepare(self, encoded: Encoded) -> torch.Tensor:
        """``h_m``: the part of the forward that needs no knowledge (serving runs it while GKC answers)."""
        if self.graph is not None and encoded.n > 1:
            b = encoded.batch
            with scripted.run():
                return self.graph.before(b.user, b.item, b.category, b.shop, b.hist_item, b.hist_category)
        with torch.inference_mode():
            return self.model.before_plugins(encoded.batch)

    def finish(self, h_m: torch.Tensor, knowledge: np.ndarray | None) -> torch.Tensor:
        """Logits [n] from :meth:`prepare`'s ``h_m``; ``knowledge=None`` on a plugged model runs the
        base model (the plug-in's output zeroed)."""
        if self.graph is not None and len(h_m) > 1:
            with scripted.run():
                return self.graph.after(h_m, None if knowledge is None else torch.from_numpy(knowledge))
        with torch.inference_mode():
            if self.knowledge is not None and knowledge is not None:
                return self.model.after_plugins(h_m, {self.knowledge[0]: torch.from_numpy(knowledge)})
            return self.model.after_plugins(h_m, None if self.knowledge is not None else {})

    def logits(self, encoded: Encoded, knowledge: np.ndarray | None) -> torch.Tensor:
        """Logits [n]; ``knowledge=None`` on a plugged model runs the base model."""
        return self.finish(self.prepare(encoded), knowledge)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(logits).numpy().astype(np.float32, copy=False)

    def score(self, encoded: Encoded, knowledge: np.ndarray | None) -> np.ndarray:
        """Probabilities [n] float32; ``knowledge=None`` on a plugged model runs the base model."""
        return self.probabilities(self.logits(encoded, knowledge))

    def warm_up(self) -> None:
        """Score a probe batch (known ids; the base model, and with zero and with random knowledge) so
        the first request does not pay for lazy initialisation, and refuse (:class:`ArtifactError`) a
        model whose scores are not finite: NaN or infinite weights, a broken normaliser. The registry
        then keeps the previous model serving."""
        keys = self.items.known(PROBE_ITEMS) or ["?"]
        cats = self.categories.known(1) or ["?"]
        user = (self.users.known(1) if self.users is not None else None) or [""]
        enc = self.encode(user[0], EMPTY_HISTORY, keys, cats * len(keys), [])
        probes: list[tuple[str, np.ndarray | None]] = [("base model", None)]
        if self.knowledge is not None:
            dim = self.knowledge[1].schema.dim
            rng = np.random.default_rng(0)
            probes.append(("zero knowledge", np.zeros((len(keys), dim), dtype=np.float32)))
            probes.append(("random knowledge", rng.normal(size=(len(keys), dim)).astype(np.float32)))
        for what, knowledge in probes:
            logits = self.logits(enc, knowledge)
            if not bool(torch.isfinite(logits).all()):
                bad = int((~torch.isfinite(logits)).sum())
                raise ArtifactError(
                    f"{bad} of {len(keys)} scores on a probe batch ({what}) are not finite: "
                    "NaN or infinite weights; refusing to serve this model"
                )
