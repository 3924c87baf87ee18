"""End-to-end output error of a plan, measured on a few feeds: what the search's additive error
model is corrected by.

The knapsack adds per-site errors (for pruning: each layer's relative output error after the
criterion's re-fit). That sum misranks damage that compounds through the network: a head removed
early changes every later layer's input. `OutputErrorProbe` applies a plan exactly (re-fits
included) to a clone, runs it on a few feeds (calibration data when there is some, else the
data-free criterion's own synthetic feeds) and compares every graph output with the dense model's
(`spa_compiler.fidelity.output_error`: mean KL of the next-token distributions for language-model
logits, 1 - mean row cosine for other outputs with rows, relative error otherwise). Results are
memoized per plan.

`ErrorModel` is the correction, fitted the way measured latency corrects the latency table:

    measured ≈ scale · Σ_classes weight[c] · predicted[c]

where predicted[c] is the plan's additive error over the sites of class c (for pruning: the unit
kind: head, neuron, channel). The class weights come from measuring the plan restricted to each
class (`fit_classes`, once: these say e.g. that a head's per-layer error costs ten times a
neuron's at the output); the scale is refitted from every measured full plan (geometric mean of
measured / predicted, so it tracks the non-additive interaction of the classes). The search uses
the weights to re-rank variants and the scale to turn a bound on the measured output error into a
bound on the additive sum (`additive_bound`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from spa_compiler.fidelity import error_kind, output_error
from spa_compiler.ir import ModelIR
from spa_compiler.methods.base import Method

logger = logging.getLogger(__name__)

#: plan -> measured output error (0 = identical to the dense model).
ErrorFn = Callable[[Mapping[str, Hashable]], float]


class OutputErrorProbe:
    """Measures a plan's output error against the dense model on `feeds` (see the module doc).

    Args:
        model: The dense model (not modified).
        method: Applies plans (`apply(clone, plan, exact=True)`).
        feeds: Feeds; the dense outputs on them are computed once and kept. With `min_rows`, feeds
            are taken from `feeds` (any iterable) until the first output holds `min_rows` rows (a
            row: one vector of its last axis, e.g. a token's logits or an image's classes) or
            `max_feeds` feeds are taken.
        kinds: Per output name, the error kind (default: `fidelity.error_kind` of its shape).
        threads: ONNX Runtime intra-op threads.
        source: Where the feeds came from, for the report ("calibration", "synthetic").
    """

    def __init__(self, model: ModelIR, method: Method, feeds: Iterable[Mapping[str, Any]], *,
                 kinds: Mapping[str, str] | None = None, threads: int | None = None, source: str = "",
                 min_rows: int = 0, max_feeds: int = 64):
        self.model = model
        self.method = method
        self.threads = threads
        self.source = source
        names = {t.name for t in model.graph.inputs}
        from spa_compiler.ort import make_session

        sess = make_session(model, threads=threads, optimize=True)
        self.feeds: list[dict[str, np.ndarray]] = []
        self.dense: list[list[np.ndarray]] = []
        rows = 0
        for f in feeds:
            feed = {k: np.asarray(v) for k, v in f.items() if k in names}
            self.feeds.append(feed)
            self.dense.append(list(sess.run(None, feed)))
            first = self.dense[-1][0]
            rows += int(np.prod(first.shape[:-1])) if first.ndim > 1 else 1
            if len(self.feeds) >= max_feeds or (min_rows and rows >= min_rows):
                break
        del sess
        if not self.feeds:
            raise ValueError("an output-error probe needs at least one feed")
        self.kinds = [(kinds or {}).get(n) or error_kind(o.shape)
                      for n, o in zip(self.output_names, self.dense[0])]
        self.seen: dict[tuple[tuple[str, Hashable], ...], float] = {}
        self.calls = 0

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.model.graph.outputs]

    def _outputs(self, model: ModelIR) -> list[list[np.ndarray]]:
        from spa_compiler.ort import make_session

        sess = make_session(model, threads=self.threads, optimize=True)
        out = [list(sess.run(None, f)) for f in self.feeds]
        del sess
        return out

    def describe(self) -> str:
        """e.g. "kl over logits, 2 feeds"."""
        parts = [f"{k} of {n}" for n, k in zip(self.output_names, self.kinds)]
        return f"{', '.join(parts)} on {len(self.feeds)} feed(s)"

    def __call__(self, plan: Mapping[str, Hashable]) -> float:
        key = tuple(sorted((str(k), v) for k, v in plan.items()))
        if key not in self.seen:
            clone = self.model.clone()
            self.method.apply(clone, dict(plan), exact=True, validate=False)
            self.seen[key] = self.of_model(clone)
            del clone
            self.calls += 1
        return self.seen[key]

    def of_model(self, model: ModelIR) -> float:
        """The output error of any model with the dense model's inputs and outputs (e.g. the
        final compressed one) on the probe's feeds."""
        cand = self._outputs(model)
        errs = [output_error(d, c, kind) for fd, fc in zip(self.dense, cand)
                for d, c, kind in zip(fd, fc, self.kinds)]
        return float(np.mean(errs))


