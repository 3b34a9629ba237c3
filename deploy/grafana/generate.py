#!/usr/bin/env python3
"""Writes the seven TPS Grafana dashboards into deploy/grafana/dashboards/.

    python3 deploy/grafana/generate.py           # (re)write the JSON files
    python3 deploy/grafana/generate.py --check   # exit 1 if they are stale (CI)

The JSON files are generated, never edited by hand: change this script and
run it. Standard library only (Python 3.11).

Every panel reads series that docs/metrics.md lists (raw metrics or the tps:*
recording rules of deploy/prometheus/rules/recording.yml) or Prometheus' own
`up` and `ALERTS`; tests/tests/metrics_contract.rs parses each Prometheus
`expr` and fails on a name that nothing exports. The Andon thresholds live in
one table, PRINCIPLES, and every panel that shows a principle's value takes
its unit, thresholds and colours from there (check.py verifies it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
JAEGER = {"type": "jaeger", "uid": "jaeger"}
LOKI = {"type": "loki", "uid": "loki"}


# --------------------------------------------------------------------------
# The Andon thresholds (docs: ../shared/DESIGN.md, "Andon thresholds"; the
# seed's dashboard guide). The one place they are written down here.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Principle:
    key: str  # tps:andon_state{principle=...}
    title: str
    short: str  # the value's name on the Overview
    unit: str  # Grafana unit of the value as the panels show it
    yellow: float  # where YELLOW starts (for Kaizen: where GREEN ends)
    red: float  # where RED starts (for Kaizen: where YELLOW ends)
    measure: str  # what the light measures, for descriptions
    rules: tuple[str, ...]  # series whose panels must carry these thresholds
    overview: str  # the one number the Overview shows
    higher_is_better: bool = False
    band_text: str = ""  # when the generic wording below does not fit

    def thresholds(self) -> dict:
        """Grafana step thresholds: a step's colour holds from its value up."""
        if self.higher_is_better:
            steps = [("red", None), ("yellow", self.red), ("green", self.yellow)]
        else:
            steps = [("green", None), ("yellow", self.yellow), ("red", self.red)]
        return {
            "mode": "absolute",
            "steps": [{"color": c, "value": v} for c, v in steps],
        }

    def band(self) -> str:
        if self.band_text:
            return self.band_text
        if self.higher_is_better:
            return (
                f"GREEN > {fmt(self.yellow)}, YELLOW {fmt(self.red)}–{fmt(self.yellow)}, "
                f"RED < {fmt(self.red)}"
            )
        return (
            f"GREEN < {fmt(self.yellow)}, YELLOW {fmt(self.yellow)}–{fmt(self.red)}, "
            f"RED > {fmt(self.red)}"
        )


def fmt(v: float) -> str:
    return f"{v:g}"


# DESIGN.md's Jidoka row says GREEN 0, YELLOW 10–30, RED > 30, which leaves
# (0, 10) uncovered. tps:andon_state (deploy/prometheus/rules/recording.yml)
# reads it as "an open breaker is never GREEN": YELLOW above 0. Grafana's
# steps start at a value (>=), so YELLOW starts just above 0; the rule's
# smallest non-zero value is 5 (one 15 s sample of twenty).
PRINCIPLES: tuple[Principle, ...] = (
    #         key         title       short                unit       yellow  red
    Principle("jidoka",   "Jidoka",   "circuit open %",    "percent", 0.001,  30,
              measure="circuit open, % of the last 5 minutes (worst breaker)",
              rules=("tps:circuit_open:percent5m",),
              overview="max(tps:circuit_open:percent5m)",
              band_text="GREEN 0 (never open), YELLOW above 0 up to 30, RED > 30"),
    Principle("kanban",   "Kanban",   "queue depth",       "short",   500,    1000,
              measure="queue depth (deepest pool)",
              rules=("tps:queue_depth:max",),
              overview="max(tps:queue_depth:max)"),
    Principle("andon",    "Andon",    "error %",           "percent", 0.5,    1,
              measure="results FAILED, DEAD_LETTERED or EXPIRED, % over 5 minutes",
              rules=("tps:error_percent:rate5m", "tps:error_ratio:rate5m"),
              overview="tps:error_percent:rate5m"),
    # Higher is better: YELLOW below 95, RED below 90.
    Principle("kaizen",   "Kaizen",   "SLO attainment",    "percent", 95,     90,
              measure="SLO attainment, % of signals within the objective (worst pool)",
              rules=("tps:slo_attainment:percent5m",),
              overview="min(tps:slo_attainment:percent5m)",
              higher_is_better=True),
    Principle("heijunka", "Heijunka", "pool utilisation",  "percent", 70,     85,
              measure="pool utilisation, % of handler capacity busy (busiest pool)",
              rules=("tps:pool_utilisation:ratio1m",),
              overview="100 * max(tps:pool_utilisation:ratio1m)"),
    Principle("tracing",  "Tracing",  "p99 lead time",     "s",       3,      5,
              measure="lead time p99, submit → result (slowest pool)",
              rules=("tps:lead_time_seconds:p99_5m",),
              overview="max(tps:lead_time_seconds:p99_5m)"),
)
P = {p.key: p for p in PRINCIPLES}

# The Andon light values (tps:andon_state) and their colours.
LIGHTS = ((0, "GREEN", "green"), (1, "YELLOW", "yellow"), (2, "RED", "red"))

# Multi-window burn-rate lines (Google SRE workbook): 14.4 pages (2% of a
# 30-day budget in 1h), 6 opens a ticket (5% in 6h).
BURN_PAGE = 14.4
BURN_TICKET = 6

# Breaker states (tps_circuit_state).
BREAKER_STATES = ((0, "closed", "green"), (1, "open", "red"), (2, "half-open", "yellow"))

# Where the Jaeger UI is, for data links that open it in a browser.
JAEGER_UI = "http://localhost:16686"

# Where a browser reaches the aggregator's Andon board (TPS_BOARD_ADDR:
# published on :8081 by docker-compose.yml; on Kubernetes
# `kubectl -n tps port-forward svc/aggregator 8081`).
BOARD_UI = "http://localhost:8081"

# Two sets of lights, from the same thresholds table:
# - tps_andon_state, exported by the aggregator: the lights operators act on,
#   with hysteresis and a reason code and detail per light (the board and
#   `tpsctl andon` show those; Prometheus sees only the colour);
# - tps:andon_state, recorded by Prometheus from the raw series: no
#   hysteresis, no reasons; it may flap where the aggregator's light holds.
BOARD_LIGHTS_TEXT = (
    "The aggregator's own lights (tps_andon_state): the thresholds table with "
    "hysteresis (a light goes up at once and comes down only once its value is "
    "10 % clear of the threshold) and a reason code and detail for each light, "
    f"which the Andon board ({BOARD_UI}, the link) and `tpsctl andon` show."
)
PROM_LIGHTS_TEXT = (
    "Prometheus' recomputation (tps:andon_state) from the raw series: the same "
    "thresholds without hysteresis and without reasons, so it may flap where the "
    "aggregator's light (tps_andon_state) holds."
)

NO_EXEMPLARS = (
    " The services' prometheus crate exports no exemplars, so no point here "
    "carries a trace id; the panel's data link opens Jaeger's search instead."
)


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def prom(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": PROMETHEUS, "editorMode": "code", "expr": expr}
    if table:
        t["format"] = "table"
    t["instant"] = instant or table
    t["legendFormat"] = legend
    t["range"] = not (instant or table)
    return t


def steps(*pairs) -> dict:
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for c, v in pairs],
    }


NEUTRAL = steps(("text", None))


def value_mappings(entries) -> list:
    return [
        {
            "type": "value",
            "options": {
                str(v): {"color": color, "index": i, "text": text}
                for i, (v, text, color) in enumerate(entries)
            },
        }
    ]


def light_mappings() -> list:
    return value_mappings(LIGHTS)


def light_thresholds() -> dict:
    return steps(*[(color, None if i == 0 else v) for i, (v, _, color) in enumerate(LIGHTS)])


