//! The process's metrics: counters and histograms any crate records into,
//! rendered by the server at `GET /metrics` in Prometheus's text format.
//!
//! Every family is declared once in [`CATALOG`] with its name, kind, help
//! text and label names, so the exposition is complete (a family with no
//! samples yet still has its `# HELP` and `# TYPE` lines) and the label
//! cardinality is bounded by what the recording code passes: callers pass
//! label *values* from small closed sets (a route template, a status code,
//! a provider family), never raw input. Recording is deterministic (no clock,
//! no randomness): durations are measured by the caller, outside protocol
//! code, and passed in.
//!
//! The registry is process-wide: several servers in one process (tests)
//! share it. Values only grow; a scrape reads a consistent copy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Most distinct label sets one family holds; past it, new label sets are
/// folded into one series whose every label is `"other"` (a bug in a
/// caller's labels must not grow memory without bound).
pub const SERIES_PER_FAMILY_COUNT_MAX: usize = 1_024;

/// What a family measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A total that only grows.
    Counter,
    /// A distribution in cumulative buckets (upper bounds, in the unit the
    /// name ends with).
    Histogram(&'static [f64]),
}

/// One metric family.
#[derive(Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Latency buckets in seconds: 5 ms to 2 minutes (LLM calls are slow).
const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Group-commit batch sizes (writes per durable flush).
const BATCH_BUCKETS_COUNT: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub const HTTP_REQUESTS: Family = Family {
    name: "kelpie_http_requests_total",
    help: "HTTP requests answered, by method, route template and status code.",
    kind: Kind::Counter,
    labels: &["method", "route", "status"],
};
pub const HTTP_REQUEST_DURATION: Family = Family {
    name: "kelpie_http_request_duration_seconds",
    help: "Time from a request's arrival to its response head (a stream's body may run longer).",
    kind: Kind::Histogram(LATENCY_BUCKETS_SECONDS),
    labels: &["method", "route"],
};
pub const LLM_CALLS: Family = Family {
    name: "kelpie_llm_calls_total",
    help: "Chat calls to an LLM provider (retries inside one call count once), by provider family.",
    kind: Kind::Counter,
    labels: &["provider"],
};
pub const LLM_CALL_ERRORS: Family = Family {
    name: "kelpie_llm_call_errors_total",
    help: "Chat calls to an LLM provider that failed after their retries, by provider family.",
    kind: Kind::Counter,
    labels: &["provider"],
};
pub const LLM_CALL_DURATION: Family = Family {
    name: "kelpie_llm_call_duration_seconds",
    help: "Duration of chat calls to an LLM provider, retries included, by provider family.",
    kind: Kind::Histogram(LATENCY_BUCKETS_SECONDS),
    labels: &["provider"],
};
pub const LLM_PROMPT_TOKENS: Family = Family {
    name: "kelpie_llm_prompt_tokens_total",
    help: "Prompt tokens the provider reported for successful chat calls.",
    kind: Kind::Counter,
    labels: &["provider"],
};
pub const LLM_COMPLETION_TOKENS: Family = Family {
    name: "kelpie_llm_completion_tokens_total",
    help: "Completion tokens the provider reported for successful chat calls.",
    kind: Kind::Counter,
    labels: &["provider"],
};
pub const STORAGE_WRITES: Family = Family {
    name: "kelpie_storage_writes_total",
    help: "Write operations (commits, placement changes) made durable, by storage backend.",
    kind: Kind::Counter,
    labels: &["backend"],
};
pub const STORAGE_FSYNCS: Family = Family {
    name: "kelpie_storage_fsyncs_total",
    help: "Durable flushes: redb commits (one carries a whole group-commit batch) and PostgreSQL transactions that wrote.",
    kind: Kind::Counter,
    labels: &["backend"],
};
pub const STORAGE_BATCH_SIZE: Family = Family {
    name: "kelpie_storage_group_commit_batch_size",
    help: "Writes per durable flush (group commit).",
    kind: Kind::Histogram(BATCH_BUCKETS_COUNT),
    labels: &["backend"],
};
pub const SANDBOX_TOOL_RUNS: Family = Family {
    name: "kelpie_sandbox_tool_runs_total",
    help: "Custom tool calls run in the sandbox, by outcome: returned, raised (the tool's own error), failed (could not run or was stopped).",
    kind: Kind::Counter,
    labels: &["outcome"],
};

