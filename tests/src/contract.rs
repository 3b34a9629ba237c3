//! The metrics contract: which series the dashboards, the Prometheus rules
//! and docs/metrics.md name, read from the files in deploy/ and docs/.
//! Queries are parsed with a real PromQL parser, so a name is a selector in
//! the syntax tree, never a word that merely looks like one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde::Deserialize;

/// The repository root (the tests crate sits one level below it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Series Prometheus makes itself: a query may name them although no
/// service exports them.
pub const PROMETHEUS_OWN: &[&str] = &["up", "ALERTS", "ALERTS_FOR_STATE"];

/// Where a query was found, for the failure message.
#[derive(Debug, Clone)]
pub struct Query {
    pub origin: String,
    pub expr: String,
}

/// Every metric name selected by `expr` (vector and range selectors, also
/// inside subqueries and function calls).
pub fn selected_names(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            let vs = match e {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let name = vs.name.clone().or_else(|| {
                vs.matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
            });
            match name {
                Some(n) => {
                    self.0.insert(n);
                    Ok(true)
                }
                None => Err(format!("a selector without a metric name: {vs}")),
            }
        }
    }
    let ast = parser::parse(expr)?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast)?;
    Ok(names.0)
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
}

/// The rules of every file in `dir`: what recording rules define, and every
/// expression (recording and alerting) as a query.
#[derive(Debug, Default)]
pub struct Rules {
    pub recorded: BTreeSet<String>,
    pub alerts: BTreeSet<String>,
    pub queries: Vec<Query>,
}

pub fn load_rules(dir: &Path) -> Rules {
    let mut rules = Rules::default();
    for path in files(dir, "yml") {
        let text = read(&path);
        let file: RuleFile = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a rule file: {e}", path.display()));
        for group in file.groups {
            for rule in group.rules {
                let what = match (&rule.record, &rule.alert) {
                    (Some(r), _) => {
                        rules.recorded.insert(r.clone());
                        format!("record {r}")
                    }
                    (_, Some(a)) => {
                        rules.alerts.insert(a.clone());
                        format!("alert {a}")
                    }
                    _ => panic!("{}: a rule with neither record nor alert", path.display()),
                };
                rules.queries.push(Query {
                    origin: format!("{} / {} / {what}", file_name(&path), group.name),
                    expr: rule.expr,
                });
            }
        }
    }
    rules
}

/// Every Prometheus query of every dashboard in `dir`: panel targets
/// (rows and nested panels included) and template variable queries.
pub fn load_dashboard_queries(dir: &Path) -> Vec<Query> {
    let mut out = Vec::new();
    let dashboards = files(dir, "json");
    assert!(!dashboards.is_empty(), "no dashboards in {}", dir.display());
    for path in dashboards {
        let json: serde_json::Value = serde_json::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let file = file_name(&path);
        walk_panels(&json, &file, &mut out);
        for var in json["templating"]["list"].as_array().into_iter().flatten() {
            let query = match &var["query"] {
                serde_json::Value::String(q) => q.clone(),
                q => q["query"].as_str().unwrap_or_default().to_owned(),
            };
            if var["type"] == "query" && !query.is_empty() {
                let origin = format!("{file} / variable {}", var["name"]);
                out.push(Query {
                    origin,
                    expr: variable_query(&query),
                });
            }
        }
    }
    out
}

fn walk_panels(node: &serde_json::Value, file: &str, out: &mut Vec<Query>) {
    for panel in node["panels"].as_array().into_iter().flatten() {
        let panel_ds = datasource_uid(&panel["datasource"]);
        for target in panel["targets"].as_array().into_iter().flatten() {
            let ds = datasource_uid(&target["datasource"]).or(panel_ds.clone());
            if ds.as_deref() != Some("prometheus") {
                continue;
            }
            let expr = target["expr"].as_str().unwrap_or_default();
            out.push(Query {
                origin: format!("{file} / panel {}", panel["title"]),
                expr: substitute_variables(expr),
            });
        }
        walk_panels(panel, file, out);
    }
}