def jaeger_search(service: str, operation: str = "", slower_than_value: bool = False) -> dict:
    """A data link to Jaeger's search over the dashboard's time range."""
    q = f"service={service}"
    if operation:
        q += f"&operation={operation}"
    title = f"Traces of {service} in Jaeger"
    if slower_than_value:
        q += "&minDuration=${__value.raw}s"
        title = f"Traces of {service} at least this slow (Jaeger)"
    return {
        "targetBlank": True,
        "title": title,
        "url": "${jaeger_url}/search?" + q + "&start=${__from}000&end=${__to}000&limit=20",
    }


def dashboard_link(uid: str, title: str) -> dict:
    return {"targetBlank": False, "title": title, "url": f"/d/{uid}?${{__url_time_range}}"}


class Panel(dict):
    """A panel with its size; the dashboard assigns id and position."""

    def __init__(self, w: int, h: int, **fields):
        super().__init__(**fields)
        self.w, self.h = w, h


def _field_config(unit, thresholds, mappings, links, decimals, min_, max_, custom, color):
    defaults = {"color": color}
    if custom is not None:
        defaults["custom"] = custom
    if decimals is not None:
        defaults["decimals"] = decimals
    defaults["links"] = list(links)
    defaults["mappings"] = mappings or []
    if max_ is not None:
        defaults["max"] = max_
    if min_ is not None:
        defaults["min"] = min_
    defaults["thresholds"] = thresholds
    if unit is not None:  # None: keep the unit the data source gives
        defaults["unit"] = unit
    return defaults


def _panel(kind, title, targets, description, w, h, datasource=PROMETHEUS, **rest) -> Panel:
    p = Panel(w, h, type=kind, title=title)
    p["datasource"] = datasource
    if description:
        p["description"] = description
    p.update(rest)
    for i, t in enumerate(targets):
        t.setdefault("datasource", datasource)
        t["refId"] = chr(ord("A") + i)
    p["targets"] = targets
    return p


def stat(title, targets, *, description="", unit="short", principle=None, mappings=None,
         thresholds=None, links=(), decimals=None, w=4, h=5, graph=True, background=False,
         min_=None, max_=None, text_size=None) -> Panel:
    if principle is not None:
        pr = P[principle]
        unit, thresholds, background = pr.unit, pr.thresholds(), True
    options = {
        "colorMode": "background" if background else "value",
        "graphMode": "area" if graph else "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": "auto",
        "wideLayout": True,
    }
    if text_size:
        options["text"] = {"valueSize": text_size}
    return _panel(
        "stat", title, targets, description, w, h,
        fieldConfig={
            "defaults": _field_config(unit, thresholds or NEUTRAL, mappings, links, decimals,
                                      min_, max_, None, {"mode": "thresholds"}),
            "overrides": [],
        },
        options=options,
    )


def timeseries(title, targets, *, description="", unit="short", principle=None,
               thresholds=None, threshold_style="off", links=(), decimals=None, w=12, h=8,
               min_=None, max_=None, stack=False, bars=False, overrides=(),
               legend_calcs=("mean", "max", "lastNotNull"), time_from=None) -> Panel:
    if principle is not None:
        pr = P[principle]
        unit, thresholds = pr.unit, pr.thresholds()
        if threshold_style == "off":
            threshold_style = "dashed"
    custom = {
        "axisBorderShow": False,
        "axisPlacement": "auto",
        "barAlignment": 0,
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "gradientMode": "none",
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "pointSize": 4,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": threshold_style},
    }
    extra = {}
    if time_from:
        extra["timeFrom"] = time_from
    return _panel(
        "timeseries", title, targets, description, w, h,
        fieldConfig={
            "defaults": _field_config(unit, thresholds or NEUTRAL, None, links, decimals,
                                      min_, max_, custom, {"mode": "palette-classic"}),
            "overrides": list(overrides),
        },
        options={
            "legend": {
                "calcs": list(legend_calcs),
                "displayMode": "table" if legend_calcs else "list",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    )


def state_timeline(title, targets, *, description="", mappings, thresholds=None,
                   w=24, h=7) -> Panel:
    return _panel(
        "state-timeline", title, targets, description, w, h,
        fieldConfig={
            "defaults": _field_config("short", thresholds or NEUTRAL, mappings, (), None,
                                      None, None, {"fillOpacity": 80, "lineWidth": 0},
                                      {"mode": "thresholds"}),
            "overrides": [],
        },
        options={
            "alignValue": "center",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "mergeValues": True,
            "rowHeight": 0.8,
            "showValue": "auto",
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def table(title, targets, *, description="", unit="short", datasource=PROMETHEUS,
          sort_by=None, hide=("Time",), w=12, h=8, links=()) -> Panel:
    options = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    if sort_by:
        options["sortBy"] = [{"desc": True, "displayName": sort_by}]
    transformations = []
    if hide:
        transformations.append(
            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}}}
        )
    return _panel(
        "table", title, targets, description, w, h, datasource=datasource,
        fieldConfig={
            "defaults": _field_config(unit, NEUTRAL, None, links, None, None, None,
                                      {"align": "auto", "cellOptions": {"type": "auto"}},
                                      {"mode": "thresholds"}),
            "overrides": [],
        },
        options=options,
        transformations=transformations,
    )


def bargauge(title, targets, *, description="", unit="s", principle=None, thresholds=None,
             links=(), w=12, h=8) -> Panel:
    if principle is not None:
        pr = P[principle]
        unit, thresholds = pr.unit, pr.thresholds()
    return _panel(
        "bargauge", title, targets, description, w, h,
        fieldConfig={
            "defaults": _field_config(unit, thresholds or NEUTRAL, None, links, None, 0, None,
                                      None, {"mode": "thresholds"}),
            "overrides": [],
        },
        options={
            "displayMode": "gradient",
            "maxVizHeight": 300,
            "minSizeDefault": 16,
            "minVizHeight": 16,
            "minVizWidth": 8,
            "namePlacement": "auto",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "sizing": "auto",
            "valueMode": "color",
        },
    )


def right_axis(series_regex: str, unit: str | None = None) -> dict:
    props = [{"id": "custom.axisPlacement", "value": "right"}]
    if unit:
        props.append({"id": "unit", "value": unit})
    return {"matcher": {"id": "byRegexp", "options": series_regex}, "properties": props}


def color_of(series: str, color: str) -> dict:
    return {
        "matcher": {"id": "byName", "options": series},
        "properties": [{"id": "color", "value": {"fixedColor": color, "mode": "fixed"}}],
    }


# Templating --------------------------------------------------------------

POOL_VAR = {
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    "datasource": PROMETHEUS,
    "definition": "label_values(tps_queue_depth, pool)",
    "hide": 0,
    "includeAll": True,
    "label": "Pool",
    "multi": True,
    "name": "pool",
    "options": [],
    "query": {
        "qryType": 1,
        "query": "label_values(tps_queue_depth, pool)",
        "refId": "PrometheusVariableQueryEditor-VariableQuery",
    },
    "refresh": 2,
    "regex": "",
    "skipUrlSync": False,
    "sort": 1,
    "type": "query",
    "allValue": ".*",
}

JAEGER_URL_VAR = {
    "description": "Where a browser reaches the Jaeger UI (data links open it).",
    "hide": 2,
    "label": "Jaeger UI",
    "name": "jaeger_url",
    "query": JAEGER_UI,
    "skipUrlSync": False,
    "type": "constant",
}

BOARD_URL_VAR = {
    "description": "Where a browser reaches the aggregator's Andon board (links open it).",
    "hide": 2,
    "label": "Andon board",
    "name": "board_url",
    "query": BOARD_UI,
    "skipUrlSync": False,
    "type": "constant",
}

# The board, as a data link (click a light) and as a dashboard link (top bar).
BOARD_DATA_LINK = {
    "targetBlank": True,
    "title": "Andon board: each light's reason, value and detail",
    "url": "${board_url}",
}
BOARD_DASHBOARD_LINK = {
    "asDropdown": False,
    "icon": "external link",
    "includeVars": False,
    "keepTime": False,
    "tags": [],
    "targetBlank": True,
    "title": "Andon board (aggregator, :8081)",
    "tooltip": "The aggregator's live board: each light with its reason, value, detail "
               "and since, and the latest transitions",
    "type": "link",
    "url": "${board_url}",
}

SERVICES = ("tps-gateway", "tps-worker-fast", "tps-worker-slow", "tps-aggregator")

SERVICE_VAR = {
    "current": {"selected": True, "text": SERVICES[0], "value": SERVICES[0]},
    "description": "The OpenTelemetry service.name the Jaeger panels search.",
    "hide": 0,
    "includeAll": False,
    "label": "Service (Jaeger)",
    "multi": False,
    "name": "service",
    "options": [
        {"selected": i == 0, "text": s, "value": s} for i, s in enumerate(SERVICES)
    ],
    "query": ",".join(SERVICES),
    "skipUrlSync": False,
    "type": "custom",
}

TRACE_ID_VAR = {
    "current": {"selected": False, "text": "", "value": ""},
    "description": "A trace id (32 hex digits) from a response, a log line or the tables below.",
    "hide": 0,
    "label": "Trace id",
    "name": "trace_id",
    "options": [{"selected": True, "text": "", "value": ""}],
    "query": "",
    "skipUrlSync": False,
    "type": "textbox",
}


def dashboard(uid: str, title: str, description: str, rows: list[list[Panel]],
              variables=(), time_from="now-1h", links=()) -> dict:
    panels = []
    y = 0
    next_id = 1
    for row in rows:
        x = 0
        height = 0
        for p in row:
            if x + p.w > 24:
                raise ValueError(f"{uid}: row wider than 24 at {p['title']!r}")
            body = {"id": next_id, "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y}}
            body.update(p)
            panels.append(body)
            next_id += 1
            x += p.w
            height = max(height, p.h)
        y += height
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": PROMETHEUS,
                    "enable": True,
                    "expr": 'ALERTS{alertstate="firing"}',
                    "iconColor": "red",
                    "name": "Firing alerts",
                    "step": "60s",
                    "tagKeys": "severity",
                    "textFormat": "",
                    "titleFormat": "{{alertname}}",
                    "useValueForTime": False,
                },
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": ["tps"],
                "targetBlank": False,
                "title": "TPS dashboards",
                "tooltip": "",
                "type": "dashboards",
                "url": "",
            },
            *links,
        ],
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["tps"],
        "templating": {"list": [dict(v) for v in variables]},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


