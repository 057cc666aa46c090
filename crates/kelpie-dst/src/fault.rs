//! Typed faults, the rules that inject them, and the injector.
//!
//! Simulated components ask the [`FaultInjector`] at each *fault point*
//! ("may this storage write fail?", "may this message be lost?") whether a
//! fault of the matching [`FaultKind`] fires now, on this node. A
//! [`FaultRule`] says which [`Fault`] (with its parameters), with what
//! probability per fault point, in which window of simulated time, on which
//! node, and at most how many times. Decisions draw from the injector's own
//! seeded stream, so they replay with the seed.

use std::collections::BTreeMap;
use std::time::Duration;

use kelpie_core::{NodeId, RngSource};

use crate::rng::DeterministicRng;

/// Most fault rules one simulation may hold.
pub const SIM_FAULT_RULES_COUNT_MAX: usize = 256;

/// A fault and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A storage write or flush returns an I/O error; nothing is applied.
    StorageWriteFail,
    /// A storage read returns an I/O error.
    StorageReadFail,
    /// A flushed record's bytes are flipped on "disk"; reads detect it by checksum.
    StorageCorruption,
    /// A storage operation takes up to `extra_ms_max` longer.
    StorageLatency { extra_ms_max: u64 },
    /// A storage write is refused as if the disk were full.
    StorageDiskFull,
    /// Only a prefix of a write batch lands (a torn write); the caller gets an error.
    StoragePartialWrite,
    /// The node crashes as a write starts: nothing of it lands.
    CrashBeforeWrite,
    /// The node crashes after a flush made data durable but before the caller saw the ack.
    CrashAfterWrite,
    /// The node crashes in the middle of a flush: only some pending batches become durable.
    CrashDuringTransaction,
    /// The link between sender and receiver is cut both ways for `duration_ms`.
    NetworkPartition { duration_ms: u64 },
    /// A message takes up to `extra_ms_max` longer to arrive.
    NetworkDelay { extra_ms_max: u64 },
    /// A message is silently lost.
    NetworkPacketLoss,
    /// A message is held back until the next message on its link overtakes it
    /// (or `SIM_NETWORK_REORDER_HOLD_MS_MAX` passes).
    NetworkReorder,
    /// A message arrives twice.
    NetworkDuplicate,
    /// The node's wall clock is set off by up to `skew_ms_max`, either way.
    ClockSkew { skew_ms_max: u64 },
    /// The node's clock jumps by up to `jump_ms_max`, forwards or backwards
    /// (backwards jumps move only the wall clock; monotonic time never goes back).
    ClockJump { jump_ms_max: u64 },
    /// An allocation fails ([`crate::SimNode::try_allocate`]).
    OutOfMemory,
    /// A ready task of the node is not scheduled for up to `delay_ms_max`.
    CpuStarvation { delay_ms_max: u64 },
    /// A conditional write fails as if a concurrent writer had won the race.
    ConcurrentConflict,
    /// An LLM call hangs until the client's timeout.
    LlmTimeout,
    /// An LLM call fails with a provider error.
    LlmFailure,
    /// An LLM call is rejected with a rate limit, retriable after `retry_after_ms`.
    LlmRateLimited { retry_after_ms: u64 },
    /// A tool call hangs until the tool's timeout.
    ToolTimeout,
    /// A tool call fails.
    ToolFailure,
    /// The MCP server behind a tool crashes; calls fail until it is restarted.
    McpServerCrash,
    /// A sandbox fails to boot.
    SandboxBootFailure,
    /// Code execution in a sandbox fails.
    SandboxExecFailure,
    /// The sandbox dies during an execution: the command's output is lost
    /// and the sandbox must boot again.
    SandboxCrash,
    /// An execution hangs until its timeout.
    SandboxExecTimeout,
    /// Taking a sandbox snapshot fails.
    SnapshotCreateFailure,
    /// Restoring a sandbox snapshot fails.
    SnapshotRestoreFailure,
    /// A (re)starting MCP server takes longer than the tool's timeout to
    /// answer; it stays down.
    McpServerSlowStart,
    /// A streamed LLM answer stops part-way: the client got some of it and
    /// the call fails.
    LlmStreamCut,
}

