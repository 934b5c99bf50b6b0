"""snnverify — verification and benchmarks for ANN→SNN conversion.

Public API (see :mod:`snnverify.api`): ``convert``, ``compile``, ``evaluate``,
``measure_sparsity``, ``simulate``, and the :class:`SNN` they work on.
"""

from snnverify.api import SNN, compile, convert, evaluate, measure_sparsity, simulate
from snnverify.convert import ConversionOptions

__version__ = "0.1.0"

__all__ = ["SNN", "ConversionOptions", "compile", "convert", "evaluate", "measure_sparsity", "simulate", "__version__"]
