//! Archival memory: an agent's passages, each stored with its embedding,
//! inserted, listed, deleted and searched through the API (the agent's own
//! archival tools run inside its steps, in the actor).
//!
//! Embeddings are computed here with the agent's embedding, never inside an
//! actor invocation (a remote provider may be slow); the actor stores and
//! ranks the vectors it is given, so every vector of one agent comes from
//! one embedding.
//!
//! `POST /v1/passages/search` is scoped by `agent_id` (the agent's own
//! passages and those of the archives it has attached) or by `archive_id`
//! (that archive's passages); a request with neither is refused rather
//! than searching everything. A search by query goes through the archival
//! indexes (see `actors::agent::archive` and `actors::archive`); a listing
//! by tags alone pages through the passages until it has `limit` of them
//! (an agent's own, or the archive's).

use std::sync::Arc;

use kelpie_llm::{ChatModel, EmbeddingSettings};
use kelpie_memory::Passage;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::archives::{archive_passage_json, Archives, SharedHit};
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
    archives: Arc<Archives>,
    llm: Arc<dyn ChatModel>,
}

/// An agent's own passages and what its archives found, merged best first
/// (own first on equal scores), at most `limit`.
fn merged<'a>(
    own: &'a [(Passage, f32)],
    shared: &'a [SharedHit],
    limit: usize,
) -> Vec<(f32, Result<&'a Passage, &'a SharedHit>)> {
    let mut all: Vec<(f32, Result<&Passage, &SharedHit>)> =
        own.iter().map(|(p, score)| (*score, Ok(p))).collect();
    all.extend(shared.iter().map(|hit| (hit.score, Err(hit))));
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.truncate(limit);
    all
}

/// The embedding of one text.
async fn embed_one(llm: &dyn ChatModel, settings: &EmbeddingSettings, text: &str) -> ServiceResult<Vec<f32>> {
    let mut vectors = llm.embed(settings, &[text.to_string()]).await?;
    assert_eq!(vectors.len(), 1, "one text, one embedding");
    Ok(vectors.remove(0))
}

impl Archival {
    pub(crate) fn new(actors: Arc<AgentActors>, archives: Arc<Archives>, llm: Arc<dyn ChatModel>) -> Self {
        Archival { actors, archives, llm }
    }

    /// What agent `agent`'s attached archives find for `query` (embedded
    /// with the agent's embedding as `vector`).
    async fn shared(
        &self,
        agent: &AgentRecord,
        (query, vector): (&str, &[f32]),
        limit: usize,
        filter: &TagFilter,
    ) -> ServiceResult<Vec<SharedHit>> {
        let archives = self.archives.of_agent(&agent.id).await?;
        let known = Some((&agent.embedding, vector));
        self.archives.search(archives, (query, known), limit, filter).await
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
        let shared = self.shared(&agent, (&query, &query_embedding), top_k, &filter).await?;
        let (_, found) = self.search_scored(agent_id, query_embedding, top_k, filter).await?;
        let results: Vec<Value> = merged(&found, &shared, top_k)
            .into_iter()
            .map(|(_, item)| match item {
                Ok(passage) => search_result_json(passage),
                Err(hit) => search_result_json(&hit.as_passage()),
            })
            .collect();
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
    /// score 0. Scoped by `archive_id` when given, else by `agent_id`.
    pub async fn search_passages(&self, request: PassageSearch) -> ServiceResult<Vec<Value>> {
        let (limit, match_all) = check(&request)?;
        let filter = TagFilter { tags: request.tags.clone().unwrap_or_default(), all: match_all };
        let query = request.query.as_deref().filter(|q| !q.trim().is_empty());
        if let Some(archive_id) = request.archive_id.as_deref() {
            return self.search_archive(archive_id, query, limit, &filter).await;
        }
        let Some(agent_id) = request.agent_id.as_deref() else {
            return Err(ServiceError::Invalid("agent_id or archive_id is required".into()));
        };
        let (agent, scored, shared) = match query {
            Some(query) => {
                let agent = self.actors.record(agent_id).await?;
                let query_embedding = embed_one(self.llm.as_ref(), &agent.embedding, query).await?;
                let shared = self.shared(&agent, (query, &query_embedding), limit, &filter).await?;
                let (agent, scored) = self.search_scored(agent_id, query_embedding, limit, filter).await?;
                (agent, scored, shared)
            }
            None => {
                let (agent, found) = self.first_matching(agent_id, &filter, limit).await?;
                (agent, found, Vec::new())
            }
        };
        let results = merged(&scored, &shared, limit);
        assert!(results.len() <= limit, "a search answers at most its limit");
        Ok(results
            .into_iter()
            .map(|(score, item)| {
                let passage = match item {
                    Ok(passage) => passage_json(&agent, passage),
                    Err(hit) => archive_passage_json(&hit.passage, &hit.archive),
                };
                json!({"passage": passage, "score": score, "metadata": {}})
            })
            .collect())
    }

    /// `POST /v1/passages/search` of one archive.
    async fn search_archive(
        &self,
        archive_id: &str,
        query: Option<&str>,
        limit: usize,
        filter: &TagFilter,
    ) -> ServiceResult<Vec<Value>> {
        let archive = self.archives.record(archive_id).await?;
        let hits = match query {
            Some(query) => self.archives.search(vec![archive], (query, None), limit, filter).await?,
            None => self.archives.first_matching(&archive, filter, limit).await?,
        };
        Ok(hits
            .iter()
            .map(|hit| json!({"passage": archive_passage_json(&hit.passage, &hit.archive), "score": hit.score, "metadata": {}}))
            .collect())
    }
}
