"""The methods ``keep experiment`` compares (the paper's Tables 2, 3, 4, 8) and the extractors they need.

The Table 2 baselines (CoNet, DARec, BERT4Rec, S3-Rec) live in :mod:`trainer.baselines`.

A :class:`Method` names the knowledge blocks its plug-in reads and the extractor that produces them;
:data:`EXTRACTORS` says what each extractor is pre-trained on. Kept apart from the runner so that the
catalogue reads as one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.knowledge import GKC_BLOCKS
from contract.schema import TASKS

FULL_BLOCKS = ("ku", "ki", "kui:click", "kui:conversion", "kui:cart")
SERVING_BLOCKS = GKC_BLOCKS


@dataclass(frozen=True)
class ExtractorPlan:
    source: str  # "super" or "train" (keep_c: the downstream training log only)
    strategy: str
    tasks: tuple[str, ...] = TASKS


@dataclass(frozen=True)
class Method:
    name: str
    table: str
    extractor: str | None = None
    blocks: tuple[str, ...] = ()
    merge_super: bool = False
    via_bundle: bool = False
    #: A control: the plug-in of ``keep`` fed all-zero knowledge (same architecture, no information).
    zero: bool = False
    #: A Table 2 baseline of ``trainer.baselines`` (conet, darec, bert4rec, s3rec).
    baseline: str | None = None
    #: How the bundle a ``via_bundle`` method reads is stored (float32 | float16 | int8; issue 13).
    dtype: str = "float32"


EXTRACTORS = {
    "full": ExtractorPlan("super", "full"),
    "sub": ExtractorPlan("train", "full"),
    "serving": ExtractorPlan("super", "serving"),
    "click": ExtractorPlan("super", "full", ("click",)),
    "click_cv": ExtractorPlan("super", "full", ("click", "conversion")),
    "decomposition": ExtractorPlan("super", "decomposition"),
    "degeneration": ExtractorPlan("super", "degeneration"),
}


def method_table(separate_extractors: bool = False) -> dict[str, Method]:
    sep = separate_extractors
    rows = [
        Method("base", "2"),
        Method("sample_merging", "2", merge_super=True),
        Method("conet", "2", baseline="conet"),
        Method("darec", "2", baseline="darec"),
        Method("keep_c", "2", "sub", FULL_BLOCKS),
        Method("bert4rec", "2", baseline="bert4rec"),
        Method("s3rec", "2", baseline="s3rec"),
        Method("keep", "2", "full", FULL_BLOCKS),
        Method("keep_zero", "2", "full", FULL_BLOCKS, zero=True),
        Method("keep_ku", "3", "full", ("ku",)),
        Method("keep_ku_ki", "3", "full", ("ku", "ki")),
        Method("keep_click", "4", "click" if sep else "full", ("ku", "ki", "kui:click")),
        Method(
            "keep_click_cv", "4", "click_cv" if sep else "full", ("ku", "ki", "kui:click", "kui:conversion")
        ),
        Method("keep_decomposition", "8", "decomposition" if sep else "serving", SERVING_BLOCKS[:3]),
        Method("keep_degeneration", "8", "degeneration" if sep else "serving", SERVING_BLOCKS[3:]),
        Method("keep_decomposition_degeneration", "8", "serving", SERVING_BLOCKS, via_bundle=True),
        # the same bundle stored at a smaller dtype (docs/gkc.md, "Stored dtypes"): the GAUC cost
        Method("keep_fp16", "8", "serving", SERVING_BLOCKS, via_bundle=True, dtype="float16"),
        Method("keep_int8", "8", "serving", SERVING_BLOCKS, via_bundle=True, dtype="int8"),
    ]
    return {m.name: m for m in rows}


#: The default set: every paper method. Controls (``keep_zero``) and the stored-dtype variants of
#: ``keep_decomposition_degeneration`` (``keep_fp16``, ``keep_int8``) run only when named in --methods.
CONTROLS = ("keep_zero",)
OPT_IN = (*CONTROLS, "keep_fp16", "keep_int8")
METHOD_NAMES = tuple(n for n in method_table() if n not in OPT_IN)
