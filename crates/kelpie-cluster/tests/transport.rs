//! The TCP transport on 127.0.0.1: round trips, error answers, timeouts,
//! reconnection after the peer restarts, oversize frames refused on both
//! sides, and the in-flight bound failing fast instead of hanging.

// Handlers and the tests themselves wait on real time and raw sockets.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_cluster::frame::{ENVELOPE_SIZE_BYTES, FRAME_SIZE_BYTES_MAX};
use kelpie_cluster::{ClusterError, RequestHandler, TcpServer, TcpTransport, Transport, TransportConfig};
use kelpie_core::env::BoxFuture;
use kelpie_core::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const TEST_TIMEOUT_MS: u64 = 2_000;

/// Echoes the payload; `sleep <ms>` sleeps first; `fail` answers an error;
/// `gate` waits for a permit of the shared gate.
struct TestHandler {
    gate: Arc<Semaphore>,
}

impl RequestHandler for TestHandler {
    fn handle(&self, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>> {
        let gate = self.gate.clone();
        Box::pin(async move {
            let text = String::from_utf8_lossy(&payload).into_owned();
            if let Some(ms) = text.strip_prefix("sleep ") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            } else if text == "fail" {
                return Err("handler refused".to_string());
            } else if text == "gate" {
                gate.acquire().await.unwrap().forget();
            }
            Ok(payload)
        })
    }
}

async fn server_on(addr: SocketAddr, gate: Arc<Semaphore>) -> TcpServer {
    TcpServer::bind(addr, Arc::new(TestHandler { gate }), Env::production(), TransportConfig::default())
        .await
        .expect("bind")
}

async fn server() -> (TcpServer, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    (server_on("127.0.0.1:0".parse().unwrap(), gate.clone()).await, gate)
}

fn client(in_flight_requests_max: usize) -> TcpTransport {
    let config = TransportConfig { in_flight_requests_max, ..TransportConfig::default() };
    TcpTransport::new(Env::production(), config)
}

#[tokio::test]
async fn requests_round_trip_and_errors_come_back_as_remote() {
    let (server, _) = server().await;
    let transport = client(8);
    for round in 0..3 {
        let payload = format!("hello {round}").into_bytes();
        let answer = transport.request(server.local_addr(), payload.clone(), TEST_TIMEOUT_MS).await.unwrap();
        assert_eq!(answer, payload);
    }
    let err = transport.request(server.local_addr(), b"fail".to_vec(), TEST_TIMEOUT_MS).await.unwrap_err();
    assert_eq!(err, ClusterError::Remote { peer: server.local_addr(), reason: "handler refused".into() });
}

#[tokio::test]
async fn concurrent_requests_on_one_connection_get_their_own_answers() {
    let (server, _) = server().await;
    let transport = client(64);
    let tasks: Vec<_> = (0..32)
        .map(|index| {
            let (transport, peer) = (transport.clone(), server.local_addr());
            // Later requests sleep less, so answers arrive out of order.
            let payload = if index % 2 == 0 { format!("sleep {}", 64 - index) } else { format!("n{index}") };
            tokio::spawn(async move {
                (payload.clone(), transport.request(peer, payload.into_bytes(), TEST_TIMEOUT_MS).await)
            })
        })
        .collect();
    for task in tasks {
        let (payload, answer) = task.await.unwrap();
        assert_eq!(answer.unwrap(), payload.into_bytes());
    }
}

#[tokio::test]
async fn slow_answer_times_out_and_the_link_keeps_working() {
    let (server, _) = server().await;
    let transport = client(8);
    let start = Instant::now();
    let err = transport.request(server.local_addr(), b"sleep 1000".to_vec(), 200).await.unwrap_err();
    let elapsed_ms = start.elapsed().as_millis() as u64;
    assert_eq!(err, ClusterError::Timeout { peer: server.local_addr(), timeout_ms: 200 });
    assert!((200..900).contains(&elapsed_ms), "timed out after {elapsed_ms} ms");
    let answer = transport.request(server.local_addr(), b"quick".to_vec(), TEST_TIMEOUT_MS).await.unwrap();
    assert_eq!(answer, b"quick");
}

