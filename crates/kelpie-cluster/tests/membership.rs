//! Membership against a real PostgreSQL (started in a temp dir): three
//! in-process nodes join, see each other, one crashes (stops heartbeating)
//! and is declared failed by the database-clock age, one leaves by draining,
//! and the crashed one rejoins. One server serves the whole binary.

// Real time must pass for heartbeat ages to grow in the database.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kelpie_cluster::{Liveness, Member, MemberView, MembershipConfig, NodeStatus, NodeTable};
use kelpie_core::{Env, NodeId};
use kelpie_storage::test_support::PostgresServer;

const TEST_HEARTBEAT_INTERVAL_MS: u64 = 50;
const TEST_HEARTBEAT_TIMEOUT_MS: u64 = 400;
/// How long a test waits for a view to settle before failing.
const SETTLE_MS_MAX: u64 = 3_000;

fn config() -> MembershipConfig {
    MembershipConfig::new(TEST_HEARTBEAT_INTERVAL_MS, TEST_HEARTBEAT_TIMEOUT_MS)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn join(url: &str, name: &str, port: u16) -> Member {
    let table = NodeTable::connect(url).await.expect("connect node table");
    Member::join(table, Env::production(), NodeId::new(name).unwrap(), addr(port), config())
        .await
        .expect("join")
}

fn view_of<'a>(views: &'a [MemberView], name: &str) -> &'a MemberView {
    views
        .iter()
        .find(|view| view.row.node_id.as_str() == name)
        .unwrap_or_else(|| panic!("{name} not in {views:?}"))
}

/// Polls `member`'s view until `done` holds, failing after SETTLE_MS_MAX.
async fn wait_for_view(member: &Member, what: &str, done: impl Fn(&[MemberView]) -> bool) -> Vec<MemberView> {
    let start = std::time::Instant::now();
    loop {
        let views = member.members().await.expect("read members");
        if done(&views) {
            return views;
        }
        assert!(
            start.elapsed() < Duration::from_millis(SETTLE_MS_MAX),
            "{what}: view never settled: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(TEST_HEARTBEAT_INTERVAL_MS)).await;
    }
}

async fn three_nodes_join_and_see_each_other(url: &str) -> [Member; 3] {
    let nodes = [join(url, "n1", 7001).await, join(url, "n2", 7002).await, join(url, "n3", 7003).await];
    for node in &nodes {
        assert_eq!(node.status(), NodeStatus::Active, "join returns once registered");
        assert!(node.accepts_activations());
        let views = node.members().await.unwrap();
        let names: Vec<&str> = views.iter().map(|view| view.row.node_id.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"], "every node sees all three at once");
        assert!(views.iter().all(|view| view.routable && view.liveness == Liveness::Live), "{views:?}");
        assert_eq!(view_of(&views, "n2").row.advertise, addr(7002));
    }
    nodes
}

async fn crashed_node_is_failed_after_the_timeout(nodes: &[Member; 3]) {
    // Keep n1 heartbeating across the timeout so only n3 goes silent.
    tokio::time::sleep(Duration::from_millis(TEST_HEARTBEAT_INTERVAL_MS * 2)).await;
    nodes[2].halt();
    let halted_at = std::time::Instant::now();
    let early = nodes[0].members().await.unwrap();
    assert_eq!(view_of(&early, "n3").liveness, Liveness::Live, "not failed before the timeout");
    let views =
        wait_for_view(&nodes[0], "n3 failed", |views| view_of(views, "n3").liveness == Liveness::Failed)
            .await;
    let detected_ms = halted_at.elapsed().as_millis() as u64;
    assert!(
        detected_ms + TEST_HEARTBEAT_INTERVAL_MS >= TEST_HEARTBEAT_TIMEOUT_MS,
        "failed too early: {detected_ms} ms"
    );
    assert!(!view_of(&views, "n3").routable);
    assert!(
        view_of(&views, "n1").routable && view_of(&views, "n2").routable,
        "live nodes stay live: {views:?}"
    );
    let from_n2 = nodes[1].members().await.unwrap();
    assert_eq!(view_of(&from_n2, "n3").liveness, Liveness::Failed, "every node reaches the same verdict");
}

async fn leaving_node_drains_then_is_left(nodes: &[Member; 3]) {
    let drained = Arc::new(AtomicBool::new(false));
    let observer = nodes[0].clone();
    let flag = drained.clone();
    nodes[1]
        .leave(async move {
            let views = observer.members().await.unwrap();
            let n2 = view_of(&views, "n2");
            assert_eq!(
                (n2.row.status, n2.liveness, n2.routable),
                (NodeStatus::Draining, Liveness::Live, false)
            );
            flag.store(true, Ordering::SeqCst);
        })
        .await
        .expect("leave");
    assert!(drained.load(Ordering::SeqCst), "drain ran before Left was written");
    assert_eq!(nodes[1].status(), NodeStatus::Left);
    assert!(!nodes[1].accepts_activations());
    let views = nodes[0].members().await.unwrap();
    assert_eq!(view_of(&views, "n2").liveness, Liveness::Left);
    let live: Vec<&str> = views.iter().filter(|v| v.routable).map(|v| v.row.node_id.as_str()).collect();
    assert_eq!(live, ["n1"]);
}

async fn crashed_node_rejoins(url: &str, observer: &Member) {
    let again = join(url, "n3", 7013).await;
    let views = observer.members().await.unwrap();
    let n3 = view_of(&views, "n3");
    assert_eq!((n3.liveness, n3.routable, n3.row.advertise), (Liveness::Live, true, addr(7013)));
    again.halt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_fail_leave_and_rejoin_by_the_database_clock() {
    let Some(server) = PostgresServer::start_or_skip("membership") else { return };
    let url = server.create_database("membership").expect("create database");
    let nodes = three_nodes_join_and_see_each_other(&url).await;
    crashed_node_is_failed_after_the_timeout(&nodes).await;
    leaving_node_drains_then_is_left(&nodes).await;
    crashed_node_rejoins(&url, &nodes[0]).await;
    nodes[0].halt();
}
