"""`idsync report --html`: one self-contained page (inline CSS and SVG, no network) for a change ticket.

Sections (each an element with an ``id``): ``cycles`` (a chart of changes by action and failures per
cycle), ``totals``, ``refusals``, ``escrow``, ``held-back``, ``grants``, ``quarantine``. Every number
comes from the same payload `idsync status --json` prints. Every text is HTML-escaped (autoescape).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

ACTIONS = ("create", "update", "delete", "adopt")
COLOURS = {"create": "#2e7d32", "update": "#1565c0", "delete": "#c62828", "adopt": "#6a1b9a", "failures": "#ef6c00"}
CHART_HEIGHT = 160
BAR_WIDTH = 22
BAR_GAP = 10

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>idsync report {{ generated }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem; color: #1b1b1b;
       background: #ffffff; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; border-bottom: 2px solid #0078d4; padding-bottom: 0.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f6f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666666; }
.alert { color: #b00020; font-weight: bold; }
.legend span { display: inline-block; margin-right: 1rem; }
.legend i { display: inline-block; width: 0.8rem; height: 0.8rem; margin-right: 0.3rem; vertical-align: middle; }
</style>
</head>
<body>
<h1>idsync: provisioning report</h1>
<p class="muted">generated {{ generated }}{% if last %}; last cycle {{ last.cycleId }} ({{ last.mode }}),
{{ last.status }}, finished {{ last.finished }}{% endif %}</p>

<section id="cycles">
<h2>Last cycles</h2>
{% if chart.bars %}
<svg xmlns="http://www.w3.org/2000/svg" width="{{ chart.width }}" height="{{ chart.height + 40 }}"
     role="img" aria-label="changes by action and failures per cycle">
<rect x="0" y="0" width="{{ chart.width }}" height="{{ chart.height + 40 }}" fill="#fafafa"/>
{% for bar in chart.bars %}
{% for part in bar.parts %}<rect class="bar" data-cycle="{{ bar.cycle }}" data-series="{{ part.series }}"
  data-value="{{ part.value }}" x="{{ bar.x }}" y="{{ part.y }}" width="{{ chart.bar_width }}"
  height="{{ part.height }}" fill="{{ part.colour }}">
  <title>{{ bar.cycle }}: {{ part.value }} {{ part.series }}</title></rect>
{% endfor %}<text x="{{ bar.x + chart.bar_width / 2 }}" y="{{ chart.height + 15 }}" font-size="10"
  text-anchor="middle">{{ loop.index }}</text>
{% endfor %}
<text x="4" y="{{ chart.height + 34 }}" font-size="10" fill="#666666">cycles, oldest first; tallest bar
  {{ chart.peak }} entries</text>
</svg>
<p class="legend">{% for series, colour in colours.items() %}
<span><i style="background: {{ colour }}"></i>{{ series }}</span>{% endfor %}</p>
<table>
<tr><th>#</th><th>cycle</th><th>started</th>{% for a in actions %}<th>{{ a }}</th>{% endfor %}
<th>failures</th><th>skipped</th></tr>
{% for c in cycles %}<tr><td class="num">{{ loop.index }}</td><td>{{ c.cycleId }}</td><td>{{ c.started }}</td>
{% for a in actions %}<td class="num">{{ c.changes.get(a, 0) }}</td>{% endfor %}
<td class="num">{{ c.failures }}</td><td class="num">{{ c.skipped }}</td></tr>
{% endfor %}</table>
{% else %}<p>No cycle in the provisioning log yet.</p>{% endif %}
</section>

<section id="totals">
<h2>Managed in IAM Identity Center</h2>
<table>
<tr><th>users</th><td class="num" data-total="users">{{ status.totals.users }}</td></tr>
<tr><th>groups</th><td class="num" data-total="groups">{{ status.totals.groups }}</td></tr>
<tr><th>memberships</th><td class="num" data-total="memberships">{{ status.totals.memberships }}</td></tr>
<tr><th>refused</th><td class="num" data-total="refused">{{ status.refused }}</td></tr>
<tr><th>in escrow</th><td class="num" data-total="escrow">{{ status.escrow }}</td></tr>
<tr><th>active PIM grants</th><td class="num" data-total="grants">{{ status.grants | length }}</td></tr>
</table>
{% if status.nextCycle %}<p>Next cycle due by {{ status.nextCycle.dueBy }} (every {{ status.nextCycle.intervalMinutes }}
minutes).</p>{% endif %}
{% if status.drift %}<p id="drift">Drift check: {{ status.drift.roundsFinished }} rounds finished{% if
status.drift.lastRoundFinished %}, the last at {{ status.drift.lastRoundFinished }}{% endif %}; last slice read
{{ status.drift.lastSlice }} (next: {{ status.drift.phase }}).</p>{% else %}<p id="drift">Drift check: no slice read
yet.</p>{% endif %}
</section>

<section id="refusals">
<h2>Refused ({{ status.refusals | length }})</h2>
{% if status.refusals %}
<p>Each breaks an IAM Identity Center rule; fix it in Entra and the next cycle provisions it.</p>
<table><tr><th>object, attribute and rule</th></tr>
{% for message in status.refusals %}<tr><td>{{ message }}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}
</section>

<section id="escrow">
<h2>Escrow ({{ status.escrowEntries | length }})</h2>
{% if status.escrowEntries %}<table><tr><th>object</th><th>attempts</th><th>next retry</th><th>error</th></tr>
{% for e in status.escrowEntries %}<tr><td>{{ e.object }}</td><td class="num">{{ e.attempts }}</td>
<td>{{ "given up" if e.givenUp else e.nextRetry }}</td><td>{{ e.error }}</td></tr>{% endfor %}</table>
{% else %}<p>None: every failed object has since succeeded.</p>{% endif %}
</section>

<section id="held-back">
<h2>Held back by the deletion guard ({{ held_back | length }})</h2>
{% if last and last.deletionGuard %}<p class="alert">{{ last.deletionGuard }}</p>{% endif %}
{% if held_back %}<table><tr><th>action</th><th>kind</th><th>name</th></tr>
{% for h in held_back %}<tr><td>{{ h.action }}</td><td>{{ h.kind }}</td><td>{{ h.name }}</td></tr>{% endfor %}</table>
{% else %}<p>None in the last cycle.</p>{% endif %}
</section>

<section id="grants">
<h2>Active PIM for Groups grants ({{ status.grants | length }})</h2>
{% if status.grants %}<table><tr><th>group</th><th>user</th><th>ends</th><th>standing member</th></tr>
{% for g in status.grants %}<tr><td>{{ g.group }}</td><td>{{ g.user }}</td><td>{{ g.end or "never" }}</td>
<td>{{ "yes" if g.standing else "no" }}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}
</section>

<section id="quarantine">
<h2>Quarantine</h2>
{% if status.quarantine %}
<p class="alert">In quarantine since {{ status.quarantine.since }}: {{ status.quarantine.reason }}</p>
<p>To leave it: {{ status.quarantine.howToLeave }}</p>
{% else %}<p>Not in quarantine.</p>{% endif %}
</section>
</body>
</html>
"""