POOL = 'pool=~"$pool"'
RATE = "$__rate_interval"


def q(quantile: float, metric: str, by: str = "pool", where: str = POOL) -> str:
    """histogram_quantile over a histogram's buckets, grouped by `by`."""
    sel = f"{metric}_bucket{{{where}}}" if where else f"{metric}_bucket"
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({sel}[5m])))"


def light_panel(key: str, title: str, w: int, h: int, size=None) -> Panel:
    return stat(
        title,
        [prom(f'tps:andon_state{{principle="{key}"}}', title, instant=True)],
        description=(
            f"tps:andon_state{{principle=\"{key}\"}}: 0 GREEN, 1 YELLOW, 2 RED"
            + (f", from {P[key].measure}: {P[key].band()}." if key in P
               else ", the worst of the six lights.")
            + " " + PROM_LIGHTS_TEXT
        ),
        mappings=light_mappings(), thresholds=light_thresholds(), background=True,
        graph=False, w=w, h=h, text_size=size,
    )


def all_bands() -> str:
    return " ".join(f"{p.title}: {p.band()}." for p in PRINCIPLES)


def board_lights(title: str, *, overall: bool = True, principles: bool = True,
                 w: int, h: int, size=None) -> Panel:
    """The aggregator's lights (tps_andon_state), one value per light, in the
    board's order (overall first, then PRINCIPLES)."""
    targets = []
    if overall:
        targets.append(prom('tps_andon_state{principle="overall"}', "Overall", instant=True))
    if principles:
        targets += [prom(f'tps_andon_state{{principle="{p.key}"}}', p.title, instant=True)
                    for p in PRINCIPLES]
    return stat(
        title, targets,
        description=(
            "tps_andon_state: 0 GREEN, 1 YELLOW, 2 RED"
            + (", overall the worst of the six" if overall else "")
            + ". " + BOARD_LIGHTS_TEXT + " Thresholds: " + all_bands()
        ),
        mappings=light_mappings(), thresholds=light_thresholds(), background=True,
        graph=False, links=[BOARD_DATA_LINK], w=w, h=h, text_size=size,
    )


def board_history(title: str, *, h: int = 8) -> Panel:
    return state_timeline(
        title, [prom("tps_andon_state", "{{principle}}")],
        description="When each of the aggregator's lights changed colour (tps_andon_state, "
                    "with hysteresis). " + BOARD_LIGHTS_TEXT,
        mappings=light_mappings(), thresholds=light_thresholds(), h=h,
    )


LIGHT_CHANGE_COLOURS = [
    {"matcher": {"id": "byRegexp", "options": f".*→ {name}$"},
     "properties": [{"id": "color", "value": {"fixedColor": color, "mode": "fixed"}}]}
    for _, text, color in LIGHTS
    for name in [text.lower()]
]


def light_changes(title: str, *, w: int, h: int = 8) -> Panel:
    return timeseries(
        title,
        [prom(f"sum by (principle, to) (increase(tps_andon_transitions_total[{RATE}]))",
              "{{principle}} → {{to}}")],
        description="Changes of the aggregator's lights per interval, by principle and the "
                    "colour changed to (tps_andon_transitions_total; bars coloured by that "
                    "colour). Its hysteresis keeps this low where Prometheus' tps:andon_state "
                    "flaps (alert TpsAndonFlapping). Each change's reason is in the board's "
                    "latest transitions and `tpsctl andon --history 20`.",
        bars=True, stack=True, decimals=0, min_=0, w=w, h=h,
        overrides=LIGHT_CHANGE_COLOURS,
    )


# --------------------------------------------------------------------------
# The dashboards
# --------------------------------------------------------------------------

DEEP_DIVE = {
    "jidoka": "tps-jidoka", "kanban": "tps-kanban", "andon": "tps-andon",
    "kaizen": "tps-kaizen", "heijunka": "tps-heijunka", "tracing": "tps-tracing",
}


def overview() -> dict:
    board = [
        board_lights("Overall: the aggregator's light (with hysteresis)", principles=False,
                     w=6, h=4, size=40),
        board_lights("The aggregator's lights: hysteresis, reasons on the Andon board (:8081)",
                     overall=False, w=18, h=4),
    ]
    lights = [light_panel("overall", "Overall: Prometheus' recomputation (no hysteresis)",
                          6, 4, size=40)] + [
        light_panel(p.key, p.title, 3, 4) for p in PRINCIPLES
    ]
    values = [
        stat(
            f"{p.title}: {p.short}",
            [prom(p.overview, p.title)],
            description=f"{p.measure}. {p.band()}. Click for the {p.title} dashboard.",
            principle=p.key,
            links=[dashboard_link(DEEP_DIVE[p.key], f"{p.title} dashboard")],
            decimals=0 if p.key == "kanban" else 2,
            w=4, h=5,
        )
        for p in PRINCIPLES
    ]
    throughput = [
        timeseries(
            "Throughput",
            [
                prom("sum(tps:signals_accepted:rate1m)", "accepted"),
                prom("sum(tps:signals_refused:rate1m)", "refused"),
                prom("sum(tps:results:rate1m)", "results"),
            ],
            description="Signals per second: accepted by the gateway (durable on a queue), "
                        "refused (any reason), and results aggregated (any outcome).",
            unit="reqps", w=16, h=8,
            overrides=[color_of("accepted", "green"), color_of("refused", "orange"),
                       color_of("results", "blue")],
        ),
        stat(
            "Now",
            [
                prom("sum(tps:signals_accepted:rate1m)", "accepted/s"),
                prom("sum(tps:signals_refused:rate1m)", "refused/s"),
                prom("sum(tps:results:rate1m)", "results/s"),
                prom("sum(up)", "targets up"),
                prom("count(up)", "targets"),
            ],
            description="Current rates (1m) and how many scrape targets Prometheus reaches.",
            unit="short", decimals=1, w=8, h=8,
        ),
    ]
    trends = [
        timeseries(
            f"{p.title}, 24h",
            [prom(p.overview, p.title)],
            description=f"{p.measure} over the last 24 hours; dashed lines at the "
                        f"YELLOW and RED thresholds ({p.band()}).",
            principle=p.key, time_from="24h", legend_calcs=(), w=8, h=7,
        )
        for p in PRINCIPLES
    ]
    history = [
        state_timeline(
            "Andon lights, history: Prometheus' recomputation (tps:andon_state, no hysteresis)",
            [prom("tps:andon_state", "{{principle}}")],
            description="Each principle's light over time as Prometheus recomputes it "
                        "(tps:andon_state). " + PROM_LIGHTS_TEXT,
            mappings=light_mappings(), thresholds=light_thresholds(), h=8,
        )
    ]
    board_history_rows = [
        [board_history("Andon lights, history: the aggregator's (tps_andon_state, with hysteresis)")],
        [light_changes("Light changes (the aggregator's lights)", w=24, h=7)],
    ]
    return dashboard(
        "tps-overview", "TPS System Overview",
        "All six principles at a glance: the Andon lights (the aggregator's, with "
        "hysteresis and reasons on the board at :8081, and Prometheus' recomputation), "
        "the value behind each, throughput and 24-hour trends.",
        [board, lights, values, throughput, trends[:3], trends[3:], *board_history_rows,
         history],
        variables=[JAEGER_URL_VAR, BOARD_URL_VAR], links=[BOARD_DASHBOARD_LINK],
    )


