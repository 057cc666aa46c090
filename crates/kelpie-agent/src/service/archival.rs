//! Archival memory: an agent's passages, each stored with its embedding,
//! inserted, listed, deleted and searched through the API (the agent's own
//! archival tools run inside its steps, in the actor).
//!
//! Embeddings are computed here with the agent's embedding, never inside an
//! actor invocation (a remote provider may be slow); the actor stores and
//! ranks the vectors it is given, so every vector of one agent comes from
//! one embedding.
//!
//! `POST /v1/passages/search` is scoped by `agent_id` and reads only that
//! agent's actor, whose key space holds its own passages and nothing else; a
//! request without an agent is refused rather than searching every agent.
//! A search by query goes through the agent's archival index (see
//! `actors::agent::archive`); a listing by tags alone pages through the
//! passages until it has `limit` of them.

use std::sync::Arc;

use kelpie_llm::{ChatModel, EmbeddingSettings};
use kelpie_memory::Passage;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use crate::actors::agent::{AgentCommand, AgentReply, PageSpec, TagFilter};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::letta::{passage_json, search_result_json};
use crate::limits::STORE_PAGE_COUNT_MAX;
use crate::model::AgentRecord;
use crate::page::Page;
use crate::requests::{CreatePassage, PassageSearch};

/// Results an archival search returns when the client does not say.
const ARCHIVAL_SEARCH_COUNT_DEFAULT: usize = 10;

/// Results of `POST /v1/passages/search` when the client does not say (Letta's default).
const PASSAGE_SEARCH_COUNT_DEFAULT: usize = 50;
/// Most results one search answers.
const PASSAGE_SEARCH_COUNT_MAX: usize = kelpie_memory::archival::ARCHIVAL_SEARCH_RESULTS_COUNT_MAX;

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

pub struct Archival {
    actors: Arc<AgentActors>,
    llm: Arc<dyn ChatModel>,
}

/// The embedding of one text.
async fn embed_one(llm: &dyn ChatModel, settings: &EmbeddingSettings, text: &str) -> ServiceResult<Vec<f32>> {
    let mut vectors = llm.embed(settings, &[text.to_string()]).await?;
    assert_eq!(vectors.len(), 1, "one text, one embedding");
    Ok(vectors.remove(0))
}

impl Archival {
    pub(crate) fn new(actors: Arc<AgentActors>, llm: Arc<dyn ChatModel>) -> Self {
        Archival { actors, llm }
    }

    pub async fn insert(&self, agent_id: &str, request: CreatePassage) -> ServiceResult<Vec<Value>> {
        if request.text.trim().is_empty() {
            return Err(ServiceError::Invalid("text must not be empty".into()));
        }
        let agent = self.actors.record(agent_id).await?;
        let embedding = embed_one(self.llm.as_ref(), &agent.embedding, &request.text).await?;
        let command = AgentCommand::InsertPassage {
            text: request.text,
            tags: request.tags.unwrap_or_default(),
            embedding,
        };
        self.passages(agent_id, command, passage_json).await
    }

    /// One page of the agent's passages: O(limit + log n).
    pub async fn list(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let spec = PageSpec {
            after: page.after.clone(),
            before: page.before.clone(),
            limit: page.limit,
            descending: page.descending,
        };
        self.passages(agent_id, AgentCommand::PassagePage(spec), passage_json).await
    }

    /// The archival search route: `top_k` passages nearest `query`.
    pub async fn search(&self, agent_id: &str, query: String, top_k: Option<usize>) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        let query_embedding = embed_one(self.llm.as_ref(), &agent.embedding, &query).await?;
        let top_k = top_k.unwrap_or(ARCHIVAL_SEARCH_COUNT_DEFAULT);
        let filter = TagFilter::default();
        let (_, found) = self.search_scored(agent_id, query_embedding, top_k, filter).await?;
        let results: Vec<Value> = found.iter().map(|(passage, _)| search_result_json(passage)).collect();
        Ok(json!({"count": results.len(), "results": results}))
    }

    async fn passages(
        &self,
        agent_id: &str,
        command: AgentCommand,
        render: impl Fn(&AgentRecord, &Passage) -> Value,
    ) -> ServiceResult<Vec<Value>> {
        let AgentReply::Passages { agent, passages } = self.actors.invoke(agent_id, command).await? else {
            return Err(unexpected("passages"));
        };
        Ok(passages.iter().map(|passage| render(&agent, passage)).collect())
    }

    async fn search_scored(
        &self,
        agent_id: &str,
        query_embedding: Vec<f32>,
        top_k: usize,
        filter: TagFilter,
    ) -> ServiceResult<(AgentRecord, Vec<(Passage, f32)>)> {
        let command = AgentCommand::SearchPassages { query_embedding, top_k, filter };
        let AgentReply::Scored { agent, results } = self.actors.invoke(agent_id, command).await? else {
            return Err(unexpected("scored passages"));
        };
        Ok((*agent, results))
    }

    /// The first `limit` passages passing `filter`, oldest first, read page
    /// by page until there are enough.
    async fn first_matching(
        &self,
        agent_id: &str,
        filter: &TagFilter,
        limit: usize,
    ) -> ServiceResult<(AgentRecord, Vec<(Passage, f32)>)> {
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let spec = PageSpec { after: after.clone(), limit: STORE_PAGE_COUNT_MAX, ..PageSpec::default() };
            let AgentReply::Passages { agent, passages } =
                self.actors.invoke(agent_id, AgentCommand::PassagePage(spec)).await?
            else {
                return Err(unexpected("passages"));
            };
            let full = passages.len() == STORE_PAGE_COUNT_MAX;
            after = passages.last().map(|passage| passage.id.clone());
            found.extend(passages.into_iter().filter(|p| filter.matches(p)).map(|p| (p, 0.0)));
            if !full || found.len() >= limit {
                found.truncate(limit);
                return Ok((*agent, found));
            }
        }
    }

    pub async fn delete(&self, agent_id: &str, passage_id: &str) -> ServiceResult<()> {
        self.actors.invoke(agent_id, AgentCommand::DeletePassage { id: passage_id.to_string() }).await?;
        Ok(())
    }

    /// `POST /v1/passages/search`: `[{passage, score, metadata}]`, best
    /// first; without a query, every matching passage oldest first with
    /// score 0.
    pub async fn search_passages(&self, request: PassageSearch) -> ServiceResult<Vec<Value>> {
        let (limit, match_all) = check(&request)?;
        let Some(agent_id) = request.agent_id.as_deref() else {
            return Err(ServiceError::Invalid("agent_id is required".into()));
        };
        let filter = TagFilter { tags: request.tags.unwrap_or_default(), all: match_all };
        let (agent, scored) = match request.query.as_deref().filter(|q| !q.trim().is_empty()) {
            Some(query) => {
                let agent = self.actors.record(agent_id).await?;
                let query_embedding = embed_one(self.llm.as_ref(), &agent.embedding, query).await?;
                self.search_scored(agent_id, query_embedding, limit, filter).await?
            }
            None => self.first_matching(agent_id, &filter, limit).await?,
        };
        assert!(scored.len() <= limit, "a search answers at most its limit");
        Ok(scored
            .iter()
            .map(|(passage, score)| json!({"passage": passage_json(&agent, passage), "score": score, "metadata": {}}))
            .collect())
    }
}