fn datasource_uid(ds: &serde_json::Value) -> Option<String> {
    match ds {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(_) => ds["uid"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Grafana's `$__rate_interval`-style globals become a range, other
/// variables a plain value, so the query parses as PromQL.
pub fn substitute_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').map_or(inner.len(), |e| e + 1);
            (inner[..end.saturating_sub(1)].to_owned(), end + 1)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (after[..end].to_owned(), end)
        };
        out.push_str(if name.starts_with("__") { "5m" } else { "x" });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// `label_values(metric, label)` → `metric`; other variable queries are
/// taken as PromQL.
fn variable_query(query: &str) -> String {
    let q = query.trim();
    if let Some((metric, _label)) = q
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
        .and_then(|args| args.rsplit_once(','))
    {
        return substitute_variables(metric.trim());
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|a| a.strip_suffix(')'))
    {
        return substitute_variables(inner);
    }
    substitute_variables(q)
}

/// Metric names in the first column of docs/metrics.md's tables (each
/// backquoted; several may share a cell).
pub fn documented_names(markdown: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in markdown.lines() {
        let Some(first) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
            continue;
        };
        for (i, part) in first.split('`').enumerate() {
            let looks_like_metric = part.starts_with("tps_") || part.starts_with("tps:");
            if i % 2 == 1 && looks_like_metric {
                names.insert(part.to_owned());
            }
        }
    }
    names
}

/// Names in a Prometheus text exposition: every sample's series name
/// (`x_bucket`, `x_sum`, … for histograms) and every family (`# TYPE`).
#[derive(Debug, Default)]
pub struct Exposition {
    pub series: BTreeSet<String>,
    /// family name → type
    pub families: BTreeMap<String, String>,
}

impl Exposition {
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    self.families.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                self.series.insert(line[..end].to_owned());
            }
        }
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_selectors_not_from_words() {
        let names = selected_names(
            r#"histogram_quantile(0.99, sum by (pool, le) (rate(tps_lead_time_seconds_bucket{pool=~"fast|slow"}[5m])))
               / on (pool) group_left max by (pool) (tps_slo_target_ratio offset 1w)
               + avg_over_time((max by (breaker) (tps_circuit_state) == bool 1)[5m:15s])
               + label_replace(vector(1), "principle", "rate", "", "")"#,
        )
        .unwrap();
        let want: BTreeSet<String> = [
            "tps_circuit_state",
            "tps_lead_time_seconds_bucket",
            "tps_slo_target_ratio",
        ]
        .map(String::from)
        .into();
        assert_eq!(names, want);
        assert_eq!(
            selected_names(r#"{__name__="tps:andon_state"}"#).unwrap(),
            ["tps:andon_state".to_owned()].into()
        );
        assert!(selected_names("sum(rate(x[5m])").is_err(), "unbalanced");
    }

    #[test]
    fn grafana_variables_become_parseable_promql() {
        let q = substitute_variables(
            r#"sum by (pool) (rate(tps_results_total{pool=~"$pool", type="${type}"}[$__rate_interval]))"#,
        );
        assert_eq!(
            q,
            r#"sum by (pool) (rate(tps_results_total{pool=~"x", type="x"}[5m]))"#
        );
        assert_eq!(
            selected_names(&q).unwrap(),
            ["tps_results_total".to_owned()].into()
        );
        assert_eq!(
            variable_query("label_values(tps_queue_depth, pool)"),
            "tps_queue_depth"
        );
    }

    #[test]
    fn documented_names_are_the_first_column() {
        let md = "| metric | type |\n|---|---|\n| `tps_a_total` | counter, see `tps_b` |\n\
                  | `tps:x:rate5m`, `tps:y:rate1h` | – |\ntext `tps_c` here\n";
        let want: BTreeSet<String> = ["tps:x:rate5m", "tps:y:rate1h", "tps_a_total"]
            .map(String::from)
            .into();
        assert_eq!(documented_names(md), want);
    }

    #[test]
    fn exposition_names_series_and_families() {
        let mut e = Exposition::default();
        e.add("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\nup 1\n");
        assert_eq!(e.families["h"], "histogram");
        assert!(e.series.contains("h_bucket") && e.series.contains("up"));
        assert!(!e.series.contains("h"));
    }
}
