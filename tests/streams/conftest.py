"""Shared by the stream-processing tests.

This directory has no ``__init__.py``, so pytest puts it on ``sys.path`` for everything below:
tests import the synthetic-run helpers as ``import synth``.
"""
