//! `tpsctl andon` and `tpsctl kaizen`: the aggregator's board and report in
//! the terminal.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use tonic::transport::Channel;
use tps_domain::andon::{light_name, principle_name};
use tps_domain::json::{board_view, kaizen_view, transition_view};
use tps_domain::names;
use tps_proto::v1::andon_service_client::AndonServiceClient;
use tps_proto::v1::kaizen_service_client::KaizenServiceClient;
use tps_proto::v1::{
    AndonBoard, AndonGetRequest, AndonHistoryRequest, AndonWatchRequest, KaizenReport,
    KaizenReportRequest, Light, Percentiles,
};

use crate::commands::{connect_channel, explain};

#[derive(Args)]
pub struct AndonArgs {
    /// Print the board once and exit (default: follow every change).
    #[arg(long)]
    once: bool,
    /// Also print the last N transitions.
    #[arg(long, default_value_t = 0)]
    history: u32,
    /// One JSON object per board instead of coloured text.
    #[arg(long)]
    json: bool,
    /// Colour: auto (when stdout is a terminal), always, never.
    #[arg(long, default_value = "auto")]
    color: String,
}

#[derive(Args)]
pub struct KaizenArgs {
    /// The window: 30s, 5m, 1h … (at most 6h).
    #[arg(long, default_value = "5m", value_parser = tps_runtime::config::parse_duration)]
    window: Duration,
    /// The report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn channel(aggregator: &str) -> anyhow::Result<Channel> {
    connect_channel(aggregator).await
}

