"""``python -m gkc|ranker|trainer`` run their ``main()`` only as a program: importing them starts nothing."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize("package", ["gkc", "ranker", "trainer"])
def test_importing_main_module_starts_nothing(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["keep", "--no-such-flag"])  # a run would exit with a usage error
    name = f"{package}.__main__"
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)  # a module that serves or parses argv at import raises here
    assert callable(module.main)
