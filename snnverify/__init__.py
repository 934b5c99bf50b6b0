"""snnverify — verification and benchmarks for ANN→SNN conversion.

Public API (see :mod:`snnverify.api`): ``convert``, ``compile``, ``evaluate``,
``measure_sparsity``, ``simulate``, ``quantize``, and the :class:`SNN` they work on.
"""

from snnverify.api import SNN, compile, convert, evaluate, measure_sparsity, quantize, simulate
from snnverify.convert import ConversionOptions

__version__ = "0.1.0"

__all__ = ["SNN", "ConversionOptions", "compile", "convert", "evaluate", "measure_sparsity", "quantize", "simulate", "__version__"]
