//! Membership decisions, sans-IO: what a node writes to the node table and
//! when, and how a row read back is judged. No clock, no socket, no SQL: the
//! shell ([`crate::node_table`], [`crate::member`]) feeds times and results
//! in and carries the returned actions out; tests drive it by hand.
//!
//! Two judgements, two clocks, one safe ordering:
//! - Others judge a node by its row's heartbeat age *on the database's
//!   clock*: failed once `age >= heartbeat_timeout_ms` ([`liveness`]).
//! - A node judges itself by its own monotonic clock, from the moment it
//!   *sent* its last acknowledged heartbeat. The database stamped that write
//!   no earlier than it was sent, so the node calls itself isolated no later
//!   than any peer declares it failed, and stops serving first.
//!
//! Status moves only forward: Joining → Active → Draining → Left.

use std::net::SocketAddr;

use kelpie_core::limits::{HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS};
use kelpie_core::NodeId;

/// Heartbeats a timeout must span at least, so one late write is not a failure.
pub const HEARTBEATS_PER_TIMEOUT_COUNT_MIN: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeStatus {
    /// Registered, not yet serving.
    Joining,
    /// Serving and accepting new activations.
    Active,
    /// Finishing in-flight work, accepting no new activations.
    Draining,
    /// Gone by its own choice; its row stays for operators to see.
    Left,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Joining => "joining",
            NodeStatus::Active => "active",
            NodeStatus::Draining => "draining",
            NodeStatus::Left => "left",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [NodeStatus::Joining, NodeStatus::Active, NodeStatus::Draining, NodeStatus::Left]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// Heartbeat timing. The defaults are the limits of `kelpie_core`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig::new(HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS)
    }
}

impl MembershipConfig {
    pub fn new(heartbeat_interval_ms: u64, heartbeat_timeout_ms: u64) -> Self {
        assert!(heartbeat_interval_ms > 0, "heartbeat interval must be positive");
        assert!(
            heartbeat_timeout_ms >= heartbeat_interval_ms * HEARTBEATS_PER_TIMEOUT_COUNT_MIN,
            "timeout {heartbeat_timeout_ms} ms spans fewer than {HEARTBEATS_PER_TIMEOUT_COUNT_MIN} heartbeats of {heartbeat_interval_ms} ms"
        );
        MembershipConfig { heartbeat_interval_ms, heartbeat_timeout_ms }
    }
}

/// One node-table row as read, its heartbeat age measured by the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: NodeId,
    pub advertise: SocketAddr,
    pub status: NodeStatus,
    pub heartbeat_age_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Stopped heartbeating without leaving: crashed, paused or cut off.
    Failed,
    Left,
}

/// How every node judges a row: by status and the database-clock age.
pub fn liveness(row: &NodeRow, config: &MembershipConfig) -> Liveness {
    match row.status {
        NodeStatus::Left => Liveness::Left,
        _ if row.heartbeat_age_ms >= config.heartbeat_timeout_ms => Liveness::Failed,
        _ => Liveness::Live,
    }
}

/// Whether requests may be routed to the node of `row`.
pub fn is_routable(row: &NodeRow, config: &MembershipConfig) -> bool {
    row.status == NodeStatus::Active && liveness(row, config) == Liveness::Live
}

/// What happened, as the shell reports it. Times are the local monotonic
/// clock in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberInput {
    Tick {
        now_ms: u64,
    },
    /// The heartbeat write sent at `sent_ms` committed.
    HeartbeatAcked {
        sent_ms: u64,
    },
    LeaveRequested,
    /// In-flight work finished and placements were released.
    DrainCompleted,
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAction {
    /// Upsert this node's row with `status`, stamped by the database clock.
    WriteHeartbeat { status: NodeStatus },
    /// No heartbeat committed for a whole timeout: peers may already have
    /// declared this node failed; it must not start new activations.
    Isolated,
    /// A heartbeat committed again after isolation.
    Reconnected,
    /// The final `Left` row is being written; stop the heartbeat loop.
    Stop,
}

/// The local node's membership state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMember {
    config: MembershipConfig,
    status: NodeStatus,
    /// Send time of the newest acknowledged heartbeat (or of the start).
    last_acked_sent_ms: u64,
    next_heartbeat_ms: u64,
    isolated: bool,
}