def jidoka() -> dict:
    state_map = value_mappings(BREAKER_STATES)
    state_steps = steps(("green", None), ("red", 1), ("yellow", 2))
    rows = [
        [
            stat(
                "Worst breaker open",
                [prom(P["jidoka"].overview, "open %")],
                description=f"{P['jidoka'].measure}. {P['jidoka'].band()}.",
                principle="jidoka", decimals=1, w=6, h=5,
            ),
            stat(
                "Breakers now",
                [prom("max by (breaker) (tps_circuit_state)", "{{breaker}}", instant=True)],
                description="The most open replica of each breaker: closed, open or "
                            "half-open (tps_circuit_state).",
                mappings=state_map, thresholds=state_steps, background=True, graph=False,
                w=12, h=5,
            ),
            stat(
                "CIRCUIT_OPEN refusals",
                [prom('sum(tps:signals_refused:rate1m{reason="CIRCUIT_OPEN"}) or vector(0)',
                      "refused/s")],
                description="Submits the gateway refused because its publish breaker is open "
                            "(UNAVAILABLE + RetryInfo; HTTP 503).",
                unit="reqps", decimals=2, w=6, h=5,
            ),
        ],
        [
            state_timeline(
                "Breaker state per replica",
                [prom("tps_circuit_state", "{{breaker}} {{instance}}")],
                description="0 closed, 1 open, 2 half-open, per breaker and replica. A worker "
                            "whose downstream breaker opens stops pulling (its line stops).",
                mappings=state_map, thresholds=state_steps, h=8,
            )
        ],
        [
            timeseries(
                "Circuit open, % of time",
                [prom("tps:circuit_open:percent5m", "{{breaker}}")],
                description=f"% of the last 5 minutes each breaker was open. {P['jidoka'].band()}.",
                principle="jidoka", min_=0, max_=100, w=12,
            ),
            timeseries(
                "Breaker transitions",
                [prom(f"sum by (breaker, from, to) (increase(tps_circuit_transitions_total[{RATE}]))",
                      "{{breaker}}: {{from}} → {{to}}")],
                description="State changes per interval, by breaker and from/to state.",
                bars=True, w=12,
            ),
        ],
        [
            timeseries(
                "Refusals by reason",
                [prom("sum by (reason) (tps:signals_refused:rate1m)", "{{reason}}")],
                description="Submits refused per second by ErrorInfo reason. CIRCUIT_OPEN is "
                            "Jidoka's; QUEUE_FULL is Kanban's.",
                unit="reqps", stack=True, w=8,
            ),
            timeseries(
                "Rejection rate (CIRCUIT_OPEN)",
                [prom('100 * sum(rate(tps_signals_refused_total{reason="CIRCUIT_OPEN"}[5m])) '
                      "/ (sum(rate(tps_signals_accepted_total[5m])) "
                      "+ sum(rate(tps_signals_refused_total[5m])) > 0)", "rejected %")],
                description="Share of all submits refused by the open publish breaker, 5m.",
                unit="percent", min_=0, w=8,
            ),
            timeseries(
                "Half-open probes that closed the breaker",
                [prom('100 * sum by (breaker) (increase(tps_circuit_transitions_total{from="half_open", to="closed"}[1h])) '
                      '/ (sum by (breaker) (increase(tps_circuit_transitions_total{from="half_open"}[1h])) > 0)',
                      "{{breaker}}")],
                description="Of the half-open periods that ended in the last hour, % that "
                            "closed the breaker (all probes succeeded) rather than re-opening it.",
                unit="percent", min_=0, max_=100, w=8,
            ),
        ],
        [
            timeseries(
                "Publish errors by backend",
                [prom(f"sum by (backend) (rate(tps_queue_publish_errors_total[{RATE}]))",
                      "{{backend}}")],
                description="Publishes a broker failed (the failures the gateway's publish "
                            "breaker counts; full-queue refusals are not errors).",
                unit="reqps", w=8,
            ),
            timeseries(
                "Worker downstream failures",
                [prom(f'sum by (pool) (rate(tps_worker_processed_total{{outcome="failed", {POOL}}}[{RATE}]))',
                      "{{pool}} failed/s"),
                 prom(f'100 * sum by (pool) (rate(tps_worker_processed_total{{outcome="failed", {POOL}}}[5m])) '
                      f"/ (sum by (pool) (rate(tps_worker_processed_total{{{POOL}}}[5m])) > 0)",
                      "{{pool}} failed %")],
                description="Work items whose downstream call failed (outcome failed), per "
                            "second and as a % of items finished (right axis).",
                unit="reqps", w=8, overrides=[right_axis(".*%", "percent")],
            ),
            timeseries(
                "Failures by type and outcome",
                [prom(f'sum by (pool, type, outcome) (rate(tps_worker_processed_total{{outcome!="succeeded", {POOL}}}[{RATE}]))',
                      "{{pool}} {{type}} {{outcome}}")],
                description="What did not succeed, by pool, signal type and outcome.",
                unit="reqps", stack=True, w=8,
            ),
        ],
        [
            timeseries(
                "Injected fault: error rate",
                [prom(f"tps_worker_fault_error_rate{{{POOL}}}", "{{pool}} {{instance}}")],
                description="The chaos hook (PoolService.SetFault): share of downstream calls "
                            "made to fail, per replica. 0 when no fault is set.",
                unit="percentunit", min_=0, max_=1, w=12, legend_calcs=("lastNotNull",),
            ),
            timeseries(
                "Injected fault: added latency",
                [prom(f"tps_worker_fault_latency_seconds{{{POOL}}}", "{{pool}} {{instance}}")],
                description="The chaos hook: latency added to each downstream call, per "
                            "replica. 0 when none.",
                unit="s", min_=0, w=12, legend_calcs=("lastNotNull",),
            ),
        ],
    ]
    return dashboard(
        "tps-jidoka", "TPS Jidoka",
        "Failure detection: the circuit breakers on the gateway's publish path and each "
        "worker's downstream call, what they refuse and why.",
        rows, variables=[POOL_VAR, JAEGER_URL_VAR],
    )


