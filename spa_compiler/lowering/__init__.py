"""Per-target lossless lowering: fused runtime ops and the deployment precision, chosen by
measurement and applied to every timed candidate and to the output (see core.py, select.py)."""

from spa_compiler.lowering.core import ALL_FAMILIES, Lowered, Lowering, lower
from spa_compiler.lowering.provider import LoweredProvider, proto_digest
from spa_compiler.lowering.select import MODES, Decision, check, choose

__all__ = ["ALL_FAMILIES", "MODES", "Decision", "Lowered", "Lowering", "LoweredProvider", "check",
           "choose", "lower", "proto_digest"]
