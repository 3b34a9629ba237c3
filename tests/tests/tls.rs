//! TLS end to end (docs/security.md): a self-signed certificate
//! made here with rcgen, a private nats-server that accepts TLS clients only,
//! and the real gateway and fast worker started with `TPS_TLS_CERT` /
//! `TPS_TLS_KEY` (their listeners) and `NATS_URL=tls://…` with
//! `TPS_NATS_TLS_CA` (their broker). A tonic client trusting that
//! certificate submits a signal over TLS and it completes; HTTPS /health
//! answers; tpsctl reads the signal with `--ca-cert`; plaintext clients
//! against the TLS ports fail. (RabbitMQ over TLS is not started here.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tps_domain::json::to_struct;
use tps_e2e::{START_DEADLINE, Service, tail, tpsctl, wait_terminal};
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{SignalState, SignalType, SubmitRequest};

struct Certs {
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

/// A self-signed certificate for `localhost` and 127.0.0.1.
fn self_signed(dir: &Path) -> Certs {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let pem = made.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &pem).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    Certs { cert, key, pem }
}

/// A private JetStream server that speaks TLS only; killed on drop.
struct TlsNats {
    child: Child,
    url: String,
    log: PathBuf,
}

impl TlsNats {
    fn start(dir: &Path, certs: &Certs) -> Self {
        let ports_dir = dir.join("nats-ports");
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let log = dir.join("nats.log");
        let server = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let mut child = Command::new(server)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(dir.join("nats-store"))
            .arg("--tls")
            .arg("--tlscert")
            .arg(&certs.cert)
            .arg("--tlskey")
            .arg(&certs.key)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (NATS_SERVER, or nats-server on PATH)");
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + START_DEADLINE;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && !text.is_empty()
            {
                break text;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited ({status}):\n{}", tail(&log, 20));
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let ports: serde_json::Value = serde_json::from_str(&text).expect("ports file");
        let listed = ports["nats"][0].as_str().expect("nats url");
        let port = listed.rsplit(':').next().expect("port");
        Self {
            child,
            url: format!("tls://127.0.0.1:{port}"),
            log,
        }
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to `service`'s gRPC port over TLS, trusting only `ca`.
async fn tls_channel(service: &Service, ca: &str) -> Channel {
    let port = service.addr("grpc").port();
    Channel::from_shared(format!("https://localhost:{port}"))
        .expect("url")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .expect("tls config")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("TLS connect to {}: {e}", service.name))
}

/// GET `path` over HTTPS (HTTP/1.1, trusting only `ca`); the raw answer.
async fn https_get(addr: std::net::SocketAddr, ca: &str, path: &str) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the HTTP facade");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_grpc_and_https_over_tls_and_reaches_nats_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = self_signed(dir.path());
    let nats = TlsNats::start(dir.path(), &certs);
    let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
    let cert = certs.cert.display().to_string();
    let key = certs.key.display().to_string();
    let env = |instance: &str| {
        vec![
            ("NATS_URL", nats.url.clone()),
            ("TPS_NATS_TLS_CA", cert.clone()),
            ("TPS_NAMESPACE", namespace.clone()),
            ("TPS_FALLBACK", "none".to_owned()),
            ("TPS_EXECUTE_MS", "5".to_owned()),
            ("TPS_TLS_CERT", cert.clone()),
            ("TPS_TLS_KEY", key.clone()),
            ("TPS_INSTANCE_ID", instance.to_owned()),
        ]
    };
    let gateway = Service::start(dir.path(), "gateway", "tps-gateway", &[], &env("gateway-1"));
    let worker = Service::start(
        dir.path(),
        "worker-fast",
        "tps-worker",
        &["--pool", "fast"],
        &env("worker-fast-1"),
    );
    let channel = tls_channel(&gateway, &certs.pem).await;
    gateway.wait_serving_on(channel.clone()).await;
    worker
        .wait_serving_on(tls_channel(&worker, &certs.pem).await)
        .await;

    // gRPC over TLS: a signal submitted and followed to its end.
    let mut signals = SignalServiceClient::new(channel);
    let accepted = signals
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            payload: to_struct(&json!({"data": [1, 2, 3]})),
            ..Default::default()
        })
        .await
        .expect("Submit over TLS")
        .into_inner();
    let done = wait_terminal(&mut signals, &accepted.id).await;
    assert_eq!(done.state(), SignalState::Succeeded, "{done:?}");

    // HTTPS: the facade's /health (and /metrics on its own TLS port).
    let health = https_get(gateway.addr("http"), &certs.pem, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = https_get(gateway.addr("metrics"), &certs.pem, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");

    // tpsctl, told the CA, reads the signal over TLS.
    let port = gateway.addr("grpc").port();
    let ca_file = certs.cert.to_str().expect("utf-8 path");
    let out = tpsctl(
        &[
            "--gateway",
            &format!("https://localhost:{port}"),
            "--ca-cert",
            ca_file,
            "get",
            &accepted.id,
        ],
        &[],
    );
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("tpsctl JSON");
    assert_eq!(
        status["state"],
        tps_domain::names::state(SignalState::Succeeded),
        "{out}"
    );

    // Plaintext against the TLS ports fails: gRPC and HTTP.
    let plain = async {
        let channel = Channel::from_shared(gateway.url("grpc"))
            .expect("url")
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| e.into())
            .map(|_| ())
    };
    let plain: Result<(), Box<dyn std::error::Error + Send + Sync>> = plain.await;
    assert!(
        plain.is_err(),
        "a plaintext gRPC call to the TLS port worked"
    );
    let plain_http = reqwest::Client::new()
        .get(format!("{}/health", gateway.url("http")))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        plain_http.is_err(),
        "a plaintext HTTP request to the TLS port answered: {plain_http:?}"
    );
    // The broker really was TLS-only: the services reached it over TLS.
    let log = std::fs::read_to_string(&nats.log).unwrap_or_default();
    assert!(
        log.contains("TLS required for client connections"),
        "nats-server log:\n{log}"
    );
}
