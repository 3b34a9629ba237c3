//! Accepting connections, the same way on every listener: at most
//! `TPS_MAX_CONNECTIONS` open at once, TCP_NODELAY and TCP keepalive set,
//! TLS when configured, and a handshake deadline (`TPS_HANDSHAKE_TIMEOUT`)
//! counted from accept: the TLS handshake, and for gRPC the HTTP/2
//! connection preface, must be complete by then or the connection is
//! closed. After that hyper's own timers take over: HTTP/2 keepalive PINGs
//! (gRPC) and the HTTP/1 header-read timeout (HTTP).
//!
//! TLS is done here rather than by tonic's `tls_config` so that the
//! deadline can watch the decrypted bytes: a client that completes TLS and
//! then sends nothing is closed like one that sends nothing at all.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::{Limits, Transport};
use crate::tls::Protocol;

/// The HTTP/2 client connection preface (RFC 9113 §3.4) is 24 bytes.
pub const H2_PREFACE_LEN: usize = 24;

/// Pause after a failed accept (out of file descriptors, say) before the
/// next, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, past its TLS handshake. It holds one of the
/// listener's connection slots until dropped.
pub struct Conn {
    io: Io,
    /// Reads fail once this passes, unless `preface_left` bytes have
    /// arrived first; then it is dropped.
    deadline: Option<Pin<Box<Sleep>>>,
    preface_left: usize,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }
}

impl Connected for Conn {
    /// The TCP addresses, also under TLS, so `Request::remote_addr` works
    /// the same on both.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Some(deadline) = &mut this.deadline {
            match &read {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - before;
                    this.preface_left = this.preface_left.saturating_sub(n);
                    // Done: the preface is in, or the client closed (EOF).
                    if this.preface_left == 0 || n == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    this.deadline = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake deadline",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TCP connection accepted into a slot, not yet through its handshake.
pub struct Accepted {
    tcp: TcpStream,
    slot: OwnedSemaphorePermit,
    info: TcpConnectInfo,
    deadline: Instant,
    tls: Option<TlsAcceptor>,
    preface: usize,
}

impl Accepted {
    /// Completes the TLS handshake (if any) before the deadline and arms
    /// the preface deadline (if any).
    pub async fn handshake(self) -> io::Result<Conn> {
        let io = match self.tls {
            None => Io::Plain(self.tcp),
            Some(tls) => {
                let stream = tokio::time::timeout_at(self.deadline, tls.accept(self.tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake not done within the handshake deadline",
                        )
                    })??;
                Io::Tls(Box::new(stream))
            }
        };
        Ok(Conn {
            io,
            deadline: (self.preface > 0).then(|| Box::pin(tokio::time::sleep_until(self.deadline))),
            preface_left: self.preface,
            info: self.info,
            _slot: self.slot,
        })
    }

    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.info.remote_addr
    }
}

/// A listener with its limits.
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    preface: usize,
}

impl Acceptor {
    /// `protocol` picks the ALPN offered under TLS; gRPC listeners also
    /// require the HTTP/2 preface within the handshake deadline.
    pub fn new(listener: TcpListener, transport: &Transport, protocol: Protocol) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(transport.limits.max_connections)),
            limits: transport.limits,
            tls: transport.tls.as_ref().map(|t| t.acceptor(protocol)),
            preface: match protocol {
                Protocol::Grpc => H2_PREFACE_LEN,
                Protocol::Http => 0,
            },
        }
    }

    /// Waits for a free connection slot, then for a client. Accept errors
    /// (a client that left at once, no file descriptors) are logged and
    /// the next client is waited for.
    pub async fn accept(&self) -> Accepted {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((tcp, remote)) => {
                    let deadline = Instant::now() + self.limits.handshake_timeout;
                    // Small answers go out at once (no Nagle delay).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    if let Some(idle) = self.limits.tcp_keepalive {
                        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
                        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
                            tracing::debug!(error = %e, "TCP keepalive not set");
                        }
                    }
                    let info = TcpConnectInfo {
                        local_addr: tcp.local_addr().ok(),
                        remote_addr: Some(remote),
                    };
                    return Accepted {
                        tcp,
                        slot,
                        info,
                        deadline,
                        tls: self.tls.clone(),
                        preface: self.preface,
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// The connections of a gRPC listener as tonic's `serve_with_incoming`
/// takes them: accepted, and through their TLS handshake (each in its own
/// task, so a slow handshake holds up nobody else). Accepting stops when
/// the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    transport: &Transport,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let acceptor = Acceptor::new(listener, transport, Protocol::Grpc);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = acceptor.accept() => a,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = accepted.remote_addr();
                match accepted.handshake().await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, ?peer, "gRPC connection dropped in its handshake")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
