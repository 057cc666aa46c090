//! The simulator's own guarantees: virtual time, seeded interleavings, the
//! `Env` boundary, crashes and restarts, the durability model, partitions,
//! and what a failed run reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::{Clock as _, Env};
use kelpie_dst::{FailureKind, NetworkConfig, SimNode, Simulation, StorageConfig, StorageError, WriteBatch};

fn sim(seed: u64, nodes: usize) -> Simulation {
    Simulation::builder().seed(seed).nodes(nodes).build().unwrap()
}

/// Code written only against `kelpie_core::Env`, as protocol crates are.
async fn protocol_under_test(env: Env, log: Arc<Mutex<Vec<String>>>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
    for worker in 0..3u64 {
        let (tx, env2) = (tx.clone(), env.clone());
        env.spawner.spawn(
            "worker",
            Box::pin(async move {
                env2.clock.sleep(Duration::from_millis(env2.rng.gen_range(1, 100))).await;
                tx.send(worker).await.unwrap();
            }),
        );
    }
    drop(tx);
    while let Some(worker) = rx.recv().await {
        log.lock().unwrap().push(format!("{worker}@{}", env.clock.monotonic_ms()));
    }
}

fn run_protocol(seed: u64) -> (Vec<String>, u64) {
    let mut sim = sim(seed, 1);
    let log = Arc::new(Mutex::new(Vec::new()));
    let env = sim.node(0).env();
    sim.spawn(0, "protocol", protocol_under_test(env, log.clone()));
    let report = sim.run_until_idle(Duration::from_secs(10)).unwrap();
    let log = log.lock().unwrap().clone();
    (log, report.trace_hash)
}

#[test]
fn env_code_runs_unchanged_in_virtual_time_and_replays_by_seed() {
    let (log, hash) = run_protocol(3);
    assert_eq!(log.len(), 3, "{log:?}");
    let times: Vec<u64> = log.iter().map(|entry| entry.split('@').nth(1).unwrap().parse().unwrap()).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{log:?}");
    assert!(times.iter().all(|&ms| (1..100).contains(&ms)), "{log:?}");
    assert_eq!(run_protocol(3), (log.clone(), hash));
    let other_seeds: Vec<Vec<String>> = (4..10).map(|seed| run_protocol(seed).0).collect();
    assert!(other_seeds.iter().any(|other| *other != log), "six other seeds all gave {log:?}");
}

#[test]
fn sleeping_advances_virtual_time_exactly_and_idles_without_work() {
    let mut sim = sim(1, 1);
    let node = sim.node(0).clone();
    let woke = Arc::new(Mutex::new(Vec::new()));
    let out = woke.clone();
    sim.spawn(0, "sleeper", async move {
        for ms in [250u64, 1_000, 3_600_000] {
            node.clock().sleep(Duration::from_millis(ms)).await;
            out.lock().unwrap().push(node.clock().monotonic_ms());
        }
    });
    let report = sim.run_until_idle(Duration::from_secs(7_200)).unwrap();
    assert_eq!(*woke.lock().unwrap(), vec![250, 1_250, 3_601_250]);
    assert_eq!(report.simulated_ms, 3_601_250, "an hour of simulated time costs nothing");
    assert_eq!(sim.pending_work(), (0, 0));
    sim.run_for(Duration::from_millis(500)).unwrap();
    assert_eq!(sim.now(), Duration::from_millis(3_601_750), "run_for always ends at its horizon");
}

#[test]
fn scheduler_interleaves_ready_tasks_by_seed() {
    let order = |seed| {
        let mut sim = sim(seed, 1);
        let seen = Arc::new(Mutex::new(Vec::new()));
        for task in 0..5u8 {
            let seen = seen.clone();
            sim.spawn(0, "task", async move {
                for _ in 0..3 {
                    seen.lock().unwrap().push(task);
                    kelpie_dst::yield_now().await;
                }
            });
        }
        sim.run_until_idle(Duration::from_secs(1)).unwrap();
        let seen = seen.lock().unwrap().clone();
        seen
    };
    assert_eq!(order(11), order(11));
    let distinct: std::collections::BTreeSet<Vec<u8>> = (0..20).map(order).collect();
    assert!(distinct.len() >= 15, "only {} interleavings from 20 seeds", distinct.len());
}

