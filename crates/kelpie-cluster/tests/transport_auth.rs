//! The transport's authentication on 127.0.0.1: a server holding the
//! cluster secret runs nothing for a peer that cannot prove it holds the
//! secret too (a raw well-formed request frame, a wrong proof, a client
//! with another secret or none), and serves a client with the secret.

// The test waits on real sockets.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kelpie_cluster::auth::{CHALLENGE_BYTES, HELLO_MAGIC, NONCE_BYTES, PROOF_BYTES};
use kelpie_cluster::frame::{self, Envelope, FrameKind};
use kelpie_cluster::{
    ClusterError, ClusterSecret, RequestHandler, TcpServer, TcpTransport, Transport, TransportConfig,
};
use kelpie_core::env::BoxFuture;
use kelpie_core::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"the cluster's shared secret";
const TIMEOUT_MS: u64 = 2_000;

/// Counts the requests it runs and echoes them.
struct Counting {
    ran: Arc<AtomicU64>,
}

impl RequestHandler for Counting {
    fn handle(&self, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(payload) })
    }
}

fn config(secret: Option<&[u8]>) -> TransportConfig {
    TransportConfig { secret: secret.map(ClusterSecret::new), ..TransportConfig::default() }
}

async fn server(secret: Option<&[u8]>) -> (TcpServer, Arc<AtomicU64>) {
    let ran = Arc::new(AtomicU64::new(0));
    let handler = Arc::new(Counting { ran: ran.clone() });
    let server = TcpServer::bind("127.0.0.1:0".parse().unwrap(), handler, Env::production(), config(secret))
        .await
        .expect("bind");
    (server, ran)
}

fn request_frame(payload: &[u8]) -> Vec<u8> {
    frame::encode(&Envelope { kind: FrameKind::Request, request_id: 1, payload: payload.to_vec() }).unwrap()
}

/// Reads until the server closes the connection; what it sent before.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(4 * TIMEOUT_MS), stream.read_to_end(&mut received));
    match read.await {
        Ok(Ok(_)) | Ok(Err(_)) => received,
        Err(_) => panic!("the server kept the connection open"),
    }
}

#[tokio::test]
async fn a_raw_request_frame_without_the_handshake_is_never_run() {
    let (server, ran) = server(Some(SECRET)).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    // A well-formed request, padded past the hello's size so the server
    // has all it reads at first.
    let mut bytes = request_frame(b"run this");
    bytes.extend(request_frame(b"and this"));
    bytes.extend(request_frame(b"and this too"));
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(until_closed(&mut stream).await, Vec::<u8>::new(), "no answer, the connection closed");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_wrong_proof_closes_the_connection_before_any_frame_is_read() {
    let (server, ran) = server(Some(SECRET)).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut hello = HELLO_MAGIC.to_vec();
    hello.extend([7u8; NONCE_BYTES]);
    stream.write_all(&hello).await.unwrap();
    let mut challenge = [0u8; CHALLENGE_BYTES];
    stream.read_exact(&mut challenge).await.unwrap();
    let mut rest = vec![0xAB; PROOF_BYTES];
    rest.extend(request_frame(b"run this"));
    stream.write_all(&rest).await.unwrap();
    assert_eq!(until_closed(&mut stream).await, Vec::<u8>::new());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn clients_with_another_secret_or_none_are_refused_and_one_with_it_is_served() {
    let (server, ran) = server(Some(SECRET)).await;
    let peer = server.local_addr();

    let other = TcpTransport::new(Env::production(), config(Some(b"another cluster's secret")));
    match other.request(peer, b"run this".to_vec(), TIMEOUT_MS).await {
        Err(ClusterError::Auth { reason, .. }) => assert!(reason.contains("proof is wrong"), "{reason}"),
        other => panic!("expected an authentication error, got {other:?}"),
    }
    let none = TcpTransport::new(Env::production(), config(None));
    // Its frame is shorter than a hello: the server waits for the rest of
    // the hello until the handshake times out, then closes.
    let refused = none.request(peer, b"run this".to_vec(), TIMEOUT_MS).await;
    assert!(matches!(refused, Err(ClusterError::Io { .. } | ClusterError::Timeout { .. })), "{refused:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing ran for a peer without the secret");

    let member = TcpTransport::new(Env::production(), config(Some(SECRET)));
    assert_eq!(member.request(peer, b"run this".to_vec(), TIMEOUT_MS).await.unwrap(), b"run this");
    assert_eq!(member.request(peer, b"and this".to_vec(), TIMEOUT_MS).await.unwrap(), b"and this");
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_with_the_secret_refuses_a_server_without_it() {
    let (server, ran) = server(None).await;
    let member = TcpTransport::new(Env::production(), config(Some(SECRET)));
    let refused = member.request(server.local_addr(), b"run this".to_vec(), TIMEOUT_MS).await;
    assert!(matches!(refused, Err(ClusterError::Auth { .. })), "{refused:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
