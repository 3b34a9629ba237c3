//! The services every TPS gRPC server carries besides its own: `grpc.health.v1`
//! and reflection (v1 and v1alpha, since older grpcurl asks v1alpha), and one
//! way to serve a router on a bound listener until shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::config::Transport;

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
/// in-flight calls finish. Every limit is set here, once, from
/// `transport` (see [`crate::config::Limits`] and
/// docs/security.md): connections per listener, the handshake
/// deadline (TLS and the HTTP/2 preface), TCP_NODELAY and TCP keepalive
/// ([`crate::transport`]); HTTP/2 max concurrent streams and keepalive
/// PINGs; a per-call timeout; and the calls in flight, beyond which a call
/// is refused with RESOURCE_EXHAUSTED rather than queued.
///
/// The timeout bounds how long a handler takes to answer. A server stream
/// (SignalService.Watch, AndonService.Watch, health Watch) answers at once
/// with its stream, which then runs as long as it likes: tonic applies
/// `Server::timeout` to the response future, not to the body.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    transport: Transport,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let limits = transport.limits;
    let incoming = crate::transport::incoming(listener, &transport);
    let in_flight = tower::ServiceBuilder::new()
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_in_flight,
        ))
        .into_inner();
    let mut server = tonic::transport::Server::builder();
    if let Some(age) = limits.grpc_max_connection_age {
        server = server
            .max_connection_age(age)
            .max_connection_age_grace(Duration::from_secs(30));
    }
    server
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_concurrent_streams(limits.grpc_max_streams)
        .timeout(limits.grpc_request_timeout)
        .layer(in_flight)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
