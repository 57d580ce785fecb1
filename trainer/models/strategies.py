"""One extractor module per strategy: ``full`` is the DIN (:mod:`trainer.models.extractor`); the
decomposition, degeneration and ``serving`` forms are its two-tower variants (:mod:`trainer.models.towers`).

Kept apart from both so that the base module does not import the variants built on it."""

from __future__ import annotations

from contract.extractor import ExtractorConfig
from trainer.models.extractor import DINExtractor, Extractor
from trainer.models.towers import DecompositionExtractor, DegenerationExtractor, ServingExtractor

VARIANTS: dict[str, type[Extractor]] = {
    "full": DINExtractor,
    "decomposition": DecompositionExtractor,
    "degeneration": DegenerationExtractor,
    "serving": ServingExtractor,
}


def build_extractor(cfg: ExtractorConfig, *, materialize: bool = True) -> Extractor:
    """The module for ``cfg.strategy`` (``materialize=False``: id tables on ``meta``, to be sharded)."""
    return VARIANTS[cfg.strategy](cfg, materialize=materialize)
