//! Runs as their agent stores them: every turn is a run, and each of its
//! steps is written into the run's record in the same commit as the
//! step's messages, so a step is in the run exactly when its messages are
//! stored. The run's end rides on its last step's commit when the loop
//! knows before the commit that the turn ends there.
//!
//! A run is open (in the state's `open_runs`) from its first write to its
//! end, under the process that runs it ([`RunOwner`]: node and boot).
//! Turns of an agent run only where its actor is active, so an open run
//! that an activation finds under another process was left by a process
//! that stopped, crashed or lost the agent: [`recover_stale`] ends it
//! failed before the activation does anything else.

use std::ops::Bound;

use kelpie_core::{Error, Result};

use super::store::{self, decode, encode, Ctx, PageSpec};
use crate::limits::{AGENT_STEPS_COUNT_MAX, STORE_PAGE_COUNT_MAX};
use crate::model::{
    LiveRuns, OpenRun, RunEnd, RunOwner, RunRecord, RunStart, RunStatus, StepPatch, StepRecord,
};

/// What a run left open by a process that is gone ends with.
pub const RUN_INTERRUPTED_ERROR: &str =
    "the server stopped while the run was in flight; the steps it committed are kept";
/// What a run ends with whose task ended without recording its end (the
/// end's own commit failed).
pub const RUN_LOST_ERROR: &str =
    "the run stopped without its end being stored (a storage error); the steps it committed are kept";
/// Most steps one run holds: the loop's step limit and the commit of an
/// approval answer.
pub const RUN_STEPS_COUNT_MAX: usize = AGENT_STEPS_COUNT_MAX as usize + 1;
/// Most runs of one agent open at once. Each history's turn lock lets one
/// turn of it run at a time, so this bounds how many of an agent's
/// conversations take turns at once (one more is refused until one ends);
/// runs left by gone processes are ended by the next command.
pub const OPEN_RUNS_COUNT_MAX: usize = 64;
/// Most run rows one list request reads while filtering.
pub const RUN_SCAN_ROWS_COUNT_MAX: usize = 10_000;

/// Which runs a list selects, besides its page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunFilter {
    /// Any of these statuses (all when `None`).
    pub statuses: Option<Vec<RunStatus>>,
    pub background: Option<bool>,
    pub stop_reason: Option<String>,
    /// Only runs of this conversation.
    #[serde(default)]
    pub conversation_id: Option<String>,
}

impl RunFilter {
    pub fn accepts(&self, run: &RunRecord) -> bool {
        self.statuses.as_ref().is_none_or(|statuses| statuses.contains(&run.status))
            && self.background.is_none_or(|background| background == run.background)
            && self.stop_reason.as_ref().is_none_or(|reason| run.stop_reason.as_ref() == Some(reason))
            && self.conversation_id.as_ref().is_none_or(|id| run.conversation_id.as_ref() == Some(id))
    }
}

fn run_key(ctx: &Ctx<'_>, seq: u64) -> Vec<u8> {
    store::seq_key(&store::messages(ctx), "r", seq)
}

fn owner_here(ctx: &Ctx<'_>, boot_id: &str) -> RunOwner {
    RunOwner { node_id: ctx.node_id.as_str().to_string(), boot_id: boot_id.to_string() }
}

async fn load(ctx: &mut Ctx<'_>, run_id: &str) -> Result<Option<RunRecord>> {
    let space = store::messages(ctx);
    let Some(seq) = store::seq_of(ctx, &space, "ri", run_id).await? else { return Ok(None) };
    match ctx.kv_get(&run_key(ctx, seq)).await? {
        Some(bytes) => Ok(Some(decode(&bytes, "agent run")?)),
        None => Err(Error::Corruption {
            location: format!("run {run_id}"),
            reason: format!("its index names seq {seq}, which holds no run"),
        }),
    }
}

fn save(ctx: &mut Ctx<'_>, run: &RunRecord) -> Result<()> {
    assert!(run.steps.len() <= RUN_STEPS_COUNT_MAX, "a run holds at most RUN_STEPS_COUNT_MAX steps");
    let key = run_key(ctx, run.seq);
    ctx.kv_put(&key, encode(run)?)
}

/// The run begun with idempotency key `key`, if any.
pub(crate) async fn by_key(ctx: &mut Ctx<'_>, key: &str) -> Result<Option<RunRecord>> {
    let space = store::messages(ctx);
    match ctx.kv_get(&store::index_key(&space, "k", key)).await? {
        Some(bytes) => {
            let run_id = String::from_utf8(bytes).map_err(|_| Error::Corruption {
                location: format!("idempotency key {key}"),
                reason: "its run id is not UTF-8".into(),
            })?;
            load(ctx, &run_id).await
        }
        None => Ok(None),
    }
}

