"""The HTML report: one self-contained page rendered from the JSON report (`Report.to_dict()`).

No scripts, no fonts, no images from anywhere: CSS in a `<style>` element and charts as inline SVG
(`reporting.svg`), so the file opens offline, in a mail attachment or in CI artifacts. It renders
from the JSON alone, so a saved `report.json` gives the same page (`spa-compile report`).

Sections, each shown only when the report has its data: the verdict (budget, paired latency), the
three latencies (as given, lowered dense, compiled), what every pass did per layer or group (its
`details` records: pruning groups, N:M / Monarch sites, any other kind as a generic table), the
search rounds (predicted against measured), the latency table's provenance, notes, skipped
candidates with reasons, and how to reproduce the run. A comparison report (several budgets) adds
a table and a latency-against-quality plot above one collapsible section per budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spa_compiler.reporting.svg import (
    BUDGET_COLOUR,
    PALETTE,
    Bar,
    Series,
    bar_chart,
    esc,
    fmt_num,
    meter,
    xy_chart,
)

#: Schema tag of the multi-budget comparison report (JSON).
COMPARE_SCHEMA = "spa-compare/1"

CSS = """
:root { --ink:#1d1d1f; --muted:#5f6368; --line:#dadce0; --ok:#1e7e34; --bad:#b3261e; --warn:#8a6100;
        --bg:#ffffff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 15px/1.5 system-ui, -apple-system,
       "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
.verdict { border-radius: 10px; padding: 14px 18px; margin: 16px 0 8px; font-size: 18px;
  border: 2px solid; }
.verdict.ok { border-color: var(--ok); background: #e9f5ec; }
.verdict.bad { border-color: var(--bad); background: #fcebea; }
.verdict.none { border-color: var(--line); background: var(--panel); }
.verdict b { font-size: 21px; }
p.story { font-size: 16px; margin: 10px 0; }
.verdict .sub { font-size: 14px; color: var(--muted); margin-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0; }
.card { flex: 1 1 180px; background: var(--panel); border: 1px solid var(--line);
        border-radius: 8px;
        padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 13px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .s { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 12px; font-size: 14px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td code, li code, p code, dd code { font-size: 13px; }
code { background: var(--panel); padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
code.name { overflow-wrap: normal; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; }
.pill.ok { background: #d7f0dd; color: var(--ok); }
.pill.bad { background: #f9d8d6; color: var(--bad); }
.pill.warn { background: #fbefc9; color: var(--warn); }
.pill.muted { background: #eceff1; color: var(--muted); }
.muted { color: var(--muted); }
ul.notes li { margin: 3px 0; }
dl.kv { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 2px 16px;
         margin: 6px 0;
         font-size: 14px; }
dl.kv.one { grid-template-columns: max-content 1fr; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; word-break: break-all; }
details.run { border: 1px solid var(--line); border-radius: 8px; padding: 6px 14px;
  margin: 12px 0; }
details.run > summary { cursor: pointer; font-weight: 600; font-size: 17px; padding: 4px 0; }
svg.chart { max-width: 100%; height: auto; display: block; margin: 6px 0; }
svg.meter { vertical-align: middle; margin-right: 6px; }
.error { border-left: 4px solid var(--bad); background: #fcebea; padding: 8px 12px;
  margin: 10px 0; }
.glossary dt { font-weight: 600; } .glossary dd { margin: 0 0 8px 0; color: var(--muted); }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""


# ---------------------------------------------------------------------------------------- helpers
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _ms(x: Any, digits: int = 4) -> str:
    v = _num(x)
    return "–" if v is None else f"{fmt_num(v, digits)} ms"


def _int(x: Any) -> str:
    return (
        f"{x:,}"
        if isinstance(x, int) and not isinstance(x, bool)
        else esc(x)
        if x is not None
        else "–"
    )


def _value(v: Any) -> str:
    """Any JSON value as short HTML text."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return esc(fmt_num(v, 4))
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, (dict, list)):
        return f"<code>{esc(json.dumps(v, separators=(', ', ': '), default=str))}</code>"
    return esc("–" if v is None else v)


def _kv(pairs: Iterable[tuple[str, Any]], *, one_column: bool = False) -> str:
    rows = "".join(
        f"<dt>{esc(k)}</dt><dd>{_value(v)}</dd>" for k, v in pairs if v not in (None, "", {}, [])
    )
    return f'<dl class="kv{" one" if one_column else ""}">{rows}</dl>' if rows else ""


def _name(x: Any) -> str:
    """A graph name, escaped, with line-break opportunities after its separators."""
    text = esc(x)
    for sep in ("/", ":", "."):
        text = text.replace(sep, sep + "<wbr>")
    return text


def _pill(text: str, kind: str) -> str:
    return f'<span class="pill {kind}">{esc(text)}</span>'


def _short(path: Any) -> str:
    s = str(path or "")
    return s.rsplit("/", 1)[-1] if s else "–"


# ------------------------------------------------------------------------------ report accessors
def latencies(r: Mapping[str, Any]) -> dict[str, Any]:
    """The three latencies the verdict rests on, in ms (None where the report has none), with how
    they were timed: {"given", "lowered", "compiled", "paired": bool, "kind", "runs"}."""
    before, after = r.get("before") or {}, r.get("after") or {}
    paired = after.get("paired") or {}
    lowering = r.get("lowering") or {}
    if paired:
        return {
            "given": _num(paired.get("dense_ms")),
            "lowered": _num(paired.get("lowered_dense_ms")),
            "compiled": _num(paired.get("compiled_ms")),
            "paired": True,
            "kind": paired.get("kind"),
            "runs": paired.get("runs"),
        }
    return {
        "given": _num(before.get("latency_ms")),
        "lowered": _num(lowering.get("dense_ms")),
        "compiled": _num(after.get("latency_ms")),
        "paired": False,
        "kind": after.get("latency_kind") or before.get("latency_kind"),
        "runs": after.get("latency_runs"),
    }


def verdict(r: Mapping[str, Any]) -> tuple[str, str]:
    """(word, css class): FAILED / met / NOT met / not checked / no budget."""
    if r.get("status") == "failed":
        return "FAILED", "bad"
    if r.get("status") == "interrupted":
        return "INTERRUPTED", "bad"
    b = r.get("budget") or {}
    if not b:
        return "no budget", "none"
    met = b.get("met")
    if met is True:
        return "met", "ok"
    if met is False:
        return "NOT met", "bad"
    return "not checked", "none"


def quality(r: Mapping[str, Any]) -> dict[str, float]:
    """The report's quality figures: each lossy pass's mean layer error (`<pass> mean error`), their
    sum when several passes report one (`mean error`), and any `fidelity` figures the report has
    (top-level dict, or pass stats named fidelity*)."""
    out: dict[str, float] = {}
    errors = []
    for p in r.get("passes") or []:
        stats = p.get("stats") or {}
        for key in ("mean_error", "mean_error_applied"):
            v = _num(stats.get(key))
            if v is not None:
                out[f"{p.get('name')} mean error"] = v
                errors.append(v)
                break
        for k, v in stats.items():
            if str(k).startswith("fidelity") and _num(v) is not None:
                out[f"{k}"] = float(v)
    if errors:
        out["mean error"] = float(sum(errors))
    fid = r.get("fidelity")
    if isinstance(fid, Mapping):
        for k, v in fid.items():
            if _num(v) is not None:
                out[f"fidelity {k}"] = float(v)
    return out


def _search_records(r: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(pass record, detail record) for every detail with search rounds or a latency table."""
    found = []
    for p in r.get("passes") or []:
        for d in p.get("details") or []:
            if isinstance(d, Mapping) and ("search_rounds" in d or "latency_table" in d):
                found.append((p, d))
    return found


# --------------------------------------------------------------------------------- the sections
def _verdict_block(r: Mapping[str, Any]) -> str:
    word, cls = verdict(r)
    b = r.get("budget") or {}
    lat = latencies(r)
    parts = []
    if r.get("status") in ("failed", "interrupted"):
        parts.append(f"<b>{esc(word)}</b>: {esc(r.get('error') or 'no reason recorded')}")
    elif b:
        parts.append(
            f"Budget <b>{esc(b.get('requested'))}</b> = {esc(_ms(b.get('ms')))}: <b>{esc(word)}</b>"
        )
    else:
        parts.append("<b>No latency budget</b> was given: the pipeline ran as specified.")
    sub = []
    if lat["compiled"] is not None and lat["given"]:
        how = "timed in alternation with the dense model" if lat["paired"] else "timed separately"
        sub.append(
            f"compiled {esc(_ms(lat['compiled']))} = {lat['compiled'] / lat['given']:.3f}x of the model as "
            f"given ({esc(_ms(lat['given']))}), {how}"
            + (f", {esc(lat['runs'])} runs" if lat.get("runs") else "")
        )
    if _num(b.get("measured_fraction")) is not None and b.get("relative_to"):
        sub.append(
            f"budget relative to the {esc(b['relative_to'])}: measured {b['measured_fraction']:.3f}x"
        )
    if b.get("met_by_lowering_alone"):
        sub.append("lowering alone met the budget: nothing lossy was done")
    if lat.get("kind") == "analytic":
        sub.append(
            "latencies are ANALYTIC estimates, not measurements (no target device on this machine)"
        )
    sub_html = "".join(f'<div class="sub">{s}</div>' for s in sub)
    return f'<div class="verdict {cls}">{"".join(parts)}{sub_html}</div>'


def story(r: Mapping[str, Any]) -> str:
    """What happened, in a few plain sentences (text, no markup)."""
    sentences = []
    for p in r.get("passes") or []:
        details = [d for d in p.get("details") or [] if isinstance(d, Mapping)]
        groups = [d for d in details if classify(d) == "pruning"]
        sites = [d for d in details if classify(d) == "site"]
        name = p.get("name", "?")
        if groups:
            pruned = [
                d
                for d in groups
                if isinstance(d.get("kept"), int) and d["kept"] < d.get("units", 0)
            ]
            removed = sum(d["units"] - d["kept"] for d in pruned)
            sentences.append(
                f"{name} pruned {len(pruned)} of {len(groups)} prunable groups "
                f"({removed} units removed) and kept the others dense."
            )
        if sites:
            applied = [
                d for d in sites if d.get("applied", d.get("variant") not in (None, "dense"))
            ]
            kinds = sorted({str(d.get("variant")) for d in applied})
            sentences.append(
                f"{name} changed {len(applied)} of {len(sites)} sites"
                + (f" ({', '.join(kinds)})" if kinds else "")
                + "."
            )
        skipped = sum(int(n) for n in (p.get("skipped") or {}).values() if isinstance(n, int))
        if skipped and (groups or sites):
            sentences.append(f"It left {skipped} candidates alone (reasons below).")
    before, after = r.get("before") or {}, r.get("after") or {}
    if _num(before.get("params")) and _num(after.get("params")) is not None:
        s = f"Parameters are {after['params'] / before['params']:.0%} of the original"
        if _num(before.get("macs")) and _num(after.get("macs")) is not None:
            s += f", MACs {after['macs'] / before['macs']:.0%}"
        sentences.append(s + ".")
    lat = latencies(r)
    if lat["compiled"] is not None and lat["given"]:
        sentences.append(
            f"The written model runs in {fmt_num(lat['compiled'], 4)} ms, "
            f"{lat['compiled'] / lat['given']:.0%} of the {fmt_num(lat['given'], 4)} ms the model as "
            "given takes" + (" (timed in alternation)." if lat["paired"] else ".")
        )
    word, _ = verdict(r)
    b = r.get("budget") or {}
    if b and word in ("met", "NOT met"):
        sentences.append(
            f"The budget of {fmt_num(b.get('ms'), 4)} ms ({b.get('requested')}) is {word}."
        )
    return " ".join(sentences)


def _cards(r: Mapping[str, Any]) -> str:
    before, after = r.get("before") or {}, r.get("after") or {}
    lat = latencies(r)
    cards = []

    def card(k: str, v: str, s: str = "") -> None:
        cards.append(
            f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
            f'<div class="s">{s}</div></div>'
        )

    if lat["given"] is not None:
        card("latency as given", esc(_ms(lat["given"])), "the input model")
    if lat["lowered"] is not None:
        s = (
            f"{lat['lowered'] / lat['given']:.3f}x of as given"
            if lat["given"]
            else "lossless rewrites only"
        )
        card("lowered dense", esc(_ms(lat["lowered"])), esc(s))
    if lat["compiled"] is not None:
        s = f"{lat['compiled'] / lat['given']:.3f}x of as given" if lat["given"] else ""
        card("compiled", esc(_ms(lat["compiled"])), esc(s))
    for key, label in (("params", "parameters"), ("macs", "MACs")):
        if before.get(key) is not None and after.get(key) is not None and before.get(key):
            card(
                label, _int(after[key]), f"of {_int(before[key])} ({after[key] / before[key]:.3f}x)"
            )
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _latency_section(r: Mapping[str, Any]) -> str:
    lat = latencies(r)
    b = r.get("budget") or {}
    if all(lat[k] is None for k in ("given", "lowered", "compiled")):
        return ""
    bars = [
        Bar("as given", lat["given"], PALETTE[4]),
        Bar("lowered dense", lat["lowered"], PALETTE[2]),
        Bar("compiled", lat["compiled"], PALETTE[0]),
    ]
    if lat["lowered"] is None:
        bars = [bars[0], bars[2]]
    given = lat["given"]
    bars = [
        Bar(
            x.label,
            x.value,
            x.colour,
            f"({x.value / given:.3f}x)" if given and x.value and x is not bars[0] else "",
        )
        for x in bars
    ]
    unit = "ms (analytic estimate)" if lat.get("kind") == "analytic" else "ms"
    chart = bar_chart(
        bars,
        title="Latency: as given, lowered dense, compiled",
        unit=unit,
        budget=_num(b.get("ms")),
        budget_label="budget",
        width=900,
    )
    n = sum(1 for x in bars if x.value is not None)
    how = (
        f"{'All three' if n == 3 else 'Both'} were timed in one alternating run (dense and "
        "compiled interleaved), so a change of machine load affects them alike."
        if lat["paired"]
        else "These latencies were timed separately (no paired run in this report)."
    )
    table = _before_after_table(r)
    lowering = _lowering_block(r)
    return f"<h2>Latency</h2>{chart}<p class='muted'>{how}</p>{table}{lowering}"


def _before_after_table(r: Mapping[str, Any]) -> str:
    before, after = r.get("before") or {}, r.get("after") or {}
    if not before:
        return ""
    rows = []
    for key, label in (
        ("params", "parameters"),
        ("macs", "MACs"),
        ("nodes", "nodes"),
        ("latency_ms", "latency, timed alone (median)"),
    ):
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        ratio = f"{a / b:.3f}x" if _num(a) is not None and _num(b) else ""
        fmt = _ms if key == "latency_ms" else _int
        rows.append(
            f"<tr><td>{esc(label)}</td><td class='num'>{esc(fmt(b)) if key == 'latency_ms' else fmt(b)}</td>"
            f"<td class='num'>{esc(fmt(a)) if key == 'latency_ms' else fmt(a)}</td><td class='num'>{ratio}</td></tr>"
        )
    b_ops, a_ops = before.get("ops") or {}, after.get("ops") or {}
    if isinstance(b_ops, Mapping) and isinstance(a_ops, Mapping):
        for op in sorted(set(b_ops) | set(a_ops)):
            if b_ops.get(op, 0) != a_ops.get(op, 0):
                rows.append(
                    f"<tr><td>{esc(op)} nodes</td><td class='num'>{_int(b_ops.get(op, 0))}</td>"
                    f"<td class='num'>{_int(a_ops.get(op, 0))}</td><td class='num'></td></tr>"
                )
    prov = before.get("latency_provider")
    where = ", ".join(
        str(x)
        for x in (
            prov,
            before.get("latency_device"),
            before.get("runtime"),
            before.get("precision"),
        )
        if x
    )
    cap = f"<p class='muted'>Timed with {esc(where)}.</p>" if where else ""
    return (
        "<table><tr><th></th><th class='num'>before</th><th class='num'>after</th><th class='num'>ratio</th></tr>"
        + "".join(rows)
        + "</table>"
        + cap
    )


def _lowering_block(r: Mapping[str, Any]) -> str:
    low = r.get("lowering") or {}
    if not low:
        return ""
    rows = []
    for t in low.get("tried") or []:
        if not isinstance(t, Mapping):
            continue
        state = (
            _pill("kept", "ok")
            if t.get("kept")
            else _pill("not applicable", "muted")
            if t.get("applicable") is False
            else _pill("not kept", "warn")
        )
        rest = {k: v for k, v in t.items() if k not in ("family", "kept", "applicable")}
        rows.append(
            f"<tr><td>{esc(t.get('family', '?'))}</td><td>{state}</td><td>{_value(rest) if rest else ''}</td></tr>"
        )
    table = (
        "<table><tr><th>rewrite</th><th>outcome</th><th>details</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else ""
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in low.get("notes") or [])
    return (
        "<h3>Lowering (lossless rewrites for the target)</h3>"
        + _kv(
            [
                ("chosen", low.get("describe")),
                ("mode", low.get("mode")),
                (
                    "lowered dense",
                    _ms(low.get("dense_ms")) if low.get("dense_ms") is not None else None,
                ),
            ]
        )
        + table
        + (f"<ul class='notes'>{notes}</ul>" if notes else "")
    )


def _error_of(d: Mapping[str, Any], variant: Any) -> float | None:
    e = d.get("error")
    if isinstance(e, Mapping):
        if variant is not None and str(variant) in e:
            return _num(e[str(variant)])
        return None
    return _num(e)


def _gain_of(d: Mapping[str, Any], variant: Any) -> float | None:
    g = d.get("measured_gain_ms")
    if isinstance(g, Mapping):
        return _num(g.get(str(variant))) if variant is not None else None
    return _num(g)


def classify(d: Mapping[str, Any]) -> str:
    """The kind of a pass's detail record: search, pruning, site (N:M, Monarch, any named
    variant of one weight), or other."""
    if "search_rounds" in d or "latency_table" in d:
        return "search"
    if "group" in d and "kept" in d:
        return "pruning"
    if "site" in d and ("variant" in d or "applied" in d):
        return "site"
    return "other"


def _pruning_table(records: Sequence[Mapping[str, Any]], dense_ms: float | None) -> str:
    rows = []
    max_err = max([_num(d.get("error")) or 0.0 for d in records] + [1e-12])
    for d in records:
        n, k = d.get("units"), d.get("kept")
        unit = str(d.get("unit") or "unit")
        if isinstance(n, int) and isinstance(k, int) and k < n:
            done = f"pruned to {k} of {n} {unit}s"
            state = _pill("pruned", "warn")
        else:
            done = f"kept dense ({n} {unit}s)"
            state = _pill("kept", "muted")
        share = k / n if isinstance(n, int) and isinstance(k, int) and n else None
        err = _num(d.get("error"))
        lat = _num(d.get("latency_ms"))
        dense_c = _num(d.get("latency_dense_ms"))
        # the table's contributions are above its base (the rest of the model), so the saving
        # (dense contribution - chosen) is what a reader can compare across groups
        lat_txt = "–"
        if lat is not None and dense_c is not None:
            saved = dense_c - lat
            lat_txt = esc(_ms(saved)) + (f" ({saved / dense_ms:.1%})" if dense_ms else "")
            lat_txt += f"<br><span class='muted'>contribution {esc(_ms(lat))} of {esc(_ms(dense_c))} dense</span>"
        elif lat is not None:
            lat_txt = f"<span class='muted'>contribution {esc(_ms(lat))}</span>"
        extra = ", ".join(str(d[x]) for x in ("moments", "note") if d.get(x))
        rows.append(
            f"<tr><td><code class='name'>{_name(d.get('group'))}</code></td><td>{state} {esc(done)}</td>"
            f"<td class='num'>{meter(share or 0.0, colour=PALETTE[0], width=60) if share is not None else ''}"
            f"{f'{share:.0%}' if share is not None else '–'}</td>"
            f"<td class='num'>{meter((err or 0.0) / max_err, colour=PALETTE[5], width=60) if err is not None else ''}"
            f"{esc(fmt_num(err, 3)) if err is not None else '–'}</td>"
            f"<td class='num'>{lat_txt}</td><td class='muted'>{esc(extra)}</td></tr>"
        )
    return (
        "<table><tr><th>group</th><th>what was done</th><th class='num'>kept</th><th class='num'>error</th>"
        "<th class='num'>measured saving in context (share of dense)</th><th>notes</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _site_table(records: Sequence[Mapping[str, Any]], dense_ms: float | None) -> str:
    rows = []
    for d in records:
        v = d.get("variant")
        applied = d.get("applied", v not in (None, "dense"))
        done = f"{v}" if applied else "kept dense"
        if applied and d.get("form"):
            done += f" ({d['form']})"
        state = _pill("applied", "warn") if applied else _pill("kept", "muted")
        err = _error_of(d, v) if applied else 0.0
        gain = _gain_of(d, v) if applied else None
        gain_txt = "–"
        if gain is not None:
            gain_txt = esc(_ms(gain)) + (f" ({gain / dense_ms:.1%})" if dense_ms else "")
        where = d.get("node") or ""
        op = " ".join(str(x) for x in (d.get("op"), d.get("shape")) if x)
        rows.append(
            f"<tr><td><code class='name'>{_name(d.get('site'))}</code>"
            + (f"<br><span class='muted'>{esc(where)} {esc(op)}</span>" if where or op else "")
            + f"</td><td>{state} {esc(done)}</td><td class='num'>{esc(fmt_num(err, 3)) if err is not None else '–'}</td>"
            f"<td class='num'>{gain_txt}</td><td class='muted'>{esc(d.get('why') or '')}</td></tr>"
        )
    return (
        "<table><tr><th>site</th><th>what was done</th><th class='num'>error</th>"
        "<th class='num'>measured saving (share of dense)</th><th>why</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _generic_table(records: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for d in records:
        keys.extend(k for k in d if k not in keys)
    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_value(d.get(k))}</td>" for k in keys) + "</tr>" for d in records
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


#: Stats shown first, in words, when a pass has them.
_STAT_LABELS = {
    "mode": "mode",
    "criterion": "criterion",
    "groups_pruned": "groups pruned",
    "units_removed": "units removed",
    "budget_ms": "budget (ms)",
    "predicted_ms": "predicted (ms)",
    "measured_ms": "measured by the search (ms)",
    "mean_error": "mean layer error",
    "mean_error_applied": "mean error of applied sites",
    "max_mean_error": "error bound",
    "search_rounds": "search rounds",
    "budget_met": "budget met by the search",
    "unreachable": "unreachable because",
}


def _passes_section(r: Mapping[str, Any]) -> str:
    passes = r.get("passes") or []
    if not passes:
        return ""
    dense = latencies(r)["given"]
    out = [
        "<h2>What each pass did</h2>",
        "<p class='muted'>Per layer or group: what was done, the error the criterion estimates for it "
        "(relative output error of that layer; 0 = unchanged) and the latency it saves, measured in context "
        "on the target (the latency table: the model timed with the group at each level).</p>",
    ]
    for p in passes:
        name = p.get("name", "?")
        state = (
            _pill("failed", "bad")
            if p.get("error")
            else _pill("modified", "warn")
            if p.get("modified")
            else _pill("no change", "muted")
        )
        secs = _num(p.get("seconds"))
        out.append(
            f"<h3><code>{esc(name)}</code> {state} <span class='muted'>"
            f"{'' if secs is None else f'{secs:.2f} s'}</span></h3>"
        )
        if p.get("error"):
            out.append(f"<div class='error'>{esc(p['error'])}</div>")
        stats = dict(p.get("stats") or {})
        first = [(label, stats.pop(k)) for k, label in _STAT_LABELS.items() if k in stats]
        if first or stats:
            out.append(_kv(first + [(k.replace("_", " "), v) for k, v in stats.items()]))
        details = [d for d in p.get("details") or [] if isinstance(d, Mapping)]
        pruning = [d for d in details if classify(d) == "pruning"]
        sites = [d for d in details if classify(d) == "site"]
        other = [d for d in details if classify(d) == "other"]
        if pruning:
            out.append(_pruning_table(pruning, _table_dense(details) or dense))
        if sites:
            out.append(_site_table(sites, _table_dense(details) or dense))
        if other:
            out.append(_generic_table(other))
        skipped = p.get("skipped") or {}
        if skipped:
            items = "".join(
                f"<li>{_int(n)} × <code>{esc(reason)}</code></li>"
                for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            out.append(
                f"<p><b>Skipped candidates</b> (left unchanged, with the reason):</p><ul class='notes'>{items}</ul>"
            )
        opts = p.get("options") or {}
        if opts:
            out.append(
                f"<details><summary class='muted'>options</summary>{_kv(opts.items())}</details>"
            )
    return "".join(out)


def _table_dense(details: Sequence[Mapping[str, Any]]) -> float | None:
    """The latency table's dense ms when a search record says it (the table's own units)."""
    for d in details:
        lt = d.get("latency_table")
        if isinstance(lt, Mapping) and _num(lt.get("dense_ms")) is not None:
            return float(lt["dense_ms"])
    return None


def _rounds_section(r: Mapping[str, Any]) -> str:
    out = []
    for p, d in _search_records(r):
        rounds = [x for x in d.get("search_rounds") or [] if isinstance(x, Mapping)]
        if not rounds:
            continue
        stats = p.get("stats") or {}
        # rounds are in the latency table's milliseconds; the user's are table x dense_now / table_dense
        t_dense, now = _num(stats.get("table_dense_ms")), _num(stats.get("dense_ms"))
        scale = now / t_dense if t_dense and now else 1.0
        unit = "ms" if t_dense and now else "ms (latency table's units)"
        pred = [
            (float(x.get("round", i + 1)), float(x["predicted_ms"]) * scale)
            for i, x in enumerate(rounds)
            if _num(x.get("predicted_ms")) is not None
        ]
        meas = [
            (float(x.get("round", i + 1)), float(x["measured_ms"]) * scale)
            for i, x in enumerate(rounds)
            if _num(x.get("measured_ms")) is not None
        ]
        budget = _num(stats.get("budget_ms")) or _num((r.get("budget") or {}).get("ms"))
        hlines = [(budget, f"budget {fmt_num(budget, 4)} ms", BUDGET_COLOUR)] if budget else []
        aimed = _num(stats.get("aimed_ms"))
        if aimed:
            hlines.append((aimed, f"aimed {fmt_num(aimed, 4)} ms", "#888"))
        chart = xy_chart(
            [
                Series("predicted (table)", pred, PALETTE[1], dashed=True, filled=False),
                Series("measured (whole model)", meas, PALETTE[0]),
            ],
            title=f"{p.get('name')}: predicted against measured latency per search round",
            x_label="search round",
            y_label=f"latency ({unit})",
            hlines=hlines,
            x_integer=True,
            width=900,
            height=300,
        )
        rows = []
        for x in rounds:
            pm, mm = _num(x.get("predicted_ms")), _num(x.get("measured_ms"))
            dev = f"{mm / pm - 1:+.1%}" if pm and mm is not None else "–"
            extra = {
                k: v
                for k, v in x.items()
                if k
                not in (
                    "round",
                    "predicted_ms",
                    "measured_ms",
                    "mean_error",
                    "status",
                    "internal_budget_ms",
                )
            }
            aim, err = _num(x.get("internal_budget_ms")), _num(x.get("mean_error"))
            cells = [
                esc(x.get("round")),
                esc(_ms(aim * scale)) if aim is not None else "–",
                esc(_ms(pm * scale)) if pm is not None else "–",
                esc(_ms(mm * scale)) if mm is not None else "–",
                dev,
                esc(fmt_num(err, 3)) if err is not None else "–",
            ]
            status = f"{esc(x.get('status', ''))}{' ' + _value(extra) if extra else ''}"
            rows.append(
                "<tr>"
                + "".join(f"<td class='num'>{c}</td>" for c in cells)
                + f"<td>{status}</td></tr>"
            )
        table = (
            "<table><tr><th class='num'>round</th><th class='num'>aimed at</th><th class='num'>predicted</th>"
            "<th class='num'>measured</th><th class='num'>measured vs predicted</th><th class='num'>mean error</th>"
            "<th>status</th></tr>" + "".join(rows) + "</table>"
        )
        why = (
            "Each round chooses one level per group from the latency table (predicted), rewrites the model "
            "and times it whole on the target (measured), then corrects the aim until the measurement lands "
            "just under the budget."
        )
        if t_dense and now:
            units = (
                f" The search works in the latency table's milliseconds (its dense model: "
                f"{fmt_num(t_dense, 4)} ms); shown here rescaled to this run's dense "
                f"{fmt_num(now, 4)} ms (x{scale:.3f})."
            )
        else:
            units = f" Units: {esc(d.get('search_units'))}." if d.get("search_units") else ""
        out.append(
            f"<h3><code>{esc(p.get('name'))}</code></h3>{chart}{table}<p class='muted'>{why}{units}</p>"
        )
    return ("<h2>Search rounds</h2>" + "".join(out)) if out else ""


def _provenance_section(r: Mapping[str, Any]) -> str:
    out = []
    for p, d in _search_records(r):
        lt = d.get("latency_table")
        if not isinstance(lt, Mapping):
            continue
        order = [
            "kind",
            "device",
            "provider",
            "runtime",
            "runtime_version",
            "precision",
            "threads",
            "input_shapes",
            "methods",
            "date",
            "tool_version",
            "model_name",
            "model_fingerprint",
            "notes",
        ]
        pairs = [(k.replace("_", " "), lt[k]) for k in order if k in lt]
        pairs += [(k.replace("_", " "), v) for k, v in lt.items() if k not in order]
        kind = lt.get("kind")
        warn = (
            "<p><span class='pill warn'>analytic</span> this table is an estimate, not a measurement.</p>"
            if kind == "analytic"
            else ""
        )
        out.append(
            f"<h3>used by <code>{esc(p.get('name'))}</code></h3>{warn}{_kv(pairs, one_column=True)}"
        )
    return ("<h2>Latency table provenance</h2>" + "".join(out)) if out else ""


def _notes_section(r: Mapping[str, Any]) -> str:
    items = [esc(n) for n in r.get("notes") or []]
    for p in r.get("passes") or []:
        items += [f"<code>{esc(p.get('name'))}</code>: {esc(n)}" for n in p.get("notes") or []]
    deploy = (r.get("output") or {}).get("deploy")
    if isinstance(deploy, Mapping) and deploy.get("checked") is False:
        items.append(f"deploy not checked: {esc(deploy.get('why'))}")
    if not items:
        return ""
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f"<h2>Notes and warnings</h2><ul class='notes'>{lis}</ul>"


def _skipped_summary(r: Mapping[str, Any]) -> str:
    rows = []
    for p in r.get("passes") or []:
        for reason, n in sorted((p.get("skipped") or {}).items()):
            rows.append(
                f"<tr><td><code>{esc(p.get('name'))}</code></td><td><code>{esc(reason)}</code></td>"
                f"<td class='num'>{_int(n)}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h2>Skipped candidates</h2><p class='muted'>Candidates a pass could not rewrite safely are left "
        "unchanged; declining is not failing.</p><table><tr><th>pass</th><th>reason</th><th class='num'>count</th>"
        "</tr>" + "".join(rows) + "</table>"
    )


def _run_section(r: Mapping[str, Any]) -> str:
    inp, out = r.get("input") or {}, r.get("output") or {}
    deploy = out.get("deploy")
    dep = None
    if isinstance(deploy, Mapping):
        dep = (
            deploy.get("checked")
            if isinstance(deploy.get("checked"), str)
            else ("checked" if deploy.get("checked") else None)
        )
    pairs = [
        ("input", inp.get("path")),
        ("input sha256", inp.get("sha256")),
        ("output", out.get("path")),
        ("target", r.get("target")),
        ("pipeline", r.get("pipeline")),
        (
            "output IR / opset",
            f"{out.get('ir_version')} / {out.get('opset')}" if out.get("ir_version") else None,
        ),
        ("deploy check", dep),
        ("tool version", r.get("tool_version")),
        ("created", r.get("created")),
        ("status", r.get("status")),
    ]
    return "<h2>The run</h2>" + _kv(pairs, one_column=True)


GLOSSARY = """
<h2>Reading this report</h2>
<dl class="glossary">
<dt>as given / lowered dense / compiled</dt><dd>The input model's latency; the same model after lossless
rewrites for the target (fusions, precision), when lowering ran; and the file written.</dd>
<dt>paired timing</dt><dd>Dense and compiled models timed in alternation in one run, so a change of machine
load affects both alike; the verdict uses it.</dd>
<dt>budget</dt><dd>The latency asked for: milliseconds, or a fraction (0.6x) of the dense latency. "met" means
the paired measurement of the written file is within it.</dd>
<dt>error</dt><dd>The criterion's estimate of the relative output error of a layer or group after its change
(0 = unchanged; 0.1 = outputs off by about 10% in norm). The mean error is the average over groups.</dd>
<dt>measured saving in context</dt><dd>How much the whole model's latency drops when this group or site
alone changes to the chosen level, measured on the target with the rest of the model around it (the
latency table); the share is of the dense model's latency. Savings add up only roughly.</dd>
<dt>search round</dt><dd>One choice of levels from the table (predicted), then a measurement of the whole
rewritten model; the next round corrects the aim.</dd>
</dl>
"""


def _body(r: Mapping[str, Any], *, glossary: bool = True) -> str:
    err = ""
    if r.get("error") and r.get("status") not in ("failed", "interrupted"):
        err = f"<div class='error'>{esc(r['error'])}</div>"
    return "".join(
        [
            _verdict_block(r),
            f"<p class='story'>{esc(story(r))}</p>" if story(r) else "",
            err,
            _cards(r),
            _latency_section(r),
            _passes_section(r),
            _rounds_section(r),
            _provenance_section(r),
            _notes_section(r),
            _skipped_summary(r),
            _run_section(r),
            GLOSSARY if glossary else "",
        ]
    )


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}"
        "<footer>Written by spa-compiler. This page is self-contained: no scripts, no network.</footer>"
        "</main></body></html>\n"
    )


# ------------------------------------------------------------------------------------ public API
def render_report(r: Mapping[str, Any]) -> str:
    """The HTML page of one compile report (a `Report.to_dict()` or a loaded report.json)."""
    src, dst = (
        _short((r.get("input") or {}).get("path")),
        _short((r.get("output") or {}).get("path")),
    )
    head = (
        f"<h1>spa-compiler report</h1><p class='lead'><code>{esc(src)}</code> → <code>{esc(dst)}</code>"
        f" on <b>{esc(r.get('target') or '?')}</b></p>"
    )
    return _page(f"spa-compiler: {src} → {dst}", head + _body(r))


def comparison(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The multi-budget comparison report: {"schema", "runs": [{"budget", "output", "report"}]}."""
    return {
        "schema": COMPARE_SCHEMA,
        "runs": [
            {
                "budget": (x.get("budget") or {}).get("requested"),
                "output": (x.get("output") or {}).get("path"),
                "report": dict(x),
            }
            for x in runs
        ],
    }


def render_comparison(data: Mapping[str, Any]) -> str:
    """The HTML page comparing compiles of one model at several budgets."""
    runs = [x.get("report") or {} for x in data.get("runs") or []]
    src = _short(((runs[0] if runs else {}).get("input") or {}).get("path"))
    target = (runs[0] if runs else {}).get("target") or "?"
    head = (
        f"<h1>spa-compiler: {len(runs)} budgets compared</h1><p class='lead'><code>{esc(src)}</code> on "
        f"<b>{esc(target)}</b></p>"
    )
    rows, labels = [], []
    for i, r in enumerate(runs):
        lat, b = latencies(r), r.get("budget") or {}
        word, cls = verdict(r)
        q = quality(r)
        after, before = r.get("after") or {}, r.get("before") or {}
        pr = (
            f"{after['params'] / before['params']:.3f}x"
            if _num(after.get("params")) and _num(before.get("params"))
            else "–"
        )
        ratio = (
            f"{lat['compiled'] / lat['given']:.3f}x" if lat["compiled"] and lat["given"] else "–"
        )
        labels.append(str(b.get("requested") or f"run {i + 1}").replace(" of dense", ""))
        rows.append(
            f"<tr><td><a href='#run{i}'>{esc(b.get('requested') or '–')}</a></td>"
            f"<td class='num'>{esc(_ms(b.get('ms')))}</td><td class='num'>{esc(_ms(lat['compiled']))}</td>"
            f"<td class='num'>{ratio}</td><td>{_pill(word, cls)}{_unreachable(r)}</td>"
            f"<td class='num'>{esc(fmt_num(q['mean error'], 3)) if 'mean error' in q else '–'}</td>"
            f"<td class='num'>{pr}</td><td><code>{esc(_short((r.get('output') or {}).get('path')))}</code></td></tr>"
        )
    table = (
        "<table><tr><th>budget</th><th class='num'>budget ms</th><th class='num'>compiled (paired)</th>"
        "<th class='num'>of as given</th><th>verdict</th><th class='num'>mean error</th><th class='num'>params</th>"
        "<th>model written</th></tr>" + "".join(rows) + "</table>"
    )
    plots = _quality_plots(runs, labels)
    sections = []
    for i, r in enumerate(runs):
        word, cls = verdict(r)
        b = (r.get("budget") or {}).get("requested") or f"run {i + 1}"
        sections.append(
            f"<details class='run' id='run{i}'{' open' if i == 0 else ''}><summary>Budget {esc(b)} "
            f"{_pill(word, cls)} <span class='muted'>→ {esc(_short((r.get('output') or {}).get('path')))}"
            f"</span></summary>{_body(r, glossary=False)}</details>"
        )
    body = (
        head
        + "<h2>Latency against quality</h2>"
        + plots
        + table
        + "<p class='muted'>Each budget was compiled from the same input model; every latency is the paired "
        "measurement of the written file against the dense model. <i>unreachable</i>: the search "
        "could not meet that budget within the error bound (--max-error); it wrote the fastest model it "
        "measured within the bound.</p>"
        + "<h2>Each budget</h2>"
        + "".join(sections)
        + GLOSSARY
    )
    return _page(f"spa-compiler: {src}, {len(runs)} budgets", body)


def _unreachable(r: Mapping[str, Any]) -> str:
    """A mark for a run whose search called its budget unreachable (within the error bound)."""
    for p in r.get("passes") or []:
        why = (p.get("stats") or {}).get("unreachable")
        if why:
            return " " + f"<span class='pill muted' title='{esc(why)}'>unreachable</span>"
    return ""


def _quality_plots(runs: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    metrics: list[str] = []
    for r in runs:
        metrics.extend(
            k
            for k in quality(r)
            if k not in metrics and (k == "mean error" or k.startswith("fidelity"))
        )
    if not metrics:
        return "<p class='muted'>No quality figures in these reports.</p>"
    out = []
    for m in metrics:
        pts, lab = [], []
        for r, label in zip(runs, labels, strict=True):
            x, y = latencies(r)["compiled"], quality(r).get(m)
            if x is not None and y is not None:
                pts.append((x, y))
                lab.append(label)
        if not pts:
            continue
        given = [latencies(r)["given"] for r in runs if latencies(r)["given"]]
        series = [Series(m, pts, PALETTE[0], labels=lab)]
        if (
            given and m == "mean error"
        ):  # the dense model has no layer error; other figures are unknown
            series.append(
                Series(
                    "dense (as given)",
                    [(sum(given) / len(given), 0.0)],
                    PALETTE[4],
                    labels=["dense"],
                )
            )
        out.append(
            xy_chart(
                series,
                title=f"measured latency against {m}",
                x_label="compiled latency, paired (ms)",
                y_label="mean layer error (criterion's estimate)" if m == "mean error" else m,
                y_from_zero=True,
                width=900,
                height=360,
            )
        )
    if out:
        out.append(
            "<p class='muted'>Each point is one budget's written model: further left is faster, lower "
            "is closer to the dense model (for error; for fidelity figures, higher is closer).</p>"
        )
    return "".join(out)


def render(data: Mapping[str, Any]) -> str:
    """A compile report or a comparison report, whichever `data` is."""
    if data.get("schema") == COMPARE_SCHEMA:
        return render_comparison(data)
    return render_report(data)
