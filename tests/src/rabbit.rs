//! A private RabbitMQ broker for tests, the way [`crate::Nats`] is a private
//! nats-server: [`Rabbit::start`] runs one node, as the current user (root in
//! CI is fine), with everything under a directory of the test's own, and
//! [`Rabbit::url`] is `amqp://guest:guest@127.0.0.1:PORT/%2f` (`guest` may
//! log in because the client is on loopback). Several can run at once.
//!
//! How a node is made private (found by trying it with Debian's 3.10.8 on
//! Erlang 25):
//! - the plain launcher, `/usr/lib/rabbitmq/bin/rabbitmq-server`
//!   (`RABBITMQ_SERVER`, else found as scripts/ensure-rabbitmq.sh finds it),
//!   never Debian's `/usr/sbin/rabbitmq-server`, which `su`s to the rabbitmq
//!   user and uses /var/lib/rabbitmq;
//! - a clean environment: `RABBITMQ_NODENAME=tps-<uuid>@localhost`,
//!   `RABBITMQ_NODE_IP_ADDRESS=127.0.0.1`, `RABBITMQ_NODE_PORT` (picked by
//!   binding 127.0.0.1:0 and letting go: RabbitMQ accepts port 0 but then
//!   does not say which port it got), `RABBITMQ_DIST_PORT` (picked too: the
//!   default, AMQP port + 20000, can exceed 65535, and 0 is refused), the
//!   Mnesia, log, plugins-file, config and env-file paths in the node's
//!   directory (so /etc/rabbitmq is never read), an empty plugin list,
//!   `HOME` in the node's directory with a fresh `.erlang.cookie` (mode
//!   0400), and the distribution listener on 127.0.0.1 only;
//! - a private epmd (`ERL_EPMD_PORT`), started here before the node and
//!   waited for: the shared one on 4369 would be started by the node as a
//!   daemon and outlive the test. (If no epmd answers on its port, the node
//!   starts a daemon one itself, even with `-start_epmd false`.)
//!
//! Start-up takes about 4.5 s alone on two cores (7.5 s for two at once, 9 s
//! for three) and ~145 MB RSS per node. It is ready when a TCP connect to the
//! AMQP port succeeds and its log says "Server startup complete".
//! [`Rabbit::stop`] sends SIGTERM to the launcher (a `/bin/sh` that traps it,
//! stops the VM gracefully and waits; ~1.1 s); [`Rabbit::kill`] sends SIGKILL
//! to the VM, as a crash would. Either way every process of the node (the
//! launcher, `beam.smp`, `erl_child_setup`, `inet_gethost`, ...) is gone
//! before they return (orphaned helpers may linger as zombies until PID 1
//! reaps them); dropping a [`Rabbit`] kills it and stops its epmd: the
//! data is thrown away with `dir`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{tail, terminate};

/// How long one node may take to start (it is slow; tests run in parallel).
pub const RABBIT_START_DEADLINE: Duration = Duration::from_secs(90);
/// How long a graceful stop may take before the node is killed.
pub const RABBIT_STOP_DEADLINE: Duration = Duration::from_secs(30);
/// What the node logs once it is ready.
const READY_LINE: &str = "Server startup complete";
/// Attempts at a first start: a picked port can be taken before the node
/// binds it (the node then exits), and a fresh pick fixes that.
const START_ATTEMPTS: u32 = 3;

