//! Request/response between nodes: the [`Transport`] trait (what forwarding
//! needs; the simulator can provide it over `SimNetwork`) and its TCP client
//! [`TcpTransport`]. The server side is [`crate::server::TcpServer`].
//!
//! Per peer the client keeps one connection, multiplexing requests by id.
//! Limits: at most `in_flight_requests_max` unanswered requests per peer
//! (one more fails at once with [`ClusterError::TooManyInFlight`], it never
//! queues), every request has a timeout covering connect, write and answer,
//! and a lost connection is re-established on the next request after the
//! [`Backoff`] wait. The wire format is [`crate::frame`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::env::BoxFuture;
use kelpie_core::limits::ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT;
use kelpie_core::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::tls::{BoxStream, ClusterTls};

/// The halves of a connection's stream (plain TCP or TLS).
pub(crate) type StreamReader = ReadHalf<BoxStream>;
pub(crate) type StreamWriter = WriteHalf<BoxStream>;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::auth::{self, ClientHandshake, ClusterSecret, CHALLENGE_BYTES, HANDSHAKE_TIMEOUT_MS};
use crate::backoff::Backoff;
use crate::error::{ClusterError, ClusterResult};
use crate::frame::{self, Envelope, FrameError, FrameKind, ENVELOPE_SIZE_BYTES, FRAME_HEADER_SIZE_BYTES};

/// Timeout of a forwarded request unless the caller gives one.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT;
/// Unanswered requests one node may have outstanding to one peer.
pub const IN_FLIGHT_REQUESTS_COUNT_MAX: usize = 256;
/// Longest wait for a TCP connection to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Parts of a streamed answer buffered between a handler and the
/// connection (and between the connection and the caller) before the
/// producer waits.
pub const STREAM_CHUNKS_BUFFERED_COUNT_MAX: usize = 64;

/// The parts of a streamed answer, in order; the last item is the final
/// part (possibly empty) or an error, then the receiver closes.
pub type ChunkReceiver = mpsc::Receiver<ClusterResult<Vec<u8>>>;

/// Sends a request to a peer node and returns its answer.
pub trait Transport: Send + Sync + 'static {
    fn request(
        &self,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> BoxFuture<ClusterResult<Vec<u8>>>;

    /// Like [`Transport::request`], with the answer delivered in parts as
    /// the peer produces them; `timeout_ms` bounds the wait for each part.
    /// By default the whole answer arrives as one part.
    fn request_stream(
        &self,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> BoxFuture<ClusterResult<ChunkReceiver>> {
        let answer = self.request(peer, payload, timeout_ms);
        Box::pin(async move {
            let (sender, receiver) = mpsc::channel(1);
            sender.try_send(Ok(answer.await?)).expect("a fresh channel has room for one");
            Ok(receiver)
        })
    }
}

/// Answers requests arriving from peers: the payload of the answer, or a
/// reason the request failed (sent back as an error response).
pub trait RequestHandler: Send + Sync + 'static {
    fn handle(&self, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>>;

    /// Answers in parts: each item sent on `chunks` goes out at once, the
    /// returned payload ends the answer. By default, one part.
    fn handle_streaming(
        &self,
        payload: Vec<u8>,
        chunks: mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        drop(chunks);
        self.handle(payload)
    }
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub in_flight_requests_max: usize,
    pub connect_timeout_ms: u64,
    /// When set, every connection begins with the mutual handshake of
    /// [`crate::auth`] (client and server must agree); `None` speaks frames
    /// at once (a network the operator declared trusted).
    pub secret: Option<ClusterSecret>,
    /// When set, every connection is TLS (client and server must agree),
    /// the secret's handshake running inside it.
    pub tls: Option<ClusterTls>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            in_flight_requests_max: IN_FLIGHT_REQUESTS_COUNT_MAX,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            secret: None,
            tls: None,
        }
    }
}