fn paint(light: Light, text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match light {
        Light::Green => "30;42",
        Light::Yellow => "30;43",
        Light::Red => "97;41",
        Light::Unspecified => "0",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The board as lines of text: the overall light, then one line per principle.
pub fn render(board: &AndonBoard, colour: bool) -> String {
    let updated = board.updated_at.map(|t| t.to_string()).unwrap_or_default();
    let overall = board.overall();
    let mut out = format!(
        "ANDON {} {}\n",
        paint(overall, &format!(" {:<6} ", light_name(overall)), colour),
        updated
    );
    for l in &board.lights {
        out.push_str(&format!(
            "  {:<9} {} {:<18} {}\n",
            principle_name(l.principle()),
            paint(
                l.light(),
                &format!(" {:<6} ", light_name(l.light())),
                colour
            ),
            l.reason,
            l.detail
        ));
    }
    out
}

pub async fn andon(aggregator: &str, args: AndonArgs) -> anyhow::Result<i32> {
    let colour = match args.color.as_str() {
        "always" => true,
        "never" => false,
        "auto" => std::io::stdout().is_terminal(),
        other => anyhow::bail!("--color must be auto, always or never, not {other:?}"),
    };
    let mut client = AndonServiceClient::new(channel(aggregator).await?);
    if args.history > 0 {
        let history = client
            .history(AndonHistoryRequest {
                limit: args.history,
            })
            .await
            .map_err(|s| explain(&s))?
            .into_inner();
        for t in history.transitions.iter().rev() {
            if args.json {
                println!("{}", transition_view(t));
            } else {
                println!(
                    "{} {:<9} {} → {} {} ({})",
                    t.at.map(|a| a.to_string()).unwrap_or_default(),
                    principle_name(t.principle()),
                    light_name(t.from()),
                    paint(t.to(), light_name(t.to()), colour),
                    t.reason,
                    t.value
                );
            }
        }
    }
    let show = |board: &AndonBoard| {
        if args.json {
            println!("{}", board_view(board));
        } else {
            println!("{}", render(board, colour));
        }
    };
    if args.once {
        let board = client
            .get(AndonGetRequest {})
            .await
            .map_err(|s| explain(&s))?
            .into_inner();
        show(&board);
        return Ok(0);
    }
    let mut boards = client
        .watch(AndonWatchRequest {})
        .await
        .map_err(|s| explain(&s))?
        .into_inner();
    while let Some(board) = boards.next().await {
        show(&board.map_err(|s| explain(&s))?);
    }
    Ok(0)
}

fn ms(p: &Option<Percentiles>) -> String {
    match p {
        None => "-".into(),
        Some(p) => format!("{:.1}/{:.1}/{:.1}", p.p50_ms, p.p95_ms, p.p99_ms),
    }
}

/// The report as a table.
pub fn table(r: &KaizenReport) -> String {
    let window = r
        .window
        .and_then(|w| Duration::try_from(w).ok())
        .unwrap_or_default();
    let mut out = format!(
        "KAIZEN over {}s (error rate {:.2}%)\n\n",
        window.as_secs(),
        100.0 * r.error_rate
    );
    out.push_str(&format!(
        "{:<5} {:>9} {:>8} {:>7} {:>22} {:>22} {:>22}\n",
        "pool",
        "completed",
        "per sec",
        "errors",
        "lead p50/95/99 ms",
        "cycle p50/95/99 ms",
        "wait p50/95/99 ms"
    ));
    for p in &r.pools {
        out.push_str(&format!(
            "{:<5} {:>9} {:>8.2} {:>6.2}% {:>22} {:>22} {:>22}\n",
            names::pool(p.pool()),
            p.completed,
            p.throughput_per_sec,
            100.0 * p.error_rate,
            ms(&p.lead_time),
            ms(&p.cycle_time),
            ms(&p.queue_wait)
        ));
    }
    out.push_str(&format!(
        "\n{:<5} {:>8} {:>10} {:>11} {:>8} {:>8} {:>8}\n",
        "SLO", "target", "objective", "attainment", "burn 5m", "burn 1h", "burn 6h"
    ));
    for s in &r.slos {
        // No results of the pool in the window: no attainment to show.
        let judged = r
            .pools
            .iter()
            .any(|p| p.pool() == s.pool() && p.completed > 0);
        let attainment = if judged {
            format!("{:.2}%", 100.0 * s.attainment)
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "{:<5} {:>7.2}% {:>8}ms {:>11} {:>8.2} {:>8.2} {:>8.2}\n",
            names::pool(s.pool()),
            100.0 * s.target,
            s.objective_ms,
            attainment,
            s.burn_rate_5m,
            s.burn_rate_1h,
            s.burn_rate_6h
        ));
    }
    out.push_str("\nLittle's law\n");
    for p in &r.pools {
        out.push_str(&format!(
            "{:<5} busy {:.2} of {} handlers: {}\n",
            names::pool(p.pool()),
            p.workers_needed,
            p.workers_present,
            p.recommendation
        ));
    }
    out
}

pub async fn kaizen(aggregator: &str, args: KaizenArgs) -> anyhow::Result<i32> {
    let mut client = KaizenServiceClient::new(channel(aggregator).await?);
    let report = client
        .report(KaizenReportRequest {
            window: prost_types::Duration::try_from(args.window).ok(),
        })
        .await
        .map_err(|s| explain(&s))?
        .into_inner();
    if args.json {
        println!("{}", kaizen_view(&report));
    } else {
        print!("{}", table(&report));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tps_proto::v1::{Principle, PrincipleLight};

    #[test]
    fn the_board_renders_with_and_without_colour() {
        let board = AndonBoard {
            overall: Light::Red as i32,
            lights: vec![PrincipleLight {
                principle: Principle::Kanban as i32,
                light: Light::Red as i32,
                reason: "QUEUE_DEPTH_HIGH".into(),
                detail: "queue depth 1432 > 1000 on pool slow".into(),
                ..Default::default()
            }],
            updated_at: None,
        };
        let plain = render(&board, false);
        assert!(
            plain.contains("KANBAN     RED     QUEUE_DEPTH_HIGH"),
            "{plain}"
        );
        assert!(plain.contains("queue depth 1432 > 1000 on pool slow"));
        assert!(!plain.contains('\x1b'));
        assert!(render(&board, true).contains("\x1b[97;41m"));
    }
}
