"""Transitional re-export: the worker's live-spend writer is :mod:`spendstream.stream.live`.

Only ``stream/app.py`` still imports it from here (issue 16); delete this file when it imports
``from .live import LiveSpendWriter``. Nothing else may use it (tests/test_imports.py).
"""

from ..stream.live import LiveSpendWriter as LiveSpendWriter