/// The `rabbitmq-server` launcher: `RABBITMQ_SERVER`, else Debian's
/// `/usr/lib/rabbitmq/bin/rabbitmq-server`, else one on PATH that has its
/// `rabbitmq-env` beside it (which skips Debian's su wrapper in /usr/sbin).
pub fn rabbitmq_server() -> PathBuf {
    if let Some(p) = std::env::var_os("RABBITMQ_SERVER") {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let candidates = std::iter::once("/usr/lib/rabbitmq/bin")
        .chain(path.split(':'))
        .chain(["/usr/local/sbin", "/usr/local/bin"])
        .map(|dir| Path::new(dir).join("rabbitmq-server"));
    for p in candidates {
        if p.is_file() && p.with_file_name("rabbitmq-env").is_file() {
            return p;
        }
    }
    panic!("rabbitmq-server not found: run scripts/ensure-rabbitmq.sh or set RABBITMQ_SERVER")
}

fn epmd_binary() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path
        .split(':')
        .chain(["/usr/bin", "/usr/lib/erlang/bin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("epmd");
        if p.is_file() {
            return p;
        }
    }
    panic!("epmd not found (it comes with Erlang): run scripts/ensure-rabbitmq.sh")
}

/// `n` distinct free loopback ports, held together while picked.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
}

/// A process as seen in /proc: its pid and start time, so that a reused pid
/// is never mistaken for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Proc {
    pid: u32,
    start: u64,
}

/// (state, ppid, start time) of a live process, from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // Field 22 of the whole line is the start time; `rest` starts at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

impl Proc {
    /// Still running (a zombie awaiting its reaper counts as gone).
    fn alive(self) -> bool {
        matches!(stat(self.pid), Some((state, _, start)) if start == self.start && state != 'Z' && state != 'X')
    }