def kanban() -> dict:
    depth = f"tps:queue_depth:max{{{POOL}}}"
    rows = [
        [
            stat("Queue depth", [prom(depth, "{{pool}}")],
                 description=f"Work waiting in JetStream per pool. {P['kanban'].band()}.",
                 principle="kanban", decimals=0, w=6, h=5),
            stat("In flight", [prom(f"max by (pool) (tps_queue_in_flight{{{POOL}}})", "{{pool}}")],
                 description="Pulled and not yet acked, per pool.", decimals=0, w=5, h=5),
            stat("Dead letters", [prom(f"max by (pool) (tps_dlq_depth{{{POOL}}})", "{{pool}}")],
                 description="Dead letters held until replayed (ListDeadLetters / Replay).",
                 thresholds=steps(("green", None), ("red", 1)), decimals=0, w=5, h=5),
            stat("NATS connected", [prom("min(tps_broker_connected)", "NATS", instant=True)],
                 description="1 while every gateway replica's NATS connection is up.",
                 mappings=value_mappings(((0, "DOWN", "red"), (1, "UP", "green"))),
                 thresholds=steps(("red", None), ("green", 1)), background=True, graph=False,
                 w=4, h=5),
            stat("Publishing to", [prom("max by (backend) (tps_queue_backend_active) == 1",
                                        "{{backend}}", instant=True)],
                 description="The broker new work is published to: nats normally, rabbitmq "
                             "while JetStream is down (the fallback).",
                 mappings=value_mappings(((1, "active", "green"),)), graph=False, w=4, h=5),
        ],
        [
            timeseries("Queue depth", [prom(depth, "{{pool}}")],
                       description="The deepest any gateway replica reports (JetStream, all "
                                   f"priorities). {P['kanban'].band()}; the stream refuses past "
                                   "TPS_KANBAN_BUFFER (QUEUE_FULL).",
                       principle="kanban", min_=0, w=12),
            timeseries("In flight and redelivered",
                       [prom(f"max by (pool) (tps_queue_in_flight{{{POOL}}})", "{{pool}} in flight"),
                        prom(f"max by (pool) (tps_queue_redelivered{{{POOL}}})", "{{pool}} redelivered")],
                       description="Pulled and not yet acked, and of those the ones delivered "
                                   "more than once.", min_=0, w=12),
        ],
        [
            timeseries("RabbitMQ fallback depth",
                       [prom(f"max by (pool) (tps_queue_fallback_depth{{{POOL}}})", "{{pool}}")],
                       description="Work waiting in the RabbitMQ fallback queue (non-zero only "
                                   "while or after NATS was down).", min_=0, w=8),
            timeseries("Dead-letter queue depth",
                       [prom(f"max by (pool) (tps_dlq_depth{{{POOL}}})", "{{pool}}")],
                       description="Dead letters held in the dead-letter stream until replayed.",
                       min_=0, w=8),
            state_timeline("Active publish backend",
                           [prom("max by (backend) (tps_queue_backend_active)", "{{backend}}")],
                           description="1 for the broker new work is published to.",
                           mappings=value_mappings(((0, "idle", "transparent"),
                                                    (1, "active", "green"))),
                           w=8, h=8),
        ],
        [
            timeseries("Throughput in and out",
                       [prom(f"sum by (pool) (tps:signals_accepted:rate1m{{{POOL}}})", "{{pool}} accepted"),
                        prom(f"sum by (pool) (tps:worker_throughput:rate1m{{{POOL}}})", "{{pool}} finished")],
                       description="Accepted onto each pool's queue vs finished by its workers, "
                                   "per second. A lasting gap is the queue growing.",
                       unit="reqps", w=12),
            timeseries("Queue wait p50 / p99",
                       [prom(q(0.5, "tps_queue_wait_seconds"), "{{pool}} p50"),
                        prom(f"tps:queue_wait_seconds:p99_5m{{{POOL}}}", "{{pool}} p99")],
                       description="Enqueue → pull, measured by the workers." + NO_EXEMPLARS,
                       unit="s", min_=0, w=12,
                       links=[jaeger_search("tps-worker-${__field.labels.pool}", "process")]),
        ],
        [
            timeseries("QUEUE_FULL refusals",
                       [prom(f'sum by (pool) (rate(tps_signals_refused_total{{reason="QUEUE_FULL", {POOL}}}[{RATE}]))',
                             "{{pool}}")],
                       description="Submits refused because the pool's stream is at "
                                   "TPS_KANBAN_BUFFER (RESOURCE_EXHAUSTED).",
                       unit="reqps", w=8),
            timeseries("Worker capacity vs busy",
                       [prom(f"sum by (pool) (tps_worker_capacity{{{POOL}}})", "{{pool}} capacity"),
                        prom(f"sum by (pool) (tps_worker_busy{{{POOL}}})", "{{pool}} busy")],
                       description="Handlers across a pool's replicas (TPS_NUM_WORKERS each) and "
                                   "how many are busy now. Capacity 0 is no worker available.",
                       min_=0, w=8),
            timeseries("Broker failovers",
                       [prom(f"sum by (to) (increase(tps_queue_failovers_total[{RATE}]))", "to {{to}}")],
                       description="Switches of the gateway's publish path, by the broker "
                                   "switched to.", bars=True, w=8),
        ],
        [
            timeseries("Deliveries by broker",
                       [prom(f"sum by (pool, backend) (rate(tps_worker_deliveries_total{{{POOL}}}[{RATE}]))",
                             "{{pool}} via {{backend}}")],
                       description="Work items the workers received, by broker.",
                       unit="reqps", w=8),
            timeseries("Redeliveries, retries, dead letters, poison",
                       [prom(f"sum by (pool) (rate(tps_worker_redeliveries_total{{{POOL}}}[{RATE}]))", "{{pool}} redelivered"),
                        prom(f"sum by (pool) (rate(tps_worker_retries_total{{{POOL}}}[{RATE}]))", "{{pool}} retried"),
                        prom(f"sum by (pool) (rate(tps_worker_dead_lettered_total{{{POOL}}}[{RATE}]))", "{{pool}} dead-lettered"),
                        prom(f"sum by (pool) (rate(tps_worker_poison_total{{{POOL}}}[{RATE}]))", "{{pool}} poison"),
                        prom(f"sum by (pool) (rate(tps_signals_retried_total{{{POOL}}}[{RATE}]))", "{{pool}} Retry/Replay")],
                       description="Items delivered again, sent back with a backoff, moved to "
                                   "the DLQ, undecodable; and signals an operator re-ran.",
                       unit="reqps", w=8),
            timeseries("Acknowledgements by kind",
                       [prom(f"sum by (pool, kind) (rate(tps_worker_acks_total{{{POOL}}}[{RATE}]))",
                             "{{pool}} {{kind}}")],
                       description="ack, nak, term and progress (in-progress) sent by workers.",
                       unit="reqps", w=8),
        ],
        [
            timeseries("Fallback outcomes and re-drive",
                       [prom(f"sum by (pool) (rate(tps_worker_fallback_outcomes_total{{{POOL}}}[{RATE}]))",
                             "{{pool}} held on RabbitMQ"),
                        prom(f"sum by (pool, result) (rate(tps_worker_redriven_total{{{POOL}}}[{RATE}]))",
                             "{{pool}} re-driven {{result}}")],
                       description="Outcomes decided while NATS was down (held on RabbitMQ) and "
                                   "their re-drive into NATS once it is back.",
                       unit="reqps", w=12),
            timeseries("Queue fill (waiting + in flight) / TPS_KANBAN_BUFFER",
                       [prom(f"100 * (max by (pool) (tps_queue_depth{{{POOL}}}) "
                             f"+ max by (pool) (tps_queue_in_flight{{{POOL}}})) "
                             f"/ max by (pool) (tps_queue_capacity{{{POOL}}})", "{{pool}}")],
                       description="How full each pool's work stream is; at 100 % the gateway "
                                   "refuses new work (QUEUE_FULL). With the default "
                                   "TPS_KANBAN_BUFFER=1000 the depth can never pass the Kanban "
                                   "RED line (> 1000): this panel shows the real limit.",
                       unit="percent", min_=0, max_=100, w=12),
        ],
    ]
    return dashboard(
        "tps-kanban", "TPS Kanban",
        "Pull-based flow: what waits, what is in flight, what the workers can take, and "
        "the brokers underneath.",
        rows, variables=[POOL_VAR, JAEGER_URL_VAR],
    )


