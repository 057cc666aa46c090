//! `/v1/steps/`: the steps of runs (one LLM call each, or the commit of an
//! approval answer), as their runs hold them. A step is found by its id
//! alone: the id names its run and place ([`crate::ids::step_id`]), the
//! run's pointer names its agent, so no index of steps is kept. Clients
//! may set feedback, tags and a transaction id on a step.

use serde_json::Value;

use super::agent_actors::AgentActors;
use super::runs::{RunQuery, Runs};
use crate::actors::agent::{AgentCommand, AgentReply, RunFilter, RUN_STEPS_COUNT_MAX};
use crate::actors::run_store::{step_json, step_metrics_json};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::run_of_step;
use crate::letta::render_page;
use crate::model::{RunRecord, StepFeedback, StepPatch, StepRecord};
use crate::page::{paginate, Page};

/// Most tags one step carries.
pub const STEP_TAGS_COUNT_MAX: usize = 64;
/// Longest tag, and longest transaction id, of a step.
pub const STEP_TAG_BYTES_MAX: usize = 256;
/// Most runs one step list reads (a filter few steps pass may answer a
/// short page).
pub const STEP_LIST_RUNS_COUNT_MAX: usize = crate::actors::agent::RUN_SCAN_ROWS_COUNT_MAX;
/// Runs read per round of a step list.
const STEP_LIST_RUNS_PAGE_COUNT: usize = 100;

/// `GET /v1/steps/`: which steps, and which page of them.
#[derive(Debug, Clone)]
pub struct StepQuery {
    pub agent_id: Option<String>,
    /// A model's name (`gpt-4o-mini`) or handle (`openai/gpt-4o-mini`).
    pub model: Option<String>,
    /// Steps created after, and before, these times (ms since the epoch).
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub feedback: Option<StepFeedback>,
    pub has_feedback: Option<bool>,
    /// Steps carrying every one of these tags.
    pub tags: Vec<String>,
    /// Steps of these traces: Kelpie keeps no traces, so none matches.
    pub trace_ids: Vec<String>,
    pub page: Page,
}

impl StepQuery {
    fn accepts(&self, step: &StepRecord) -> bool {
        let model_ok = self.model.as_ref().is_none_or(|wanted| {
            step.model.as_deref().is_some_and(|handle| {
                handle == wanted || handle.split_once('/').is_some_and(|(_, name)| name == wanted)
            })
        });
        model_ok
            && self.start_ms.is_none_or(|start| step.created_ms > start)
            && self.end_ms.is_none_or(|end| step.created_ms < end)
            && self.feedback.is_none_or(|feedback| step.feedback == Some(feedback))
            && self.has_feedback.is_none_or(|has| step.feedback.is_some() == has)
            && self.tags.iter().all(|tag| step.tags.contains(tag))
            && self.trace_ids.is_empty()
    }
}

/// The steps of the service's runs.
pub struct Steps<'a> {
    runs: &'a Runs,
    actors: &'a AgentActors,
}

impl<'a> Steps<'a> {
    pub fn new(runs: &'a Runs, actors: &'a AgentActors) -> Self {
        Steps { runs, actors }
    }

    /// The run holding step `step_id`, and the step's place in it.
    async fn find(&self, step_id: &str) -> ServiceResult<(RunRecord, usize)> {
        let not_found = || ServiceError::StepNotFound(step_id.to_string());
        let (run_id, _) = run_of_step(step_id, RUN_STEPS_COUNT_MAX).ok_or_else(not_found)?;
        let run = match self.runs.record(&run_id).await {
            Ok(run) => run,
            Err(ServiceError::RunNotFound(_)) => return Err(not_found()),
            Err(err) => return Err(err),
        };
        let place = run.steps.iter().position(|step| step.id == step_id).ok_or_else(not_found)?;
        Ok((run, place))
    }

    /// `GET /v1/steps/{id}`.
    pub async fn get(&self, step_id: &str) -> ServiceResult<Value> {
        let (run, place) = self.find(step_id).await?;
        Ok(step_json(&run, &run.steps[place]))
    }

    /// `GET /v1/steps/{id}/metrics`.
    pub async fn metrics(&self, step_id: &str) -> ServiceResult<Value> {
        let (run, place) = self.find(step_id).await?;
        Ok(step_metrics_json(&run, &run.steps[place]))
    }

    /// `GET /v1/steps/{id}/trace`: Kelpie keeps no provider traces (as
    /// Letta without `track_provider_trace`): null for a step that exists.
    pub async fn trace(&self, step_id: &str) -> ServiceResult<Value> {
        self.find(step_id).await?;
        Ok(Value::Null)
    }

    /// `GET /v1/steps/{id}/messages`: the Letta messages the step stored,
    /// paged.
    pub async fn messages(&self, step_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let (run, place) = self.find(step_id).await?;
        let AgentReply::RunMessages { messages, .. } =
            self.actors.invoke(&run.agent_id, AgentCommand::RunMessages { run_id: run.id.clone() }).await?
        else {
            return Err(unexpected("run messages"));
        };
        let seqs = &run.steps[place].message_seqs;
        let mine: Vec<_> = messages.into_iter().filter(|message| seqs.contains(&message.seq)).collect();
        let every = Page { limit: usize::MAX, ..page.clone() };
        let selected = paginate(mine, |message| message.id.as_str(), &every);
        Ok(render_page(&selected, page.limit, page.descending).0)
    }

