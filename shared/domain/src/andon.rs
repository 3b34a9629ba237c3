//! The Andon lights: the thresholds table of DESIGN.md and the hysteresis
//! that keeps a light from flapping. Pure: the aggregator measures, this
//! decides the colour.
//!
//! | principle | measures | GREEN | YELLOW | RED |
//! |---|---|---|---|---|
//! | Jidoka | % of the window a breaker was open (worst breaker) | 0 | above 0 up to 30 | > 30 |
//! | Kanban | queue depth (deepest pool) | < 500 | 500–1000 | > 1000 |
//! | Andon | % of results FAILED, DEAD_LETTERED or EXPIRED | < 0.5 | 0.5–1 | > 1 |
//! | Kaizen | % of signals within their SLO objective (worst pool) | > 95 | 90–95 | < 90 |
//! | Heijunka | pool utilisation % (busiest pool) | < 70 | 70–85 | > 85 |
//! | Tracing | lead-time p99, seconds (slowest pool) | < 3 | 3–5 | > 5 |
//!
//! The table's Jidoka row leaves 0–10 % unassigned; here any open time is
//! YELLOW (a breaker that opened is worth a look).
//!
//! **Hysteresis.** A light goes up as soon as its value crosses into a worse
//! band, and comes down only once the value is clear of the threshold by
//! [`HYSTERESIS`] (10 %) of it: Kanban enters YELLOW at 500 and leaves it
//! below 450, enters RED above 1000 and leaves it below 900. For Kaizen,
//! where higher is better, the band is measured on the misses (100 −
//! attainment): YELLOW at 95 % or less, back to GREEN above 95.5 %; RED
//! below 90 %, back to YELLOW above 91 %. A threshold of 0 (Jidoka's YELLOW)
//! is left only at exactly 0. With no measurement at all the light is GREEN.

use tps_proto::v1::{Light, Principle};

/// How far below a threshold (as a share of it) a value must fall before
/// the light comes down.
pub const HYSTERESIS: f64 = 0.10;

/// One row of the thresholds table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub principle: Principle,
    /// Where YELLOW starts (inclusive; exclusive when 0).
    pub yellow: f64,
    /// Where RED starts (exclusive).
    pub red: f64,
    /// Kaizen: lower values are worse.
    pub higher_is_better: bool,
    pub unit: &'static str,
    /// The reason code when the light is not GREEN.
    pub reason: &'static str,
    /// What is measured, for details and docs.
    pub measures: &'static str,
}

/// The six rows, in the board's order.
pub const RULES: [Rule; 6] = [
    Rule {
        principle: Principle::Jidoka,
        yellow: 0.0,
        red: 30.0,
        higher_is_better: false,
        unit: "%",
        reason: "CIRCUIT_OPEN",
        measures: "circuit open, % of the window",
    },
    Rule {
        principle: Principle::Kanban,
        yellow: 500.0,
        red: 1000.0,
        higher_is_better: false,
        unit: "signals",
        reason: "QUEUE_DEPTH_HIGH",
        measures: "queue depth",
    },
    Rule {
        principle: Principle::Andon,
        yellow: 0.5,
        red: 1.0,
        higher_is_better: false,
        unit: "%",
        reason: "ERROR_RATE_HIGH",
        measures: "error rate",
    },
    Rule {
        principle: Principle::Kaizen,
        yellow: 95.0,
        red: 90.0,
        higher_is_better: true,
        unit: "%",
        reason: "SLO_ATTAINMENT_LOW",
        measures: "SLO attainment",
    },
    Rule {
        principle: Principle::Heijunka,
        yellow: 70.0,
        red: 85.0,
        higher_is_better: false,
        unit: "%",
        reason: "UTILISATION_HIGH",
        measures: "pool utilisation",
    },
    Rule {
        principle: Principle::Tracing,
        yellow: 3.0,
        red: 5.0,
        higher_is_better: false,
        unit: "s",
        reason: "P99_LATENCY_HIGH",
        measures: "lead-time p99",
    },
];