#[tokio::test]
async fn in_flight_bound_fails_the_next_request_at_once() {
    let (server, gate) = server().await;
    let transport = client(2);
    let peer = server.local_addr();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.request(peer, b"gate".to_vec(), TEST_TIMEOUT_MS).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let err = transport.request(peer, b"third".to_vec(), TEST_TIMEOUT_MS).await.unwrap_err();
    assert_eq!(err, ClusterError::TooManyInFlight { peer, in_flight: 2 });
    assert!(start.elapsed() < Duration::from_millis(100), "refused without waiting");
    gate.add_permits(2);
    for task in blocked {
        assert_eq!(task.await.unwrap().unwrap(), b"gate");
    }
    assert_eq!(transport.request(peer, b"after".to_vec(), TEST_TIMEOUT_MS).await.unwrap(), b"after");
}

#[tokio::test]
async fn oversize_frames_are_refused_by_sender_and_receiver() {
    let (server, _) = server().await;
    let peer = server.local_addr();
    let transport = client(8);
    let payload = vec![0u8; FRAME_SIZE_BYTES_MAX - ENVELOPE_SIZE_BYTES + 1];
    let err = transport.request(peer, payload, TEST_TIMEOUT_MS).await.unwrap_err();
    let limit_bytes = FRAME_SIZE_BYTES_MAX as u64;
    assert_eq!(err, ClusterError::FrameTooLarge { peer, size_bytes: limit_bytes + 1, limit_bytes });

    // A raw peer announcing an oversize body is disconnected before it sends it.
    let mut raw = TcpStream::connect(peer).await.unwrap();
    raw.write_all(&(FRAME_SIZE_BYTES_MAX as u32 + 1).to_be_bytes()).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(TEST_TIMEOUT_MS), raw.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "server kept the connection: {read:?}");
    assert_eq!(transport.request(peer, b"still up".to_vec(), TEST_TIMEOUT_MS).await.unwrap(), b"still up");
}

#[tokio::test]
async fn peer_restart_is_survived_by_reconnecting() {
    let gate = Arc::new(Semaphore::new(0));
    let first = server_on("127.0.0.1:0".parse().unwrap(), gate.clone()).await;
    let peer = first.local_addr();
    let transport = client(8);
    assert_eq!(transport.request(peer, b"before".to_vec(), TEST_TIMEOUT_MS).await.unwrap(), b"before");

    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down = transport.request(peer, b"while down".to_vec(), TEST_TIMEOUT_MS).await.unwrap_err();
    assert!(matches!(down, ClusterError::Io { .. } | ClusterError::Connect { .. }), "{down:?}");

    let _second = server_on(peer, gate).await;
    let start = Instant::now();
    let mut failures = 0;
    let answer = loop {
        match transport.request(peer, b"after".to_vec(), TEST_TIMEOUT_MS).await {
            Ok(answer) => break answer,
            Err(err) => {
                failures += 1;
                assert!(failures < 20, "never reconnected: {err:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(answer, b"after");
    assert!(start.elapsed() < Duration::from_millis(TEST_TIMEOUT_MS), "reconnect took {:?}", start.elapsed());
}

#[tokio::test]
async fn unreachable_peer_fails_with_connect_error_not_a_hang() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let transport = client(8);
    let start = Instant::now();
    for _ in 0..3 {
        let err = transport.request(closed, b"x".to_vec(), TEST_TIMEOUT_MS).await.unwrap_err();
        assert!(matches!(err, ClusterError::Connect { peer, .. } if peer == closed), "{err:?}");
    }
    assert!(
        start.elapsed() < Duration::from_millis(TEST_TIMEOUT_MS),
        "backoff waits stay short: {:?}",
        start.elapsed()
    );
}