    /// `PATCH /v1/steps/{id}/feedback` and `.../transaction/{tid}`.
    pub async fn update(&self, step_id: &str, patch: StepPatch) -> ServiceResult<Value> {
        if let Some(tags) = &patch.tags {
            if tags.len() > STEP_TAGS_COUNT_MAX {
                return Err(ServiceError::Invalid(format!(
                    "{} tags, over the limit STEP_TAGS_COUNT_MAX = {STEP_TAGS_COUNT_MAX}",
                    tags.len()
                )));
            }
        }
        let texts = patch.tags.iter().flatten().chain(patch.tid.iter());
        if let Some(long) = texts.clone().find(|text| text.len() > STEP_TAG_BYTES_MAX) {
            return Err(ServiceError::Invalid(format!(
                "a tag or transaction id of {} bytes, over the limit STEP_TAG_BYTES_MAX = {STEP_TAG_BYTES_MAX}",
                long.len()
            )));
        }
        let (run, _) = self.find(step_id).await?;
        let command =
            AgentCommand::UpdateStep { run_id: run.id.clone(), step_id: step_id.to_string(), patch };
        match self.actors.invoke(&run.agent_id, command).await {
            Ok(AgentReply::Run(Some(run))) => {
                let step = run.steps.iter().find(|step| step.id == step_id);
                step.map(|step| step_json(&run, step)).ok_or_else(|| unexpected("update step"))
            }
            // Deleted since it was found.
            Ok(AgentReply::Run(None)) | Err(ServiceError::AgentNotFound(_)) => {
                Err(ServiceError::StepNotFound(step_id.to_string()))
            }
            Ok(_) => Err(unexpected("update step")),
            Err(err) => Err(err),
        }
    }

    /// `GET /v1/steps/`: the steps of the runs `GET /v1/runs/` would list
    /// (of one agent, or of every agent up to the runs list's bound), in
    /// the runs' order and within a run in the order they were taken;
    /// newest first unless the page is ascending. The cursors are step
    /// ids; an unknown one selects nothing.
    pub async fn list(&self, query: &StepQuery) -> ServiceResult<Vec<Value>> {
        let page = &query.page;
        let limit = page.limit.max(1);
        let descending = page.descending;
        // Steps of `run` in the page's order.
        let ordered = |run: &RunRecord| -> Vec<usize> {
            let places: Vec<usize> = (0..run.steps.len()).collect();
            if descending {
                places.into_iter().rev().collect()
            } else {
                places
            }
        };
        // The steps the cursors name; an unknown cursor selects nothing.
        let mut cursors = Vec::new();
        for id in [&page.after, &page.before] {
            cursors.push(match id {
                None => None,
                Some(id) => match self.find(id).await {
                    Ok(found) => Some(found),
                    Err(ServiceError::StepNotFound(_)) => return Ok(Vec::new()),
                    Err(err) => return Err(err),
                },
            });
        }
        let (before, after) = (cursors.pop().flatten(), cursors.pop().flatten());
        let before = before.map(|(run, place)| (run.id, place));
        let mut found = Vec::new();
        // Takes the steps of `run` that pass (after `skip_to` if given);
        // whether the list is complete.
        let mut take = |run: &RunRecord, skip_to: Option<usize>| -> bool {
            let mut places = ordered(run);
            if let Some(after) = skip_to {
                let at = places.iter().position(|place| *place == after).map_or(places.len(), |at| at + 1);
                places.drain(..at);
            }
            for place in places {
                if before.as_ref().is_some_and(|(id, stop)| *id == run.id && *stop == place) {
                    return true;
                }
                if query.accepts(&run.steps[place]) {
                    found.push(step_json(run, &run.steps[place]));
                    if found.len() >= limit {
                        return true;
                    }
                }
            }
            before.as_ref().is_some_and(|(id, _)| *id == run.id)
        };
        let mut run_cursor = None;
        if let Some((run, place)) = &after {
            if take(run, Some(*place)) {
                return Ok(found);
            }
            run_cursor = Some(run.id.clone());
        }
        let mut runs_read = 0;
        while runs_read < STEP_LIST_RUNS_COUNT_MAX {
            let run_page =
                Page { after: run_cursor.take(), before: None, limit: STEP_LIST_RUNS_PAGE_COUNT, descending };
            let runs = self
                .runs
                .list_records(RunQuery {
                    agent_ids: query.agent_id.iter().cloned().collect(),
                    filter: RunFilter::default(),
                    active: false,
                    page: run_page,
                })
                .await?;
            runs_read += runs.len();
            for run in &runs {
                if take(run, None) {
                    return Ok(found);
                }
            }
            match runs.last() {
                Some(last) if runs.len() == STEP_LIST_RUNS_PAGE_COUNT => run_cursor = Some(last.id.clone()),
                _ => break,
            }
        }
        Ok(found)
    }
}
