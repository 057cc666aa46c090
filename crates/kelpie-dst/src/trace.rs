//! The event trace of a simulation and its 64-bit hash.
//!
//! Every scheduling decision, timer, message, fault, storage operation and
//! node crash is recorded as a [`TraceEvent`]. All events feed a running
//! FNV-1a hash, so two runs took the same path exactly when their hashes
//! match; only the most recent [`SIM_TRACE_TAIL_COUNT_MAX`] events are kept
//! in memory, for failure reports.

use std::collections::VecDeque;
use std::fmt;

use crate::fault::FaultKind;
use crate::hash::Fnv1a64;

/// Most trace events kept in memory (the hash covers all of them).
pub const SIM_TRACE_TAIL_COUNT_MAX: usize = 4_096;

/// Why a message did not reach its destination's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Partitioned,
    Lost,
    InboxFull,
    DestinationDown,
}

/// The storage operations that are traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOpKind {
    Get,
    Scan,
    WriteBatch,
    Flush,
}

/// What happened. Node and task numbers are indices, stable for one seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEventKind {
    TaskSpawned {
        task: u64,
        node: Option<u32>,
        name: &'static str,
    },
    SpawnRefused {
        node: u32,
        name: &'static str,
    },
    TaskPolled {
        task: u64,
    },
    TaskFinished {
        task: u64,
    },
    TaskKilled {
        task: u64,
    },
    TaskDeferred {
        task: u64,
        delay_ns: u64,
    },
    TimerFired {
        deadline_ns: u64,
    },
    MessageSent {
        message: u64,
        from: u32,
        to: u32,
        bytes: u32,
    },
    MessageDelivered {
        message: u64,
        to: u32,
    },
    MessageDropped {
        message: u64,
        reason: DropReason,
    },
    FaultInjected {
        fault: FaultKind,
        node: Option<u32>,
    },
    StorageOp {
        node: u32,
        op: StorageOpKind,
        key_hash: u64,
        ok: bool,
    },
    NodeCrashed {
        node: u32,
    },
    NodeRestarted {
        node: u32,
    },
    /// A label recorded by the code under test or the scenario.
    Note {
        label: String,
    },
}

impl TraceEventKind {
    fn feed(&self, hasher: &mut Fnv1a64) {
        match self {
            TraceEventKind::TaskSpawned { task, node, name } => {
                hasher.write_u8(0);
                hasher.write_u64(*task);
                hasher.write_u32(node.map_or(u32::MAX, |n| n));
                hasher.write_str(name);
            }
            TraceEventKind::SpawnRefused { node, name } => {
                hasher.write_u8(1);
                hasher.write_u32(*node);
                hasher.write_str(name);
            }
            TraceEventKind::TaskPolled { task } => feed_tag_u64(hasher, 2, *task),
            TraceEventKind::TaskFinished { task } => feed_tag_u64(hasher, 3, *task),
            TraceEventKind::TaskKilled { task } => feed_tag_u64(hasher, 4, *task),
            TraceEventKind::TaskDeferred { task, delay_ns } => {
                feed_tag_u64(hasher, 5, *task);
                hasher.write_u64(*delay_ns);
            }
            TraceEventKind::TimerFired { deadline_ns } => feed_tag_u64(hasher, 6, *deadline_ns),
            TraceEventKind::MessageSent { message, from, to, bytes } => {
                feed_tag_u64(hasher, 7, *message);
                hasher.write_u32(*from);
                hasher.write_u32(*to);
                hasher.write_u32(*bytes);
            }
            TraceEventKind::MessageDelivered { message, to } => {
                feed_tag_u64(hasher, 8, *message);
                hasher.write_u32(*to);
            }
            TraceEventKind::MessageDropped { message, reason } => {
                feed_tag_u64(hasher, 9, *message);
                hasher.write_u8(*reason as u8);
            }
            TraceEventKind::FaultInjected { fault, node } => {
                hasher.write_u8(10);
                hasher.write_u8(fault.ordinal());
                hasher.write_u32(node.map_or(u32::MAX, |n| n));
            }
            TraceEventKind::StorageOp { node, op, key_hash, ok } => {
                feed_tag_u64(hasher, 11, *key_hash);
                hasher.write_u32(*node);
                hasher.write_u8(*op as u8);
                hasher.write_u8(u8::from(*ok));
            }
            TraceEventKind::NodeCrashed { node } => feed_tag_u64(hasher, 12, u64::from(*node)),
            TraceEventKind::NodeRestarted { node } => feed_tag_u64(hasher, 13, u64::from(*node)),
            TraceEventKind::Note { label } => {
                hasher.write_u8(14);
                hasher.write_str(label);
            }
        }
    }
}

