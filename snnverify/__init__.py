"""snnverify — verification and benchmarks for ANN→SNN conversion.

Public API (see :mod:`snnverify.api`): ``convert``, ``compile``, ``evaluate``,
``measure_sparsity``, ``simulate``, ``quantize``, ``to_nir``, ``from_nir`` (errors:
:class:`NIRFormatError`), and the :class:`SNN` they work on.
"""

from snnverify.api import SNN, accuracy_over_time, compile, convert, evaluate, from_nir, measure_sparsity, quantize, simulate, to_nir
from snnverify.convert import ConversionOptions
from snnverify.nir_io import NIRFormatError

__version__ = "0.1.0"

__all__ = ["SNN", "ConversionOptions", "NIRFormatError", "accuracy_over_time", "compile", "convert", "evaluate", "from_nir", "measure_sparsity",
           "quantize", "simulate", "to_nir", "__version__"]