def andon() -> dict:
    state_lights = stat(
        "Lights: Prometheus' recomputation (tps:andon_state, no hysteresis)",
        [prom("tps:andon_state", "{{principle}}", instant=True)],
        description="tps:andon_state per principle and overall: 0 GREEN, 1 YELLOW, 2 RED, "
                    "from the thresholds table. " + PROM_LIGHTS_TEXT,
        mappings=light_mappings(), thresholds=light_thresholds(), background=True,
        graph=False, w=24, h=4,
    )
    rows = [
        [board_lights("Lights: the aggregator's (hysteresis; reasons on the Andon board, :8081)",
                      w=24, h=4)],
        [state_lights],
        [board_history("Lights, history: the aggregator's (tps_andon_state, with hysteresis)")],
        [
            state_timeline("Lights, history: Prometheus' recomputation (tps:andon_state, "
                           "no hysteresis)",
                           [prom("tps:andon_state", "{{principle}}")],
                           description="When each light changed colour as Prometheus "
                                       "recomputes it. " + PROM_LIGHTS_TEXT,
                           mappings=light_mappings(), thresholds=light_thresholds(), h=8),
        ],
        [
            light_changes("Light changes (the aggregator's lights)", w=16),
            table("Light changes, last hour",
                  [prom("sort_desc(sum by (principle, to) "
                        "(increase(tps_andon_transitions_total[1h])) > 0)", table=True)],
                  description="Changes of the aggregator's lights in the last hour, by "
                              "principle and the colour changed to "
                              "(tps_andon_transitions_total). Empty: no light changed. The "
                              "reasons are on the Andon board and in "
                              "`tpsctl andon --history 20`.",
                  sort_by="Value", w=8, h=8, links=[BOARD_DATA_LINK]),
        ],
        [
            stat("Error %", [prom(P["andon"].overview, "error %")],
                 description=f"{P['andon'].measure}, both pools. {P['andon'].band()}.",
                 principle="andon", decimals=2, w=6, h=8),
            timeseries("Error % by pool",
                       [prom(f"100 * tps:error_ratio:rate5m{{{POOL}}}", "{{pool}}")],
                       description=f"Share of results FAILED, DEAD_LETTERED or EXPIRED, 5m. "
                                   f"{P['andon'].band()}.",
                       principle="andon", min_=0, w=9),
            timeseries("Errors by pool and outcome",
                       [prom(f'sum by (pool, outcome) (tps:results:rate1m{{outcome!="succeeded", {POOL}}})',
                             "{{pool}} {{outcome}}")],
                       description="Results per second that did not succeed.",
                       unit="reqps", stack=True, w=9),
        ],
        [
            timeseries("Errors vs throughput",
                       [prom(f"sum(tps:results:rate1m{{{POOL}}})", "results/s"),
                        prom(f'sum(tps:results:rate1m{{outcome!="succeeded", {POOL}}}) or vector(0)',
                             "errors/s")],
                       description="All results per second (left) against those that did not "
                                   "succeed (right): errors that rise with load vs on their own.",
                       unit="reqps", w=12,
                       overrides=[right_axis("errors/s"), color_of("errors/s", "red"),
                                  color_of("results/s", "green")]),
            timeseries("Refusals by reason",
                       [prom("sum by (reason) (tps:signals_refused:rate1m)", "{{reason}}")],
                       description="Submits refused per second, by ErrorInfo reason.",
                       unit="reqps", stack=True, w=12),
        ],
        [
            table("Firing alerts",
                  [prom('count by (alertname, severity) (ALERTS{alertstate="firing"})', table=True)],
                  description="Alerts firing now (Prometheus' ALERTS series), by name and "
                              "severity. Empty is good.",
                  sort_by="Value", w=8),
            timeseries("Alerts firing over time",
                       [prom('count by (alertname) (ALERTS{alertstate="firing"})', "{{alertname}}"),
                        prom('count by (alertname) (ALERTS{alertstate="pending"})', "{{alertname}} (pending)")],
                       description="How many series of each alert fire (and wait in pending) "
                                   "over time: alert frequency by type.",
                       bars=True, stack=True, w=16),
        ],
        [
            table("Top refusal reasons, last hour",
                  [prom("sort_desc(sum by (reason) (increase(tps_signals_refused_total[1h])) > 0)",
                        table=True)],
                  description="Refused submits in the last hour, by reason.",
                  sort_by="Value", w=8, h=8),
            table("Top error outcomes, last hour",
                  [prom('sort_desc(sum by (pool, type, outcome) (increase(tps_results_total{outcome!="succeeded"}[1h])) > 0)',
                        table=True)],
                  description="Results that did not succeed in the last hour, by pool, type "
                              "and outcome.",
                  sort_by="Value", w=8, h=8),
            state_timeline("Scrape targets",
                           [prom("up", "{{job}} {{instance}}")],
                           description="Prometheus' `up`: 1 when the last scrape of a target "
                                       "worked.",
                           mappings=value_mappings(((0, "DOWN", "red"), (1, "UP", "green"))),
                           thresholds=steps(("red", None), ("green", 1)), w=8, h=8),
        ],
    ]
    return dashboard(
        "tps-andon", "TPS Andon",
        "Problem visibility: the lights (the aggregator's, with hysteresis and reasons on "
        "the board at :8081, and Prometheus' recomputation), the errors and refusals behind "
        "them, and the alerts that fire.",
        rows, variables=[POOL_VAR, JAEGER_URL_VAR, BOARD_URL_VAR],
        links=[BOARD_DASHBOARD_LINK],
    )


