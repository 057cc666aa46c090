//! [`TcpServer`]: accepts peer connections and answers their requests with
//! a [`RequestHandler`]. Each connection runs its requests concurrently, at
//! most `in_flight_requests_max` at a time: beyond that it stops reading, so
//! a flooding peer is slowed by TCP flow control instead of growing queues.
//! An oversize or malformed frame closes that connection only.

use std::net::SocketAddr;
use std::sync::Arc;

use kelpie_core::Env;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::error::{ClusterError, ClusterResult};
use crate::frame::{self, Envelope, FrameKind};
use crate::transport::{read_frame, ReadEnd, RequestHandler, TransportConfig};

/// A listening server; stops accepting and closes its connections when
/// shut down or dropped.
pub struct TcpServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

struct Shared {
    handler: Arc<dyn RequestHandler>,
    env: Env,
    config: TransportConfig,
}

impl TcpServer {
    pub async fn bind(
        addr: SocketAddr,
        handler: Arc<dyn RequestHandler>,
        env: Env,
        config: TransportConfig,
    ) -> ClusterResult<TcpServer> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| ClusterError::Io { peer: addr, reason: format!("bind: {err}") })?;
        let local_addr =
            listener.local_addr().map_err(|err| ClusterError::Io { peer: addr, reason: err.to_string() })?;
        let (shutdown, stopped) = watch::channel(false);
        let shared = Arc::new(Shared { handler, env: env.clone(), config });
        env.spawner.spawn("cluster-accept", Box::pin(accept_loop(listener, shared, stopped)));
        Ok(TcpServer { local_addr, shutdown })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stopped: watch::Receiver<bool>) {
    let mut stop_signal = stopped.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop_signal.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let task = serve_connection(stream, peer, shared.clone(), stopped.clone());
                    shared.env.spawner.spawn("cluster-connection", Box::pin(task));
                }
                Err(err) => tracing::warn!("accept failed: {err}"),
            },
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::warn!(%peer, "set_nodelay: {err}");
    }
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let slots = Arc::new(Semaphore::new(shared.config.in_flight_requests_max));
    loop {
        let envelope = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return,
            read = read_frame(&mut reader) => match read {
                Ok(envelope) if envelope.kind == FrameKind::Request => envelope,
                Ok(_) => return tracing::warn!(%peer, "answer frame on a server connection; closing"),
                Err(ReadEnd::Closed) => return,
                Err(ReadEnd::Io(err)) => return tracing::warn!(%peer, "read: {err}; closing"),
                Err(ReadEnd::Frame(err)) => return tracing::warn!(%peer, "{err}; closing"),
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (handler, writer) = (shared.handler.clone(), writer.clone());
        shared.env.spawner.spawn(
            "cluster-request",
            Box::pin(async move {
                answer(handler, writer, envelope, peer).await;
                drop(slot);
            }),
        );
    }
}

async fn answer(
    handler: Arc<dyn RequestHandler>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    request: Envelope,
    peer: SocketAddr,
) {
    assert_eq!(request.kind, FrameKind::Request);
    let request_id = request.request_id;
    let (kind, payload) = match handler.handle(request.payload).await {
        Ok(payload) => (FrameKind::Response, payload),
        Err(reason) => (FrameKind::ErrorResponse, reason.into_bytes()),
    };
    let bytes = match frame::encode(&Envelope { kind, request_id, payload }) {
        Ok(bytes) => bytes,
        Err(err) => {
            let reason = format!("answer not sent: {err}").into_bytes();
            let fallback = Envelope { kind: FrameKind::ErrorResponse, request_id, payload: reason };
            frame::encode(&fallback).expect("a short error answer always fits a frame")
        }
    };
    if let Err(err) = writer.lock().await.write_all(&bytes).await {
        tracing::warn!(%peer, "answer to request {request_id} not written: {err}");
    }
}