pub const ACTOR_ACTIVATIONS: Family = Family {
    name: "kelpie_actor_activations_total",
    help: "Actor activations started on this node, by outcome: activated (claimed and loaded) or failed.",
    kind: Kind::Counter,
    labels: &["outcome"],
};
pub const ACTOR_DEACTIVATIONS: Family = Family {
    name: "kelpie_actor_deactivations_total",
    help: "Actor activations ended on this node, by reason: idle, requested (eviction, shutdown, a move) or lease_lost.",
    kind: Kind::Counter,
    labels: &["reason"],
};
pub const LEASE_OPERATIONS: Family = Family {
    name: "kelpie_lease_operations_total",
    help: "Lease operations an activation asked of the placement directory, by operation (claim, renew, release) and outcome.",
    kind: Kind::Counter,
    labels: &["operation", "outcome"],
};
pub const MEMBERSHIP_EVENTS: Family = Family {
    name: "kelpie_cluster_membership_events_total",
    help: "This node's membership events: heartbeat_committed, heartbeat_failed, isolated, reconnected, stopped.",
    kind: Kind::Counter,
    labels: &["event"],
};
pub const MCP_REQUESTS: Family = Family {
    name: "kelpie_mcp_requests_total",
    help: "Requests to MCP servers, by operation (list_tools, call_tool) and outcome (ok, tool_error, failed, timeout).",
    kind: Kind::Counter,
    labels: &["operation", "outcome"],
};

/// Every family recorded through this module, in exposition order.
pub const CATALOG: &[&Family] = &[
    &HTTP_REQUESTS,
    &HTTP_REQUEST_DURATION,
    &LLM_CALLS,
    &LLM_CALL_ERRORS,
    &LLM_CALL_DURATION,
    &LLM_PROMPT_TOKENS,
    &LLM_COMPLETION_TOKENS,
    &STORAGE_WRITES,
    &STORAGE_FSYNCS,
    &STORAGE_BATCH_SIZE,
    &SANDBOX_TOOL_RUNS,
    &ACTOR_ACTIVATIONS,
    &ACTOR_DEACTIVATIONS,
    &LEASE_OPERATIONS,
    &MEMBERSHIP_EVENTS,
    &MCP_REQUESTS,
];

