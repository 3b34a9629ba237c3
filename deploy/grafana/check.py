#!/usr/bin/env python3
"""Static checks of the Grafana dashboards and the observability configs.

    python3 deploy/grafana/check.py

Checks, without Grafana, Loki or Jaeger running (none has a Debian package,
so no test here can start them):

- every dashboard in deploy/grafana/dashboards/ is JSON, has a unique uid,
  unique panel ids and panels that fit the 24-column grid without overlapping;
- every panel and target names a data source by uid: prometheus, jaeger or
  loki; every Prometheus and Loki target has a non-empty expr; every Jaeger
  target is a search (with a service) or a trace id lookup;
- every `$variable` a query uses is defined by the dashboard;
- every stat, time series or bar gauge that shows a principle's value (a
  series of generate.PRINCIPLES) carries that principle's unit and
  thresholds, and every tps:andon_state panel maps 0/1/2 to GREEN/YELLOW/RED;
- the provisioning files, loki.yml and promtail.yml parse (with PyYAML when
  it is installed, else a structural check), the Loki data source's derived
  field finds a trace id in a real log line, and promtail keeps trace_id out
  of the labels.

Whether a query names only exported series is the Rust contract test's job
(tests/tests/metrics_contract.rs parses every Prometheus expr with a PromQL
parser). Exit 0 when all checks pass, 1 otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ beside the configs

import generate  # noqa: E402  (the thresholds table lives there, once)

DATASOURCES = {"prometheus", "jaeger", "loki"}
GRAFANA_BUILTIN_VARS = re.compile(r"^__")
# A log line as the services write it (tracing-subscriber JSON, flattened
# event, the enclosing spans under "spans", outermost first).
SAMPLE_LOG = (
    '{"timestamp":"2024-06-01T12:00:00.000000Z","level":"INFO","message":"accepted",'
    '"pool":"fast","target":"tps_gateway::core","spans":[{"name":"submit",'
    '"signal.id":"0190","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"},{"name":"admit"}]}'
)
SAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def ds_uid(ds) -> str | None:
    if isinstance(ds, str):
        return ds
    if isinstance(ds, dict):
        return ds.get("uid")
    return None


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def rule_pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(name) + r"(?![\w:])")


PRINCIPLE_RULES = [
    (p, [rule_pattern(r) for r in p.rules]) for p in generate.PRINCIPLES
]
ANDON_STATE = rule_pattern("tps:andon_state")
VAR_REF = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def check_dashboard(path: Path, uids: dict[str, str]) -> int:
    name = path.name
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        problem(name, f"not JSON: {e}")
        return 0
    uid = dash.get("uid")
    if not uid:
        problem(name, "no uid")
    elif uid in uids:
        problem(name, f"uid {uid!r} also used by {uids[uid]}")
    else:
        uids[uid] = name
    if "tps" not in dash.get("tags", []):
        problem(name, "not tagged tps")

    defined = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    ids: set = set()
    cells: dict[tuple[int, int], str] = {}
    count = 0
    for panel in walk(dash.get("panels", [])):
        count += 1
        title = panel.get("title", "?")
        where = f"{name} / panel {title!r}"
        pid = panel.get("id")
        if pid is None:
            problem(where, "no id")
        elif pid in ids:
            problem(where, f"panel id {pid} is not unique")
        ids.add(pid)

        g = panel.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
            problem(where, f"bad gridPos {g}")
        else:
            for cx in range(x, x + w):
                for cy in range(y, y + h):
                    if (cx, cy) in cells:
                        problem(where, f"overlaps panel {cells[(cx, cy)]!r}")
                        break
                    cells[(cx, cy)] = title
                else:
                    continue
                break

        if panel.get("type") == "row":
            continue
        panel_ds = ds_uid(panel.get("datasource"))
        if panel_ds not in DATASOURCES:
            problem(where, f"data source {panel_ds!r} is not one of {sorted(DATASOURCES)}")
        targets = panel.get("targets", [])
        if not targets:
            problem(where, "no targets")
        exprs = []
        for t in targets:
            ds = ds_uid(t.get("datasource")) or panel_ds
            tw = f"{where} / target {t.get('refId', '?')}"
            if ds not in DATASOURCES:
                problem(tw, f"data source {ds!r} is not one of {sorted(DATASOURCES)}")
            if ds in ("prometheus", "loki"):
                expr = (t.get("expr") or "").strip()
                if not expr:
                    problem(tw, "empty expr")
                if ds == "prometheus":
                    exprs.append(expr)
                text = expr
            elif ds == "jaeger":
                if t.get("queryType") == "search":
                    if not t.get("service"):
                        problem(tw, "Jaeger search without a service")
                elif not t.get("query"):
                    problem(tw, "Jaeger trace lookup without a trace id")
                text = " ".join(str(t.get(k, "")) for k in ("service", "operation", "tags", "query"))
            else:
                text = ""
            for m in VAR_REF.finditer(text):
                var = m.group(1) or m.group(2)
                if not GRAFANA_BUILTIN_VARS.match(var) and var not in defined:
                    problem(tw, f"uses ${var}, which the dashboard does not define")

        check_principle(panel, where, exprs)
    return count


def check_principle(panel: dict, where: str, exprs: list[str]) -> None:
    kind = panel.get("type")
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    joined = "\n".join(exprs)
    if ANDON_STATE.search(joined):
        want = {str(v): text for v, text, _ in generate.LIGHTS}
        got = {}
        for m in defaults.get("mappings", []):
            for k, opt in m.get("options", {}).items():
                got[k] = opt.get("text")
        if got != want:
            problem(where, f"tps:andon_state without the light mappings {want} (has {got})")
    if kind not in ("stat", "timeseries", "bargauge", "gauge"):
        return
    used = [p for p, pats in PRINCIPLE_RULES if any(pat.search(joined) for pat in pats)]
    if len(used) > 1:
        problem(where, f"mixes principle values {[p.key for p in used]}")
        return
    if not used:
        return
    p = used[0]
    if defaults.get("thresholds") != p.thresholds():
        problem(where, f"{p.key} value without the {p.key} thresholds {p.band()}: "
                       f"{defaults.get('thresholds')}")
    if defaults.get("unit") != p.unit:
        problem(where, f"{p.key} value in unit {defaults.get('unit')!r}, want {p.unit!r}")


# YAML --------------------------------------------------------------------

try:
    import yaml  # type: ignore
except ImportError:  # Python has no YAML parser of its own
    yaml = None


def load_yaml(path: Path, must_contain: tuple[str, ...]):
    """The parsed document, or None after a structural check without PyYAML."""
    rel = path.relative_to(DEPLOY.parent)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problem(str(rel), str(e))
        return None
    if "\t" in text:
        problem(str(rel), "contains a tab (YAML indents with spaces)")
    for needle in must_contain:
        if needle not in text:
            problem(str(rel), f"missing {needle!r}")
    if yaml is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem(str(rel), f"not YAML: {e}")
        return None


def yaml_scalar_after(text: str, key: str) -> str | None:
    """Without PyYAML: the scalar of `key: '...'` / `key: "..."` (single-line)."""
    m = re.search(rf"^\s*{re.escape(key)}:\s*(.+?)\s*$", text, re.M)
    if not m:
        return None
    raw = m.group(1)
    if raw.startswith("'") and raw.endswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw.startswith('"') and raw.endswith('"'):
        return json.loads(raw)
    return raw


def check_trace_regex(where: str, regex: str | None) -> None:
    if not regex:
        problem(where, "no matcherRegex")
        return
    try:
        m = re.search(regex, SAMPLE_LOG)
    except re.error as e:
        problem(where, f"matcherRegex {regex!r} does not compile: {e}")
        return
    if not m or m.group(1) != SAMPLE_TRACE_ID:
        problem(where, f"matcherRegex {regex!r} finds no trace id in {SAMPLE_LOG}")


def check_configs() -> None:
    prov = HERE / "provisioning"
    ds_path = prov / "datasources" / "datasources.yml"
    doc = load_yaml(ds_path, ("uid: prometheus", "uid: jaeger", "uid: loki", "derivedFields",
                              "matcherRegex"))
    where = str(ds_path.relative_to(DEPLOY.parent))
    if doc is not None:
        sources = {d.get("uid"): d for d in doc.get("datasources", [])}
        if set(sources) != DATASOURCES:
            problem(where, f"data source uids {sorted(sources)}, want {sorted(DATASOURCES)}")
        fields = sources.get("loki", {}).get("jsonData", {}).get("derivedFields", [])
        if not any(f.get("datasourceUid") == "jaeger" for f in fields):
            problem(where, "no Loki derived field links to the jaeger data source")
        for f in fields:
            check_trace_regex(where, f.get("matcherRegex"))
    elif ds_path.is_file():
        check_trace_regex(where, yaml_scalar_after(ds_path.read_text(encoding="utf-8"),
                                                   "matcherRegex"))

    db_path = prov / "dashboards" / "dashboards.yml"
    doc = load_yaml(db_path, ("providers", "/var/lib/grafana/dashboards"))
    if doc is not None:
        paths = [p.get("options", {}).get("path") for p in doc.get("providers", [])]
        if "/var/lib/grafana/dashboards" not in paths:
            problem(str(db_path.relative_to(DEPLOY.parent)),
                    "no provider loads /var/lib/grafana/dashboards")

    doc = load_yaml(DEPLOY / "loki" / "loki.yml", ("auth_enabled: false", "http_listen_port: 3100"))
    if doc is not None and doc.get("auth_enabled") is not False:
        problem("deploy/loki/loki.yml", "auth_enabled is not false")

    pt_path = DEPLOY / "promtail" / "promtail.yml"
    doc = load_yaml(pt_path, ("docker_sd_configs", "http://loki:3100/loki/api/v1/push"))
    if doc is not None:
        for job in doc.get("scrape_configs", []):
            for stage in stages(job.get("pipeline_stages", [])):
                if "labels" in stage and "trace_id" in (stage["labels"] or {}):
                    problem("deploy/promtail/promtail.yml",
                            "trace_id is a label (one stream per trace): keep it structured metadata")
    elif pt_path.is_file() and re.search(r"labels:\s*\n(\s+\w+:.*\n)*\s+trace_id:",
                                          pt_path.read_text(encoding="utf-8")):
        problem("deploy/promtail/promtail.yml", "trace_id looks like a label")


def stages(items):
    for s in items or []:
        yield s
        if "match" in s:
            yield from stages(s["match"].get("stages", []))


def main() -> int:
    out_dir = generate.OUT_DIR
    files = sorted(out_dir.glob("*.json"))
    expected = set(generate.DASHBOARDS)
    found = {f.name for f in files}
    for missing in sorted(expected - found):
        problem(str(out_dir / missing), "missing (run generate.py)")
    uids: dict[str, str] = {}
    panels = sum(check_dashboard(f, uids) for f in files)
    check_configs()
    if yaml is None:
        print("note: PyYAML is not installed; YAML files got a structural check only")
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(files)} dashboards, {panels} panels, provisioning, loki and promtail configs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
