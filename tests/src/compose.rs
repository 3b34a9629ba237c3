//! The docker-compose stack under test: the repository's docker-compose.yml
//! on the images `make images` built (their names are in
//! `$TPS_IMAGES_DIR/local.env`, default /var/tmp/tps-images), as a compose
//! project of its own (a uuid-suffixed name) with every published port
//! moved to a free one, so it never meets a developer's running stack. The
//! project is taken down with its volumes when the value is dropped, also
//! when a test panics (then the services' last log lines are printed).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::contract::repo;

/// The published ports the compose file reads from variables.
const PORT_VARS: [&str; 11] = [
    "GATEWAY_GRPC_PORT",
    "GATEWAY_HTTP_PORT",
    "AGGREGATOR_GRPC_PORT",
    "BOARD_PORT",
    "PROMETHEUS_PORT",
    "NATS_PORT",
    "RABBITMQ_PORT",
    "GRAFANA_PORT",
    "JAEGER_UI_PORT",
    "OTLP_GRPC_PORT",
    "LOKI_PORT",
];

/// The services that have an image built from Debian packages.
pub const OFFLINE_SERVICES: [&str; 7] = [
    "nats",
    "rabbitmq",
    "gateway",
    "worker-fast",
    "worker-slow",
    "aggregator",
    "prometheus",
];

pub struct Compose {
    pub project: String,
    pub env: HashMap<String, String>,
    /// `docker compose` or `docker-compose`.
    tool: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The images `make images` wrote down, as variables.
fn image_env() -> HashMap<String, String> {
    let dir = std::env::var_os("TPS_IMAGES_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/tps-images"), PathBuf::from);
    let path = dir.join("local.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the images first (make images; deploy/images/build.sh)",
            path.display()
        )
    });
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

impl Compose {
    /// A new project (nothing started yet).
    pub fn new(extra: &[(&str, &str)]) -> Self {
        let tool = if Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            vec!["docker".to_owned(), "compose".to_owned()]
        } else {
            vec!["docker-compose".to_owned()]
        };
        let mut env = image_env();
        for var in PORT_VARS {
            env.insert(var.to_owned(), free_port().to_string());
        }
        let secret = uuid::Uuid::new_v4().simple().to_string();
        env.insert("RABBITMQ_PASSWORD".into(), secret.clone());
        env.insert("GRAFANA_ADMIN_PASSWORD".into(), secret);
        env.insert("TPS_ADMIN_TOKEN".into(), crate::ADMIN_TOKEN.into());
        env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), String::new());
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        Self {
            project: format!("tpsci{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            env,
            tool,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("docker-compose.yml"))
            .args(args)
            .current_dir(repo())
            .envs(&self.env);
        cmd
    }

    /// Runs a compose command; panics unless it succeeds.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("{:?} {args:?}: {e}", self.tool));
        assert!(
            out.status.success(),
            "compose {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The container ids of `service`.
    pub fn containers(&self, service: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.run(&["ps", "-q", service]).stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A published port (its variable's value).
    pub fn port(&self, var: &str) -> u16 {
        self.env[var].parse().expect("a port")
    }

    pub fn url(&self, var: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(var))
    }
}

/// `docker <args>`; panics unless it succeeds.
pub fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for Compose {
    fn drop(&mut self) {
        let logs = std::thread::panicking()
            .then(|| {
                self.command(&["logs", "--tail=40", "--no-color"])
                    .output()
                    .ok()
            })
            .flatten();
        if let Some(out) = logs {
            eprintln!(
                "--- compose logs ({}) ---\n{}",
                self.project,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "--timeout", "10"])
            .output();
    }
}
