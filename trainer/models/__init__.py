"""Stage 1 models: the knowledge extractor (DIN, paper §4.2) and its serving forms (§5.2)."""

from trainer.models.batch import FeatureBatch, feature_batch, id_batch
from trainer.models.extractor import DINExtractor, Extractor
from trainer.models.strategies import build_extractor

__all__ = [
    "DINExtractor",
    "Extractor",
    "FeatureBatch",
    "build_extractor",
    "feature_batch",
    "id_batch",
]
