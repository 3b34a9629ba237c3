//! The end-to-end harness. [`Stack::start`] starts a private `nats-server`
//! (random port, temporary store) and the real, cargo-built binaries
//! (gateway, a fast and a slow worker, the aggregator), each on port 0,
//! reads the addresses they report through `TPS_PORTS_FILE`, and waits until
//! each reports SERVING on grpc health, with a deadline and no sleeps. Every
//! process is stopped when the harness is dropped, also when a test panics,
//! and then the tail of each log is printed to help the reader.
//!
//! Binaries are found next to the test executable (`target/debug`), or in
//! `TPS_BIN_DIR`; `make test` builds them first. The nats-server is
//! `NATS_SERVER`, else `nats-server` on PATH (scripts/ensure-nats.sh installs one).

pub mod browser;
pub mod compose;
pub mod contract;
pub mod ledger;
pub mod otlp;
pub mod prom;
pub mod rabbit;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long start-up of any one process may take.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// The services' log filter in tests: info, plus the per-signal lines
/// (debug by default: a signal queued, refused, processed).
pub const PER_SIGNAL_LOG: &str = "info,tps_gateway::core=debug,tps_worker::process=debug";

/// The directory holding the TPS binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TPS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`; `make test` does)",
        path.display()
    );
    path
}

fn nats_server() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!("nats-server not found: run scripts/ensure-nats.sh or set NATS_SERVER")
}