#[derive(Debug, Clone, PartialEq)]
enum Series {
    Counter(u64),
    /// Per-bucket (not cumulative) counts, one more than the bounds (+Inf).
    Histogram {
        buckets: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

type Registry = BTreeMap<&'static str, BTreeMap<Vec<String>, Series>>;

static REGISTRY: Mutex<Registry> = Mutex::new(BTreeMap::new());

fn with_series(family: &'static Family, labels: &[&str], update: impl FnOnce(&mut Series)) {
    assert_eq!(labels.len(), family.labels.len(), "{}: label values match label names", family.name);
    assert!(CATALOG.iter().any(|known| known.name == family.name), "{} is in the catalog", family.name);
    let mut registry = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let series = registry.entry(family.name).or_default();
    let mut key: Vec<String> = labels.iter().map(|value| value.to_string()).collect();
    if !series.contains_key(&key) && series.len() >= SERIES_PER_FAMILY_COUNT_MAX {
        key = vec!["other".to_string(); labels.len()];
    }
    let entry = series.entry(key).or_insert_with(|| match family.kind {
        Kind::Counter => Series::Counter(0),
        Kind::Histogram(bounds) => {
            Series::Histogram { buckets: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
        }
    });
    update(entry);
}

/// Adds `by` to counter `family` for `labels` (values in the order of the
/// family's label names).
pub fn increment(family: &'static Family, labels: &[&str], by: u64) {
    assert_eq!(family.kind, Kind::Counter, "{} is a counter", family.name);
    with_series(family, labels, |series| {
        if let Series::Counter(total) = series {
            *total = total.saturating_add(by);
        }
    });
}

/// The total of counter `family` for `labels` so far (0 if never
/// incremented): for tests that check a workload's effect.
pub fn counter_total(family: &'static Family, labels: &[&str]) -> u64 {
    assert_eq!(family.kind, Kind::Counter, "{} is a counter", family.name);
    let key: Vec<String> = labels.iter().map(|label| label.to_string()).collect();
    let registry = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match registry.get(family.name).and_then(|series| series.get(&key)) {
        Some(Series::Counter(total)) => *total,
        _ => 0,
    }
}

/// Records one `value` in histogram `family` for `labels`.
pub fn observe(family: &'static Family, labels: &[&str], value: f64) {
    let Kind::Histogram(bounds) = family.kind else { panic!("{} is a histogram", family.name) };
    let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
    let bucket = bounds.iter().position(|bound| value <= *bound).unwrap_or(bounds.len());
    with_series(family, labels, |series| {
        if let Series::Histogram { buckets, sum, count } = series {
            buckets[bucket] += 1;
            *sum += value;
            *count += 1;
        }
    });
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> =
        names.iter().zip(values).map(|(name, value)| format!("{name}=\"{}\"", escape(value))).collect();
    if let Some((name, value)) = extra {
        pairs.push(format!("{name}=\"{value}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// Appends the `# HELP` and `# TYPE` lines of a family.
pub fn render_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends one unlabelled gauge (values the server reads at scrape time).
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    render_header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Appends every family of [`CATALOG`] in the text exposition format.
pub fn render(out: &mut String) {
    let registry = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    for family in CATALOG {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Histogram(_) => "histogram",
        };
        render_header(out, family.name, kind, family.help);
        let Some(series) = registry.get(family.name) else { continue };
        for (values, series) in series {
            render_series(out, family, values, series);
        }
    }
}

fn render_series(out: &mut String, family: &Family, values: &[String], series: &Series) {
    let name = family.name;
    match (series, family.kind) {
        (Series::Counter(total), _) => {
            let _ = writeln!(out, "{name}{} {total}", label_text(family.labels, values, None));
        }
        (Series::Histogram { buckets, sum, count }, Kind::Histogram(bounds)) => {
            assert_eq!(buckets.len(), bounds.len() + 1);
            let mut cumulative = 0;
            for (index, in_bucket) in buckets.iter().enumerate() {
                cumulative += in_bucket;
                let bound = bounds.get(index).map_or("+Inf".to_string(), |bound| bound.to_string());
                let labels = label_text(family.labels, values, Some(("le", &bound)));
                let _ = writeln!(out, "{name}_bucket{labels} {cumulative}");
            }
            assert_eq!(cumulative, *count, "{name}: buckets add up to the count");
            let labels = label_text(family.labels, values, None);
            let _ = writeln!(out, "{name}_sum{labels} {sum}");
            let _ = writeln!(out, "{name}_count{labels} {count}");
        }
        (Series::Histogram { .. }, Kind::Counter) => unreachable!("{name}: a series has its family's kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        increment(&SANDBOX_TOOL_RUNS, &["returned"], 2);
        increment(&SANDBOX_TOOL_RUNS, &["returned"], 1);
        observe(&STORAGE_BATCH_SIZE, &["unit-test"], 3.0);
        observe(&STORAGE_BATCH_SIZE, &["unit-test"], 1000.0);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("# TYPE kelpie_sandbox_tool_runs_total counter\n"), "{out}");
        assert!(out.contains("kelpie_sandbox_tool_runs_total{outcome=\"returned\"} 3\n"), "{out}");
        for line in [
            "kelpie_storage_group_commit_batch_size_bucket{backend=\"unit-test\",le=\"2\"} 0\n",
            "kelpie_storage_group_commit_batch_size_bucket{backend=\"unit-test\",le=\"4\"} 1\n",
            "kelpie_storage_group_commit_batch_size_bucket{backend=\"unit-test\",le=\"+Inf\"} 2\n",
            "kelpie_storage_group_commit_batch_size_sum{backend=\"unit-test\"} 1003\n",
            "kelpie_storage_group_commit_batch_size_count{backend=\"unit-test\"} 2\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        // Families with no samples still say what they are.
        assert!(out.contains("# HELP kelpie_llm_calls_total "), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_text(&["a"], &["x\"y\\z\n".to_string()], None), "{a=\"x\\\"y\\\\z\\n\"}");
        assert_eq!(label_text(&[], &[], None), "");
    }

    #[test]
    fn label_sets_past_the_limit_fold_into_other() {
        for index in 0..SERIES_PER_FAMILY_COUNT_MAX + 5 {
            increment(&LLM_CALL_ERRORS, &[&format!("unit-test-{index}")], 1);
        }
        let registry = REGISTRY.lock().unwrap();
        let series = &registry[LLM_CALL_ERRORS.name];
        assert_eq!(series.len(), SERIES_PER_FAMILY_COUNT_MAX + 1);
        let other = &series[&vec!["other".to_string()]];
        // At least the 5 past the limit (other tests may have added series).
        assert!(matches!(other, Series::Counter(n) if *n >= 5), "{other:?}");
    }
}
