"""The data keys of a version in Redis (the key schema: :mod:`gkc.redis_store`'s docstring)."""

from __future__ import annotations

USER_FIELD = "u"
KEYLOG = "keys"


def user_key(ns: str, user_id: str) -> str:
    return f"{ns}u:{user_id}"


def item_key(ns: str, item_id: str) -> str:
    return f"{ns}i:{item_id}"


def uc_field(category_id: str) -> str:
    return f"c:{category_id}"


def keylog_key(ns: str) -> str:
    """The version's key log: per write batch a JSON list of its keys (``RedisStore``'s docstring)."""
    return f"{ns}{KEYLOG}"