fn wait_for_file(path: &Path, child: &mut Child, what: &str, log: &Path) -> String {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited during start-up ({status}):\n{}",
                tail(log, 40)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not report its ports within {START_DEADLINE:?}:\n{}",
            tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends SIGTERM to a process.
pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// A private JetStream server.
pub struct Nats {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    dir: PathBuf,
    store: tempfile::TempDir,
}

impl Nats {
    pub fn start(dir: &Path) -> Self {
        let store = tempfile::tempdir().expect("store dir");
        let (child, url, log) = Self::spawn(dir, store.path(), "-1");
        Self {
            child,
            url,
            log,
            dir: dir.to_path_buf(),
            store,
        }
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.url.rsplit(':').next().expect("port").to_owned();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            // The old socket may linger for a moment.
            let (child, url, log) = Self::spawn(&self.dir, self.store.path(), &port);
            let mut child = child;
            std::thread::sleep(Duration::from_millis(100));
            if child.try_wait().ok().flatten().is_none() {
                self.child = child;
                self.url = url;
                self.log = log;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not restart on port {port}"
            );
        }
    }

    fn spawn(dir: &Path, store: &Path, port: &str) -> (Child, String, PathBuf) {
        let ports_dir = dir.join("nats-ports");
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let log = dir.join("nats.log");
        let mut child = Command::new(nats_server())
            .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
            .arg(store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let text = wait_for_file(&ports_file, &mut child, "nats-server", &log);
        let ports: serde_json::Value = serde_json::from_str(&text).expect("nats ports file");
        let url = ports["nats"][0].as_str().expect("nats url").to_owned();
        (child, url, log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One running TPS binary.
pub struct Service {
    pub name: String,
    child: Child,
    pub ports: HashMap<String, SocketAddr>,
    pub log: PathBuf,
    dir: PathBuf,
    binary: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    generation: u32,
}

impl Service {
    /// Starts `binary` with `args` and `env`, every listener on port 0.
    pub fn start(
        dir: &Path,
        name: &str,
        binary: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, ports, log) = Self::spawn(dir, name, binary, &args, &env, 0, &HashMap::new());
        Self {
            name: name.to_owned(),
            child,
            ports,
            log,
            dir: dir.to_path_buf(),
            binary: binary.to_owned(),
            args,
            env,
            generation: 0,
        }
    }

    /// Starts the same binary again, with the same settings and on the same
    /// addresses, after the old process has stopped (or been killed).
    pub fn respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.generation += 1;
        let (child, ports, log) = Self::spawn(
            &self.dir,
            &self.name,
            &self.binary,
            &self.args,
            &self.env,
            self.generation,
            &self.ports,
        );
        self.child = child;
        self.ports = ports;
        self.log = log;
    }

    /// Respawns with some variables changed (see [`Service::respawn`]), and
    /// waits until it serves again.
    pub async fn respawn_with(&mut self, changes: &[(&str, &str)]) {
        for (var, value) in changes {
            self.env.retain(|(k, _)| k != var);
            self.env.push(((*var).to_owned(), (*value).to_owned()));
        }
        self.respawn();
        self.wait_serving().await;
    }

    /// SIGKILL: the process dies at once, mid-whatever, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        dir: &Path,
        name: &str,
        binary: &str,
        args: &[String],
        env: &[(String, String)],
        generation: u32,
        previous: &HashMap<String, SocketAddr>,
    ) -> (Child, HashMap<String, SocketAddr>, PathBuf) {
        let suffix = if generation == 0 {
            String::new()
        } else {
            format!("-{generation}")
        };
        let ports_file = dir.join(format!("{name}{suffix}.ports"));
        let log = dir.join(format!("{name}{suffix}.log"));
        let addr = |listener: &str| {
            previous
                .get(listener)
                .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string())
        };
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin(binary));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TPS_GRPC_ADDR", addr("grpc"))
            .env("TPS_HTTP_ADDR", addr("http"))
            .env("TPS_METRICS_ADDR", addr("metrics"))
            .env("TPS_BOARD_ADDR", addr("board"))
            .env("TPS_PORTS_FILE", &ports_file)
            .env("TPS_LOG_FORMAT", "json")
            .env("TPS_LOG", PER_SIGNAL_LOG)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let text = wait_for_file(&ports_file, &mut child, name, &log);
        let raw: HashMap<String, String> = serde_json::from_str(&text).expect("ports file JSON");
        let ports = raw
            .into_iter()
            .map(|(k, v)| (k, v.parse().expect("socket address")))
            .collect();
        (child, ports, log)
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .ports
            .get(listener)
            .unwrap_or_else(|| panic!("{} has no {listener} listener", self.name))
    }

    /// `http://host:port` of a listener.
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.addr(listener))
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url("grpc"))
            .expect("url")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// Waits until grpc health reports SERVING (the whole server, "").
    pub async fn wait_serving(&self) {
        self.wait_serving_on(self.channel().await).await;
    }

    /// [`Service::wait_serving`] over a channel of the caller's (TLS, say).
    pub async fn wait_serving_on(&self, channel: Channel) {
        let mut health = HealthClient::new(channel);
        let watch = async {
            let mut stream = health
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health watch")
                .into_inner();
            while let Some(Ok(update)) = stream.next().await {
                if update.status == ServingStatus::Serving as i32 {
                    return;
                }
            }
            panic!("{}: health watch ended before SERVING", self.name);
        };
        if tokio::time::timeout(START_DEADLINE, watch).await.is_err() {
            panic!(
                "{} not SERVING within {START_DEADLINE:?}:\n{}",
                self.name,
                tail(&self.log, 40)
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn pool_client(
        &self,
    ) -> tps_proto::v1::pool_service_client::PoolServiceClient<Channel> {
        tps_proto::v1::pool_service_client::PoolServiceClient::new(self.channel().await)
    }

    /// The grpc health status of the whole server right now.
    pub async fn health(&self) -> ServingStatus {
        let mut health = HealthClient::new(self.channel().await);
        let r = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner();
        ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
    }

    /// Scrapes this service's /metrics.
    pub async fn metrics(&self) -> String {
        prom::scrape(&format!("{}/metrics", self.url("metrics"))).await
    }

    /// Scrapes /metrics once `metric` (summed over its labels) has reached
    /// `at_least`. A worker counts an item after its ack, which comes after
    /// the terminal status a test waits on, so counters converge a moment
    /// later; the caller then asserts exact values on the returned text.
    pub async fn metrics_when(&self, metric: &str, at_least: f64) -> String {
        let what = format!("{} {metric} >= {at_least}", self.name);
        eventually(Duration::from_secs(10), &what, || async {
            let text = self.metrics().await;
            (prom::sum(&text, metric, &[]) >= at_least).then_some(text)
        })
        .await
    }

    /// SIGTERM, then waits up to `within` for the process to exit.
    pub async fn stop(&mut self, within: Duration) -> ExitStatus {
        terminate(self.child.id());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?} of SIGTERM:\n{}",
                self.name,
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (last 30 lines) ---\n{}",
                self.name,
                tail(&self.log, 30)
            );
        }
    }
}