def kaizen() -> dict:
    burn = steps(("green", None), ("orange", BURN_TICKET), ("red", BURN_PAGE))
    lead_links = [jaeger_search("tps-gateway", "submit", slower_than_value=True)]
    rows = [
        [
            stat("SLO attainment", [prom(f"tps:slo_attainment:percent5m{{{POOL}}}", "{{pool}}")],
                 description=f"{P['kaizen'].measure}, 5m. {P['kaizen'].band()}.",
                 principle="kaizen", decimals=2, w=8, h=5),
            stat("Objective", [prom(f"max by (pool) (tps_slo_objective_seconds{{{POOL}}})", "{{pool}}",
                                    instant=True)],
                 description="Lead-time objective per pool (TPS_SLO_FAST / TPS_SLO_SLOW).",
                 unit="s", graph=False, w=4, h=5),
            stat("Target", [prom(f"100 * max by (pool) (tps_slo_target_ratio{{{POOL}}})", "{{pool}}",
                                 instant=True)],
                 description="Share of signals that must meet the objective (TPS_SLO_TARGET).",
                 unit="percent", graph=False, w=4, h=5),
            stat("Error budget left (6h)",
                 [prom(f"100 * (1 - tps:slo_burn_rate:rate6h{{{POOL}}})", "{{pool}}")],
                 description="Budget not spent over the last 6 hours (the longest recorded "
                             "window): 100% untouched, 0% spent exactly, below 0 overspent.",
                 unit="percent", decimals=1,
                 thresholds=steps(("red", None), ("yellow", 0), ("green", 25)), w=8, h=5),
        ],
        [
            timeseries("SLO attainment",
                       [prom(f"tps:slo_attainment:percent5m{{{POOL}}}", "{{pool}}"),
                        prom(f"100 * max by (pool) (tps_slo_target_ratio{{{POOL}}})", "{{pool}} target")],
                       description=f"% of signals SUCCEEDED within the objective, 5m. "
                                   f"{P['kaizen'].band()}.",
                       principle="kaizen", max_=100, w=12),
            timeseries("SLO attainment, this week vs last",
                       [prom(f"tps:slo_attainment:percent5m{{{POOL}}}", "{{pool}} now"),
                        prom(f"tps:slo_attainment:percent5m{{{POOL}}} offset 1w", "{{pool}} a week ago")],
                       description="The same hour one week earlier (needs 8 days of retention).",
                       principle="kaizen", max_=100, w=12),
        ],
        [
            timeseries("Burn rate, 5m / 30m / 1h / 6h",
                       [prom(f"tps:slo_burn_rate:rate5m{{{POOL}}}", "{{pool}} 5m"),
                        prom(f"tps:slo_burn_rate:rate30m{{{POOL}}}", "{{pool}} 30m"),
                        prom(f"tps:slo_burn_rate:rate1h{{{POOL}}}", "{{pool}} 1h"),
                        prom(f"tps:slo_burn_rate:rate6h{{{POOL}}}", "{{pool}} 6h")],
                       description=f"Error ratio over the error budget (1 − target): 1 spends the "
                                   f"budget exactly. Dashed lines: {fmt(BURN_PAGE)} (page, with "
                                   f"1h and 5m both above) and {fmt(BURN_TICKET)} (ticket, with "
                                   f"6h and 30m both above).",
                       thresholds=burn, threshold_style="dashed", min_=0, w=24),
        ],
        [
            timeseries("Lead time p50 / p95 / p99",
                       [prom(f"tps:lead_time_seconds:p50_5m{{{POOL}}}", "{{pool}} p50"),
                        prom(f"tps:lead_time_seconds:p95_5m{{{POOL}}}", "{{pool}} p95"),
                        prom(f"tps:lead_time_seconds:p99_5m{{{POOL}}}", "{{pool}} p99")],
                       description="Submit → result, the signal's whole life. Dashed lines: the "
                                   f"Tracing thresholds on p99 ({P['tracing'].band()}); a wide "
                                   "p50–p99 gap is outliers." + NO_EXEMPLARS,
                       principle="tracing", min_=0, w=12, links=lead_links),
            timeseries("Lead time p99, this week vs last",
                       [prom(f"tps:lead_time_seconds:p99_5m{{{POOL}}}", "{{pool}} now"),
                        prom(f"tps:lead_time_seconds:p99_5m{{{POOL}}} offset 1w", "{{pool}} a week ago")],
                       description="Week-over-week comparison of the lead-time p99." + NO_EXEMPLARS,
                       principle="tracing", min_=0, w=12, links=lead_links),
        ],
        [
            timeseries("Cycle time p99",
                       [prom(f"tps:cycle_time_seconds:p99_5m{{{POOL}}}", "{{pool}} (worker)"),
                        prom(q(0.99, "tps_result_cycle_time_seconds"), "{{pool}} (results)")],
                       description="Pull → result durable: as the workers measure it and as the "
                                   "results report it to the aggregator." + NO_EXEMPLARS,
                       unit="s", min_=0, w=12,
                       links=[jaeger_search("tps-worker-${__field.labels.pool}", "process",
                                            slower_than_value=True)]),
            timeseries("Little's law: replicas needed vs running",
                       [prom(f"sum by (pool) (tps:signals_accepted:rate1m{{{POOL}}}) "
                             f"* on (pool) (sum by (pool) (rate(tps_cycle_time_seconds_sum{{{POOL}}}[5m])) "
                             f"/ sum by (pool) (rate(tps_cycle_time_seconds_count{{{POOL}}}[5m]))) "
                             f"/ on (pool) avg by (pool) (tps_worker_capacity{{{POOL}}})",
                             "{{pool}} needed"),
                        prom(f"count by (pool) (tps_worker_capacity{{{POOL}}})", "{{pool}} running")],
                       description="L = λW: arrival rate (accepted/s) × mean cycle time = handlers "
                                   "busy on average; divided by handlers per replica "
                                   "(TPS_NUM_WORKERS) = replicas the load needs. Running "
                                   "replicas well below needed means the queue will grow.",
                       decimals=2, min_=0, w=12),
        ],
    ]
    return dashboard(
        "tps-kaizen", "TPS Kaizen",
        "Continuous improvement: SLO attainment, burn rates, error budget and how lead "
        "time moves week over week.",
        rows, variables=[POOL_VAR, JAEGER_URL_VAR], time_from="now-6h",
    )


def heijunka() -> dict:
    util = f"100 * tps:pool_utilisation:ratio1m{{{POOL}}}"
    rows = [
        [
            stat("Pool utilisation", [prom(util, "{{pool}}")],
                 description=f"{P['heijunka'].measure}, 1m. {P['heijunka'].band()}.",
                 principle="heijunka", decimals=1, w=8, h=5),
            stat("Leveling index", [prom(f"tps:leveling_index:ratio1m{{{POOL}}}", "{{pool}}")],
                 description="Coefficient of variation of replica throughput: 0 = replicas "
                             "share the work perfectly evenly.",
                 decimals=2, w=8, h=5),
            stat("Replicas", [prom(f"count by (pool) (tps_worker_capacity{{{POOL}}})", "{{pool}}")],
                 description="Worker replicas reporting, per pool.", decimals=0, w=8, h=5),
        ],
        [
            timeseries("Pool utilisation", [prom(util, "{{pool}}")],
                       description="Busy handler-seconds per second over capacity, 1m. "
                                   f"{P['heijunka'].band()}.",
                       principle="heijunka", min_=0, w=12),
            timeseries("Leveling index", [prom(f"tps:leveling_index:ratio1m{{{POOL}}}", "{{pool}}")],
                       description="How evenly a pool's replicas share the work (coefficient of "
                                   "variation of their throughput; 0 is level).",
                       min_=0, w=12),
        ],
        [
            timeseries("Throughput per replica",
                       [prom(f"tps:worker_throughput:rate1m{{{POOL}}}", "{{pool}} {{instance}}")],
                       description="Items finished per second by each replica.",
                       unit="reqps", w=12),
            timeseries("Busy per replica",
                       [prom(f"tps_worker_busy{{{POOL}}} / (tps_worker_capacity{{{POOL}}} > 0)",
                             "{{pool}} {{instance}}")],
                       description="Handlers busy now over handlers, per replica (sampled at "
                                   "scrape time).",
                       unit="percentunit", min_=0, max_=1, w=12),
        ],
        [
            timeseries("Busy vs capacity",
                       [prom(f"sum by (pool) (tps_worker_capacity{{{POOL}}})", "{{pool}} capacity"),
                        prom(f"sum by (pool) (tps_worker_busy{{{POOL}}})", "{{pool}} busy")],
                       description="Handlers per pool and how many are busy now.",
                       min_=0, w=8),
            timeseries("Replicas per pool",
                       [prom(f"count by (pool) (tps_worker_capacity{{{POOL}}})", "{{pool}} replicas"),
                        prom("sum by (job) (up)", "{{job}} targets up")],
                       description="Worker replicas reporting per pool, and scrape targets up per "
                                   "job. Steps are scaling events.",
                       decimals=0, min_=0, w=8),
            timeseries("Burst factor",
                       [prom(f"sum by (pool) (rate(tps_signals_accepted_total{{{POOL}}}[1m])) "
                             f"/ (sum by (pool) (rate(tps_signals_accepted_total{{{POOL}}}[1h])) > 0)",
                             "{{pool}}")],
                       description="Accepted rate over the last minute against the last hour's "
                                   "average: above 1 is a burst the pool must absorb.",
                       thresholds=steps(("green", None), ("yellow", 2), ("red", 5)),
                       threshold_style="dashed", min_=0, w=8),
        ],
        [
            timeseries("Accepted by pool and type",
                       [prom(f"sum by (pool, type) (rate(tps_signals_accepted_total{{{POOL}}}[{RATE}]))",
                             "{{pool}} {{type}}")],
                       description="Routing: which signal types go to which pool, per second.",
                       unit="reqps", stack=True, w=12),
            timeseries("CPU per replica",
                       [prom(f"sum by (service, instance) (rate(process_cpu_seconds_total[{RATE}]))",
                             "{{service}} {{instance}}")],
                       description="CPU seconds per second each process uses (its share of cost).",
                       unit="percentunit", min_=0, w=6),
            timeseries("Memory per replica",
                       [prom("sum by (service, instance) (process_resident_memory_bytes)",
                             "{{service}} {{instance}}")],
                       description="Resident memory per process.",
                       unit="bytes", min_=0, w=6),
        ],
    ]
    return dashboard(
        "tps-heijunka", "TPS Heijunka",
        "Load leveling: how busy each pool is, how evenly its replicas share the work, "
        "and how the load is routed.",
        rows, variables=[POOL_VAR, JAEGER_URL_VAR],
    )


