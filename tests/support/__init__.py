"""Helpers shared by the test suites: real services on free ports, small data sets, fault injectors.

Import them as ``from tests.support.<module> import ...`` (pyproject's pytest ``pythonpath`` puts the
repository root on the path); the pytest fixtures of :mod:`tests.support.fixtures` are registered for
every test by ``tests/conftest.py``.
"""