/// The admin token every test stack is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// `request` with `authorization: Bearer <ADMIN_TOKEN>`.
pub fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
    );
    request
}

/// Runs the built `tpsctl` with `args` and extra environment; panics unless
/// it succeeds, and returns what it printed.
pub fn tpsctl(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(bin("tpsctl"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tpsctl");
    assert!(
        out.status.success(),
        "tpsctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tpsctl prints UTF-8")
}

/// `("VAR", "value")` pairs as the environment [`StackOptions`] takes.
pub fn env(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Settings for [`Stack::start_with`].
#[derive(Default, Clone)]
pub struct StackOptions {
    /// Extra environment for every service.
    pub env: Vec<(&'static str, String)>,
    /// Extra environment for the slow worker only.
    pub slow_env: Vec<(&'static str, String)>,
    /// Extra environment for the fast worker only.
    pub fast_env: Vec<(&'static str, String)>,
    /// Extra environment for the gateway only.
    pub gateway_env: Vec<(&'static str, String)>,
    /// Extra environment for the aggregator only.
    pub aggregator_env: Vec<(&'static str, String)>,
    /// Start a private RabbitMQ node and let every service fail over to it
    /// (`TPS_FALLBACK=rabbitmq`); without it the stack runs on NATS alone
    /// (`TPS_FALLBACK=none`).
    pub rabbit: bool,
}

/// NATS plus the four services, on a uuid-suffixed namespace.
pub struct Stack {
    pub gateway: Service,
    pub worker_fast: Service,
    pub worker_slow: Service,
    pub aggregator: Service,
    pub namespace: String,
    pub nats: Nats,
    /// The fallback broker, when [`StackOptions::rabbit`] asked for one.
    pub rabbit: Option<rabbit::Rabbit>,
    pub dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    pub extra_workers: Vec<Service>,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = Nats::start(dir.path());
        let rabbit = options.rabbit.then(|| rabbit::Rabbit::start(dir.path()));
        let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
        let mut env: Vec<(&str, String)> = vec![
            ("NATS_URL", nats.url.clone()),
            ("TPS_NAMESPACE", namespace.clone()),
            ("TPS_EXECUTE_MS", "5".to_owned()),
            ("TPS_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ];
        match &rabbit {
            Some(r) => {
                env.push(("RABBITMQ_URL", r.url.clone()));
                env.push(("TPS_FALLBACK", "rabbitmq".to_owned()));
            }
            None => env.push(("TPS_FALLBACK", "none".to_owned())),
        }
        env.extend(options.env.iter().cloned());
        let with = |extra: &[(&'static str, String)]| {
            let mut e = env.clone();
            e.extend(extra.iter().cloned());
            e
        };
        let mut gw = vec![("TPS_INSTANCE_ID", "gateway-1".to_owned())];
        gw.extend(options.gateway_env.iter().cloned());
        let gateway = Service::start(dir.path(), "gateway", "tps-gateway", &[], &with(&gw));
        let mut fast = vec![("TPS_INSTANCE_ID", "worker-fast-1".to_owned())];
        fast.extend(options.fast_env.iter().cloned());
        let worker_fast = Service::start(
            dir.path(),
            "worker-fast",
            "tps-worker",
            &["--pool", "fast"],
            &with(&fast),
        );
        let mut slow = vec![("TPS_INSTANCE_ID", "worker-slow-1".to_owned())];
        slow.extend(options.slow_env.iter().cloned());
        let worker_slow = Service::start(
            dir.path(),
            "worker-slow",
            "tps-worker",
            &["--pool", "slow"],
            &with(&slow),
        );
        let mut agg = vec![("TPS_INSTANCE_ID", "aggregator-1".to_owned())];
        agg.extend(options.aggregator_env.iter().cloned());
        let aggregator =
            Service::start(dir.path(), "aggregator", "tps-aggregator", &[], &with(&agg));
        for s in [&gateway, &worker_fast, &worker_slow, &aggregator] {
            s.wait_serving().await;
        }
        Self {
            gateway,
            worker_fast,
            worker_slow,
            aggregator,
            namespace,
            nats,
            rabbit,
            dir,
            env: env.iter().map(|(k, v)| (*k, v.clone())).collect(),
            extra_workers: Vec::new(),
        }
    }

    /// Starts another replica of `pool`'s worker, named `instance`.
    pub async fn add_worker(
        &mut self,
        pool: &str,
        instance: &str,
        extra: &[(&'static str, String)],
    ) {
        let mut env = self.env.clone();
        env.push(("TPS_INSTANCE_ID", instance.to_owned()));
        env.extend(extra.iter().cloned());
        let worker = Service::start(
            self.dir.path(),
            instance,
            "tps-worker",
            &["--pool", pool],
            &env,
        );
        worker.wait_serving().await;
        self.extra_workers.push(worker);
    }

    pub async fn admin_client(
        &self,
    ) -> tps_proto::v1::admin_service_client::AdminServiceClient<Channel> {
        tps_proto::v1::admin_service_client::AdminServiceClient::new(self.gateway.channel().await)
    }

    pub async fn signals(
        &self,
    ) -> tps_proto::v1::signal_service_client::SignalServiceClient<Channel> {
        tps_proto::v1::signal_service_client::SignalServiceClient::new(self.gateway.channel().await)
    }

    pub async fn andon(&self) -> tps_proto::v1::andon_service_client::AndonServiceClient<Channel> {
        tps_proto::v1::andon_service_client::AndonServiceClient::new(
            self.aggregator.channel().await,
        )
    }

    pub async fn kaizen(
        &self,
    ) -> tps_proto::v1::kaizen_service_client::KaizenServiceClient<Channel> {
        tps_proto::v1::kaizen_service_client::KaizenServiceClient::new(
            self.aggregator.channel().await,
        )
    }

    /// Stops the fallback broker (gracefully; it blocks for about a second,
    /// off the async workers). Panics without [`StackOptions::rabbit`].
    pub fn stop_rabbit(&mut self) {
        let rabbit = self.rabbit.as_mut().expect("a stack with RabbitMQ");
        tokio::task::block_in_place(|| rabbit.stop());
    }

    /// Starts the fallback broker again (same port and data) and waits until
    /// it is ready (seconds, off the async workers).
    pub fn restart_rabbit(&mut self) {
        let rabbit = self.rabbit.as_mut().expect("a stack with RabbitMQ");
        tokio::task::block_in_place(|| rabbit.restart());
    }

    /// The gateway's HTTP facade base URL.
    pub fn http(&self) -> String {
        self.gateway.url("http")
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `within` with `what`. For state that converges asynchronously (counts on
/// another service), never as a stand-in for a readiness signal.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long [`wait_terminal`] waits for one signal.
pub const TERMINAL_DEADLINE: Duration = Duration::from_secs(60);

/// Follows a signal with SignalService.Watch until it is terminal; returns
/// the final status (panics after [`TERMINAL_DEADLINE`]).
pub async fn wait_terminal(
    client: &mut tps_proto::v1::signal_service_client::SignalServiceClient<Channel>,
    id: &str,
) -> tps_proto::v1::SignalStatus {
    let follow = async {
        let mut updates = client
            .watch(tps_proto::v1::WatchRequest { id: id.to_owned() })
            .await
            .unwrap_or_else(|e| panic!("watch {id}: {e}"))
            .into_inner();
        let mut last = None;
        while let Some(update) = updates.next().await {
            let status = update.unwrap_or_else(|e| panic!("watch {id}: {e}"));
            let terminal = tps_domain::is_terminal(status.state());
            last = Some(status);
            if terminal {
                break;
            }
        }
        last
    };
    let last = tokio::time::timeout(TERMINAL_DEADLINE, follow)
        .await
        .unwrap_or_else(|_| panic!("signal {id} not terminal within {TERMINAL_DEADLINE:?}"));
    let last = last.unwrap_or_else(|| panic!("watch {id} ended without an update"));
    assert!(
        tps_domain::is_terminal(last.state()),
        "watch {id} ended at {:?}",
        last.state()
    );
    last
}