/// `io` within [`HANDSHAKE_TIMEOUT_MS`], as a reason on failure.
pub(crate) async fn within_handshake<T>(
    env: &Env,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    let timeout = env.clock.sleep(Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
    tokio::select! {
        biased;
        done = io => done.map_err(|err| err.to_string()),
        () = timeout => Err(format!("the handshake took over {HANDSHAKE_TIMEOUT_MS} ms")),
    }
}

/// The client's side of the handshake on a fresh connection.
async fn authenticate_to_server(
    env: &Env,
    stream: &mut BoxStream,
    secret: &ClusterSecret,
) -> Result<(), String> {
    let (handshake, hello) = ClientHandshake::start(secret.clone(), auth::nonce(env.rng.as_ref()));
    within_handshake(env, stream.write_all(&hello)).await?;
    let mut challenge = [0u8; CHALLENGE_BYTES];
    within_handshake(env, stream.read_exact(&mut challenge)).await?;
    let proof = handshake.answer(&challenge).map_err(|err| err.to_string())?;
    within_handshake(env, stream.write_all(&proof)).await
}

/// How a frame read ended when it did not yield an envelope.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed the connection between frames.
    Closed,
    Io(std::io::Error),
    Frame(FrameError),
}

/// Reads one frame, refusing an oversize length before buffering anything.
pub(crate) async fn read_frame(reader: &mut StreamReader) -> Result<Envelope, ReadEnd> {
    let mut header = [0u8; FRAME_HEADER_SIZE_BYTES];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadEnd::Closed),
        Err(err) => return Err(ReadEnd::Io(err)),
    }
    let size = frame::body_size(header).map_err(ReadEnd::Frame)?;
    let mut body = vec![0u8; size];
    reader.read_exact(&mut body).await.map_err(ReadEnd::Io)?;
    frame::decode(body).map_err(ReadEnd::Frame)
}

/// Where the frames answering one request go: every chunk, then the final
/// response or error.
type Waiter = mpsc::Sender<ClusterResult<Envelope>>;

/// One live connection to a peer.
struct Connection {
    generation: u64,
    writer: Arc<tokio::sync::Mutex<StreamWriter>>,
    alive: Arc<AtomicBool>,
}

struct LinkState {
    connection: Option<Connection>,
    backoff: Backoff,
    generations_count: u64,
}

/// Everything the client keeps about one peer.
struct Link {
    peer: SocketAddr,
    in_flight: Arc<Semaphore>,
    /// Held while (re)connecting, so one request connects and others reuse it.
    state: tokio::sync::Mutex<LinkState>,
    /// Waiting requests by id, with the generation of their connection.
    pending: Mutex<BTreeMap<u64, (u64, Waiter)>>,
    next_request_id: AtomicU64,
}

impl Link {
    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, Waiter)>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a request's waiter however the request ends (answer, error,
/// timeout, cancellation), so the pending table never grows without bound.
struct PendingGuard<'a> {
    link: &'a Link,
    request_id: u64,
}

impl PendingGuard<'_> {
    /// Leaves the waiter registered: someone else now owns its removal.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.pending().remove(&self.request_id);
    }
}

/// The TCP client side of [`Transport`]; cheap to clone.
#[derive(Clone)]
pub struct TcpTransport {
    env: Env,
    config: TransportConfig,
    links: Arc<Mutex<BTreeMap<SocketAddr, Arc<Link>>>>,
}