#[test]
fn crash_drops_exactly_the_unflushed_writes_and_restart_reruns_boot() {
    let mut sim = sim(5, 1);
    let boots = Arc::new(Mutex::new(0u32));
    let counter = boots.clone();
    sim.on_boot(0, move |node: SimNode| {
        let counter = counter.clone();
        async move {
            *counter.lock().unwrap() += 1;
            node.storage().commit(WriteBatch::new().put("durable", "1")).await.unwrap();
            node.storage().put("volatile", "2").await.unwrap();
            node.clock().sleep(Duration::from_secs(3_600)).await;
        }
    });
    sim.run_for(Duration::from_secs(1)).unwrap();
    let storage = sim.node(0).storage().clone();
    assert_eq!(storage.pending_batches(), 1);
    sim.crash_node(0);
    assert_eq!(storage.pending_batches(), 0, "the crash lost the unflushed write");
    assert_eq!(storage.durable_entries().into_keys().collect::<Vec<_>>(), vec![b"durable".to_vec()]);
    assert_eq!(sim.pending_work(), (0, 0), "the node's tasks and timers are gone");
    assert!(!sim.node(0).spawn("late", async {}), "a down node accepts no tasks");
    assert!(sim.restart_node(0));
    sim.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(*boots.lock().unwrap(), 2);
    assert_eq!(storage.stats().batches_lost_in_crash, 1);
}

#[test]
fn crashed_nodes_restart_automatically_when_configured() {
    let mut sim = Simulation::builder()
        .seed(2)
        .restart_crashed_nodes_after(Duration::from_millis(300))
        .build()
        .unwrap();
    let boots = Arc::new(Mutex::new(Vec::new()));
    let log = boots.clone();
    sim.on_boot(0, move |node: SimNode| {
        let log = log.clone();
        async move { log.lock().unwrap().push(node.clock().monotonic_ms()) }
    });
    let handle = sim.handle();
    sim.spawn_control("chaos", async move {
        handle.sleep(Duration::from_millis(100)).await;
        handle.crash_node(0);
    });
    sim.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(*boots.lock().unwrap(), vec![0, 400]);
}

#[test]
fn storage_reads_scans_conditions_and_capacity() {
    let tiny_disk = StorageConfig { capacity_bytes: 64, ..StorageConfig::default() };
    let mut sim = Simulation::builder().seed(8).storage(tiny_disk).build().unwrap();
    let node = sim.node(0).clone();
    let out = Arc::new(Mutex::new(Vec::new()));
    let results = out.clone();
    sim.spawn(0, "client", async move {
        let disk = node.storage();
        disk.commit(WriteBatch::new().put("a/1", "x").put("a/2", "y").put("b/1", "z")).await.unwrap();
        disk.write_batch(WriteBatch::new().delete("a/1").put("a/3", "w")).await.unwrap();
        let scan = disk.scan_prefix(b"a/").await.unwrap();
        results.lock().unwrap().push(format!("{scan:?}"));
        let stale =
            disk.write_batch(WriteBatch::new().expect("b/1", Some(b"old".to_vec())).put("b/1", "new")).await;
        results.lock().unwrap().push(format!("{}", matches!(stale, Err(StorageError::Conflict { .. }))));
        let big = disk.put("big", vec![0u8; 64]).await;
        results.lock().unwrap().push(format!("{big:?}"));
    });
    sim.run_until_idle(Duration::from_secs(1)).unwrap();
    let results = out.lock().unwrap().clone();
    let expected_scan =
        format!("{:?}", vec![(b"a/2".to_vec(), b"y".to_vec()), (b"a/3".to_vec(), b"w".to_vec())]);
    assert_eq!(results[0], expected_scan);
    assert_eq!(results[1], "true");
    assert_eq!(
        results[2], "Err(DiskFull { node: NodeId(\"node-0\"), needed_bytes: 67, free_bytes: 45 })",
        "64 capacity - 12 durable - 7 pending"
    );
}