impl LocalMember {
    /// A joining node at `now_ms`; its first heartbeat is due at once.
    pub fn new(config: MembershipConfig, now_ms: u64) -> Self {
        LocalMember {
            config,
            status: NodeStatus::Joining,
            last_acked_sent_ms: now_ms,
            next_heartbeat_ms: now_ms,
            isolated: false,
        }
    }

    pub fn status(&self) -> NodeStatus {
        self.status
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated
    }

    /// Whether this node may start new activations now.
    pub fn accepts_activations(&self) -> bool {
        self.status == NodeStatus::Active && !self.isolated
    }

    pub fn step(&mut self, input: MemberInput) -> Vec<MemberAction> {
        let status_before = self.status;
        let actions = match input {
            MemberInput::Tick { now_ms } => self.on_tick(now_ms),
            MemberInput::HeartbeatAcked { sent_ms } => self.on_ack(sent_ms),
            MemberInput::LeaveRequested => self.on_leave(),
            MemberInput::DrainCompleted => self.on_drained(),
        };
        assert!(self.status >= status_before, "status went back: {status_before:?} -> {:?}", self.status);
        actions
    }

    fn on_tick(&mut self, now_ms: u64) -> Vec<MemberAction> {
        let mut actions = Vec::new();
        if self.status == NodeStatus::Left {
            return actions;
        }
        if now_ms >= self.next_heartbeat_ms {
            actions.push(MemberAction::WriteHeartbeat { status: self.status });
            self.next_heartbeat_ms = now_ms + self.config.heartbeat_interval_ms;
        }
        let silent_ms = now_ms.saturating_sub(self.last_acked_sent_ms);
        if !self.isolated && silent_ms >= self.config.heartbeat_timeout_ms {
            self.isolated = true;
            actions.push(MemberAction::Isolated);
        }
        actions
    }

    fn on_ack(&mut self, sent_ms: u64) -> Vec<MemberAction> {
        let mut actions = Vec::new();
        self.last_acked_sent_ms = self.last_acked_sent_ms.max(sent_ms);
        if self.isolated {
            self.isolated = false;
            actions.push(MemberAction::Reconnected);
        }
        if self.status == NodeStatus::Joining {
            // Registered: announce Active right away instead of a beat later.
            self.status = NodeStatus::Active;
            actions.push(MemberAction::WriteHeartbeat { status: NodeStatus::Active });
        }
        actions
    }

    fn on_leave(&mut self) -> Vec<MemberAction> {
        if self.status >= NodeStatus::Draining {
            return Vec::new();
        }
        self.status = NodeStatus::Draining;
        vec![MemberAction::WriteHeartbeat { status: NodeStatus::Draining }]
    }

