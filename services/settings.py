"""Typed settings base (pydantic-settings). Each service subclasses with its own env prefix.

Settings are built in ``__main__`` / the CLI and passed in; nothing reads the environment at import.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The shortest token accepted (shorter ones count as placeholders).
MIN_TOKEN_LENGTH = 8
#: Tokens that look like someone forgot to set a real one.
PLACEHOLDER_TOKENS = frozenset({"", "changeme", "change-me", "secret", "token", "dev", "test", "password"})


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``model_config = SettingsConfigDict(env_prefix=...)``."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_json: bool = False
    #: Dev mode allows placeholder secrets; never set it in production.
    dev_mode: bool = False


def is_placeholder(token: SecretStr | None) -> bool:
    """True when ``token`` is missing, short or one of the well-known placeholders."""
    if token is None:
        return True
    value = token.get_secret_value().strip()
    return value.lower() in PLACEHOLDER_TOKENS or len(value) < MIN_TOKEN_LENGTH
