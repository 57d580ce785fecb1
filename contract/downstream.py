"""The downstream CTR model's config: what ``keep train`` builds and the ranker rebuilds.

The module (``ranker.model.DownstreamModel``) is built from this config alone; the config also carries
``max_len``, the behaviour-sequence length the model was trained with, which evaluation and serving
must use (a different window scores silently wrong).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from contract.schema import DEFAULT_MAX_LEN


@dataclass(frozen=True)
class DownstreamConfig:
    n_users: int
    n_items: int
    n_categories: int
    n_shops: int = 2
    emb_dim: int = 16
    #: The paper's downstream model leaves the user id out (too sparse in the sub-domain).
    use_user_id: bool = False
    attention_hidden: int = 36
    coaction_in: int = 8
    coaction_hidden: tuple[int, int] = (4, 4)
    mlp: tuple[int, ...] = (200, 80)
    #: 1-based index of the MLP layer whose output receives the plug-ins' ``h^k``.
    plugin_layer: int = 1
    plugin_hidden: int = 64
    #: knowledge name → input dim; one plug-in each.
    plugins: dict[str, int] = field(default_factory=dict)
    #: Behaviour-sequence length: the user's last ``max_len`` clicks.
    max_len: int = DEFAULT_MAX_LEN

    def __post_init__(self) -> None:
        if not 1 <= self.plugin_layer <= len(self.mlp):
            raise ValueError(f"plugin_layer must be in 1..{len(self.mlp)}, got {self.plugin_layer}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")

    def with_plugin(self, name: str, dim: int) -> DownstreamConfig:
        return replace(self, plugins={**self.plugins, name: int(dim)})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DownstreamConfig:
        data = dict(data)
        data["coaction_hidden"] = tuple(data["coaction_hidden"])
        data["mlp"] = tuple(data["mlp"])
        data["plugins"] = {str(k): int(v) for k, v in data.get("plugins", {}).items()}
        return cls(**data)