impl TcpTransport {
    pub fn new(env: Env, config: TransportConfig) -> Self {
        assert!(config.in_flight_requests_max > 0, "in-flight bound must be positive");
        assert!(config.connect_timeout_ms > 0, "connect timeout must be positive");
        TcpTransport { env, config, links: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    fn link(&self, peer: SocketAddr) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let link = links.entry(peer).or_insert_with(|| {
            Arc::new(Link {
                peer,
                in_flight: Arc::new(Semaphore::new(self.config.in_flight_requests_max)),
                state: tokio::sync::Mutex::new(LinkState {
                    connection: None,
                    backoff: Backoff::default(),
                    generations_count: 0,
                }),
                pending: Mutex::new(BTreeMap::new()),
                next_request_id: AtomicU64::new(1),
            })
        });
        link.clone()
    }

    async fn send(&self, peer: SocketAddr, payload: Vec<u8>, timeout_ms: u64) -> ClusterResult<Vec<u8>> {
        let mut parts = self.send_streaming(peer, payload, timeout_ms).await?;
        let mut answer = Vec::new();
        while let Some(part) = parts.recv().await {
            answer.extend_from_slice(&part?);
        }
        Ok(answer)
    }

    /// Sends the request; the parts of its answer arrive on the returned
    /// receiver, each within `timeout_ms` of the previous one.
    async fn send_streaming(
        &self,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> ClusterResult<ChunkReceiver> {
        let body_bytes = ENVELOPE_SIZE_BYTES + payload.len();
        if body_bytes > frame::FRAME_SIZE_BYTES_MAX {
            let limit_bytes = frame::FRAME_SIZE_BYTES_MAX as u64;
            return Err(ClusterError::FrameTooLarge { peer, size_bytes: body_bytes as u64, limit_bytes });
        }
        let link = self.link(peer);
        let permit: OwnedSemaphorePermit = link.in_flight.clone().try_acquire_owned().map_err(|_| {
            ClusterError::TooManyInFlight { peer, in_flight: self.config.in_flight_requests_max }
        })?;
        let (sender, frames) = mpsc::channel(STREAM_CHUNKS_BUFFERED_COUNT_MAX);
        let timeout = self.env.clock.sleep(Duration::from_millis(timeout_ms));
        let request_id = tokio::select! {
            biased;
            sent = self.write_request(&link, payload, sender) => sent?,
            () = timeout => return Err(ClusterError::Timeout { peer, timeout_ms }),
        };
        let (parts_tx, parts) = mpsc::channel(STREAM_CHUNKS_BUFFERED_COUNT_MAX);
        let relay = relay_answer(self.env.clone(), link, request_id, frames, parts_tx, timeout_ms, permit);
        self.env.spawner.spawn("cluster-transport-answer", Box::pin(relay));
        Ok(parts)
    }

    /// Connects if needed, registers the waiter and writes the request; the
    /// waiter stays registered until [`relay_answer`] ends.
    async fn write_request(&self, link: &Link, payload: Vec<u8>, waiter: Waiter) -> ClusterResult<u64> {
        let (generation, writer, alive) = self.connection(link).await?;
        let request_id = link.next_request_id.fetch_add(1, Ordering::Relaxed);
        assert!(link.pending().insert(request_id, (generation, waiter)).is_none(), "request id reused");
        let guard = PendingGuard { link, request_id };
        let bytes = frame::encode(&Envelope { kind: FrameKind::Request, request_id, payload })
            .map_err(|err| ClusterError::Io { peer: link.peer, reason: err.to_string() })?;
        if let Err(err) = writer.lock().await.write_all(&bytes).await {
            alive.store(false, Ordering::SeqCst);
            return Err(ClusterError::Io { peer: link.peer, reason: format!("write: {err}") });
        }
        guard.keep();
        Ok(request_id)
    }

    /// The live connection to the link's peer, connecting after the backoff
    /// wait when there is none.
    async fn connection(
        &self,
        link: &Link,
    ) -> ClusterResult<(u64, Arc<tokio::sync::Mutex<StreamWriter>>, Arc<AtomicBool>)> {
        let mut state = link.state.lock().await;
        if let Some(connection) = state.connection.as_ref().filter(|c| c.alive.load(Ordering::SeqCst)) {
            return Ok((connection.generation, connection.writer.clone(), connection.alive.clone()));
        }
        state.connection = None;
        let wait_ms = state.backoff.wait_ms(self.env.clock.monotonic_ms());
        if wait_ms > 0 {
            self.env.clock.sleep(Duration::from_millis(wait_ms)).await;
        }
        let stream = match self.connect(link.peer).await {
            Ok(stream) => stream,
            Err(err) => {
                let jitter = (self.env.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                state.backoff.failed(self.env.clock.monotonic_ms(), jitter);
                return Err(err);
            }
        };
        state.backoff.connected();
        state.generations_count += 1;
        let generation = state.generations_count;
        let (reader, writer) = tokio::io::split(stream);
        let connection = Connection {
            generation,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            alive: Arc::new(AtomicBool::new(true)),
        };
        let found = (connection.generation, connection.writer.clone(), connection.alive.clone());
        let link_for_reader = self.link(link.peer);
        let alive = connection.alive.clone();
        self.env.spawner.spawn(
            "cluster-transport-reader",
            Box::pin(read_answers(link_for_reader, reader, generation, alive)),
        );
        state.connection = Some(connection);
        Ok(found)
    }

    async fn connect(&self, peer: SocketAddr) -> ClusterResult<BoxStream> {
        let timeout_ms = self.config.connect_timeout_ms;
        let timeout = self.env.clock.sleep(Duration::from_millis(timeout_ms));
        let stream = tokio::select! {
            biased;
            connected = TcpStream::connect(peer) => connected.map_err(|err| ClusterError::Connect { peer, reason: err.to_string() })?,
            () = timeout => return Err(ClusterError::Connect { peer, reason: format!("no connection in {timeout_ms} ms") }),
        };
        stream.set_nodelay(true).map_err(|err| ClusterError::Connect { peer, reason: err.to_string() })?;
        let mut stream: BoxStream = match &self.config.tls {
            Some(tls) => within_handshake(&self.env, tls.connect(stream))
                .await
                .map_err(|reason| ClusterError::Auth { peer, reason: format!("TLS: {reason}") })?,
            None => Box::new(stream),
        };
        if let Some(secret) = &self.config.secret {
            authenticate_to_server(&self.env, &mut stream, secret)
                .await
                .map_err(|reason| ClusterError::Auth { peer, reason })?;
        }
        Ok(stream)
    }
}

/// Delivers answers of one connection to their waiting requests; when the
/// connection ends, marks it dead and fails the requests still waiting on it.
async fn read_answers(link: Arc<Link>, mut reader: StreamReader, generation: u64, alive: Arc<AtomicBool>) {
    let reason = loop {
        match read_frame(&mut reader).await {
            Ok(envelope) if envelope.kind == FrameKind::ResponseChunk => {
                let waiter = link.pending().get(&envelope.request_id).map(|(_, waiter)| waiter.clone());
                // A waiter that timed out is gone; its late parts are dropped.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(envelope)).await;
                }
            }
            Ok(envelope) if envelope.kind != FrameKind::Request => {
                let waiter = link.pending().remove(&envelope.request_id).map(|(_, waiter)| waiter);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(envelope)).await;
                }
            }
            Ok(_) => break "peer sent a request on a client connection".to_string(),
            Err(ReadEnd::Closed) => break "peer closed the connection".to_string(),
            Err(ReadEnd::Io(err)) => break format!("read: {err}"),
            Err(ReadEnd::Frame(err)) => break err.to_string(),
        }
    };
    alive.store(false, Ordering::SeqCst);
    let mut pending = link.pending();
    let orphaned: Vec<u64> =
        pending.iter().filter(|(_, (g, _))| *g == generation).map(|(id, _)| *id).collect();
    for id in orphaned {
        if let Some((_, waiter)) = pending.remove(&id) {
            // Dropping the waiter also ends its answer: a full buffer means
            // the relay is behind and will see the channel close.
            let _ = waiter.try_send(Err(ClusterError::Io { peer: link.peer, reason: reason.clone() }));
        }
    }
}