fn feed_tag_u64(hasher: &mut Fnv1a64, tag: u8, value: u64) {
    hasher.write_u8(tag);
    hasher.write_u64(value);
}

/// One recorded event: which step of the run, at what simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    pub step: u64,
    pub time_ns: u64,
    pub kind: TraceEventKind,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.time_ns / 1_000_000;
        let micros = (self.time_ns / 1_000) % 1_000;
        write!(f, "step {:>8} t={millis}.{micros:03}ms {:?}", self.step, self.kind)
    }
}

/// The running hash, the event count and the most recent events.
#[derive(Debug, Clone)]
pub struct Trace {
    hasher: Fnv1a64,
    events_count: u64,
    tail: VecDeque<TraceEvent>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hasher: Fnv1a64::new(),
            events_count: 0,
            tail: VecDeque::with_capacity(SIM_TRACE_TAIL_COUNT_MAX),
        }
    }
}

impl Trace {
    pub fn record(&mut self, step: u64, time_ns: u64, kind: TraceEventKind) {
        self.hasher.write_u64(step);
        self.hasher.write_u64(time_ns);
        kind.feed(&mut self.hasher);
        self.events_count += 1;
        if self.tail.len() == SIM_TRACE_TAIL_COUNT_MAX {
            self.tail.pop_front();
        }
        self.tail.push_back(TraceEvent { step, time_ns, kind });
        debug_assert!(self.tail.len() <= SIM_TRACE_TAIL_COUNT_MAX);
    }

    /// The hash of every event recorded so far, in order.
    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    pub fn events_count(&self) -> u64 {
        self.events_count
    }

    /// The last `count` events (fewer if fewer are kept), oldest first.
    pub fn tail(&self, count: usize) -> Vec<TraceEvent> {
        let skip = self.tail.len().saturating_sub(count);
        self.tail.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(trace: &mut Trace, order_swapped: bool) {
        let polled = TraceEventKind::TaskPolled { task: 1 };
        let fired = TraceEventKind::TimerFired { deadline_ns: 5 };
        if order_swapped {
            trace.record(1, 0, fired);
            trace.record(2, 0, polled);
        } else {
            trace.record(1, 0, polled);
            trace.record(2, 0, fired);
        }
    }

    #[test]
    fn hash_depends_on_content_and_order() {
        let (mut a, mut b, mut c) = (Trace::default(), Trace::default(), Trace::default());
        sample(&mut a, false);
        sample(&mut b, false);
        sample(&mut c, true);
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.events_count(), 2);
        assert_ne!(a.hash(), Trace::default().hash());
    }

    #[test]
    fn tail_is_bounded_but_count_and_hash_cover_everything() {
        let mut trace = Trace::default();
        let total = SIM_TRACE_TAIL_COUNT_MAX as u64 + 10;
        for task in 0..total {
            trace.record(task, 0, TraceEventKind::TaskPolled { task });
        }
        assert_eq!(trace.events_count(), total);
        let tail = trace.tail(3);
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[2].kind, TraceEventKind::TaskPolled { task: total - 1 });
        assert_eq!(trace.tail(usize::MAX).len(), SIM_TRACE_TAIL_COUNT_MAX);
        assert_eq!(
            tail[0].to_string(),
            format!("step {:>8} t=0.000ms TaskPolled {{ task: {} }}", total - 3, total - 3)
        );
    }
}
