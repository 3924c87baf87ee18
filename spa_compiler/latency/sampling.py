"""Which variants of a latency table to time: every one, or the levels where the latency changes.

A pruning signature has up to 8 levels (kept-unit counts, multiples of the target's width), and a
table lookup between measured levels interpolates linearly (`table.GroupLatency.latency`). Where
the measured latency is linear in the kept units, the levels inside a linear stretch add nothing
the interpolation does not already give; timing them is most of a table's cost (ResNet-50: 17
signatures, 115 variants, each a session build and paired runs of the whole model).

`LevelSampler` times a signature's levels coarse to fine, in waves:

1. its lowest level (the dense one is the reference: ratio 1 by definition);
2. for every stretch [a, b] between measured levels with an unmeasured level inside, the middle
   level m; if the ratio measured at m is within `tol` (a share of the dense model's latency) of
   the line through a and b, the whole stretch is taken as linear and nothing else inside it is
   timed; otherwise [a, m] and [m, b] are refined in the next wave. A stretch whose ends differ by
   no more than `tol` (or their timings' noise) is not refined at all: latency does not fall as
   units are added, so nothing inside it can be further from the line than its ends are apart.

So a signature whose latency is linear costs 2 timings instead of 7, a curved or stepped one up to
all of them. Only measured levels go into the table; what lies between them is the table's usual
linear interpolation, off by at most `tol` at the level that was checked. Every variant timed is
still timed whole, in its lowered form, in alternation with the dense model; the search's rounds
then time the chosen plans themselves (`search.loop`). `AllLevels` times every level (the
reference behaviour, and the one for analytic estimates, which cost nothing).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class AllLevels:
    """Time every variant in one wave."""

    def __init__(self, keys: Sequence[Hashable], dense_key: Hashable) -> None:
        self.pending = [k for k in keys if k != dense_key]
        self.measured: dict[Hashable, float] = {}

    def next_wave(self) -> list[Hashable]:
        wave, self.pending = self.pending, []
        return wave

    def record(self, key: Hashable, ratio: float, ci: float = 0.0) -> None:
        self.measured[key] = ratio

    def remaining(self) -> int:
        return len(self.pending)


class LevelSampler:
    """Coarse-to-fine timing of one signature's numeric levels (see the module docstring).

    Args:
        keys: The variant keys (kept units), the dense one included.
        dense_key: The dense variant (ratio 1.0, never timed).
        tol: Largest deviation from linear, as a ratio of the dense latency, that still counts as
            linear, at least; a deviation within the measurements' own confidence intervals
            (the middle's plus the mean of the ends', `record(ci=...)`) counts as linear too, since
            timing more levels could not tell it apart from the line.
    """

    def __init__(self, keys: Sequence[Hashable], dense_key: Hashable, tol: float) -> None:
        self.ks = sorted(float(k) for k in keys)  # type: ignore[arg-type]
        self.key_of = {float(k): k for k in keys}  # type: ignore[arg-type]
        self.tol = tol
        self.measured: dict[Hashable, float] = {}
        self.ratio: dict[int, float] = {len(self.ks) - 1: 1.0}
        self.ci: dict[int, float] = {len(self.ks) - 1: 0.0}
        self.open: list[tuple[int, int]] = []  # stretches whose middle is being timed
        self.checks: list[tuple[int, int, int]] = []  # (a, mid, b) awaiting their middle
        self.first = len(self.ks) > 1
        if float(dense_key) != self.ks[-1]:  # type: ignore[arg-type]
            raise ValueError("the dense variant must have the most kept units")

    def next_wave(self) -> list[Hashable]:
        """The keys to time next ([] when the signature is done)."""
        if self.first:
            self.first = False
            self.open = [(0, len(self.ks) - 1)] if len(self.ks) > 2 else []
            return [self.key_of[self.ks[0]]]
        # judge the last wave's middles, then open the next
        nxt: list[tuple[int, int]] = []
        for a, m, b in self.checks:
            noise = self.ci.get(m, 0.0) * self.ratio[m] + 0.5 * self._noise(a, b)
            if abs(self.ratio[m] - self._line(a, b, m)) > max(self.tol, noise):
                nxt += [(a, m), (m, b)]
        if not self.checks:
            nxt = self.open
        self.checks = []
        wave = []
        for a, b in nxt:
            if abs(self.ratio[b] - self.ratio[a]) <= max(self.tol, self._noise(a, b)):
                continue  # the ends agree within noise: a monotone curve between them is that flat
            if b - a >= 2:
                m = (a + b) // 2
                self.checks.append((a, m, b))
                wave.append(self.key_of[self.ks[m]])
        self.open = []
        return wave

    def _noise(self, a: int, b: int) -> float:
        """The summed 95% half-intervals of two measured levels (ratio units)."""
        return self.ci.get(a, 0.0) * self.ratio[a] + self.ci.get(b, 0.0) * self.ratio[b]

    def _line(self, a: int, b: int, m: int) -> float:
        ka, kb, km = self.ks[a], self.ks[b], self.ks[m]
        return self.ratio[a] + (self.ratio[b] - self.ratio[a]) * (km - ka) / (kb - ka)

    def record(self, key: Hashable, ratio: float, ci: float = 0.0) -> None:
        """The measured ratio to dense of `key`, and its 95% half-interval (relative)."""
        self.measured[key] = ratio
        i = self.ks.index(float(key))  # type: ignore[arg-type]
        self.ratio[i] = ratio
        self.ci[i] = ci

    def remaining(self) -> int:
        """An upper bound on the timings still to come."""
        if self.first:
            return len(self.ks) - 1
        spans = [(a, b) for a, _, b in self.checks] + self.open
        return sum(1 for a, b in spans for i in range(a + 1, b) if i not in self.ratio)