/// The open run `start` names, created (running, owned by this process)
/// when it does not exist; refused when it already ended (cancelled, or
/// ended by a recovery), so nothing is added to an ended run. When
/// `start` has an idempotency key another run already holds, that run is
/// answered instead (its id differs from `start`'s) and nothing is written.
pub(crate) async fn begin(ctx: &mut Ctx<'_>, boot_id: &str, start: &RunStart) -> Result<RunRecord> {
    if let Some(key) = &start.idempotency_key {
        if let Some(run) = by_key(ctx, key).await? {
            if run.id != start.run_id {
                return Ok(run);
            }
        }
    }
    if let Some(run) = load(ctx, &start.run_id).await? {
        if run.status != RunStatus::Running {
            return Err(Error::validation(
                "run",
                format!("run {} is {} and takes no more steps", run.id, run.status.as_str()),
            ));
        }
        return Ok(run);
    }
    if ctx.state.open_runs.len() >= OPEN_RUNS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: format!("open runs of agent {}", ctx.actor_id.id()),
            actual: ctx.state.open_runs.len() as u64 + 1,
            limit_name: "OPEN_RUNS_COUNT_MAX",
            limit: OPEN_RUNS_COUNT_MAX as u64,
        });
    }
    let seq = store::next_seq(ctx);
    let run = RunRecord::running(start, ctx.actor_id.id(), seq, owner_here(ctx, boot_id));
    save(ctx, &run)?;
    let space = store::messages(ctx);
    ctx.kv_put(&store::index_key(&space, "ri", &run.id), seq.to_be_bytes().to_vec())?;
    if let Some(key) = &run.idempotency_key {
        ctx.kv_put(&store::index_key(&space, "k", key), run.id.clone().into_bytes())?;
    }
    ctx.state.open_runs.push(OpenRun { run_id: run.id.clone(), seq, owner: run.owner.clone() });
    Ok(run)
}

/// Adds `step` to the open run `start` names (created if new), and ends
/// the run with `end` if given; all in the caller's commit.
pub(crate) async fn record_step(
    ctx: &mut Ctx<'_>,
    boot_id: &str,
    start: &RunStart,
    step: StepRecord,
    end: Option<RunEnd>,
) -> Result<RunRecord> {
    let mut run = begin(ctx, boot_id, start).await?;
    if run.id != start.run_id {
        return Err(duplicate(start, &run));
    }
    if run.steps.len() >= RUN_STEPS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: format!("steps of run {}", run.id),
            actual: run.steps.len() as u64 + 1,
            limit_name: "RUN_STEPS_COUNT_MAX",
            limit: RUN_STEPS_COUNT_MAX as u64,
        });
    }
    run.steps.push(step);
    match end {
        Some(end) => {
            finish(ctx, &mut run, end)?;
            note_conversation_end(ctx, &run).await?;
        }
        None => save(ctx, &run)?,
    }
    Ok(run)
}

fn duplicate(start: &RunStart, holder: &RunRecord) -> Error {
    Error::validation(
        "run",
        format!("run {} has the idempotency key of run {}, which runs that turn", start.run_id, holder.id),
    )
}

fn finish(ctx: &mut Ctx<'_>, run: &mut RunRecord, end: RunEnd) -> Result<()> {
    assert_eq!(run.status, RunStatus::Running, "only a running run ends");
    assert_ne!(end.status, RunStatus::Running, "a run ends in a final status");
    run.status = end.status;
    run.stop_reason = Some(end.stop_reason);
    run.error = end.error;
    run.completed_ms = Some(ctx.env.clock.wall_ms());
    ctx.state.open_runs.retain(|open| open.run_id != run.id);
    save(ctx, run)
}

/// Ends run `start.run_id` with `end` unless it already ended (the first
/// end wins: a cancel racing the last step's commit changes nothing); a
/// run that never stored a step is created to hold its end. The run as
/// stored.
pub(crate) async fn end(
    ctx: &mut Ctx<'_>,
    boot_id: &str,
    start: &RunStart,
    end: RunEnd,
) -> Result<RunRecord> {
    if let Some(run) = load(ctx, &start.run_id).await? {
        if run.status != RunStatus::Running {
            return Ok(run);
        }
    }
    let mut run = begin(ctx, boot_id, start).await?;
    if run.id != start.run_id {
        return Err(duplicate(start, &run));
    }
    finish(ctx, &mut run, end)?;
    note_conversation_end(ctx, &run).await?;
    Ok(run)
}

/// Records on the run's conversation, if any, when its last run ended.
async fn note_conversation_end(ctx: &mut Ctx<'_>, run: &RunRecord) -> Result<()> {
    match (&run.conversation_id, run.completed_ms) {
        (Some(id), Some(ended_ms)) => super::conversations::note_run_end(ctx, id, ended_ms).await,
        _ => Ok(()),
    }
}