macro_rules! fault_kinds {
    ($($kind:ident => $name:literal, $category:literal;)+) => {
        /// The identity of a [`Fault`], without its parameters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum FaultKind { $($kind),+ }

        impl FaultKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [FaultKind] = &[$(FaultKind::$kind),+];

            /// A stable snake_case name, used in reports and docs.
            pub fn name(self) -> &'static str {
                match self { $(FaultKind::$kind => $name),+ }
            }

            /// The family: storage, crash, network, time, resource, concurrency or agent.
            pub fn category(self) -> &'static str {
                match self { $(FaultKind::$kind => $category),+ }
            }
        }
    };
}

fault_kinds! {
    StorageWriteFail => "storage_write_fail", "storage";
    StorageReadFail => "storage_read_fail", "storage";
    StorageCorruption => "storage_corruption", "storage";
    StorageLatency => "storage_latency", "storage";
    StorageDiskFull => "storage_disk_full", "storage";
    StoragePartialWrite => "storage_partial_write", "storage";
    CrashBeforeWrite => "crash_before_write", "crash";
    CrashAfterWrite => "crash_after_write", "crash";
    CrashDuringTransaction => "crash_during_transaction", "crash";
    NetworkPartition => "network_partition", "network";
    NetworkDelay => "network_delay", "network";
    NetworkPacketLoss => "network_packet_loss", "network";
    NetworkReorder => "network_reorder", "network";
    NetworkDuplicate => "network_duplicate", "network";
    ClockSkew => "clock_skew", "time";
    ClockJump => "clock_jump", "time";
    OutOfMemory => "out_of_memory", "resource";
    CpuStarvation => "cpu_starvation", "resource";
    ConcurrentConflict => "concurrent_conflict", "concurrency";
    LlmTimeout => "llm_timeout", "agent";
    LlmFailure => "llm_failure", "agent";
    LlmRateLimited => "llm_rate_limited", "agent";
    ToolTimeout => "tool_timeout", "agent";
    ToolFailure => "tool_failure", "agent";
    McpServerCrash => "mcp_server_crash", "agent";
    SandboxBootFailure => "sandbox_boot_failure", "agent";
    SandboxExecFailure => "sandbox_exec_failure", "agent";
    SandboxCrash => "sandbox_crash", "agent";
    SandboxExecTimeout => "sandbox_exec_timeout", "agent";
    SnapshotCreateFailure => "snapshot_create_failure", "agent";
    SnapshotRestoreFailure => "snapshot_restore_failure", "agent";
    McpServerSlowStart => "mcp_server_slow_start", "agent";
    LlmStreamCut => "llm_stream_cut", "agent";
}

// The injector keeps a bit per kind in a u64.
const _: () = assert!(FaultKind::ALL.len() <= 64);

impl FaultKind {
    /// Position in [`FaultKind::ALL`]; stable, used in the trace hash.
    pub fn ordinal(self) -> u8 {
        self as u8
    }

