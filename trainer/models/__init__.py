"""Stage 1 models: the knowledge extractor (DIN, paper §4.2) and its serving forms (§5.2)."""

from trainer.models.batch import FeatureBatch, id_batch, make_batch
from trainer.models.extractor import DINExtractor, Extractor, build_extractor

__all__ = [
    "DINExtractor",
    "Extractor",
    "FeatureBatch",
    "build_extractor",
    "id_batch",
    "make_batch",
]
