//! One test per fault kind: the fault fires, and the code under test observes
//! it (an error it receives, a message that never arrives, a clock that
//! jumped, a value missing or present on disk after a crash).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::Clock as _;
use kelpie_dst::{
    Fault, FaultKind, FaultRule, LlmError, LlmRequest, LlmResponse, NetworkConfig, SandboxError,
    SimLlmClient, SimNode, SimSandbox, SimTool, Simulation, StorageError, ToolError, TraceEventKind,
    WriteBatch,
};

const SEED: u64 = 42;

fn sim_with(rules: Vec<FaultRule>, nodes: usize) -> Simulation {
    let mut builder = Simulation::builder().seed(SEED).nodes(nodes);
    for rule in rules {
        builder = builder.fault(rule);
    }
    builder.build().unwrap()
}

/// Runs `body` as a task on node `index` until the simulation is idle; its
/// output, or `None` if the task never finished (its node crashed).
fn run_on<T, F, Fut>(sim: &mut Simulation, index: usize, body: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(SimNode) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let task = body(sim.node(index).clone());
    sim.spawn(index, "under-test", async move {
        let value = task.await;
        *out.lock().unwrap() = Some(value);
    });
    sim.run_until_idle(Duration::from_secs(120)).unwrap();
    let value = slot.lock().unwrap().take();
    value
}

fn elapsed_ms(node: &SimNode, since_ns: u64) -> u64 {
    (node.clock().monotonic_ns() - since_ns) / 1_000_000
}

#[test]
fn every_fault_kind_has_a_test_in_this_file() {
    let source = include_str!("faults.rs");
    for kind in FaultKind::ALL {
        let test_name = format!("fn {}_", kind.name());
        assert!(source.contains(&test_name), "no test named {test_name}... for {kind:?}");
    }
}

#[test]
fn storage_write_fail_is_returned_and_nothing_lands() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::StorageWriteFail, 1.0)], 1);
    let result = run_on(&mut sim, 0, |node| async move { node.storage().put("k", "v").await }).unwrap();
    assert!(matches!(result, Err(StorageError::Io { operation: "write", .. })), "{result:?}");
    assert_eq!(sim.node(0).storage().pending_batches(), 0);
    assert_eq!(sim.fault_count(FaultKind::StorageWriteFail), 1);
}

#[test]
fn storage_read_fail_is_returned_to_the_reader() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::StorageReadFail, 1.0)], 1);
    let (write, read) = run_on(&mut sim, 0, |node| async move {
        let write = node.storage().commit(WriteBatch::new().put("k", "v")).await;
        (write, node.storage().get(b"k").await)
    })
    .unwrap();
    assert_eq!(write, Ok(()));
    assert!(matches!(read, Err(StorageError::Io { operation: "read", .. })), "{read:?}");
}

#[test]
fn storage_corruption_is_detected_by_checksum_on_read() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::StorageCorruption, 1.0)], 1);
    let (commit, read, scan) = run_on(&mut sim, 0, |node| async move {
        let commit = node.storage().commit(WriteBatch::new().put("k", "value")).await;
        (commit, node.storage().get(b"k").await, node.storage().scan_prefix(b"").await)
    })
    .unwrap();
    assert_eq!(commit, Ok(()), "corruption is silent at write time");
    assert!(matches!(read, Err(StorageError::Corrupt { .. })), "{read:?}");
    assert!(matches!(scan, Err(StorageError::Corrupt { .. })), "{scan:?}");
    let on_disk = sim.node(0).storage().durable_value(b"k").unwrap();
    assert_ne!(on_disk, b"value".to_vec());
    assert_eq!(on_disk.len(), 5, "one bit flipped, length unchanged");
    assert_eq!(sim.node(0).storage().stats().corruptions_detected, 2);
}

#[test]
fn storage_latency_slows_operations_down() {
    let timed_get = |rules| {
        let mut sim = sim_with(rules, 1);
        run_on(&mut sim, 0, |node| async move {
            let start = node.clock().monotonic_ns();
            let _ = node.storage().get(b"k").await;
            node.clock().monotonic_ns() - start
        })
        .unwrap()
    };
    let normal_ns = timed_get(vec![]);
    let slow_ns = timed_get(vec![FaultRule::new(Fault::StorageLatency { extra_ms_max: 500 }, 1.0)]);
    assert!(normal_ns <= 200_000, "default op latency is at most 200 µs, got {normal_ns} ns");
    assert!((1_000_000..=500_200_000).contains(&slow_ns), "{slow_ns} ns");
}