    fn bit(self) -> u64 {
        1u64 << self.ordinal()
    }
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::StorageWriteFail => FaultKind::StorageWriteFail,
            Fault::StorageReadFail => FaultKind::StorageReadFail,
            Fault::StorageCorruption => FaultKind::StorageCorruption,
            Fault::StorageLatency { .. } => FaultKind::StorageLatency,
            Fault::StorageDiskFull => FaultKind::StorageDiskFull,
            Fault::StoragePartialWrite => FaultKind::StoragePartialWrite,
            Fault::CrashBeforeWrite => FaultKind::CrashBeforeWrite,
            Fault::CrashAfterWrite => FaultKind::CrashAfterWrite,
            Fault::CrashDuringTransaction => FaultKind::CrashDuringTransaction,
            Fault::NetworkPartition { .. } => FaultKind::NetworkPartition,
            Fault::NetworkDelay { .. } => FaultKind::NetworkDelay,
            Fault::NetworkPacketLoss => FaultKind::NetworkPacketLoss,
            Fault::NetworkReorder => FaultKind::NetworkReorder,
            Fault::NetworkDuplicate => FaultKind::NetworkDuplicate,
            Fault::ClockSkew { .. } => FaultKind::ClockSkew,
            Fault::ClockJump { .. } => FaultKind::ClockJump,
            Fault::OutOfMemory => FaultKind::OutOfMemory,
            Fault::CpuStarvation { .. } => FaultKind::CpuStarvation,
            Fault::ConcurrentConflict => FaultKind::ConcurrentConflict,
            Fault::LlmTimeout => FaultKind::LlmTimeout,
            Fault::LlmFailure => FaultKind::LlmFailure,
            Fault::LlmRateLimited { .. } => FaultKind::LlmRateLimited,
            Fault::ToolTimeout => FaultKind::ToolTimeout,
            Fault::ToolFailure => FaultKind::ToolFailure,
            Fault::McpServerCrash => FaultKind::McpServerCrash,
            Fault::SandboxBootFailure => FaultKind::SandboxBootFailure,
            Fault::SandboxExecFailure => FaultKind::SandboxExecFailure,
            Fault::SandboxCrash => FaultKind::SandboxCrash,
            Fault::SandboxExecTimeout => FaultKind::SandboxExecTimeout,
            Fault::SnapshotCreateFailure => FaultKind::SnapshotCreateFailure,
            Fault::SnapshotRestoreFailure => FaultKind::SnapshotRestoreFailure,
            Fault::McpServerSlowStart => FaultKind::McpServerSlowStart,
            Fault::LlmStreamCut => FaultKind::LlmStreamCut,
        }
    }
}

/// When, where, how often and how many times a fault fires.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub fault: Fault,
    /// Chance of firing at each matching fault point, in `[0, 1]`.
    pub probability: f64,
    /// Simulated time from which the rule is active (inclusive).
    pub start_ms: u64,
    /// Simulated time at which the rule stops (exclusive); `None` = forever.
    pub end_ms: Option<u64>,
    /// Only fault points on this node; `None` = every node.
    pub node: Option<NodeId>,
    /// Stop after firing this many times; `None` = no cap.
    pub max_count: Option<u64>,
}

impl FaultRule {
    /// `fault` with `probability` per fault point, everywhere, all the time.
    pub fn new(fault: Fault, probability: f64) -> Self {
        assert!((0.0..=1.0).contains(&probability), "probability {probability} outside [0, 1]");
        FaultRule { fault, probability, start_ms: 0, end_ms: None, node: None, max_count: None }
    }

    /// Active only in the simulated-time window `[start, end)`.
    pub fn between(mut self, start: Duration, end: Duration) -> Self {
        assert!(start < end, "empty fault window {start:?}..{end:?}");
        self.start_ms = duration_ms(start);
        self.end_ms = Some(duration_ms(end));
        self
    }

    /// Only on `node`.
    pub fn on_node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// At most `count` firings.
    pub fn at_most(mut self, count: u64) -> Self {
        assert!(count > 0, "a rule that may fire 0 times is a mistake");
        self.max_count = Some(count);
        self
    }

    fn applies(&self, node: Option<&NodeId>, now_ms: u64, fired: u64) -> bool {
        let in_window = now_ms >= self.start_ms && self.end_ms.is_none_or(|end| now_ms < end);
        let on_node = match (&self.node, node) {
            (None, _) => true,
            (Some(wanted), Some(actual)) => wanted == actual,
            (Some(_), None) => false,
        };
        let under_cap = self.max_count.is_none_or(|cap| fired < cap);
        in_window && on_node && under_cap
    }
}

pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The rules of one simulation and how often each kind has fired.
#[derive(Debug)]
pub struct FaultInjector {
    rules: Vec<(FaultRule, u64)>,
    kinds_present: u64,
    rng: DeterministicRng,
    fired: BTreeMap<FaultKind, u64>,
}

impl FaultInjector {
    pub fn new(rng: DeterministicRng) -> Self {
        FaultInjector { rules: Vec::new(), kinds_present: 0, rng, fired: BTreeMap::new() }
    }

    pub fn add(&mut self, rule: FaultRule) {
        assert!(
            self.rules.len() < SIM_FAULT_RULES_COUNT_MAX,
            "more than {SIM_FAULT_RULES_COUNT_MAX} fault rules"
        );
        self.kinds_present |= rule.fault.kind().bit();
        self.rules.push((rule, 0));
    }