    fn signal(self, sig: &str) {
        if self.alive() {
            let _ = Command::new("kill")
                .args([sig, &self.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    fn comm(self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// Every live descendant of `root`, parents before children.
fn descendants(root: u32) -> Vec<Proc> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((state, ppid, start)) = stat(pid)
                && state != 'Z'
            {
                all.push((Proc { pid, start }, ppid));
            }
        }
    }
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (p, ppid) in &all {
            if *ppid == parent && !found.contains(p) {
                found.push(*p);
                frontier.push(p.pid);
            }
        }
    }
    found
}

/// Waits until none of `procs` runs; false if some still do at `deadline`.
fn wait_gone(procs: &[Proc], deadline: Instant) -> bool {
    loop {
        if procs.iter().all(|p| !p.alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One run of the node: its launcher (our child) and what it started.
struct Node {
    launcher: Child,
}

/// A private RabbitMQ node (see the module documentation).
pub struct Rabbit {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub url: String,
    /// The AMQP port (kept across [`Rabbit::restart`]).
    pub port: u16,
    /// The Erlang node name, `tps-<uuid>@localhost`.
    pub node: String,
    /// The node's log of the current run (`rabbit-<generation>.log`).
    pub log: PathBuf,
    /// The node's directory: data, logs, HOME, config.
    pub dir: PathBuf,
    dist_port: u16,
    epmd_port: u16,
    server: PathBuf,
    running: Option<Node>,
    epmd: Option<Child>,
    generation: u32,
}

impl Rabbit {
    /// Starts a node in a new directory under `dir` and waits until it is
    /// ready (panics after [`RABBIT_START_DEADLINE`], with the log's tail).
    pub fn start(dir: &Path) -> Self {
        let id = uuid::Uuid::new_v4();
        let node_dir = dir.join(format!("rabbitmq-{}", id.simple()));
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(node_dir.join(sub)).expect("rabbitmq dirs");
        }
        let cookie = node_dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("cookie");
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .expect("cookie mode");
        std::fs::write(node_dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(
            node_dir.join("rabbitmq.conf"),
            "# A private test node: everything else comes from the environment.\n",
        )
        .expect("rabbitmq.conf");
        // Read instead of /etc/rabbitmq/rabbitmq-env.conf; empty on purpose.
        std::fs::write(node_dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");

        let ports = free_ports(3);
        let mut rabbit = Self {
            url: String::new(),
            port: ports[0],
            node: format!("tps-{id}@localhost"),
            log: PathBuf::new(),
            dir: node_dir,
            dist_port: ports[1],
            epmd_port: ports[2],
            server: rabbitmq_server(),
            running: None,
            epmd: None,
            generation: 0,
        };
        rabbit.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port);
        for attempt in 1..=START_ATTEMPTS {
            match rabbit.spawn() {
                Ok(()) => return rabbit,
                Err(why) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "rabbitmq {} (attempt {attempt}): {why}; retrying on fresh ports\n{}",
                        rabbit.node,
                        tail(&rabbit.log, 20)
                    );
                    rabbit.stop_epmd();
                    let ports = free_ports(3);
                    rabbit.port = ports[0];
                    rabbit.dist_port = ports[1];
                    rabbit.epmd_port = ports[2];
                    rabbit.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port);
                }
                Err(why) => panic!(
                    "rabbitmq {}: {why}\n--- {} ---\n{}\n--- stdout ---\n{}",
                    rabbit.node,
                    rabbit.log.display(),
                    tail(&rabbit.log, 40),
                    tail(&rabbit.stdout_path(), 20)
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Stops the node gracefully (SIGTERM; SIGKILL after
    /// [`RABBIT_STOP_DEADLINE`]) and waits until all of its processes are
    /// gone. The data and the ports stay, for [`Rabbit::restart`]. A no-op
    /// when it is not running.
    pub fn stop(&mut self) {
        self.halt(false);
    }

    /// Kills the node at once (SIGKILL to the Erlang VM), as a crash would,
    /// and waits until all of its processes are gone.
    pub fn kill(&mut self) {
        self.halt(true);
    }

    /// Stops the node if it runs, then starts it again with the same name,
    /// data and AMQP port, and waits until it is ready. The distribution
    /// port is only the node's own: while the node was down another process
    /// may have taken it (the node then exits with `dist_port_already_used`),
    /// so a failed start is retried on a fresh one.
    pub fn restart(&mut self) {
        self.stop();
        let mut attempt = 1;
        while let Err(why) = self.spawn() {
            if attempt < START_ATTEMPTS {
                eprintln!(
                    "rabbitmq {} restart (attempt {attempt}): {why}; retrying on a fresh distribution port\n{}",
                    self.node,
                    tail(&self.log, 20)
                );
                self.halt(true);
                self.dist_port = free_ports(1)[0];
                attempt += 1;
                continue;
            }
            panic!(
                "rabbitmq {} did not restart on port {}: {why}\n--- {} ---\n{}\n--- stdout ---\n{}",
                self.node,
                self.port,
                self.log.display(),
                tail(&self.log, 40),
                tail(&self.stdout_path(), 20)
            );
        }
    }

    /// Whether the node's processes run (not whether it is ready).
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Some(node) => matches!(node.launcher.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` against this node (same HOME,
    /// cookie and epmd), e.g. `rabbit.ctl(&["list_queues"])`. It takes ~1 s
    /// (a VM of its own, on a port in 35672-35682, shared by all CLI runs).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let ctl = self.server.with_file_name("rabbitmqctl");
        let mut cmd = Command::new(&ctl);
        self.environment(&mut cmd);
        cmd.arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", ctl.display()))
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.join(format!("rabbit-{}.stdout", self.generation))
    }

    /// The environment shared by the server and rabbitmqctl.
    fn environment(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("HOME", d.join("home"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_CRASH_DUMP", d.join("erl_crash.dump"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", &self.log)
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(d);
    }

    /// Starts epmd when it does not run, then the node; waits until ready.
    fn spawn(&mut self) -> Result<(), String> {
        self.ensure_epmd()?;
        self.generation += 1;
        self.log = self.dir.join(format!("log/rabbit-{}.log", self.generation));
        let out = std::fs::File::create(self.stdout_path()).expect("rabbitmq stdout file");
        let mut cmd = Command::new(&self.server);
        self.environment(&mut cmd);
        let launcher = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("stdout file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.server.display()));
        self.running = Some(Node { launcher });
        let deadline = Instant::now() + RABBIT_START_DEADLINE;
        loop {
            let node = self.running.as_mut().expect("just started");
            if let Ok(Some(status)) = node.launcher.try_wait() {
                self.halt(true);
                return Err(format!("exited during start-up ({status})"));
            }
            let ready = std::fs::read_to_string(&self.log)
                .map(|text| text.contains(READY_LINE))
                .unwrap_or(false);
            if ready && accepts(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.halt(true);
                return Err(format!("not ready within {RABBIT_START_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the current run: SIGTERM to the launcher (graceful) or SIGKILL
    /// to the VM; then makes sure every process of the run is gone.
    fn halt(&mut self, crash: bool) {
        let Some(mut node) = self.running.take() else {
            return;
        };
        let launcher_pid = node.launcher.id();
        let family = descendants(launcher_pid);
        let beam: Vec<Proc> = family
            .iter()
            .copied()
            .filter(|p| p.comm().starts_with("beam"))
            .collect();
        let mut graceful = !crash;
        if graceful {
            // The launcher traps SIGTERM: it stops the VM and waits for it.
            terminate(launcher_pid);
            let deadline = Instant::now() + RABBIT_STOP_DEADLINE;
            loop {
                match node.launcher.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!(
                            "rabbitmq {} did not stop within {RABBIT_STOP_DEADLINE:?}: killing it",
                            self.node
                        );
                        graceful = false;
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if !graceful {
            // The VM and its helpers, VM first; not the launcher: killed, it
            // would orphan them (and leave the VM unreaped). It reaps the VM
            // and exits by itself; it is killed only if it does not.
            for p in beam.iter().chain(&family) {
                p.signal("-KILL");
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(node.launcher.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = node.launcher.kill();
        }
        let _ = node.launcher.wait();
        // The VM's helpers (erl_child_setup, inet_gethost, a disk monitor
        // shell) leave when the VM does; make sure, and kill stragglers.
        if !wait_gone(&family, Instant::now() + Duration::from_secs(10)) {
            for p in &family {
                p.signal("-KILL");
            }
            let left = !wait_gone(&family, Instant::now() + Duration::from_secs(5));
            assert!(
                !left || std::thread::panicking(),
                "rabbitmq {}: processes left after stopping: {:?}",
                self.node,
                family.iter().filter(|p| p.alive()).collect::<Vec<_>>()
            );
        }
    }

    /// Starts the private epmd unless it runs, and waits until it answers
    /// (before the node starts, or the node would start a daemon epmd of
    /// its own on that port, which nothing here would stop).
    fn ensure_epmd(&mut self) -> Result<(), String> {
        if let Some(epmd) = &mut self.epmd
            && matches!(epmd.try_wait(), Ok(None))
        {
            return Ok(());
        }
        self.stop_epmd();
        let log = std::fs::File::create(self.dir.join("epmd.log")).expect("epmd log");
        let mut epmd = Command::new(epmd_binary())
            .args([
                "-port",
                &self.epmd_port.to_string(),
                "-address",
                "127.0.0.1",
            ])
            .env_remove("ERL_EPMD_PORT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("epmd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start epmd: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = epmd.try_wait() {
                return Err(format!(
                    "epmd on port {} exited ({status}): {}",
                    self.epmd_port,
                    tail(&self.dir.join("epmd.log"), 5)
                ));
            }
            if accepts(self.epmd_port) {
                self.epmd = Some(epmd);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = epmd.kill();
                let _ = epmd.wait();
                return Err(format!("epmd on port {} did not answer", self.epmd_port));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the private epmd (SIGKILL; it holds nothing worth keeping).
    fn stop_epmd(&mut self) {
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if std::thread::panicking() && self.running.is_some() {
            eprintln!(
                "--- rabbitmq {} log (last 30 lines) ---\n{}",
                self.node,
                tail(&self.log, 30)
            );
        }
        // Data is thrown away: no need for a graceful stop.
        self.halt(true);
        self.stop_epmd();
    }
}