#[test]
fn storage_disk_full_refuses_the_write() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::StorageDiskFull, 1.0)], 1);
    let result = run_on(&mut sim, 0, |node| async move { node.storage().put("k", "v").await }).unwrap();
    assert!(matches!(result, Err(StorageError::DiskFull { needed_bytes: 2, .. })), "{result:?}");
    assert_eq!(sim.node(0).storage().durable_entries().len(), 0);
}

#[test]
fn storage_partial_write_lands_a_prefix_of_the_batch() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::StoragePartialWrite, 1.0).at_most(1)], 1);
    let result = run_on(&mut sim, 0, |node| async move {
        let batch = WriteBatch::new().put("a", "1").put("b", "2").put("c", "3").put("d", "4");
        let write = node.storage().write_batch(batch).await;
        node.storage().flush().await.unwrap();
        write
    })
    .unwrap();
    let Err(StorageError::TornWrite { applied_ops, total_ops: 4, .. }) = result else { panic!("{result:?}") };
    assert!(applied_ops < 4);
    let keys: Vec<Vec<u8>> = sim.node(0).storage().durable_entries().into_keys().collect();
    let expected: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d"][..applied_ops].iter().map(|k| k.to_vec()).collect();
    assert_eq!(keys, expected);
}

#[test]
fn crash_before_write_kills_the_node_and_nothing_lands() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::CrashBeforeWrite, 1.0).at_most(1)], 1);
    let finished =
        run_on(
            &mut sim,
            0,
            |node| async move { node.storage().commit(WriteBatch::new().put("k", "v")).await },
        );
    assert_eq!(finished, None, "the writer died with its node");
    assert!(!sim.node(0).is_up());
    assert_eq!(sim.node(0).storage().durable_value(b"k"), None);
    assert!(sim.restart_node(0));
    let retried =
        run_on(
            &mut sim,
            0,
            |node| async move { node.storage().commit(WriteBatch::new().put("k", "v")).await },
        );
    assert_eq!(retried, Some(Ok(())));
    assert_eq!(sim.node(0).storage().durable_value(b"k"), Some(b"v".to_vec()));
}

#[test]
fn crash_after_write_leaves_data_durable_but_unacknowledged() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::CrashAfterWrite, 1.0)], 1);
    let acked =
        run_on(
            &mut sim,
            0,
            |node| async move { node.storage().commit(WriteBatch::new().put("k", "v")).await },
        );
    assert_eq!(acked, None, "the caller never saw the ack");
    assert!(!sim.node(0).is_up());
    assert_eq!(sim.node(0).storage().durable_value(b"k"), Some(b"v".to_vec()), "but the data is on disk");
}

#[test]
fn crash_during_transaction_persists_a_prefix_of_pending_batches() {
    let mut landed_counts = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let mut sim = Simulation::builder()
            .seed(seed)
            .fault(FaultRule::new(Fault::CrashDuringTransaction, 1.0))
            .build()
            .unwrap();
        let done = run_on(&mut sim, 0, |node| async move {
            for key in ["a", "b", "c"] {
                node.storage().put(key, "v").await.unwrap();
            }
            node.storage().flush().await
        });
        assert_eq!(done, None);
        let keys: Vec<Vec<u8>> = sim.node(0).storage().durable_entries().into_keys().collect();
        let prefix: Vec<Vec<u8>> = [b"a", b"b", b"c"][..keys.len()].iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys, prefix, "seed {seed}: not a prefix");
        assert!(keys.len() < 3);
        assert_eq!(sim.node(0).storage().stats().batches_lost_in_crash, 3 - keys.len() as u64);
        landed_counts.insert(keys.len());
    }
    assert_eq!(landed_counts.len(), 3, "0, 1 and 2 landed batches all occur: {landed_counts:?}");
}

/// Runs a two-node exchange: node 0 sends `count` messages, node 1 collects them.
fn exchange(
    rules: Vec<FaultRule>,
    network: NetworkConfig,
    count: u64,
) -> (Simulation, Vec<(u64, Vec<u8>, u64)>) {
    let mut builder = Simulation::builder().seed(SEED).nodes(2).network(network);
    for rule in rules {
        builder = builder.fault(rule);
    }
    let mut sim = builder.build().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let receiver = sim.node(1).clone();
    sim.spawn(1, "receiver", async move {
        loop {
            let envelope = receiver.recv().await;
            let at_ms = receiver.clock().monotonic_ns() / 1_000_000;
            sink.lock().unwrap().push((envelope.id, envelope.payload, at_ms));
        }
    });
    let sender = sim.node(0).clone();
    let to = sim.node(1).id().clone();
    sim.spawn(0, "sender", async move {
        for index in 0..count {
            sender.send(&to, vec![index as u8]).unwrap();
        }
    });
    sim.run_for(Duration::from_secs(5)).unwrap();
    let received = received.lock().unwrap().clone();
    (sim, received)
}

