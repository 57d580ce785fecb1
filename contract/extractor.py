"""The knowledge extractor's config and its checkpoint's ``config.json``, typed.

:class:`ExtractorConfig` is the module's shape (``trainer.models`` builds it); :class:`CheckpointConfig`
is what ``keep pretrain`` records beside the weights: the extractor, how it was trained
(:class:`PretrainSettings`) and on which days of which log (:class:`TrainingWindow`). Pre-training,
resuming, continuing (``--init``) and export read these fields, never JSON paths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from contract.schema import DEFAULT_MAX_LEN, TASKS
from services.errors import InvalidArgument

#: ``full`` (DIN, the paper's K), ``decomposition``/``degeneration`` (one serving form each), ``serving``
#: (both serving forms, what ``keep export`` needs).
STRATEGIES = ("full", "decomposition", "degeneration", "serving")
#: The strategy ``keep export`` and GKC knowledge need.
SERVING_STRATEGY = "serving"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class ExtractorConfig:
    """Shapes of an extractor. Vocabulary sizes include the PAD and OOV rows."""

    n_users: int
    n_items: int
    n_shops: int
    n_categories: int
    strategy: str = "full"
    tasks: tuple[str, ...] = TASKS
    user_dim: int = 48
    id_dim: int = 16
    tower: tuple[int, ...] = (512, 256, 128, 64)
    attention: tuple[int, ...] = (64, 16)
    #: Two-tower (decomposition) output size d of K̂_u and K̂_i, and the towers' hidden widths.
    two_tower_dim: int = 32
    two_tower_hidden: tuple[int, ...] = (128,)
    #: Per-task head over K̂_u ⊙ K̂_i.
    interaction_head: tuple[int, ...] = (64,)
    max_len: int = DEFAULT_MAX_LEN
    init_std: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if not self.tasks or "click" not in self.tasks:
            raise ValueError("the click task is required")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtractorConfig:
        fields = dict(data)
        for key in ("tasks", "tower", "attention", "two_tower_hidden", "interaction_head"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    def with_strategy(self, strategy: str) -> ExtractorConfig:
        return replace(self, strategy=strategy)


@dataclass(frozen=True)
class PretrainSettings:
    """How an extractor was trained (a resume must ask for the same)."""

    tasks: tuple[str, ...]
    alpha: float
    seed: int
    batch_size: int
    lr: float
    strategy: str
    #: The model's heads' tasks (a continuation keeps the tasks it was built with).
    model_tasks: tuple[str, ...]
    #: The id tables' learning rate over ``lr`` (``None``: the trainer's default).
    sparse_lr_ratio: float | None = None
    #: Column shards of the user table (its row-wise optimizer keeps one value per row and shard, so
    #: a resume or continuation keeps the count; runs before it was recorded used 2).
    user_column_shards: int = 2

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": list(self.tasks), "model_tasks": list(self.model_tasks)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PretrainSettings:
        return cls(
            tasks=tuple(data["tasks"]),
            alpha=float(data["alpha"]),
            seed=int(data["seed"]),
            batch_size=int(data["batch_size"]),
            lr=float(data["lr"]),
            strategy=str(data["strategy"]),
            model_tasks=tuple(data.get("model_tasks", data["tasks"])),
            sparse_lr_ratio=data.get("sparse_lr_ratio"),
            user_column_shards=int(data.get("user_column_shards", 2)),
        )


@dataclass(frozen=True)
class TrainingWindow:
    """The super-domain log and days an extractor has been trained on."""

    #: Absolute path of the super-domain log.
    super: str
    #: Days this run trained on (a continuation's are after its ``--init``'s).
    run_days: tuple[int, ...]
    #: Days kept out for the GAUC in ``metrics.json``.
    holdout_days: tuple[int, ...]
    #: First and last day of all training so far (inclusive; the first is the ``--init`` chain's).
    first_day: int
    last_day: int
    init_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "super": self.super,
            "run_days": list(self.run_days),
            "holdout_days": list(self.holdout_days),
            "window": {"first_day": self.first_day, "last_day": self.last_day},
            "init_from": self.init_from,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingWindow:
        return cls(
            super=str(data["super"]),
            run_days=tuple(int(d) for d in data["run_days"]),
            holdout_days=tuple(int(d) for d in data.get("holdout_days", [])),
            first_day=int(data["window"]["first_day"]),
            last_day=int(data["window"]["last_day"]),
            init_from=data.get("init_from"),
        )


@dataclass(frozen=True)
class CheckpointConfig:
    """``config.json`` of an extractor checkpoint directory."""

    extractor: ExtractorConfig
    train: PretrainSettings
    data: TrainingWindow
    format: int = CHECKPOINT_FORMAT

    @property
    def window(self) -> tuple[int, int]:
        return self.data.first_day, self.data.last_day

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "extractor": self.extractor.to_json(),
            "train": self.train.to_json(),
            "data": self.data.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> CheckpointConfig:
        if data.get("format") != CHECKPOINT_FORMAT:
            raise InvalidArgument(f"{source}: format {data.get('format')!r} is not {CHECKPOINT_FORMAT}")
        try:
            return cls(
                extractor=ExtractorConfig.from_json(data["extractor"]),
                train=PretrainSettings.from_json(data["train"]),
                data=TrainingWindow.from_json(data["data"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidArgument(f"{source}: malformed extractor checkpoint config ({err!r})") from err
