"""What a pass can need besides the model, and which CLI flag provides each need."""

from __future__ import annotations

import enum


class Requirement(enum.Enum):
    """A need a pass declares; the PassManager checks all of them before any work."""

    CALIBRATION = "calibration"
    LATENCY_MODEL = "latency-model"
    STATIC_SHAPES = "static-shapes"
    GPU = "gpu"

    @property
    def description(self) -> str:
        """One line for humans."""
        return _DESCRIPTIONS[self]

    @property
    def flag(self) -> str:
        """The CLI flag that provides it."""
        return _FLAGS[self]


_DESCRIPTIONS = {
    Requirement.CALIBRATION: "calibration inputs (feeds of real data)",
    Requirement.LATENCY_MODEL: "a latency model of the target (measured table or analytic)",
    Requirement.STATIC_SHAPES: "every model input with fixed dimensions",
    Requirement.GPU: "a CUDA GPU",
}

_FLAGS = {
    Requirement.CALIBRATION: "--calib DIR|module:function",
    Requirement.LATENCY_MODEL: "--latency-table TABLE.json or --target",
    Requirement.STATIC_SHAPES: "--input-shape NAME:1x3x224x224",
    Requirement.GPU: "--target ort-cuda|tensorrt on a machine with a GPU",
}