    /// Removes every rule of `kind` (e.g. to let a scenario recover).
    pub fn clear(&mut self, kind: FaultKind) {
        self.rules.retain(|(rule, _)| rule.fault.kind() != kind);
        self.kinds_present &= !kind.bit();
        debug_assert!(self.rules.iter().all(|(rule, _)| rule.fault.kind() != kind));
    }

    /// Whether a fault of `kind` fires at this fault point. The first rule
    /// that applies and wins its draw decides; no draw is made when no rule
    /// of the kind exists, so unrelated rules never shift the stream.
    pub fn check(&mut self, kind: FaultKind, node: Option<&NodeId>, now_ms: u64) -> Option<Fault> {
        if self.kinds_present & kind.bit() == 0 {
            return None;
        }
        for (rule, fired) in &mut self.rules {
            if rule.fault.kind() != kind || !rule.applies(node, now_ms, *fired) {
                continue;
            }
            if self.rng.gen_bool(rule.probability) {
                *fired += 1;
                *self.fired.entry(kind).or_insert(0) += 1;
                return Some(rule.fault);
            }
        }
        None
    }

    /// How many times faults of `kind` have fired.
    pub fn fired_count(&self, kind: FaultKind) -> u64 {
        self.fired.get(&kind).copied().unwrap_or(0)
    }

    /// Firing counts of every kind that fired at least once.
    pub fn fired(&self) -> &BTreeMap<FaultKind, u64> {
        &self.fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn kinds_are_complete_named_and_categorised() {
        assert_eq!(FaultKind::ALL.len(), 33);
        assert_eq!(Fault::NetworkDelay { extra_ms_max: 3 }.kind(), FaultKind::NetworkDelay);
        assert_eq!(FaultKind::CrashAfterWrite.name(), "crash_after_write");
        assert_eq!(FaultKind::CpuStarvation.category(), "resource");
        for (position, kind) in FaultKind::ALL.iter().enumerate() {
            assert_eq!(kind.ordinal() as usize, position);
        }
        let categories: std::collections::BTreeSet<_> = FaultKind::ALL.iter().map(|k| k.category()).collect();
        assert_eq!(categories.len(), 7);
    }

    #[test]
    fn rule_respects_window_node_and_cap() {
        let mut injector = FaultInjector::new(DeterministicRng::new(1));
        let rule = FaultRule::new(Fault::StorageReadFail, 1.0)
            .between(Duration::from_millis(100), Duration::from_millis(200))
            .on_node(node("n1"))
            .at_most(2);
        injector.add(rule);
        let n1 = node("n1");
        let n2 = node("n2");
        assert_eq!(injector.check(FaultKind::StorageReadFail, Some(&n1), 99), None);
        assert_eq!(injector.check(FaultKind::StorageReadFail, Some(&n2), 150), None);
        assert_eq!(injector.check(FaultKind::StorageWriteFail, Some(&n1), 150), None);
        assert_eq!(injector.check(FaultKind::StorageReadFail, Some(&n1), 150), Some(Fault::StorageReadFail));
        assert_eq!(injector.check(FaultKind::StorageReadFail, Some(&n1), 199), Some(Fault::StorageReadFail));
        assert_eq!(injector.check(FaultKind::StorageReadFail, Some(&n1), 150), None, "cap of 2 reached");
        assert_eq!(injector.fired_count(FaultKind::StorageReadFail), 2);
    }

    #[test]
    fn probability_is_honoured_and_clear_removes_rules() {
        let mut injector = FaultInjector::new(DeterministicRng::new(2));
        injector.add(FaultRule::new(Fault::NetworkPacketLoss, 0.3));
        let hits =
            (0..10_000).filter(|_| injector.check(FaultKind::NetworkPacketLoss, None, 0).is_some()).count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
        injector.clear(FaultKind::NetworkPacketLoss);
        assert_eq!(injector.check(FaultKind::NetworkPacketLoss, None, 0), None);
        assert_eq!(injector.fired_count(FaultKind::NetworkPacketLoss), hits as u64);
    }
}