#[test]
fn partitions_full_one_way_and_between_groups_then_heal() {
    let sim = sim(4, 4);
    let ids: Vec<_> = sim.nodes().iter().map(|node| node.id().clone()).collect();
    let net = sim.network();
    net.partition_one_way(&ids[0], &ids[1]).unwrap();
    assert!(!net.link_up(&ids[0], &ids[1]).unwrap());
    assert!(net.link_up(&ids[1], &ids[0]).unwrap(), "one-way: the reverse link still works");
    net.heal();
    net.partition(&ids[0..2], &ids[2..4]).unwrap();
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (3, 1)] {
        assert!(!net.link_up(&ids[a], &ids[b]).unwrap(), "{a}->{b} crosses the partition");
    }
    assert!(net.link_up(&ids[0], &ids[1]).unwrap() && net.link_up(&ids[2], &ids[3]).unwrap());
    net.heal();
    net.isolate(&ids[3]).unwrap();
    assert!(
        (0..3).all(|a| !net.link_up(&ids[a], &ids[3]).unwrap() && !net.link_up(&ids[3], &ids[a]).unwrap())
    );
    assert!(net.link_up(&ids[0], &ids[2]).unwrap());
    net.heal();
    assert!(net.link_up(&ids[3], &ids[0]).unwrap());
}

#[test]
fn messages_across_a_partition_are_lost_and_latency_stays_in_bounds() {
    let network = NetworkConfig {
        latency_us_min: 3_000,
        latency_us_max: 7_000,
        tail_latency_probability: 0.0,
        ..NetworkConfig::default()
    };
    let mut sim = Simulation::builder().seed(6).nodes(3).network(network).build().unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let log = arrivals.clone();
    let receiver = sim.node(1).clone();
    sim.spawn(1, "receiver", async move {
        loop {
            let envelope = receiver.recv().await;
            log.lock().unwrap().push((envelope.from.to_string(), receiver.clock().monotonic_ns()));
        }
    });
    let ids: Vec<_> = sim.nodes().iter().map(|node| node.id().clone()).collect();
    sim.network().partition(&ids[2..3], &ids[0..2]).unwrap();
    for _ in 0..50 {
        sim.network().send(&ids[0], &ids[1], b"ping".to_vec()).unwrap();
        sim.network().send(&ids[2], &ids[1], b"ping".to_vec()).unwrap();
    }
    sim.run_for(Duration::from_secs(1)).unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 50);
    assert!(
        arrivals.iter().all(|(from, at)| from == "node-0" && (3_000_000..=7_000_000).contains(at)),
        "{arrivals:?}"
    );
    assert_eq!(sim.network().stats().dropped_partitioned, 50);
}

#[test]
fn invariant_violation_reports_name_step_seed_replay_and_trace_tail() {
    let mut sim = sim(99, 1);
    let counter = Arc::new(Mutex::new(0u32));
    let writer = counter.clone();
    let node = sim.node(0).clone();
    sim.spawn(0, "counter", async move {
        for _ in 0..10 {
            node.clock().sleep(Duration::from_millis(10)).await;
            *writer.lock().unwrap() += 1;
        }
    });
    let observed = counter.clone();
    sim.invariant("counter_below_five", move |_| match *observed.lock().unwrap() {
        n if n >= 5 => Err(format!("counter reached {n}")),
        _ => Ok(()),
    });
    let failure = sim.run_for(Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        *failure.kind,
        FailureKind::InvariantViolated {
            invariant: "counter_below_five".into(),
            message: "counter reached 5".into()
        }
    );
    assert_eq!((failure.seed, failure.time_ms), (99, 50));
    let text = failure.to_string();
    assert!(
        text.starts_with(&format!("simulation failed at step {} (t = 50 ms), seed 99", failure.step)),
        "{text}"
    );
    assert!(text.contains("replay: DST_SEED=99 cargo test -p kelpie-dst --test simulator"), "{text}");
    assert!(text.contains("TaskPolled"), "{text}");
    assert!(failure.trace_tail.len() > 5);
}

