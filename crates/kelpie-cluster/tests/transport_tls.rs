//! TLS of the cluster transport on 127.0.0.1, with a certificate authority
//! and a node certificate made for the test by `openssl` (fails, never
//! skips, without it):
//! - a TLS client and server with the secret answer requests, and what
//!   crosses the wire (recorded by a relay between them) never shows the
//!   payload, where without TLS it does;
//! - a plain client to a TLS server, a TLS client that trusts another
//!   authority, and a TLS client to a plain server run nothing.

// The test drives real sockets and processes.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::{
    ClusterSecret, ClusterTls, RequestHandler, TcpServer, TcpTransport, Transport, TransportConfig,
    CLUSTER_TLS_SERVER_NAME,
};
use kelpie_core::env::BoxFuture;
use kelpie_core::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"the cluster's shared secret";
const TIMEOUT_MS: u64 = 2_000;
const PAYLOAD: &[u8] = b"the otters meet at the kelp bed at dawn";

struct Counting {
    ran: Arc<AtomicU64>,
}

impl RequestHandler for Counting {
    fn handle(&self, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(payload) })
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|err| {
            panic!("this test needs the openssl command (Debian package openssl): {err}")
        });
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An authority `name` and a node certificate it issued for the cluster's
/// server name: `(cert, key, ca)` paths.
fn authority(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let file = |suffix: &str| format!("{name}-{suffix}");
    let (ca_key, ca, key, csr, cert, ext) = (
        file("ca.key"),
        file("ca.pem"),
        file("node.key"),
        file("node.csr"),
        file("node.pem"),
        file("ext.cnf"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test authority"),
        ],
    );
    openssl(
        dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=node"],
    );
    std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{CLUSTER_TLS_SERVER_NAME}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    (dir.join(cert), dir.join(key), dir.join(ca))
}

fn tls_of((cert, key, ca): &(PathBuf, PathBuf, PathBuf)) -> ClusterTls {
    ClusterTls::from_pem_files(cert, key, ca).expect("the test's files load")
}

fn config(tls: Option<ClusterTls>) -> TransportConfig {
    TransportConfig { secret: Some(ClusterSecret::new(SECRET)), tls, ..TransportConfig::default() }
}

async fn start_server(tls: Option<ClusterTls>) -> (TcpServer, Arc<AtomicU64>) {
    let ran = Arc::new(AtomicU64::new(0));
    let handler = Arc::new(Counting { ran: ran.clone() });
    let server = TcpServer::bind("127.0.0.1:0".parse().unwrap(), handler, Env::production(), config(tls))
        .await
        .expect("bind");
    (server, ran)
}

/// A relay on 127.0.0.1 to `target` that records every byte the client sends.
async fn recording_relay(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut upstream = TcpStream::connect(target).await.unwrap();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.split();
                let (mut up_read, mut up_write) = upstream.split();
                let forward = async {
                    let mut buffer = [0u8; 4096];
                    loop {
                        let n = client_read.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 || up_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        recorded.lock().unwrap().extend_from_slice(&buffer[..n]);
                    }
                };
                let back = tokio::io::copy(&mut up_read, &mut client_write);
                let _ = tokio::join!(forward, back);
            });
        }
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test]
async fn tls_carries_requests_and_hides_them_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let files = authority(dir.path(), "cluster");
    for with_tls in [false, true] {
        let tls = with_tls.then(|| tls_of(&files));
        let (server, ran) = start_server(tls.clone()).await;
        let (relay, seen) = recording_relay(server.local_addr()).await;
        let transport = TcpTransport::new(Env::production(), config(tls));
        let answer = transport.request(relay, PAYLOAD.to_vec(), TIMEOUT_MS).await.unwrap();
        assert_eq!(answer, PAYLOAD.to_vec());
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let wire = seen.lock().unwrap().clone();
        assert!(!wire.is_empty());
        assert_eq!(contains(&wire, PAYLOAD), !with_tls, "payload in clear on the wire: {}", !with_tls);
    }
}

#[tokio::test]
async fn peers_without_the_clusters_tls_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = authority(dir.path(), "cluster");
    let stranger = authority(dir.path(), "stranger");
    let (server, ran) = start_server(Some(tls_of(&files))).await;
    // A plain client (the secret's handshake in clear) to a TLS server.
    let plain = TcpTransport::new(Env::production(), config(None));
    assert!(plain.request(server.local_addr(), PAYLOAD.to_vec(), TIMEOUT_MS).await.is_err());
    // A client whose authority did not issue the server's certificate.
    let mistrusting = TcpTransport::new(Env::production(), config(Some(tls_of(&stranger))));
    let refused = mistrusting.request(server.local_addr(), PAYLOAD.to_vec(), TIMEOUT_MS).await.unwrap_err();
    assert!(refused.to_string().contains("TLS"), "{refused}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing ran for either");
    // A TLS client to a plain server.
    let (plain_server, plain_ran) = start_server(None).await;
    let tls_client = TcpTransport::new(Env::production(), config(Some(tls_of(&files))));
    assert!(tls_client.request(plain_server.local_addr(), PAYLOAD.to_vec(), TIMEOUT_MS).await.is_err());
    assert_eq!(plain_ran.load(Ordering::SeqCst), 0);
}

#[test]
fn missing_or_wrong_files_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = authority(dir.path(), "cluster");
    let missing = dir.path().join("absent.pem");
    let err = ClusterTls::from_pem_files(&missing, &key, &ca).unwrap_err();
    assert!(
        err.to_string().starts_with("cluster TLS: certificate ") && err.to_string().contains("absent.pem"),
        "{err}"
    );
    // A key that is not the certificate's.
    let (_, other_key, _) = authority(dir.path(), "other");
    let err = ClusterTls::from_pem_files(&cert, &other_key, &ca).unwrap_err();
    assert!(err.to_string().contains("certificate and key"), "{err}");
    let err = ClusterTls::from_pem_files(&cert, &key, &key).unwrap_err();
    assert!(err.to_string().starts_with("cluster TLS: authority"), "{err}");
}
