"""Typed settings base (pydantic-settings). Each service subclasses with its own env prefix.

Settings are built in ``__main__`` / the CLI and passed in; nothing reads the environment at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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
    #: PEM certificate and key: gRPC and REST serve TLS (set both, or neither for plaintext).
    tls_cert: Path | None = None
    tls_key: Path | None = None


def is_placeholder(token: SecretStr | None) -> bool:
    """True when ``token`` is missing, short or one of the well-known placeholders."""
    if token is None:
        return True
    value = token.get_secret_value().strip()
    return value.lower() in PLACEHOLDER_TOKENS or len(value) < MIN_TOKEN_LENGTH


def settings_help(cls: type[BaseSettings]) -> str:
    """``PREFIX_NAME (default X): what it does`` per field, for ``keep serve <service> --help``.

    The descriptions are the ``#:`` comments above each field (read from the class source, as Sphinx
    does), so the settings are documented once, where they are defined.
    """
    import inspect

    prefix = str(cls.model_config.get("env_prefix", ""))
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseSettings)) or klass is BaseSettings:
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            text = line.strip()
            if text.startswith("#:"):
                pending.append(text[2:].strip())
            elif ":" in text and not text.startswith(("#", "def ", "class ", '"', "@")):
                name = text.split(":", 1)[0].strip()
                if name.isidentifier() and pending:
                    comments[name] = " ".join(pending)
                pending = []
            elif text:
                pending = []
    out = []
    for name, field in cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else ("(secret)" if isinstance(default, SecretStr) else default)
        line = f"  {prefix}{name.upper()} (default: {shown})"
        if name in comments:
            line += f": {comments[name]}"
        out.append(line)
    return "\n".join(out)


def prefixed_env(
    prefix: str, values: Mapping[str, object], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) plus ``{prefix}_{name}`` for every value not None:
    the environment a service's settings read, for launching that service as a process."""
    env = dict(os.environ if base is None else base)
    env.update({f"{prefix}_{name}": str(value) for name, value in values.items() if value is not None})
    return env
