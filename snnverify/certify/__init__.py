"""Certification of ANN→SNN converters through the adapter protocol (see :mod:`.protocol`).

``load_adapter(spec)`` picks a converter; ``certify(adapter, data)`` runs every clause of
:data:`.clauses.CLAUSES` and returns verdicts; :mod:`.mutants` holds deliberately broken adapters.
"""

from snnverify.certify.clauses import CLAUSES, ConverterFailure, Verdict
from snnverify.certify.protocol import CAPABILITIES, SEMANTICS, ProtocolError, check_adapter, load_adapter
from snnverify.certify.runner import CertificationData, certification_data, certify, report_dict

__all__ = ["CAPABILITIES", "CLAUSES", "SEMANTICS", "CertificationData", "ConverterFailure", "ProtocolError", "Verdict",
           "certification_data", "certify", "check_adapter", "load_adapter", "report_dict"]