#[test]
fn a_panicking_task_and_a_runaway_task_fail_the_run_with_context() {
    let mut panicky = sim(1, 2);
    panicky.spawn(1, "doomed", async { panic!("bad state 42") });
    let failure = panicky.run_for(Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        *failure.kind,
        FailureKind::TaskPanicked {
            task: "doomed".into(),
            node: "node node-1".into(),
            message: "bad state 42".into()
        }
    );
    let mut runaway = Simulation::builder().seed(1).max_steps(1_000).build().unwrap();
    runaway.spawn(0, "spinner", async {
        loop {
            kelpie_dst::yield_now().await;
        }
    });
    let failure = runaway.run_for(Duration::from_secs(1)).unwrap_err();
    assert_eq!(*failure.kind, FailureKind::StepLimitExceeded { steps_max: 1_000 });
    assert_eq!(failure.step, 1_000);
}

#[test]
fn clock_skew_and_manual_jumps_are_observed_by_the_node_only() {
    let sim = sim(1, 2);
    let (skewed, plain) = (sim.node(0).clock().clone(), sim.node(1).clock().clone());
    skewed.set_skew_ms(-1_500);
    assert_eq!(plain.wall_ms() - skewed.wall_ms(), 1_500);
    let mono_before = skewed.monotonic_ns();
    skewed.jump_ms(-10_000);
    assert_eq!(plain.wall_ms() - skewed.wall_ms(), 11_500);
    assert_eq!(skewed.monotonic_ns(), mono_before, "a backward jump leaves monotonic time alone");
    skewed.jump_ms(20_000);
    assert_eq!(skewed.monotonic_ns(), mono_before + 20_000_000_000);
    assert_eq!(skewed.wall_ms() - plain.wall_ms(), 8_500);
    assert_eq!(plain.monotonic_ns(), 0);
}

#[test]
fn a_paused_node_runs_nothing_until_it_resumes_while_others_go_on() {
    let ticks: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let mut sim = sim(3, 2);
    for index in 0..2 {
        let (ticks, clock) = (Arc::clone(&ticks), sim.node(index).clock().clone());
        sim.spawn(index, "ticker", async move {
            loop {
                clock.sleep(Duration::from_millis(10)).await;
                ticks.lock().unwrap().push((index, clock.monotonic_ms()));
            }
        });
    }
    let handle = sim.handle();
    sim.spawn_control("pauser", async move {
        handle.sleep(Duration::from_millis(25)).await;
        handle.pause_node(0, Duration::from_millis(100));
    });
    sim.run_for(Duration::from_millis(200)).unwrap();
    let ticks = ticks.lock().unwrap();
    let of = |node: usize| ticks.iter().filter(|(n, _)| *n == node).map(|(_, ms)| *ms).collect::<Vec<_>>();
    assert_eq!(of(1), (1..=20).map(|i| i * 10).collect::<Vec<u64>>(), "the other node never stopped");
    let paused = of(0);
    assert_eq!(&paused[..2], &[10, 20], "ran before the pause");
    assert_eq!(paused[2], 125, "the timer due at 30 ms ran only at the resume, and saw the time lost");
    assert!(paused.iter().all(|ms| !(26..125).contains(ms)), "nothing ran while paused: {paused:?}");
}

#[test]
fn the_true_clock_ignores_every_node_offset() {
    let sim = sim(1, 2);
    let truth = sim.handle().true_clock();
    sim.node(0).clock().set_skew_ms(5_000);
    sim.node(1).clock().jump_ms(-7_000);
    assert_eq!(truth.wall_ms(), kelpie_dst::clock::SIM_WALL_EPOCH_START_MS);
    assert_eq!(sim.node(0).clock().wall_ms() - truth.wall_ms(), 5_000);
    assert_eq!(truth.wall_ms() - sim.node(1).clock().wall_ms(), 7_000);
    assert_eq!(truth.monotonic_ns(), 0);
}
