//! `POST /v1/passages/search`: ranked search over one agent's archival
//! passages, with tag filters and a score per result.
//!
//! The search is scoped by `agent_id` and reads only that agent's actor, whose
//! key space holds its own passages and nothing else; a request without an
//! agent is refused rather than searching every agent.

use kelpie_memory::{score_passages, Passage};
use serde_json::{json, Value};

use super::actor::{AgentCommand, AgentReply};
use super::letta::passage_json;
use super::service::{unexpected, AgentService, ServiceError, ServiceResult};
use crate::api::PassageSearch;

/// Results when the client does not say (Letta's default).
const PASSAGE_SEARCH_COUNT_DEFAULT: usize = 50;
/// Most results one search answers.
const PASSAGE_SEARCH_COUNT_MAX: usize = kelpie_memory::archival::ARCHIVAL_SEARCH_RESULTS_COUNT_MAX;

/// Whether `passage` has the wanted tags (`all`: every one, else any one).
fn tags_match(passage: &Passage, wanted: &[String], all: bool) -> bool {
    if wanted.is_empty() {
        return true;
    }
    if all {
        wanted.iter().all(|tag| passage.tags.contains(tag))
    } else {
        wanted.iter().any(|tag| passage.tags.contains(tag))
    }
}

/// The checked limit and tag mode of a request.
fn check(request: &PassageSearch) -> ServiceResult<(usize, bool)> {
    if request.archive_id.is_some() {
        return Err(ServiceError::Invalid("archive_id is not supported; search by agent_id".into()));
    }
    if request.start_date.is_some() || request.end_date.is_some() {
        return Err(ServiceError::Invalid("start_date and end_date are not supported".into()));
    }
    let limit = request.limit.unwrap_or(PASSAGE_SEARCH_COUNT_DEFAULT);
    if limit == 0 || limit > PASSAGE_SEARCH_COUNT_MAX {
        return Err(ServiceError::Invalid(format!(
            "limit {limit} is outside 1..={PASSAGE_SEARCH_COUNT_MAX}"
        )));
    }
    let match_all = match request.tag_match_mode.as_deref() {
        None | Some("any") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ServiceError::Invalid(format!(
                "tag_match_mode {other:?} is neither \"any\" nor \"all\""
            )))
        }
    };
    Ok((limit, match_all))
}

impl AgentService {
    /// `[{passage, score, metadata}]`, best first; without a query, every
    /// matching passage oldest first with score 0.
    pub async fn search_agent_passages(&self, request: PassageSearch) -> ServiceResult<Vec<Value>> {
        let (limit, match_all) = check(&request)?;
        let Some(agent_id) = request.agent_id.as_deref() else {
            return Err(ServiceError::Invalid("agent_id is required".into()));
        };
        let AgentReply::Passages { agent, passages } =
            self.agent_ref(agent_id)?.invoke(AgentCommand::Passages).await?
        else {
            return Err(unexpected("passages"));
        };
        let wanted = request.tags.unwrap_or_default();
        let matching: Vec<Passage> =
            passages.into_iter().filter(|passage| tags_match(passage, &wanted, match_all)).collect();
        let scored: Vec<(usize, f32)> = match request.query.as_deref().filter(|q| !q.trim().is_empty()) {
            Some(query) => score_passages(&matching, &self.embed_one(&agent.embedding, query).await?, limit),
            None => (0..matching.len().min(limit)).map(|index| (index, 0.0)).collect(),
        };
        assert!(scored.len() <= limit, "a search answers at most its limit");
        Ok(scored
            .into_iter()
            .map(|(index, score)| {
                json!({"passage": passage_json(&agent, &matching[index]), "score": score, "metadata": {}})
            })
            .collect())
    }
}
