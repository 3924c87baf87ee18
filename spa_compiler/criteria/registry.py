"""The criterion registry: every pruning pass accepts exactly these names (option `criterion`).

Each criterion turns a coupled-channel group into a removal order and an error per level
(`criteria.paths.group_paths`); `auto` in a pass means obs with calibration data, else obspa.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A registered criterion.

    Attributes:
        name: The option value.
        needs_calibration: Whether it needs real input data (--calib).
        compensates: Whether the surviving consumer weights are re-fitted (least squares).
        summary: One line for `list-passes` and the docs.
    """

    name: str
    needs_calibration: bool
    compensates: bool
    summary: str


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", False, False, "group magnitude: summed |w|^p of every slice a unit owns"),
        Criterion("wanda", True, False, "Wanda: summed |w_ij|·‖x_j‖ over the consumers, on calibration data"),
        Criterion("obs", True, True, "ZipLM structured OBS on calibration data, consumers re-fitted"),
        Criterion("obspa", False, True, "data-free OBS: second moments from BatchNorm statistics or the "
                  "model's response to synthetic inputs, consumers re-fitted"),
    )
}


def resolve(name: str, *, have_calibration: bool) -> str:
    """`auto` -> obs with calibration data, else obspa; other names are returned as given."""
    if name == "auto":
        return "obs" if have_calibration else "obspa"
    return name