def chart(cycles: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stacked bars, one per cycle: applied changes by action, then failures, scaled to the tallest."""
    series = [*ACTIONS, "failures"]
    totals = [sum(c["changes"].get(a, 0) for a in ACTIONS) + c["failures"] for c in cycles]
    peak = max(totals, default=0)
    bars = []
    for index, cycle in enumerate(cycles):
        x = BAR_GAP + index * (BAR_WIDTH + BAR_GAP)
        y = float(CHART_HEIGHT)
        parts = []
        for name in series:
            value = cycle["failures"] if name == "failures" else cycle["changes"].get(name, 0)
            if not value:
                continue
            height = max(1.0, CHART_HEIGHT * value / peak)
            y -= height
            parts.append(
                {"series": name, "value": value, "y": round(y, 1), "height": round(height, 1), "colour": COLOURS[name]}
            )
        bars.append({"cycle": cycle["cycleId"], "x": x, "parts": parts})
    width = max(320, BAR_GAP + len(cycles) * (BAR_WIDTH + BAR_GAP))
    return {"bars": bars, "width": width, "height": CHART_HEIGHT, "bar_width": BAR_WIDTH, "peak": peak}


def render_report(
    status: Mapping[str, Any],
    cycles: Sequence[Mapping[str, Any]],
    held_back: Sequence[Mapping[str, Any]],
    now: datetime,
) -> str:
    """The page, from `status --json`'s payload, the per-cycle log counts and the last cycle's held-back entries."""
    from jinja2 import Environment, StrictUndefined

    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(TEMPLATE).render(
        generated=now.isoformat(timespec="seconds"),
        status=status,
        last=status.get("last"),
        cycles=cycles,
        chart=chart(cycles),
        held_back=held_back,
        actions=ACTIONS,
        colours=COLOURS,
    )
