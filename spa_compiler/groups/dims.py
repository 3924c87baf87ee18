"""Dimension algebra for coupled-channel analysis: atoms, sums, products, unification.

Every axis of every tensor is described by a *term* over *atoms* (index spaces):

    term := atom                      one index space of `size` positions
          | ("+", (t1, t2, ...))      concatenation: positions of t1, then t2, ... (Concat, Split)
          | ("*", (t1, t2, ...))      row-major product: index = (i1·|t2|) + i2 ... (Reshape heads)

Atoms live in a union-find. Two axes that must shrink together are *unified*; unification refines
atoms when the two sides are cut differently, e.g. the flat projection axis `C` (64) against the
reshaped `(heads=4, head_dim=16)` defines `C := 4 * 16`, and a Split of `C` at 32 against a
product defines `heads := 2 + 2`. After all rules ran, every canonical leaf atom (a *class*) is
an independent pruning dimension: removing index `u` of a class removes, from every axis whose
term mentions it, exactly the flat positions whose coordinate in that class is `u`
(`DimSpace.coords`). Sizes never lie: unification of terms of different sizes fails, and
refinements that are not expressible (a product factor that does not divide, a Sum boundary
inside a product block) fail too; the caller then freezes the atoms involved.

Each class carries `AtomInfo`: a frozen reason (never pruned), reduction reasons (normalized
axes: hidden-width candidates) and free-form tags (e.g. "head", "head_dim").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import numpy.typing as npt

#: A term: an atom id (int) or ("+"|"*", tuple of terms).
Term = int | tuple

#: Nesting bound of one unification. Two cuts of an axis that disagree by a shift (a slice
#: ``x[1:]`` against ``x[:-1]``, as position arithmetic in exported causal masks does) can only be
#: unified by cutting the axis into one atom per position, one nested step each: on a 512-token
#: sequence that exceeded Python's recursion limit. Past this depth the unification fails instead
#: (the refinements made so far stay; they are sound) and the caller freezes the axes involved.
MAX_UNIFY_DEPTH = 64


@dataclasses.dataclass
class AtomInfo:
    """What the rules learned about a class (merged on union, inherited on refinement)."""

    frozen: str | None = None
    reduced: list[str] = dataclasses.field(default_factory=list)
    tags: set[str] = dataclasses.field(default_factory=set)

    def merge(self, other: AtomInfo) -> None:
        self.frozen = self.frozen or other.frozen
        for r in other.reduced:
            if r not in self.reduced:
                self.reduced.append(r)
        self.tags |= other.tags

    def copy(self) -> AtomInfo:
        return AtomInfo(self.frozen, list(self.reduced), set(self.tags))


class DimSpace:
    """Atoms with sizes, a union-find over them, refinements and per-class info."""

    def __init__(self) -> None:
        self._size: list[int] = []
        self._parent: list[int] = []
        self._defn: dict[int, Term] = {}
        self._info: dict[int, AtomInfo] = {}
        self._touched: set[int] = set()
        self._depth = 0

    def copy(self) -> DimSpace:
        """An independent copy in O(atoms): its union-find, atoms and info records are its own
        (terms are immutable tuples and are shared)."""
        other = DimSpace.__new__(DimSpace)
        other._size = list(self._size)
        other._parent = list(self._parent)
        other._defn = dict(self._defn)
        other._info = {k: v.copy() for k, v in self._info.items()}
        other._touched = set(self._touched)
        other._depth = 0
        return other

    # ------------------------------------------------------------------ atoms
    def new(self, size: int, *, frozen: str | None = None) -> int:
        """A fresh atom of `size` positions."""
        if size < 0:
            raise ValueError(f"negative dimension {size}")
        a = len(self._size)
        self._size.append(int(size))
        self._parent.append(a)
        if frozen:
            self._info[a] = AtomInfo(frozen=frozen)
        return a

    def find(self, a: int) -> int:
        """Root of atom `a` (path halving)."""
        p = self._parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def info(self, root: int) -> AtomInfo:
        """The info record of a class root (created on demand)."""
        r = self.find(root)
        if r not in self._info:
            self._info[r] = AtomInfo()
        return self._info[r]

    # ------------------------------------------------------------------ terms
    def size(self, t: Term) -> int:
        """Number of positions of a term."""
        if isinstance(t, int):
            return self._size[t]
        op, parts = t
        if op == "+":
            return sum(self.size(p) for p in parts)
        n = 1
        for p in parts:
            n *= self.size(p)
        return n

    def canon(self, t: Term) -> Term:
        """Canonical form: roots, definitions expanded, nesting flattened, trivial parts dropped."""
        if isinstance(t, int):
            r = self.find(t)
            d = self._defn.get(r)
            return r if d is None else self.canon(d)
        op, parts = t
        out: list[Term] = []
        for p in parts:
            c = self.canon(p)
            if not isinstance(c, int) and c[0] == op:
                out.extend(c[1])
            else:
                out.append(c)
        if op == "+":
            kept = [p for p in out if self.size(p) > 0]
            if not kept:
                return out[0] if out else self.new(0)
        else:
            kept = [p for p in out if self.size(p) != 1]
            if not kept:
                return out[0] if out else self.new(1)
        return kept[0] if len(kept) == 1 else (op, tuple(kept))

    def leaves(self, t: Term) -> list[int]:
        """Class roots of the canonical form of `t`, in order, with repetitions."""
        c = self.canon(t)
        if isinstance(c, int):
            return [c]
        out: list[int] = []
        for p in c[1]:
            out.extend(self.leaves(p))
        return out

    @staticmethod
    def prod(parts: Iterable[Term]) -> Term:
        """A product term (a single part is returned as is)."""
        ps = tuple(parts)
        return ps[0] if len(ps) == 1 else ("*", ps)

    @staticmethod
    def sum(parts: Iterable[Term]) -> Term:
        """A sum (concatenation) term (a single part is returned as is)."""
        ps = tuple(parts)
        return ps[0] if len(ps) == 1 else ("+", ps)

    # ------------------------------------------------------------------ freezing and tags
    def freeze(self, t: Term, reason: str) -> None:
        """Mark every class of `t` as not prunable (the first reason recorded wins)."""
        for r in self.leaves(t):
            info = self.info(r)
            if info.frozen is None:
                info.frozen = reason

    def reduce(self, t: Term, reason: str) -> None:
        """Record that `t` is normalized over (LayerNorm-like): prunable only as hidden width."""
        for r in self.leaves(t):
            info = self.info(r)
            if reason not in info.reduced:
                info.reduced.append(reason)

    def tag(self, t: Term, tag: str) -> None:
        """Attach a free-form tag to every class of `t`."""
        for r in self.leaves(t):
            self.info(r).tags.add(tag)

    def frozen(self, root: int) -> str | None:
        """Frozen reason of a class, or None."""
        info = self._info.get(self.find(root))
        return None if info is None else info.frozen

    # ------------------------------------------------------------------ unification
    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            raise AssertionError("union of atoms of different sizes")
        self._touched.update((ra, rb))
        self._parent[rb] = ra
        ib = self._info.pop(rb, None)
        if ib is not None:
            self.info(ra).merge(ib)

    def _define(self, root: int, t: Term) -> bool:
        r = self.find(root)
        if r in self._defn or self.size(t) != self._size[r]:
            return False
        if r in self.leaves(t):
            return False
        self._defn[r] = t
        self._touched.add(r)
        info = self._info.get(r)
        if info is not None:
            for leaf in self.leaves(t):
                self.info(leaf).merge(info)
        return True

    def unify(self, t1: Term, t2: Term) -> bool:
        """Make two terms the same index space, refining atoms where needed.

        Returns False when they cannot be made the same (sizes differ, or a refinement is not
        a sum/product of atoms); partial refinements made before the failure stay (they are
        always sound: a refinement never changes what an axis means, only how finely it is cut).
        It also fails past `MAX_UNIFY_DEPTH` nested steps.
        """
        if self._depth >= MAX_UNIFY_DEPTH:
            return False
        self._depth += 1
        try:
            return self._unify(t1, t2)
        finally:
            self._depth -= 1

    def _unify(self, t1: Term, t2: Term) -> bool:
        a, b = self.canon(t1), self.canon(t2)
        if self.size(a) != self.size(b):
            return False
        if a == b:
            return True
        if isinstance(a, int) and isinstance(b, int):
            self._union(a, b)
            return True
        if isinstance(a, int):
            return self._define(a, b)
        if isinstance(b, int):
            return self._define(b, a)
        if a[0] == "+" or b[0] == "+":
            s, x = (a, b) if a[0] == "+" else (b, a)
            rest: Term = x
            for part in s[1][:-1]:
                cut = self.split(rest, self.size(part))
                if cut is None:
                    return False
                head, rest = cut
                if not self.unify(part, head):
                    return False
            return self.unify(s[1][-1], rest)
        fa, fb = list(a[1]), list(b[1])
        while fa and fb:
            x, y = self.canon(fa[0]), self.canon(fb[0])
            sx, sy = self.size(x), self.size(y)
            if sx == sy:
                if not self.unify(x, y):
                    return False
                fa.pop(0)
                fb.pop(0)
            elif sx < sy:
                cut = self._split_factor(y, sx)
                if cut is None or not self.unify(x, cut[0]):
                    return False
                fa.pop(0)
                fb[0] = cut[1]
            else:
                cut = self._split_factor(x, sy)
                if cut is None or not self.unify(cut[0], y):
                    return False
                fb.pop(0)
                fa[0] = cut[1]
        return not fa and not fb

    def _split_factor(self, t: Term, k: int) -> tuple[Term, Term] | None:
        """Write `t` as a product (k, size/k): only atoms can be cut this way."""
        c = self.canon(t)
        n = self.size(c)
        if k <= 0 or n % k:
            return None
        if isinstance(c, int):
            hi, lo = self.new(k), self.new(n // k)
            if not self._define(c, ("*", (hi, lo))):
                return None
            return hi, lo
        if c[0] == "*":  # leading factors whose sizes multiply to k
            parts = list(c[1])
            acc, i = 1, 0
            while i < len(parts) and acc < k:
                acc *= self.size(parts[i])
                i += 1
            if acc == k:
                return self.prod(parts[:i]), self.prod(parts[i:])
            return None
        return None

    def split(self, t: Term, k: int) -> tuple[Term, Term] | None:
        """Write `t` as a concatenation (first k positions, the rest), refining atoms."""
        c = self.canon(t)
        n = self.size(c)
        if not 0 < k < n:
            return None
        if isinstance(c, int):
            head, tail = self.new(k), self.new(n - k)
            if not self._define(c, ("+", (head, tail))):
                return None
            return head, tail
        op, parts = c
        if op == "+":
            off = 0
            for i, p in enumerate(parts):
                sp = self.size(p)
                if off == k:
                    return self.sum(parts[:i]), self.sum(parts[i:])
                if off < k < off + sp:
                    cut = self.split(p, k - off)
                    if cut is None:
                        return None
                    return self.sum((*parts[:i], cut[0])), self.sum((cut[1], *parts[i + 1 :]))
                off += sp
            return None
        first, rest = parts[0], parts[1:]
        block = self.size(self.prod(rest))
        if k % block:
            return None
        cut = self.split(first, k // block)
        if cut is None:
            return None
        return self.prod((cut[0], *rest)), self.prod((cut[1], *rest))

    # ------------------------------------------------------------------ index maps
    def coords(self, t: Term, root: int) -> npt.NDArray[np.int64]:
        """For each flat position of `t`, its coordinate in class `root` (-1 where absent).

        Raises ValueError if the class occurs twice in one product (not a rectangular cut).
        """
        c = self.canon(t)
        r = self.find(root)
        return self._coords(c, r)

    def _coords(self, c: Term, r: int) -> npt.NDArray[np.int64]:
        if isinstance(c, int):
            n = self._size[c]
            return np.arange(n, dtype=np.int64) if c == r else np.full(n, -1, dtype=np.int64)
        op, parts = c
        subs = [self._coords(p, r) for p in parts]
        if op == "+":
            return np.concatenate(subs) if subs else np.zeros(0, dtype=np.int64)
        hit = [i for i, s in enumerate(subs) if (s >= 0).any()]
        total = int(np.prod([len(s) for s in subs]))
        if not hit:
            return np.full(total, -1, dtype=np.int64)
        if len(hit) > 1:
            raise ValueError("class occurs twice in one product")
        i = hit[0]
        before = int(np.prod([len(s) for s in subs[:i]])) if i else 1
        after = int(np.prod([len(s) for s in subs[i + 1 :]])) if i + 1 < len(subs) else 1
        return np.tile(np.repeat(subs[i], after), before)

    def keep_mask(self, t: Term, removed: Mapping[int, Iterable[int]]) -> npt.NDArray[np.bool_]:
        """Flat positions of `t` kept when, for each class root, the given coordinates go."""
        c = self.canon(t)
        mask = np.ones(self.size(c), dtype=bool)
        for leaf in dict.fromkeys(self.leaves(c)):
            gone = removed.get(leaf)
            if gone:
                mask &= ~np.isin(self._coords(c, leaf), np.fromiter(gone, dtype=np.int64))
        return mask

    def size_under(self, t: Term, sizes: Mapping[int, int]) -> int:
        """Size of `t` when class roots take the sizes in `sizes` (others keep theirs)."""
        c = self.canon(t)
        return self._size_under(c, sizes)

    def _size_under(self, c: Term, sizes: Mapping[int, int]) -> int:
        if isinstance(c, int):
            return int(sizes.get(c, self._size[c]))
        op, parts = c
        vals = [self._size_under(p, sizes) for p in parts]
        if op == "+":
            return sum(vals)
        n = 1
        for v in vals:
            n *= v
        return n

    def touched(self, a: int) -> bool:
        """Whether atom `a` was ever unified with or defined as something."""
        return a in self._touched

    def roots(self) -> Iterator[int]:
        """Every class root that is a leaf (not refined)."""
        for a in range(len(self._size)):
            if self._parent[a] == a and a not in self._defn:
                yield a

    def atom_size(self, root: int) -> int:
        """Size of a class."""
        return self._size[self.find(root)]

    def describe(self, t: Term) -> str:
        """Human form of a term, e.g. `(#12 * #13)`."""
        c = self.canon(t)
        if isinstance(c, int):
            return f"#{c}[{self._size[c]}]"
        sep = " + " if c[0] == "+" else " * "
        return "(" + sep.join(self.describe(p) for p in c[1]) + ")"
