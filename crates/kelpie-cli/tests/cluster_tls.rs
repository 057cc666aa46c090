//! Two `kelpie serve --cluster` processes on one PostgreSQL with the
//! cluster's TLS files (an authority and a node certificate `openssl` makes
//! for the test; fails without it): a message sent through the second node
//! is forwarded over TLS to the agent's owner and answered, and the owner's
//! transport refuses a peer that speaks the secret's handshake in clear.
//! (A node started without the TLS files cannot reach the others' agent
//! directory, so it never comes up; the transport tests in kelpie-cluster
//! cover each refusal.)

mod support;

use std::path::Path;
use std::process::Command;

use support::{create_agent, history_turns, send_message, Harness, NodeProcess};

/// The secret handshake's opening (`kelpie_cluster::auth::HELLO_MAGIC`),
/// followed by a 32-byte nonce.
const HELLO_MAGIC: &[u8] = b"KELPIEA1";

fn openssl(dir: &Path, args: &[&str]) {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|err| {
            panic!("this test needs the openssl command (Debian package openssl): {err}")
        });
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The cluster's TLS settings: one certificate for every node, naming
/// `kelpie-cluster`, issued by a fresh authority.
fn tls_env(dir: &Path) -> Vec<(String, String)> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test cluster CA",
        ],
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj",
            "/CN=node",
        ],
    );
    std::fs::write(dir.join("san.cnf"), "subjectAltName=DNS:kelpie-cluster\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "node.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
    let path = |name: &str| dir.join(name).display().to_string();
    vec![
        ("KELPIE_CLUSTER_TLS_CERT".into(), path("node.pem")),
        ("KELPIE_CLUSTER_TLS_KEY".into(), path("node.key")),
        ("KELPIE_CLUSTER_TLS_CA".into(), path("ca.pem")),
    ]
}

#[test]
fn nodes_forward_over_tls_and_a_node_without_it_cannot() {
    let Some(harness) = Harness::start("cluster_tls") else { return };
    let database_url = harness.database("cluster_tls");
    let (runtime, client) = (&harness.runtime, &harness.client);
    let certs = tempfile::tempdir().unwrap();
    let tls = tls_env(certs.path());
    let mut nodes: Vec<NodeProcess> = ["n1", "n2"].iter().map(|name| NodeProcess::new(name)).collect();
    for node in &mut nodes {
        node.env = tls.clone();
        harness.spawn(node, &database_url);
    }
    let urls: Vec<String> = nodes.iter().map(NodeProcess::url).collect();

    // The agent lives on n1 (created and activated there).
    let agent = runtime.block_on(create_agent(client, &urls[0], "otter"));
    let first = runtime.block_on(send_message(client, &urls[0], &agent, "hello n1"));
    assert!(first.acked, "{first:?}");
    assert_eq!(first.served_by.as_deref(), Some("n1"));

    // Through n2: forwarded to n1 over TLS.
    let forwarded = runtime.block_on(send_message(client, &urls[1], &agent, "via n2"));
    assert!(forwarded.acked, "{forwarded:?}");
    assert_eq!(forwarded.served_by.as_deref(), Some("n1"), "n1 owns the agent and answered");

    // A peer speaking the secret's handshake in clear to n1's transport:
    // the TLS server reads it as a bad TLS record and closes.
    let refused = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(nodes[0].advertise).await.unwrap();
        stream.write_all(HELLO_MAGIC).await.unwrap();
        stream.write_all(&[7u8; 32]).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer));
        (read.await.is_ok(), answer)
    });
    assert!(refused.0, "the connection was closed");
    assert!(!refused.1.starts_with(HELLO_MAGIC), "no handshake challenge in clear");
    let turns = runtime.block_on(history_turns(client, &urls[0], &agent));
    let said: Vec<&str> =
        turns.iter().filter(|(kind, _)| kind == "user_message").map(|(_, text)| text.as_str()).collect();
    assert_eq!(said, ["hello n1", "via n2"]);
    let again = runtime.block_on(send_message(client, &urls[1], &agent, "still via n2"));
    assert!(again.acked && again.served_by.as_deref() == Some("n1"), "{again:?}");
    for node in &mut nodes {
        node.kill();
    }
}