/// Ends failed every open run that no live task runs: one another process
/// left, or one of this process whose task ended without recording its
/// end. How many.
pub(crate) async fn recover_stale(ctx: &mut Ctx<'_>, boot_id: &str, live: &LiveRuns) -> Result<usize> {
    let here = owner_here(ctx, boot_id);
    let stale: Vec<OpenRun> = ctx
        .state
        .open_runs
        .iter()
        .filter(|open| open.owner != here || !live.contains(&open.run_id))
        .cloned()
        .collect();
    for open in &stale {
        match ctx.kv_get(&run_key(ctx, open.seq)).await? {
            Some(bytes) => {
                let mut run: RunRecord = decode(&bytes, "agent run")?;
                if run.status == RunStatus::Running {
                    let error = if open.owner == here { RUN_LOST_ERROR } else { RUN_INTERRUPTED_ERROR };
                    finish(ctx, &mut run, RunEnd::failed(error.into()))?;
                }
            }
            None => ctx.state.open_runs.retain(|o| o.run_id != open.run_id),
        }
        ctx.state.open_runs.retain(|o| o.run_id != open.run_id);
    }
    Ok(stale.len())
}

/// Run `run_id` of this agent, if it has it.
pub(crate) async fn get(ctx: &mut Ctx<'_>, run_id: &str) -> Result<Option<RunRecord>> {
    store::agent(ctx)?;
    load(ctx, run_id).await
}

/// One page of the agent's runs that pass `filter`, in creation order
/// (`page.after`/`before` are run ids). At most
/// [`RUN_SCAN_ROWS_COUNT_MAX`] rows are read, so a filter that few runs
/// pass may answer a short page.
pub(crate) async fn page(ctx: &mut Ctx<'_>, page: &PageSpec, filter: &RunFilter) -> Result<Vec<RunRecord>> {
    store::agent(ctx)?;
    let limit = page.limit.clamp(1, STORE_PAGE_COUNT_MAX);
    let space = store::messages(ctx);
    let Some(mut range) = store::page_range(ctx, (&space, "r", "ri"), page).await? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    let mut scanned = 0;
    while found.len() < limit && scanned < RUN_SCAN_ROWS_COUNT_MAX {
        let batch = (RUN_SCAN_ROWS_COUNT_MAX - scanned).min(STORE_PAGE_COUNT_MAX);
        let rows = ctx.kv_scan_page(&range, store::order(page.descending), batch).await?;
        scanned += rows.len();
        for (_, value) in &rows {
            let run: RunRecord = decode(value, "agent run")?;
            if filter.accepts(&run) && found.len() < limit {
                found.push(run);
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == batch => match page.descending {
                false => range.start = Bound::Excluded(key.clone()),
                true => range.end = Bound::Excluded(key.clone()),
            },
            _ => break,
        }
    }
    Ok(found)
}

/// The messages run `run` stored, in order (those a reset, or the
/// deletion of their conversation, since removed are gone).
pub(crate) async fn messages(ctx: &mut Ctx<'_>, run: &RunRecord) -> Result<Vec<crate::model::StoredMessage>> {
    let history = match store::History::of(ctx, run.conversation_id.as_deref()).await {
        Ok(history) => history,
        Err(Error::NotFound { kind: "conversation", .. }) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let space = history.space(ctx);
    let mut messages = Vec::new();
    for seq in run.steps.iter().flat_map(|step| step.message_seqs.iter().copied()) {
        if let Some(bytes) = ctx.kv_get(&store::message_key(&space, seq)).await? {
            messages.push(decode(&bytes, "agent message")?);
        }
    }
    Ok(messages)
}

/// Applies `patch` to step `step_id` of run `run_id`; the run as stored,
/// `None` when there is no such run or step.
pub(crate) async fn update_step(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    step_id: &str,
    patch: StepPatch,
) -> Result<Option<RunRecord>> {
    store::agent(ctx)?;
    let Some(mut run) = load(ctx, run_id).await? else { return Ok(None) };
    let Some(step) = run.steps.iter_mut().find(|step| step.id == step_id) else { return Ok(None) };
    if let Some(feedback) = patch.feedback {
        step.feedback = feedback;
    }
    if let Some(tags) = patch.tags {
        step.tags = tags;
    }
    if let Some(tid) = patch.tid {
        step.tid = Some(tid);
    }
    save(ctx, &run)?;
    Ok(Some(run))
}

/// Forgets run `run_id` (its messages stay); whether it existed. A
/// running run is refused: cancel it first.
pub(crate) async fn delete(ctx: &mut Ctx<'_>, run_id: &str) -> Result<bool> {
    store::agent(ctx)?;
    let Some(run) = load(ctx, run_id).await? else { return Ok(false) };
    if run.status == RunStatus::Running {
        return Err(Error::validation(
            "run",
            format!("run {run_id} is running; cancel it before deleting it"),
        ));
    }
    let key = run_key(ctx, run.seq);
    ctx.kv_delete(&key)?;
    let space = store::messages(ctx);
    ctx.kv_delete(&store::index_key(&space, "ri", run_id))?;
    if let Some(key) = &run.idempotency_key {
        ctx.kv_delete(&store::index_key(&space, "k", key))?;
    }
    Ok(true)
}
