"""``python -m trainer``: the ``keep`` command (what torchrun starts on every rank)."""

from __future__ import annotations

from trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
