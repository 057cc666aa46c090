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

/// Answers `parts <n>` in n parts `p0`, `p1`, ...: each waits for a permit
/// of the gate, so the test decides when the next part may go; the final
/// answer is `end`. `parts-fail` sends one part and then fails.
struct StreamingHandler {
    gate: Arc<Semaphore>,
}

impl RequestHandler for StreamingHandler {
    fn handle(&self, _payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>> {
        Box::pin(async { Err("only streamed".to_string()) })
    }

    fn handle_streaming(
        &self,
        payload: Vec<u8>,
        chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let gate = self.gate.clone();
        Box::pin(async move {
            let text = String::from_utf8_lossy(&payload).into_owned();
            if text == "parts-fail" {
                chunks.send(b"p0".to_vec()).await.unwrap();
                gate.acquire().await.unwrap().forget();
                return Err("broke mid-answer".to_string());
            }
            let count: usize = text.strip_prefix("parts ").unwrap().parse().unwrap();
            for index in 0..count {
                gate.acquire().await.unwrap().forget();
                chunks.send(format!("p{index}").into_bytes()).await.unwrap();
            }
            Ok(b"end".to_vec())
        })
    }
}

#[tokio::test]
async fn a_streamed_answer_arrives_part_by_part_as_it_is_produced() {
    let gate = Arc::new(Semaphore::new(0));
    let handler = Arc::new(StreamingHandler { gate: gate.clone() });
    let server = TcpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        handler,
        Env::production(),
        TransportConfig::default(),
    )
    .await
    .unwrap();
    let transport = client(8);
    let mut parts =
        transport.request_stream(server.local_addr(), b"parts 3".to_vec(), TEST_TIMEOUT_MS).await.unwrap();
    for index in 0..3 {
        // Nothing arrives until the handler is allowed to produce the part.
        let early = tokio::time::timeout(Duration::from_millis(100), parts.recv()).await;
        assert!(early.is_err(), "part {index} arrived before it was produced");
        gate.add_permits(1);
        let part = parts.recv().await.unwrap().unwrap();
        assert_eq!(part, format!("p{index}").into_bytes());
    }
    assert_eq!(parts.recv().await.unwrap().unwrap(), b"end".to_vec());
    assert!(parts.recv().await.is_none(), "the stream ends after the final part");

    // A whole-answer request to the same handler joins every part.
    gate.add_permits(2);
    let joined = transport.request(server.local_addr(), b"parts 2".to_vec(), TEST_TIMEOUT_MS).await.unwrap();
    assert_eq!(joined, b"p0p1end".to_vec());

    // A failure after a part reaches the caller as the stream's last item.
    let mut parts =
        transport.request_stream(server.local_addr(), b"parts-fail".to_vec(), TEST_TIMEOUT_MS).await.unwrap();
    assert_eq!(parts.recv().await.unwrap().unwrap(), b"p0".to_vec());
    gate.add_permits(1);
    let err = parts.recv().await.unwrap().unwrap_err();
    assert_eq!(err, ClusterError::Remote { peer: server.local_addr(), reason: "broke mid-answer".into() });
    assert!(parts.recv().await.is_none());
}

#[tokio::test]
async fn a_stalled_stream_times_out_between_parts() {
    let gate = Arc::new(Semaphore::new(1));
    let handler = Arc::new(StreamingHandler { gate: gate.clone() });
    let server = TcpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        handler,
        Env::production(),
        TransportConfig::default(),
    )
    .await
    .unwrap();
    let transport = client(8);
    let stall_ms = 200;
    let mut parts =
        transport.request_stream(server.local_addr(), b"parts 2".to_vec(), stall_ms).await.unwrap();
    assert_eq!(parts.recv().await.unwrap().unwrap(), b"p0".to_vec());
    let err = parts.recv().await.unwrap().unwrap_err();
    assert_eq!(err, ClusterError::Timeout { peer: server.local_addr(), timeout_ms: stall_ms });
    assert!(parts.recv().await.is_none());
}
