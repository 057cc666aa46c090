//! [`TcpServer`]: accepts peer connections and answers their requests with
//! a [`RequestHandler`]. Each connection runs its requests concurrently, at
//! most `in_flight_requests_max` at a time: beyond that it stops reading, so
//! a flooding peer is slowed by TCP flow control instead of growing queues.
//! An oversize or malformed frame closes that connection only. A handler
//! may answer in parts (`RequestHandler::handle_streaming`): each part is
//! written as a chunk frame as soon as it is produced.

use std::net::SocketAddr;
use std::sync::Arc;

use kelpie_core::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::auth::{self, ClusterSecret, ServerHandshake, HELLO_BYTES, PROOF_BYTES};
use crate::error::{ClusterError, ClusterResult};
use crate::frame::{self, Envelope, FrameKind};
use crate::tls::BoxStream;
use crate::transport::{
    read_frame, within_handshake, ReadEnd, RequestHandler, StreamWriter, TransportConfig,
    STREAM_CHUNKS_BUFFERED_COUNT_MAX,
};

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
    let mut stream: BoxStream = match &shared.config.tls {
        Some(tls) => {
            let accepted = tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => return,
                accepted = within_handshake(&shared.env, tls.accept(stream)) => accepted,
            };
            match accepted {
                Ok(stream) => stream,
                // Not a frame is read from a peer that does not speak TLS
                // with a certificate of the cluster's authority.
                Err(reason) => return tracing::warn!(%peer, "transport connection refused: TLS: {reason}"),
            }
        }
        None => Box::new(stream),
    };
    if let Some(secret) = &shared.config.secret {
        let authenticated = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return,
            authenticated = authenticate_client(&shared.env, &mut stream, secret) => authenticated,
        };
        if let Err(reason) = authenticated {
            // Not a word more is read from this peer.
            return tracing::warn!(%peer, "transport connection refused: {reason}");
        }
    }
    let (mut reader, writer) = tokio::io::split(stream);
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

/// The server's side of the handshake: `Ok` once the peer proved it holds
/// the cluster's secret.
async fn authenticate_client(
    env: &Env,
    stream: &mut BoxStream,
    secret: &ClusterSecret,
) -> Result<(), String> {
    let mut hello = [0u8; HELLO_BYTES];
    within_handshake(env, stream.read_exact(&mut hello)).await?;
    let (handshake, challenge) =
        ServerHandshake::accept(secret.clone(), &hello, auth::nonce(env.rng.as_ref()))
            .map_err(|err| err.to_string())?;
    within_handshake(env, stream.write_all(&challenge)).await?;
    let mut proof = [0u8; PROOF_BYTES];
    within_handshake(env, stream.read_exact(&mut proof)).await?;
    handshake.finish(&proof).map_err(|err| err.to_string())
}

async fn answer(
    handler: Arc<dyn RequestHandler>,
    writer: Arc<tokio::sync::Mutex<StreamWriter>>,
    request: Envelope,
    peer: SocketAddr,
) {
    assert_eq!(request.kind, FrameKind::Request);
    let request_id = request.request_id;
    let (chunks, mut produced) = mpsc::channel(STREAM_CHUNKS_BUFFERED_COUNT_MAX);
    let handled = handler.handle_streaming(request.payload, chunks);
    // Parts go out as the handler produces them; the final answer after
    // the last part (the channel closes when the handler is done with it).
    let relay = async {
        while let Some(part) = produced.recv().await {
            let chunk = Envelope { kind: FrameKind::ResponseChunk, request_id, payload: part };
            if !write_envelope(&writer, chunk, peer).await {
                return false;
            }
        }
        true
    };
    let (outcome, written) = tokio::join!(handled, relay);
    if !written {
        return;
    }
    let (kind, payload) = match outcome {
        Ok(payload) => (FrameKind::Response, payload),
        Err(reason) => (FrameKind::ErrorResponse, reason.into_bytes()),
    };
    write_envelope(&writer, Envelope { kind, request_id, payload }, peer).await;
}

/// Writes one answer frame; an oversize one becomes an error answer.
/// False when the connection failed.
async fn write_envelope(
    writer: &tokio::sync::Mutex<StreamWriter>,
    envelope: Envelope,
    peer: SocketAddr,
) -> bool {
    let request_id = envelope.request_id;
    let bytes = match frame::encode(&envelope) {
        Ok(bytes) => bytes,
        Err(err) => {
            let reason = format!("answer not sent: {err}").into_bytes();
            let fallback = Envelope { kind: FrameKind::ErrorResponse, request_id, payload: reason };
            frame::encode(&fallback).expect("a short error answer always fits a frame")
        }
    };
    match writer.lock().await.write_all(&bytes).await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(%peer, "answer to request {request_id} not written: {err}");
            false
        }
    }
}