#[test]
fn network_partition_fault_cuts_the_link_then_heals() {
    let rules = vec![FaultRule::new(Fault::NetworkPartition { duration_ms: 100 }, 1.0).at_most(1)];
    let (mut sim, received) = exchange(rules, NetworkConfig::default(), 1);
    assert!(received.is_empty(), "the message crossed a partition");
    assert_eq!(sim.network().stats().dropped_partitioned, 1);
    let (a, b) = (sim.node(0).id().clone(), sim.node(1).id().clone());
    assert!(sim.network().link_up(&a, &b).unwrap(), "healed after 100 ms");
    sim.network().send(&a, &b, vec![9]).unwrap();
    sim.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(sim.network().stats().delivered, 1);
}

#[test]
fn network_delay_makes_messages_late() {
    let rules = vec![FaultRule::new(Fault::NetworkDelay { extra_ms_max: 1_000 }, 1.0)];
    let (_, received) = exchange(rules, NetworkConfig::default(), 20);
    assert_eq!(received.len(), 20);
    assert!(received.iter().all(|(_, _, at_ms)| *at_ms >= 1), "{received:?}");
    assert!(received.iter().any(|(_, _, at_ms)| *at_ms > 100), "{received:?}");
    assert!(received.iter().all(|(_, _, at_ms)| *at_ms <= 1_052), "{received:?}");
}

#[test]
fn network_packet_loss_drops_every_message() {
    let (sim, received) =
        exchange(vec![FaultRule::new(Fault::NetworkPacketLoss, 1.0)], NetworkConfig::default(), 10);
    assert!(received.is_empty());
    assert_eq!(sim.network().stats().dropped_lost, 10);
    assert_eq!(sim.fault_count(FaultKind::NetworkPacketLoss), 10);
}

#[test]
fn network_reorder_delivers_out_of_send_order() {
    let fixed_latency = NetworkConfig {
        latency_us_min: 1_000,
        latency_us_max: 1_000,
        tail_latency_probability: 0.0,
        ..NetworkConfig::default()
    };
    let (_, in_order) = exchange(vec![], fixed_latency.clone(), 20);
    let order = |received: &[(u64, Vec<u8>, u64)]| received.iter().map(|(_, p, _)| p[0]).collect::<Vec<u8>>();
    assert_eq!(order(&in_order), (0..20).collect::<Vec<u8>>(), "equal latencies keep send order");
    // Held-back messages are overtaken by the ones sent after them.
    let (sim, reordered) = exchange(vec![FaultRule::new(Fault::NetworkReorder, 0.3)], fixed_latency, 20);
    assert!(sim.network().stats().reordered > 0);
    let mut got = order(&reordered);
    assert_ne!(got, (0..20).collect::<Vec<u8>>());
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u8>>(), "reordered, not lost");
}

#[test]
fn network_duplicate_delivers_a_message_twice() {
    let (_, received) =
        exchange(vec![FaultRule::new(Fault::NetworkDuplicate, 1.0)], NetworkConfig::default(), 1);
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].0, received[1].0, "both copies carry the same message id");
    assert_eq!(received[0].1, received[1].1);
}

#[test]
fn clock_skew_shifts_the_wall_clock_the_code_reads() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::ClockSkew { skew_ms_max: 5_000 }, 1.0).at_most(1)], 1);
    let wall = run_on(&mut sim, 0, |node| async move { node.clock().wall_ms() }).unwrap();
    let skew = sim.node(0).clock().skew_ms();
    assert_ne!(skew, 0);
    assert!(skew.abs() <= 5_000);
    assert_eq!(wall as i64, kelpie_dst::clock::SIM_WALL_EPOCH_START_MS as i64 + skew);
}