/// Hands the frames answering `request_id` to the caller as parts, each
/// within `timeout_ms` of the previous, and unregisters the request when
/// the answer ends, fails or times out, or the caller stops listening.
async fn relay_answer(
    env: Env,
    link: Arc<Link>,
    request_id: u64,
    mut frames: mpsc::Receiver<ClusterResult<Envelope>>,
    parts: mpsc::Sender<ClusterResult<Vec<u8>>>,
    timeout_ms: u64,
    permit: OwnedSemaphorePermit,
) {
    let _registered = PendingGuard { link: &link, request_id };
    let peer = link.peer;
    loop {
        let timeout = env.clock.sleep(Duration::from_millis(timeout_ms));
        let frame = tokio::select! {
            biased;
            frame = frames.recv() => frame,
            () = timeout => Some(Err(ClusterError::Timeout { peer, timeout_ms })),
        };
        let (part, last) = match frame {
            None => {
                (Err(ClusterError::Io { peer, reason: "connection closed before the answer".into() }), true)
            }
            Some(Err(err)) => (Err(err), true),
            Some(Ok(envelope)) => match envelope.kind {
                FrameKind::ResponseChunk => (Ok(envelope.payload), false),
                FrameKind::Response => (Ok(envelope.payload), true),
                FrameKind::ErrorResponse => {
                    let reason = String::from_utf8_lossy(&envelope.payload).into_owned();
                    (Err(ClusterError::Remote { peer, reason }), true)
                }
                FrameKind::Request => {
                    (Err(ClusterError::Io { peer, reason: "peer sent a request as an answer".into() }), true)
                }
            },
        };
        if parts.send(part).await.is_err() || last {
            break;
        }
    }
    drop(permit);
}

impl Transport for TcpTransport {
    fn request(
        &self,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> BoxFuture<ClusterResult<Vec<u8>>> {
        let this = self.clone();
        Box::pin(async move { this.send(peer, payload, timeout_ms).await })
    }

    fn request_stream(
        &self,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> BoxFuture<ClusterResult<ChunkReceiver>> {
        let this = self.clone();
        Box::pin(async move { this.send_streaming(peer, payload, timeout_ms).await })
    }
}
