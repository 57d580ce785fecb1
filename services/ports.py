"""Refuse to start on a port that is taken, in one line that names the setting to change.

Without this check a busy gRPC port ends in ``RuntimeError: Failed to bind`` and a busy HTTP port in
uvicorn's own exit, both after the service has started its Redis and workers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from services.errors import Unavailable


def require_free(host: str, ports: Iterable[tuple[int, str]]) -> None:
    """``ports`` is ``(port, SETTING_NAME)`` pairs; raise :class:`Unavailable` for the first one taken."""
    for port, setting in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                raise Unavailable(
                    f"cannot listen on {host}:{port} ({err.strerror or err}): another process holds it; "
                    f"stop it or set {setting} to a free port"
                ) from None
