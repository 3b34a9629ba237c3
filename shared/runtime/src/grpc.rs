//! The services every TPS gRPC server carries besides its own: `grpc.health.v1`
//! and reflection (v1 and v1alpha, since older grpcurl asks v1alpha), and one
//! way to serve a router on a bound listener until shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

/// Largest gRPC message a TPS server decodes or encodes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

pub struct Standard {
    pub health: HealthReporter,
    pub routes: Routes,
}

/// Health (everything NOT_SERVING until the service says otherwise) and
/// reflection over the `tps.v1`, health and google.rpc descriptors. Reflection
/// lists only `served` (plus health), so `grpcurl list` shows what this
/// process really answers.
pub fn standard_services(served: &[&str]) -> Result<Standard, tonic_reflection::server::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tps_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in served {
            b = b.with_service_name(*name);
        }
        b
    };
    let routes = Routes::new(health_service)
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?);
    Ok(Standard { health, routes })
}

/// Binds `addr`; port 0 picks a free port. Returns the listener and its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `routes` on `listener` until `shutdown` is cancelled, then lets
/// in-flight calls finish. HTTP/2 keepalive and timeouts are set here once.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    // TCP_NODELAY on every accepted connection, here: tonic's own
    // `tcp_nodelay` applies only to listeners it binds itself, not to
    // `serve_with_incoming`. Without it Nagle holds small responses back.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        Ok::<_, std::io::Error>(conn)
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