#[test]
fn clock_jump_moves_wall_time_both_ways_and_monotonic_never_back() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::ClockJump { jump_ms_max: 1_000 }, 0.5)], 1);
    let (backward_seen, forward_mono_jump) = run_on(&mut sim, 0, |node| async move {
        let (mut last_wall, mut last_mono) = (node.clock().wall_ms(), node.clock().monotonic_ns());
        let (mut backward, mut mono_jump) = (false, false);
        for _ in 0..200 {
            node.clock().sleep(Duration::from_millis(1)).await;
            let (wall, mono) = (node.clock().wall_ms(), node.clock().monotonic_ns());
            assert!(mono >= last_mono, "monotonic time went backwards");
            backward |= wall < last_wall;
            mono_jump |= mono - last_mono > 10_000_000;
            (last_wall, last_mono) = (wall, mono);
        }
        (backward, mono_jump)
    })
    .unwrap();
    assert!(backward_seen, "no backward wall-clock jump observed");
    assert!(forward_mono_jump, "no forward jump observed");
    assert!(sim.fault_count(FaultKind::ClockJump) > 50);
}

#[test]
fn out_of_memory_fails_the_allocation() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::OutOfMemory, 1.0).at_most(1)], 1);
    let (first, second) =
        run_on(&mut sim, 0, |node| async move { (node.try_allocate(4_096), node.try_allocate(4_096)) })
            .unwrap();
    assert_eq!(first.unwrap_err().to_string(), "node node-0: out of memory allocating 4096 bytes");
    assert_eq!(second, Ok(()));
}

#[test]
fn cpu_starvation_delays_a_ready_task() {
    let mut sim =
        sim_with(vec![FaultRule::new(Fault::CpuStarvation { delay_ms_max: 50 }, 1.0).at_most(1)], 1);
    let started_ms =
        run_on(&mut sim, 0, |node| async move { node.clock().monotonic_ns() / 1_000_000 }).unwrap();
    assert!((1..=50).contains(&started_ms), "first poll at {started_ms} ms");
    let deferred =
        sim.trace_tail(100).iter().any(|event| matches!(event.kind, TraceEventKind::TaskDeferred { .. }));
    assert!(deferred);
}

#[test]
fn concurrent_conflict_fails_a_conditional_write() {
    let conditional = || WriteBatch::new().expect("lock", None).put("lock", "me");
    let mut clean = sim_with(vec![], 1);
    let ok =
        run_on(&mut clean, 0, move |node| async move { node.storage().write_batch(conditional()).await });
    assert_eq!(ok, Some(Ok(())));
    let mut sim = sim_with(vec![FaultRule::new(Fault::ConcurrentConflict, 1.0)], 1);
    let conflict =
        run_on(&mut sim, 0, move |node| async move { node.storage().write_batch(conditional()).await });
    assert!(matches!(conflict, Some(Err(StorageError::Conflict { .. }))), "{conflict:?}");
    assert_eq!(sim.node(0).storage().pending_batches(), 0);
}

fn ask_llm(rules: Vec<FaultRule>) -> (Result<LlmResponse, LlmError>, u64) {
    let mut sim = sim_with(rules, 1);
    run_on(&mut sim, 0, |node| async move {
        let client = SimLlmClient::scripted(&node, vec![LlmResponse::text("hello")]).with_timeout_ms(5_000);
        let start = node.clock().monotonic_ns();
        let reply = client.complete(&LlmRequest::default()).await;
        (reply, elapsed_ms(&node, start))
    })
    .unwrap()
}

#[test]
fn llm_timeout_hangs_until_the_client_timeout() {
    let (reply, took_ms) = ask_llm(vec![FaultRule::new(Fault::LlmTimeout, 1.0)]);
    assert!(matches!(reply, Err(LlmError::Timeout { timeout_ms: 5_000, .. })), "{reply:?}");
    assert_eq!(took_ms, 5_000);
    let (healthy, _) = ask_llm(vec![]);
    assert_eq!(healthy.unwrap().content.as_deref(), Some("hello"));
}

#[test]
fn llm_failure_is_a_provider_error() {
    let (reply, _) = ask_llm(vec![FaultRule::new(Fault::LlmFailure, 1.0)]);
    assert!(matches!(reply, Err(LlmError::ProviderFailure { .. })), "{reply:?}");
}