def tracing() -> dict:
    gateway_links = [jaeger_search("tps-gateway", "submit", slower_than_value=True)]
    worker_links = [jaeger_search("tps-worker-${__field.labels.pool}", "process",
                                  slower_than_value=True)]
    rows = [
        [
            bargauge("p99 by stage",
                     [prom(f"max(tps:lead_time_seconds:p99_5m{{{POOL}}})", "lead time (submit → result)", instant=True),
                      prom(f"max(tps:cycle_time_seconds:p99_5m{{{POOL}}})", "cycle time (pull → result)", instant=True),
                      prom(f"max(tps:queue_wait_seconds:p99_5m{{{POOL}}})", "queue wait (enqueue → pull)", instant=True),
                      prom(q(0.99, "tps_submit_duration_seconds", by="", where=""), "gateway submit", instant=True),
                      prom(q(0.99, "tps_queue_publish_duration_seconds", by="", where=""), "broker publish", instant=True)],
                     description="Where the time goes, slowest pool, p99 over 5m. Colours: the "
                                 f"Tracing thresholds ({P['tracing'].band()}).",
                     principle="tracing", w=12, h=8),
            stat("Lead time p99", [prom(f"tps:lead_time_seconds:p99_5m{{{POOL}}}", "{{pool}}")],
                 description=f"{P['tracing'].measure}. {P['tracing'].band()}." + NO_EXEMPLARS,
                 principle="tracing", decimals=3, w=6, h=8, links=gateway_links),
            stat("Submits per second",
                 [prom(f"sum(rate(tps_submit_duration_seconds_count[{RATE}]))", "submits/s")],
                 description="Every Submit the gateway handled (refusals included).",
                 unit="reqps", decimals=1, w=6, h=8),
        ],
        [
            timeseries("Lead time p50 / p95 / p99",
                       [prom(f"tps:lead_time_seconds:p50_5m{{{POOL}}}", "{{pool}} p50"),
                        prom(f"tps:lead_time_seconds:p95_5m{{{POOL}}}", "{{pool}} p95"),
                        prom(f"tps:lead_time_seconds:p99_5m{{{POOL}}}", "{{pool}} p99")],
                       description="Submit → result (aggregator)." + NO_EXEMPLARS,
                       principle="tracing", min_=0, w=12, links=gateway_links),
            timeseries("Cycle time p50 / p99",
                       [prom(q(0.5, "tps_cycle_time_seconds"), "{{pool}} p50"),
                        prom(f"tps:cycle_time_seconds:p99_5m{{{POOL}}}", "{{pool}} p99")],
                       description="Pull → result durable (worker's process span)." + NO_EXEMPLARS,
                       unit="s", min_=0, w=12, links=worker_links),
        ],
        [
            timeseries("Queue wait p50 / p99",
                       [prom(q(0.5, "tps_queue_wait_seconds"), "{{pool}} p50"),
                        prom(f"tps:queue_wait_seconds:p99_5m{{{POOL}}}", "{{pool}} p99")],
                       description="Enqueue → pull (the gap between the gateway's publish span "
                                   "and the worker's process span)." + NO_EXEMPLARS,
                       unit="s", min_=0, w=8, links=worker_links),
            timeseries("Gateway submit p50 / p95 / p99",
                       [prom(q(0.5, "tps_submit_duration_seconds", by="", where=""), "p50"),
                        prom(q(0.95, "tps_submit_duration_seconds", by="", where=""), "p95"),
                        prom(q(0.99, "tps_submit_duration_seconds", by="", where=""), "p99")],
                       description="Validate, route and enqueue one signal (the submit span), "
                                   "refusals included." + NO_EXEMPLARS,
                       unit="s", min_=0, w=8, links=gateway_links),
            timeseries("Broker publish p50 / p99",
                       [prom(q(0.5, "tps_queue_publish_duration_seconds", by="backend", where=""), "{{backend}} p50"),
                        prom(q(0.99, "tps_queue_publish_duration_seconds", by="backend", where=""), "{{backend}} p99")],
                       description="Time for the broker to make a work item durable (the publish "
                                   "span: JetStream ack or RabbitMQ confirm)." + NO_EXEMPLARS,
                       unit="s", min_=0, w=8,
                       links=[jaeger_search("tps-gateway", "publish", slower_than_value=True)]),
        ],
        [
            timeseries("Request volume",
                       [prom(f"sum(rate(tps_submit_duration_seconds_count[{RATE}]))", "submits"),
                        prom(f"sum by (type) (rate(tps_signals_accepted_total[{RATE}]))", "accepted {{type}}"),
                        prom(f"sum by (outcome) (rate(tps_results_total[{RATE}]))", "results {{outcome}}")],
                       description="Submits handled by the gateway, accepted by signal type, and "
                                   "results by outcome, per second.",
                       unit="reqps", w=24),
        ],
        [
            table("Recent error traces ($service)",
                  [{"limit": 50, "queryType": "search", "service": "$service", "tags": "error=true"}],
                  description="Jaeger search: traces of the chosen service with a span in "
                              "ERROR (refused submits, failed or dead-lettered signals). Click a "
                              "trace id to open it.",
                  datasource=JAEGER, unit=None, sort_by="Start time", hide=(), w=12, h=9),
            table("Slowest recent submits",
                  [{"limit": 50, "operation": "submit", "queryType": "search",
                    "service": "tps-gateway"}],
                  description="Jaeger search: the last 50 gateway submit traces, slowest first.",
                  datasource=JAEGER, unit=None, sort_by="Duration", hide=(), w=12, h=9),
        ],
        [
            _panel("traces", "Trace $trace_id", [{"query": "$trace_id"}],
                   "One trace by id (set the Trace id variable above, or click a trace id in "
                   "the tables or the logs).", 24, 12, datasource=JAEGER),
        ],
        [
            _panel(
                "logs", "Logs with a trace id",
                [{"editorMode": "code",
                  "expr": '{service=~".+"} |~ `"trace_id":"[0-9a-f]{32}"` |= "$trace_id"',
                  "queryType": "range"}],
                "Service log lines (JSON, via promtail and Loki) that carry a trace id; "
                "filtered to the Trace id variable when it is set. The trace id in a line "
                "links to the trace in Jaeger (the Loki data source's derived field).",
                24, 12, datasource=LOKI,
                options={
                    "dedupStrategy": "none",
                    "enableLogDetails": True,
                    "prettifyLogMessage": False,
                    "showCommonLabels": False,
                    "showLabels": True,
                    "showTime": True,
                    "sortOrder": "Descending",
                    "wrapLogMessage": True,
                },
            ),
        ],
    ]
    return dashboard(
        "tps-tracing", "TPS Tracing",
        "The value stream: latency of each stage from submit to result, and the traces and "
        "logs behind them.",
        rows, variables=[POOL_VAR, SERVICE_VAR, TRACE_ID_VAR, JAEGER_URL_VAR],
    )


DASHBOARDS = {
    "tps-overview.json": overview,
    "jidoka.json": jidoka,
    "kanban.json": kanban,
    "andon.json": andon,
    "kaizen.json": kaizen,
    "heijunka.json": heijunka,
    "tracing.json": tracing,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a dashboard file differs from what this script writes")
    args = ap.parse_args()
    rendered = render()
    if args.check:
        stale = []
        for name, text in rendered.items():
            path = OUT_DIR / name
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        extra = sorted(
            p.name for p in OUT_DIR.glob("*.json") if p.name not in rendered
        ) if OUT_DIR.is_dir() else []
        for name in stale:
            print(f"stale: deploy/grafana/dashboards/{name}", file=sys.stderr)
        for name in extra:
            print(f"not generated: deploy/grafana/dashboards/{name}", file=sys.stderr)
        if stale or extra:
            print("run: python3 deploy/grafana/generate.py", file=sys.stderr)
            return 1
        print(f"{len(rendered)} dashboards up to date")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(rendered)} dashboards to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