    fn on_drained(&mut self) -> Vec<MemberAction> {
        assert!(self.status >= NodeStatus::Draining, "drain completed before leave was requested");
        if self.status == NodeStatus::Left {
            return Vec::new();
        }
        self.status = NodeStatus::Left;
        vec![MemberAction::WriteHeartbeat { status: NodeStatus::Left }, MemberAction::Stop]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: MembershipConfig =
        MembershipConfig { heartbeat_interval_ms: 100, heartbeat_timeout_ms: 500 };

    fn row(status: NodeStatus, heartbeat_age_ms: u64) -> NodeRow {
        NodeRow {
            node_id: NodeId::new("n1").unwrap(),
            advertise: "127.0.0.1:7000".parse().unwrap(),
            status,
            heartbeat_age_ms,
        }
    }

    fn beat(status: NodeStatus) -> MemberAction {
        MemberAction::WriteHeartbeat { status }
    }

    #[test]
    fn status_text_round_trips_and_rejects_unknown() {
        for status in [NodeStatus::Joining, NodeStatus::Active, NodeStatus::Draining, NodeStatus::Left] {
            assert_eq!(NodeStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(NodeStatus::parse("failed"), None);
    }

    #[test]
    fn a_row_fails_exactly_at_the_timeout_and_left_is_never_failed() {
        assert_eq!(liveness(&row(NodeStatus::Active, 499), &CONFIG), Liveness::Live);
        assert_eq!(liveness(&row(NodeStatus::Active, 500), &CONFIG), Liveness::Failed);
        assert_eq!(liveness(&row(NodeStatus::Left, 10_000), &CONFIG), Liveness::Left);
        assert!(is_routable(&row(NodeStatus::Active, 0), &CONFIG));
        assert!(!is_routable(&row(NodeStatus::Draining, 0), &CONFIG), "draining takes no new work");
        assert!(!is_routable(&row(NodeStatus::Joining, 0), &CONFIG));
    }

    #[test]
    fn join_becomes_active_on_first_ack_and_beats_every_interval() {
        let mut member = LocalMember::new(CONFIG, 1_000);
        assert_eq!(member.step(MemberInput::Tick { now_ms: 1_000 }), vec![beat(NodeStatus::Joining)]);
        assert!(!member.accepts_activations());
        assert_eq!(
            member.step(MemberInput::HeartbeatAcked { sent_ms: 1_000 }),
            vec![beat(NodeStatus::Active)]
        );
        assert!(member.accepts_activations());
        assert_eq!(member.step(MemberInput::Tick { now_ms: 1_099 }), vec![]);
        assert_eq!(member.step(MemberInput::Tick { now_ms: 1_100 }), vec![beat(NodeStatus::Active)]);
    }

    #[test]
    fn silence_for_a_timeout_isolates_and_an_ack_reconnects() {
        let mut member = LocalMember::new(CONFIG, 0);
        member.step(MemberInput::HeartbeatAcked { sent_ms: 0 });
        let actions = member.step(MemberInput::Tick { now_ms: 499 });
        assert!(!actions.contains(&MemberAction::Isolated));
        let actions = member.step(MemberInput::Tick { now_ms: 500 });
        assert!(actions.contains(&MemberAction::Isolated), "{actions:?}");
        assert!(!member.accepts_activations());
        assert!(
            !member.step(MemberInput::Tick { now_ms: 600 }).contains(&MemberAction::Isolated),
            "reported once"
        );
        assert_eq!(
            member.step(MemberInput::HeartbeatAcked { sent_ms: 600 }),
            vec![MemberAction::Reconnected]
        );
        assert!(member.accepts_activations());
    }

    #[test]
    fn is_isolated_is_true_exactly_from_the_timeout_until_the_next_ack() {
        let mut member = LocalMember::new(CONFIG, 0);
        member.step(MemberInput::HeartbeatAcked { sent_ms: 0 });
        member.step(MemberInput::Tick { now_ms: 499 });
        assert!(!member.is_isolated(), "silent for less than a timeout");
        member.step(MemberInput::Tick { now_ms: 500 });
        assert!(member.is_isolated(), "silent for a whole timeout");
        member.step(MemberInput::HeartbeatAcked { sent_ms: 550 });
        assert!(!member.is_isolated(), "an acknowledged heartbeat reconnects");
    }

    #[test]
    fn an_old_ack_arriving_late_does_not_extend_the_self_judgement() {
        let mut member = LocalMember::new(CONFIG, 0);
        member.step(MemberInput::HeartbeatAcked { sent_ms: 300 });
        member.step(MemberInput::HeartbeatAcked { sent_ms: 100 });
        assert!(member.step(MemberInput::Tick { now_ms: 800 }).contains(&MemberAction::Isolated));
    }

    #[test]
    fn leave_drains_then_writes_left_and_stops() {
        let mut member = LocalMember::new(CONFIG, 0);
        member.step(MemberInput::HeartbeatAcked { sent_ms: 0 });
        assert_eq!(member.step(MemberInput::LeaveRequested), vec![beat(NodeStatus::Draining)]);
        assert_eq!(member.step(MemberInput::LeaveRequested), vec![], "idempotent");
        assert!(!member.accepts_activations());
        assert_eq!(
            member.step(MemberInput::DrainCompleted),
            vec![beat(NodeStatus::Left), MemberAction::Stop]
        );
        assert_eq!(member.step(MemberInput::Tick { now_ms: 10_000 }), vec![], "a left node is silent");
        assert_eq!(member.status(), NodeStatus::Left);
    }

    #[test]
    #[should_panic(expected = "fewer than")]
    fn a_timeout_shorter_than_three_heartbeats_is_rejected() {
        MembershipConfig::new(100, 250);
    }
}