#[test]
fn llm_stream_cut_fires_at_the_stream_fault_point_only() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::LlmStreamCut, 1.0).at_most(1)], 1);
    let cut = run_on(&mut sim, 0, |node| async move {
        let client = SimLlmClient::scripted(&node, vec![LlmResponse::text("hello")]);
        // A whole answer first: the cut is the stream's, not the call's.
        let reply = client.complete(&LlmRequest::default()).await;
        (reply, client.stream_cut(), client.stream_cut())
    })
    .unwrap();
    assert_eq!(cut.0.unwrap().content.as_deref(), Some("hello"));
    assert_eq!((cut.1, cut.2), (true, false), "fires once (at_most 1)");
    assert_eq!(sim.fault_count(FaultKind::LlmStreamCut), 1);
}

#[test]
fn llm_rate_limited_says_when_to_retry() {
    let (reply, _) = ask_llm(vec![FaultRule::new(Fault::LlmRateLimited { retry_after_ms: 1_500 }, 1.0)]);
    let error = reply.unwrap_err();
    assert!(matches!(error, LlmError::RateLimited { retry_after_ms: 1_500, .. }), "{error:?}");
    assert!(error.is_retriable());
}

fn call_tool(rules: Vec<FaultRule>, mcp: bool) -> (Vec<Result<String, ToolError>>, u64) {
    let mut sim = sim_with(rules, 1);
    run_on(&mut sim, 0, move |node| async move {
        let mut tool =
            SimTool::new(&node, "upper", |args: &str| Ok(args.to_uppercase())).with_timeout_ms(2_000);
        if mcp {
            tool = tool.via_mcp_server("text-tools");
        }
        let start = node.clock().monotonic_ns();
        let mut results = vec![tool.call("abc").await, tool.call("abc").await];
        let took = elapsed_ms(&node, start);
        if mcp {
            tool.restart_mcp_server();
            results.push(tool.call("abc").await);
        }
        (results, took)
    })
    .unwrap()
}

#[test]
fn tool_timeout_hangs_until_the_tool_timeout() {
    let (results, took_ms) = call_tool(vec![FaultRule::new(Fault::ToolTimeout, 1.0)], false);
    assert!(matches!(results[0], Err(ToolError::Timeout { timeout_ms: 2_000, .. })), "{results:?}");
    assert_eq!(took_ms, 4_000, "two calls, each hanging for the full timeout");
}

#[test]
fn tool_failure_is_reported_to_the_caller() {
    let (results, _) = call_tool(vec![FaultRule::new(Fault::ToolFailure, 1.0).at_most(1)], false);
    assert_eq!(
        results,
        vec![
            Err(ToolError::Failed { tool: "upper".into(), reason: "injected tool failure".into() }),
            Ok("ABC".to_string())
        ]
    );
}

#[test]
fn mcp_server_crash_fails_calls_until_restarted() {
    let (results, _) = call_tool(vec![FaultRule::new(Fault::McpServerCrash, 1.0).at_most(1)], true);
    let down = Err(ToolError::McpServerDown { tool: "upper".into(), server: "text-tools".into() });
    assert_eq!(results, vec![down.clone(), down, Ok("ABC".to_string())]);
}

#[test]
fn mcp_server_slow_start_times_out_the_start_and_leaves_it_down() {
    let rules = vec![
        FaultRule::new(Fault::McpServerCrash, 1.0).at_most(1),
        FaultRule::new(Fault::McpServerSlowStart, 1.0).at_most(1),
    ];
    let mut sim = sim_with(rules, 1);
    let (starts, calls, took_ms) = run_on(&mut sim, 0, |node| async move {
        let tool = SimTool::new(&node, "upper", |args: &str| Ok(args.to_uppercase()))
            .with_timeout_ms(2_000)
            .via_mcp_server("text-tools");
        let crashed = tool.call("abc").await;
        let start = node.clock().monotonic_ns();
        let slow = tool.start_mcp_server().await;
        let took = elapsed_ms(&node, start);
        let up = tool.server_up();
        let started = tool.start_mcp_server().await;
        (vec![slow, started], vec![crashed, Ok(up.to_string()), tool.call("abc").await], took)
    })
    .unwrap();
    assert_eq!(
        starts,
        vec![
            Err(ToolError::Timeout { tool: "MCP server text-tools start".into(), timeout_ms: 2_000 }),
            Ok(())
        ]
    );
    let down = Err(ToolError::McpServerDown { tool: "upper".into(), server: "text-tools".into() });
    assert_eq!(calls, vec![down, Ok("false".to_string()), Ok("ABC".to_string())]);
    assert_eq!(took_ms, 2_000, "the slow start took the whole timeout");
    assert_eq!(sim.fault_count(FaultKind::McpServerSlowStart), 1);
}