/// The rule of `principle`.
pub fn rule(principle: Principle) -> &'static Rule {
    RULES
        .iter()
        .find(|r| r.principle == principle)
        .unwrap_or(&RULES[0])
}

/// How bad a value is, on a scale where higher is worse, with the two
/// thresholds on the same scale (Kaizen: misses = 100 − attainment).
fn badness(rule: &Rule, value: f64) -> (f64, f64, f64) {
    if rule.higher_is_better {
        (100.0 - value, 100.0 - rule.yellow, 100.0 - rule.red)
    } else {
        (value, rule.yellow, rule.red)
    }
}

/// The colour `value` has on its own (no hysteresis).
pub fn band(rule: &Rule, value: f64) -> Light {
    let (v, yellow, red) = badness(rule, value);
    if v > red {
        Light::Red
    } else if (yellow == 0.0 && v > 0.0) || (yellow > 0.0 && v >= yellow) {
        Light::Yellow
    } else {
        Light::Green
    }
}

/// Whether `v` (on the badness scale) is clear below `threshold`.
fn clear_below(v: f64, threshold: f64) -> bool {
    if threshold == 0.0 {
        v <= 0.0
    } else {
        v < threshold * (1.0 - HYSTERESIS)
    }
}

/// The next colour of a light that is `current`, given the newest value
/// (`None`: nothing measured in the window).
pub fn next(rule: &Rule, current: Light, value: Option<f64>) -> Light {
    let Some(value) = value.filter(|v| v.is_finite()) else {
        return Light::Green;
    };
    let raw = band(rule, value);
    let (v, yellow, red) = badness(rule, value);
    match current {
        // Going up, or staying: at once.
        _ if rank(raw) >= rank(current) => raw,
        Light::Red => {
            if !clear_below(v, red) {
                Light::Red
            } else if clear_below(v, yellow) {
                Light::Green
            } else {
                Light::Yellow
            }
        }
        Light::Yellow => {
            if clear_below(v, yellow) {
                Light::Green
            } else {
                Light::Yellow
            }
        }
        _ => raw,
    }
}

/// GREEN < YELLOW < RED (UNSPECIFIED below all).
pub fn rank(light: Light) -> u8 {
    match light {
        Light::Unspecified => 0,
        Light::Green => 1,
        Light::Yellow => 2,
        Light::Red => 3,
    }
}

/// The worst of `lights` (GREEN when empty).
pub fn worst(lights: impl IntoIterator<Item = Light>) -> Light {
    lights
        .into_iter()
        .max_by_key(|l| rank(*l))
        .filter(|l| *l != Light::Unspecified)
        .unwrap_or(Light::Green)
}

/// `GREEN`, `YELLOW`, `RED`.
pub fn light_name(light: Light) -> &'static str {
    match light {
        Light::Green => "GREEN",
        Light::Yellow => "YELLOW",
        Light::Red => "RED",
        Light::Unspecified => "UNSPECIFIED",
    }
}

/// `JIDOKA`, `KANBAN`, …
pub fn principle_name(principle: Principle) -> &'static str {
    match principle {
        Principle::Jidoka => "JIDOKA",
        Principle::Kanban => "KANBAN",
        Principle::Andon => "ANDON",
        Principle::Kaizen => "KAIZEN",
        Principle::Heijunka => "HEIJUNKA",
        Principle::Tracing => "TRACING",
        Principle::Unspecified => "UNSPECIFIED",
    }
}