@dataclasses.dataclass
class ErrorModel:
    """measured ≈ scale · Σ_c weight[c] · predicted[c] (see the module docstring).

    Attributes:
        site_class: site id -> class name (sites not named are class "").
        weights: class -> weight (1 until fitted).
        scale: Fitted from measured full plans (1 until one is measured).
        samples: (predicted weighted sum, measured) of every full plan measured.
    """

    site_class: Mapping[str, str]
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    #: site -> weight measured for that site alone (`fit_sites`); overrides its class weight.
    site_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    scale: float = 1.0
    samples: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    def cls(self, site: str) -> str:
        return self.site_class.get(str(site), "")

    def weight(self, site: str) -> float:
        if str(site) in self.site_weights:
            return self.site_weights[str(site)]
        return self.weights.get(self.cls(site), 1.0)

    def by_class(self, errors: Mapping[str, float]) -> dict[str, float]:
        """Additive error per class from per-site errors."""
        out: dict[str, float] = {}
        for s, e in errors.items():
            out[self.cls(s)] = out.get(self.cls(s), 0.0) + float(e)
        return out

    def weighted(self, errors: Mapping[str, float]) -> float:
        """Σ_s weight(s) · predicted[s] of a plan's per-site errors (class weights unless the site
        has its own)."""
        return sum(self.weight(s) * float(e) for s, e in errors.items())

    def predict(self, errors: Mapping[str, float]) -> float:
        """The corrected prediction of a plan's measured output error."""
        return self.scale * self.weighted(errors)

    def fit_classes(self, plan: Mapping[str, Hashable], errors: Mapping[str, float],
                    dense: Mapping[str, Hashable], measure: ErrorFn,
                    lightest: Mapping[str, tuple[Hashable, float]] | None = None) -> dict[str, float]:
        """Measure `plan` restricted to each class (other sites dense) and set the class weights
        to measured / predicted, normalized to a geometric mean of 1 over the classes (the scale
        carries the overall level). A class the plan leaves dense is measured at its sites'
        `lightest` variants instead (site -> (variant, its error): the smallest non-zero cut), so
        a class the additive model never chose still gets its price. Returns the measured error per
        class."""
        classes = sorted({self.cls(s) for s in dense})
        if len(classes) < 2:
            return {}
        by = self.by_class(errors)
        measured: dict[str, float] = {}
        ratios: dict[str, float] = {}
        for c in classes:
            if by.get(c, 0.0) > 0:
                part = {s: (plan[s] if self.cls(s) == c and s in plan else dense[s]) for s in dense}
                predicted = by[c]
            elif lightest:
                part = {s: (lightest[s][0] if self.cls(s) == c and s in lightest else dense[s]) for s in dense}
                predicted = sum(lightest[s][1] for s in dense if self.cls(s) == c and s in lightest)
            else:
                continue
            if predicted <= 0:
                continue
            measured[c] = measure(part)
            if measured[c] > 0:
                ratios[c] = measured[c] / predicted
        if len(ratios) >= 2:
            g = math.exp(float(np.mean([math.log(r) for r in ratios.values()])))
            self.weights = {c: r / g for c, r in ratios.items()}
        return measured

    def fit_sites(self, plan: Mapping[str, Hashable], errors: Mapping[str, float],
                  dense: Mapping[str, Hashable], measure: ErrorFn,
                  lightest: Mapping[str, tuple[Hashable, float]] | None = None) -> dict[str, float]:
        """Measure `plan` restricted to each site alone (every other site dense; a site the plan
        leaves dense at its `lightest` cut) and give each site the weight measured / predicted, on
        the class weights' scale (their geometric mean over the sites is the class weights'). On
        MiniLM-L6 the sites' isolated output errors add up to the joint plan's within 10%
        (benchmarks/quality/results/ablate-minilm.json), so per-site weights make the knapsack's
        sum a measured one. Returns the measured error per site."""
        measured: dict[str, float] = {}
        ratios: dict[str, float] = {}
        for s in dense:
            e = float(errors.get(str(s), 0.0))
            if e > 0 and s in plan:
                part, predicted = {**dict(dense), s: plan[s]}, e
            elif lightest and s in lightest:
                part, predicted = {**dict(dense), s: lightest[s][0]}, float(lightest[s][1])
            else:
                continue
            if predicted <= 0:
                continue
            measured[str(s)] = measure(part)
            if measured[str(s)] > 0:
                ratios[str(s)] = measured[str(s)] / predicted
        if ratios:
            g = math.exp(float(np.mean([math.log(r) for r in ratios.values()])))
            cls_g = math.exp(float(np.mean([math.log(self.weights.get(self.cls(s), 1.0)) for s in ratios])))
            self.site_weights = {s: r / g * cls_g for s, r in ratios.items()}
        return measured

    def observe(self, errors: Mapping[str, float], measured: float) -> None:
        """Refit the scale with one more measured full plan."""
        w = self.weighted(errors)
        if w > 0 and measured > 0:
            self.samples.append((w, measured))
            self.scale = math.exp(float(np.mean([math.log(m / p) for p, m in self.samples])))

    def additive_bound(self, max_output_error: float) -> float:
        """The bound on the weighted additive sum that corresponds to `max_output_error`."""
        return max_output_error / self.scale if self.scale > 0 else math.inf


__all__ = ["ErrorFn", "ErrorModel", "OutputErrorProbe", "site_classes"]


def site_classes(method: Method) -> dict[str, str]:
    """site id -> class for `ErrorModel`: the site's unit kind when it has one (pruning: channel,
    head, neuron, ...), else the method's name."""
    return {s.id: str(s.info.get("unit", s.method)) for s in method.sites()}
