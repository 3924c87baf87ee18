"""What the search chooses between: a `Method` offers sites, variants per site, an error per variant,
and applies a plan.

    site       one place the method can change. A pruning site is a coupled-channel group, which
               spans several layers (every producer and consumer of its channels); an N:M or Monarch
               site is one weight.
    variant    one way to change a site. Every site has a dense variant (nothing changed), listed
               first. Pruning variants are kept-unit counts; other methods name theirs ("2:4",
               "b4r1", ...). Variant keys are what latency tables and plans store.
    error      the method's own estimate of the damage of a variant (relative, comparable across the
               sites of one method; 0 for the dense variant).
    plan       {site id: variant key}; sites not named stay dense.

The search (`spa_compiler.search.loop`) sees only this: it asks a latency table for each variant's
latency, chooses one variant per site under the budget, has the method apply the plan to a clone,
times the clone on the target, and corrects. It never knows what a variant does to the graph.

Sites of different methods may touch the same weight: `conflicts` says which may not both change
(two Monarch factorizations of one weight), `composes_after` which order is allowed on the same
weight (N:M after pruning: prune, then sparsify the surviving columns).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from spa_compiler.ir import ModelIR

#: A plan: site id -> variant key. Sites not named stay dense.
Plan = Mapping[str, Hashable]


@dataclasses.dataclass(frozen=True)
class Site:
    """One place a method can change.

    Attributes:
        id: Unique within the method (pruning: the group id).
        method: The method's name.
        weights: Names of the constant tensors a variant of this site rewrites; two sites that
            share one are checked with `Method.conflicts` / `composes_after`.
        label: A human-readable name for reports ("layer 3 FFN neurons").
        info: Method-specific facts for reports (units, unit size, shapes).
    """

    id: str
    method: str
    weights: frozenset[str] = frozenset()
    label: str = ""
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to change a site.

    Attributes:
        key: What plans and latency tables store (pruning: units kept, an int; others: a str).
        dense: Whether this variant leaves the site unchanged.
        label: For reports.
    """

    key: Hashable
    dense: bool = False
    label: str = ""


@runtime_checkable
class Method(Protocol):
    """A family of rewrites the search can choose from, bound to one model.

    Implementations are built from a pass's options for one model (the model the sites were found
    in); `apply` may be called on that model or on any clone of it.
    """

    name: ClassVar[str]
    #: Methods whose changes this one may follow on the same weight (e.g. nm after pruning).
    composes_after: ClassVar[frozenset[str]]

    def sites(self) -> Sequence[Site]:
        """Every site this method can change, in a stable order."""
        ...

    def variants(self, site: Site) -> Sequence[Variant]:
        """The site's variants, dense first."""
        ...

    def error(self, site: Site, variant: Hashable) -> float:
        """The method's error estimate for `variant` of `site` (0 for dense)."""
        ...

    def apply(self, model: ModelIR, plan: Plan, *, exact: bool = True, validate: bool = True) -> dict[str, Any]:
        """Rewrite `model` in place to `plan`; returns stats for the report.

        `exact=False` is for candidates that are only timed: the method may skip work that changes
        weight values but not the graph's shapes (e.g. least-squares re-fits), since latency does
        not depend on them.
        """
        ...

    def conflicts(self, a: Site, b: Site) -> bool:
        """Whether `a` and `b` (both of this method) cannot both take non-dense variants."""
        ...


def shared_weights(a: Site, b: Site) -> bool:
    """The default conflict rule: two sites rewriting a common weight."""
    return bool(a.weights & b.weights)


def dense_plan(method: Method) -> dict[str, Hashable]:
    """Every site at its dense variant."""
    out: dict[str, Hashable] = {}
    for s in method.sites():
        dense = [v for v in method.variants(s) if v.dense]
        if not dense:
            raise ValueError(f"{method.name}: site {s.id} has no dense variant")
        out[s.id] = dense[0].key
    return out