/// The value of `tps_andon_state`: 0 GREEN, 1 YELLOW, 2 RED.
pub fn gauge(light: Light) -> i64 {
    i64::from(rank(light).saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(principle: Principle, values: &[f64]) -> Vec<Light> {
        let rule = rule(principle);
        let mut light = Light::Green;
        values
            .iter()
            .map(|v| {
                light = next(rule, light, Some(*v));
                light
            })
            .collect()
    }

    use Light::{Green as G, Red as R, Yellow as Y};

    #[test]
    fn every_row_of_the_table_without_history() {
        let cases: &[(Principle, f64, Light)] = &[
            (Principle::Jidoka, 0.0, G),
            (Principle::Jidoka, 0.1, Y),
            (Principle::Jidoka, 30.0, Y),
            (Principle::Jidoka, 30.1, R),
            (Principle::Kanban, 499.0, G),
            (Principle::Kanban, 500.0, Y),
            (Principle::Kanban, 1000.0, Y),
            (Principle::Kanban, 1001.0, R),
            (Principle::Andon, 0.49, G),
            (Principle::Andon, 0.5, Y),
            (Principle::Andon, 1.0, Y),
            (Principle::Andon, 1.01, R),
            (Principle::Kaizen, 95.1, G),
            (Principle::Kaizen, 95.0, Y),
            (Principle::Kaizen, 90.0, Y),
            (Principle::Kaizen, 89.9, R),
            (Principle::Heijunka, 69.9, G),
            (Principle::Heijunka, 70.0, Y),
            (Principle::Heijunka, 85.0, Y),
            (Principle::Heijunka, 85.1, R),
            (Principle::Tracing, 2.99, G),
            (Principle::Tracing, 3.0, Y),
            (Principle::Tracing, 5.0, Y),
            (Principle::Tracing, 5.01, R),
        ];
        for (p, v, want) in cases {
            assert_eq!(band(rule(*p), *v), *want, "{p:?} at {v}");
            assert_eq!(
                next(rule(*p), G, Some(*v)),
                *want,
                "{p:?} from GREEN at {v}"
            );
        }
    }

    #[test]
    fn a_value_on_the_threshold_does_not_flap() {
        // Around 500: in at 500, out only below 450.
        assert_eq!(
            run(
                Principle::Kanban,
                &[499.0, 500.0, 499.0, 460.0, 450.0, 449.0, 500.0]
            ),
            [G, Y, Y, Y, Y, G, Y]
        );
        // RED above 1000, back to YELLOW below 900, to GREEN below 450.
        assert_eq!(
            run(
                Principle::Kanban,
                &[1001.0, 999.0, 901.0, 899.0, 451.0, 10.0]
            ),
            [R, R, R, Y, Y, G]
        );
        // Straight from RED to GREEN when the value drops far enough.
        assert_eq!(run(Principle::Kanban, &[1500.0, 0.0]), [R, G]);
    }

    #[test]
    fn kaizen_hysteresis_is_measured_on_the_misses() {
        assert_eq!(
            run(
                Principle::Kaizen,
                &[96.0, 95.0, 95.4, 95.6, 89.0, 90.5, 91.1, 96.0]
            ),
            [G, Y, Y, G, R, R, Y, G]
        );
    }

    #[test]
    fn jidoka_leaves_yellow_only_at_zero() {
        assert_eq!(
            run(
                Principle::Jidoka,
                &[0.0, 1.0, 0.01, 0.0, 40.0, 28.0, 26.9, 0.0]
            ),
            [G, Y, Y, G, R, R, Y, G]
        );
    }

    #[test]
    fn nothing_measured_is_green() {
        let rule = rule(Principle::Tracing);
        assert_eq!(next(rule, R, None), G);
        assert_eq!(next(rule, Y, Some(f64::NAN)), G);
    }

    #[test]
    fn overall_is_the_worst_and_gauges_match_the_rules() {
        assert_eq!(worst([G, Y, G]), Y);
        assert_eq!(worst([G, R, Y]), R);
        assert_eq!(worst([]), G);
        assert_eq!((gauge(G), gauge(Y), gauge(R)), (0, 1, 2));
        assert_eq!(
            RULES.map(|r| principle_name(r.principle)).join(","),
            "JIDOKA,KANBAN,ANDON,KAIZEN,HEIJUNKA,TRACING"
        );
    }
}
