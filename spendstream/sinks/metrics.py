"""Transitional re-export: the worker's metrics are :mod:`spendstream.stream.metrics`.

Only ``stream/app.py`` still imports them from here (issue 16); delete this file when it
imports ``from .metrics import PipelineMetrics, serve``. Nothing else may use it
(tests/test_imports.py).
"""

from ..stream.metrics import PipelineMetrics as PipelineMetrics
from ..stream.metrics import serve as serve
