//! The simulator finds TOCTOU races: a bank account whose withdrawal checks
//! the balance, awaits a storage write (the audit record), then debits,
//! overdraws when two withdrawals interleave inside that window. The fixed
//! version holds an async lock across check and act and passes every seed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::Clock as _;
use kelpie_dst::{FailureKind, SimFailure, SimNode, Simulation};

/// Seeds the racy version must be caught within (the bound).
const SEEDS_COUNT: u64 = 1_000;

const OPENING_BALANCE: i64 = 100;
const WITHDRAWAL_AMOUNT: i64 = 60;

/// Each client waits a random time before withdrawing, so only some seeds
/// line the two withdrawals up inside the race window.
const CLIENT_START_DELAY_MS_MAX: u64 = 50;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Account {
    Racy,
    Locked,
}

struct Bank {
    balance: Mutex<i64>,
    teller: tokio::sync::Mutex<()>,
}

async fn withdraw(node: SimNode, bank: Arc<Bank>, account: Account, client: u64) {
    let _turn = match account {
        Account::Locked => Some(bank.teller.lock().await),
        Account::Racy => None,
    };
    let enough = *bank.balance.lock().unwrap() >= WITHDRAWAL_AMOUNT;
    if !enough {
        return;
    }
    // The await point between check and act: write the audit record.
    let audit = format!("audit/{client}");
    let _ = node
        .storage()
        .commit(kelpie_dst::WriteBatch::new().put(audit, WITHDRAWAL_AMOUNT.to_le_bytes()))
        .await;
    *bank.balance.lock().unwrap() -= WITHDRAWAL_AMOUNT;
}

fn run_bank(seed: u64, account: Account) -> Result<i64, SimFailure> {
    let mut sim = Simulation::builder().seed(seed).nodes(1).build().unwrap();
    let bank = Arc::new(Bank { balance: Mutex::new(OPENING_BALANCE), teller: tokio::sync::Mutex::new(()) });
    for client in 0..2 {
        let (node, bank) = (sim.node(0).clone(), bank.clone());
        sim.spawn(0, "client", async move {
            let delay = node.rng().between_inclusive(0, CLIENT_START_DELAY_MS_MAX);
            node.clock().sleep(Duration::from_millis(delay)).await;
            withdraw(node, bank, account, client).await;
        });
    }
    let observed = bank.clone();
    sim.invariant("balance_never_negative", move |_| match *observed.balance.lock().unwrap() {
        balance if balance < 0 => Err(format!("balance is {balance}")),
        _ => Ok(()),
    });
    sim.run_until_idle(Duration::from_secs(1))?;
    let balance = *bank.balance.lock().unwrap();
    Ok(balance)
}

#[test]
fn racy_check_then_act_is_caught_within_a_thousand_seeds_and_replays() {
    let seeds = kelpie_dst::seeds_to_run(0..SEEDS_COUNT).unwrap();
    let caught = seeds.iter().find_map(|&seed| run_bank(seed, Account::Racy).err());
    let failure = caught.expect("the simulator did not find the overdraft race within 1 000 seeds");
    match &*failure.kind {
        FailureKind::InvariantViolated { invariant, message } => {
            assert_eq!(invariant, "balance_never_negative");
            assert_eq!(message, "balance is -20");
        }
        other => panic!("unexpected failure {other}"),
    }
    let report = failure.to_string();
    assert!(report.contains(&format!("seed {}", failure.seed)), "{report}");
    assert!(report.contains(&format!("DST_SEED={} cargo test", failure.seed)), "{report}");
    assert!(!failure.trace_tail.is_empty());
    let replayed = run_bank(failure.seed, Account::Racy).unwrap_err();
    assert_eq!(
        (replayed.step, replayed.trace_tail),
        (failure.step, failure.trace_tail.clone()),
        "replay differs"
    );
}

#[test]
fn racy_version_is_not_caught_by_every_seed() {
    // The race needs a specific interleaving: most seeds miss it, which is why
    // exploring many seeds matters.
    let caught = (0..100).filter(|&seed| run_bank(seed, Account::Racy).is_err()).count();
    assert!((1..50).contains(&caught), "caught in {caught} of 100 seeds");
}

#[test]
fn locked_version_passes_the_same_thousand_seeds() {
    for seed in kelpie_dst::seeds_to_run(0..SEEDS_COUNT).unwrap() {
        match run_bank(seed, Account::Locked) {
            Ok(balance) => assert_eq!(balance, OPENING_BALANCE - WITHDRAWAL_AMOUNT, "seed {seed}"),
            Err(failure) => panic!("locked account failed:\n{failure}"),
        }
    }
}