fn sandbox_run(rules: Vec<FaultRule>) -> Vec<Result<String, SandboxError>> {
    let mut sim = sim_with(rules, 1);
    run_on(&mut sim, 0, |node| async move {
        let mut sandbox = SimSandbox::new(&node);
        let mut steps = vec![sandbox.boot().await.map(|()| "booted".to_string())];
        steps.push(sandbox.exec("set x 1").await);
        let snapshot = sandbox.snapshot();
        steps.push(snapshot.clone().map(|s| format!("snapshot {} entries", s.state.len())));
        steps.push(sandbox.exec("set x 2").await);
        if let Ok(snapshot) = snapshot {
            steps.push(sandbox.restore(&snapshot).map(|()| "restored".to_string()));
        }
        steps.push(sandbox.exec("get x").await);
        steps
    })
    .unwrap()
}

#[test]
fn sandbox_boot_failure_leaves_the_sandbox_unusable() {
    let steps = sandbox_run(vec![FaultRule::new(Fault::SandboxBootFailure, 1.0)]);
    assert!(matches!(steps[0], Err(SandboxError::BootFailed { .. })), "{steps:?}");
    assert!(matches!(steps[1], Err(SandboxError::NotBooted { .. })), "{steps:?}");
    let healthy = sandbox_run(vec![]);
    assert_eq!(healthy.last(), Some(&Ok("1".to_string())), "restore brought back x = 1: {healthy:?}");
}

#[test]
fn sandbox_exec_failure_is_reported_per_command() {
    let steps = sandbox_run(vec![FaultRule::new(Fault::SandboxExecFailure, 1.0).at_most(1)]);
    assert_eq!(steps[0], Ok("booted".to_string()));
    assert!(
        matches!(&steps[1], Err(SandboxError::ExecFailed { command, .. }) if command == "set x 1"),
        "{steps:?}"
    );
    assert_eq!(steps[2], Ok("snapshot 0 entries".to_string()));
}

#[test]
fn sandbox_crash_loses_the_state_and_needs_a_new_boot() {
    let steps = sandbox_run(vec![FaultRule::new(Fault::SandboxCrash, 1.0).at_most(1)]);
    assert_eq!(steps[0], Ok("booted".to_string()));
    assert!(
        matches!(&steps[1], Err(SandboxError::Crashed { command, .. }) if command == "set x 1"),
        "{steps:?}"
    );
    assert!(
        matches!(steps[2], Err(SandboxError::NotBooted { .. })),
        "no snapshot of a crashed sandbox: {steps:?}"
    );
    assert!(matches!(steps[3], Err(SandboxError::NotBooted { .. })), "{steps:?}");
}

#[test]
fn sandbox_exec_timeout_hangs_until_the_timeout() {
    let mut sim = sim_with(vec![FaultRule::new(Fault::SandboxExecTimeout, 1.0).at_most(1)], 1);
    let (first, second, waited_ms) = run_on(&mut sim, 0, |node| async move {
        let mut sandbox = SimSandbox::new(&node).with_exec_timeout_ms(2_000);
        sandbox.boot().await.unwrap();
        let started = node.clock().monotonic_ms();
        let first = sandbox.exec("echo a").await;
        let waited_ms = node.clock().monotonic_ms() - started;
        (first, sandbox.exec("echo b").await, waited_ms)
    })
    .unwrap();
    assert!(matches!(first, Err(SandboxError::TimedOut { timeout_ms: 2_000, .. })), "{first:?}");
    assert_eq!(second, Ok("b".to_string()));
    assert_eq!(waited_ms, 2_000, "the command hung for exactly its timeout");
}

#[test]
fn snapshot_create_failure_yields_no_snapshot() {
    let steps = sandbox_run(vec![FaultRule::new(Fault::SnapshotCreateFailure, 1.0)]);
    assert!(matches!(steps[2], Err(SandboxError::SnapshotCreateFailed { .. })), "{steps:?}");
    assert_eq!(steps.last(), Some(&Ok("2".to_string())), "no restore happened: {steps:?}");
}

#[test]
fn snapshot_restore_failure_keeps_the_current_state() {
    let steps = sandbox_run(vec![FaultRule::new(Fault::SnapshotRestoreFailure, 1.0)]);
    assert!(matches!(steps[4], Err(SandboxError::SnapshotRestoreFailed { .. })), "{steps:?}");
    assert_eq!(steps.last(), Some(&Ok("2".to_string())), "{steps:?}");
}
