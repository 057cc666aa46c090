//! Archives (Letta's `/v1/archives`): named collections of archival
//! passages that several agents can attach and search, beside each agent's
//! own archival memory.
//!
//! The archive store holds each archive's record and the agents it is
//! attached to (the only copy of the attachments); each archive's actor
//! holds its passages and their search codes. Passages are embedded here,
//! outside any actor invocation, with the archive's own embedding, so every
//! vector of one archive comes from one embedding model.
//!
//! An agent's archival search (its `archival_memory_search` tool, `GET
//! /v1/agents/{id}/archival-memory/search`, `POST /v1/passages/search`)
//! asks each attached archive (at most `AGENT_ARCHIVES_COUNT_MAX`) for its
//! `top_k` best through the archive's index, the query embedded once per
//! distinct embedding; the results are merged with the agent's own by score.
//!
//! A deleted archive is gone at once (unlisted, detached from every agent,
//! its actor refusing everything); its keys are reclaimed in bounded
//! batches by a background worker, resumed after a restart from the
//! store's list of deleted archives.

use std::sync::Arc;

use kelpie_core::{ActorId, Env};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::{ChatModel, EmbeddingSettings};
use kelpie_memory::Passage;
use kelpie_runtime::Runtime;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::worker::{Worker, WorkerSpec};
use crate::actors::agent::TagFilter;
use crate::actors::archive::{
    ArchiveActor, ArchiveCommand, ArchivePassage, ArchiveReply, ARCHIVE_INSERT_PASSAGES_COUNT_MAX,
    ARCHIVE_NAMESPACE,
};
use crate::actors::archive_store::{
    ArchiveRecord, ArchiveStoreActor, ArchiveStoreCommand, ArchiveStoreReply, ARCHIVE_STORE_ACTOR,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{new_id, parse_iso_ms, rfc3339_micros};
use crate::letta::embedding_settings_json;
use crate::limits::{RECLAIM_BATCH_KEYS_COUNT, STORE_PAGE_COUNT_MAX};
use crate::page::{json_id, paginate, Page};
use crate::requests::{CreateArchive, CreateArchivePassage, ModifyArchive};

/// Longest passage text, in bytes.
pub const ARCHIVE_PASSAGE_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Most tags of one passage.
pub const ARCHIVE_PASSAGE_TAGS_COUNT_MAX: usize = 64;
/// Pause of the reclaim worker when it found nothing or failed, in milliseconds.
pub const ARCHIVE_RECLAIM_IDLE_POLL_MS: u64 = 1_000;

/// The organization every archive belongs to (Letta's default one: a
/// Kelpie server has a single organization, and Letta's `Archive` requires
/// one).
pub const DEFAULT_ORGANIZATION_ID: &str = "org-00000000-0000-4000-8000-000000000000";

/// Letta's `Archive`.
pub fn archive_json(archive: &ArchiveRecord) -> Value {
    json!({
        "id": archive.id, "name": archive.name, "description": archive.description,
        "metadata": archive.metadata, "vector_db_provider": "native",
        "embedding_config": embedding_settings_json(&archive.embedding),
        "organization_id": DEFAULT_ORGANIZATION_ID, "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(archive.created_ms), "updated_at": rfc3339_micros(archive.updated_ms),
    })
}

/// Letta's `Passage` of an archive.
pub fn archive_passage_json(passage: &ArchivePassage, archive: &ArchiveRecord) -> Value {
    json!({
        "id": passage.id, "text": passage.text, "tags": passage.tags, "metadata": passage.metadata,
        "embedding": passage.embedding, "embedding_config": embedding_settings_json(&archive.embedding),
        "archive_id": archive.id, "source_id": null, "file_id": null, "file_name": null,
        "is_deleted": false, "organization_id": null, "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(passage.created_ms), "updated_at": rfc3339_micros(passage.created_ms),
    })
}

/// A passage found in an archive for an agent's search, with its score.
pub struct SharedHit {
    pub archive: Arc<ArchiveRecord>,
    pub passage: ArchivePassage,
    pub score: f32,
}

impl SharedHit {
    pub fn as_passage(&self) -> Passage {
        self.passage.as_passage()
    }
}

pub struct Archives {
    store: Runtime<ArchiveStoreActor>,
    archives: Runtime<ArchiveActor>,
    actors: Arc<AgentActors>,
    llm: Arc<dyn ChatModel>,
    catalog: ModelCatalog,
    env: Env,
    /// Woken when an archive is deleted (its keys await the worker).
    work: Arc<tokio::sync::Notify>,
    worker: Worker,
}

/// Checks one passage a client gives; the reason when it is refused.
fn check_passage(passage: &CreateArchivePassage) -> ServiceResult<Option<u64>> {
    if passage.text.trim().is_empty() {
        return Err(ServiceError::Invalid("text must not be empty".into()));
    }
    if passage.text.len() > ARCHIVE_PASSAGE_TEXT_BYTES_MAX {
        return Err(ServiceError::Invalid(format!(
            "text is {} bytes, over ARCHIVE_PASSAGE_TEXT_BYTES_MAX = {ARCHIVE_PASSAGE_TEXT_BYTES_MAX}",
            passage.text.len()
        )));
    }
    let tags = passage.tags.as_ref().map_or(0, Vec::len);
    if tags > ARCHIVE_PASSAGE_TAGS_COUNT_MAX {
        return Err(ServiceError::Invalid(format!(
            "{tags} tags, over ARCHIVE_PASSAGE_TAGS_COUNT_MAX = {ARCHIVE_PASSAGE_TAGS_COUNT_MAX}"
        )));
    }
    match &passage.created_at {
        None => Ok(None),
        Some(text) => parse_iso_ms(text).map(Some).ok_or_else(|| {
            ServiceError::Invalid(format!("created_at {text:?} is not an ISO 8601 date and time"))
        }),
    }
}

impl Archives {
    pub(crate) fn new(
        (store, archives): (Runtime<ArchiveStoreActor>, Runtime<ArchiveActor>),
        actors: Arc<AgentActors>,
        llm: Arc<dyn ChatModel>,
        catalog: ModelCatalog,
        env: Env,
    ) -> Self {
        Archives {
            store,
            archives,
            actors,
            llm,
            catalog,
            env,
            work: Arc::new(tokio::sync::Notify::new()),
            worker: Worker::default(),
        }
    }

    fn store_id() -> ActorId {
        ActorId::new(ARCHIVE_STORE_ACTOR.0, ARCHIVE_STORE_ACTOR.1).expect("a valid actor id")
    }

    async fn store(&self, command: ArchiveStoreCommand) -> ServiceResult<ArchiveStoreReply> {
        Ok(self.store.invoke(&Self::store_id(), command).await?)
    }

    async fn archive(&self, archive_id: &str, command: ArchiveCommand) -> ServiceResult<ArchiveReply> {
        let missing = || ServiceError::ArchiveNotFound(archive_id.to_string());
        if !archive_id.starts_with("archive-") {
            return Err(missing());
        }
        let actor_id = ActorId::new(ARCHIVE_NAMESPACE, archive_id).map_err(|_| missing())?;
        Ok(self.archives.invoke(&actor_id, command).await?)
    }

    /// Archive `id`'s record; not found for an id no archive can have.
    pub async fn record(&self, id: &str) -> ServiceResult<ArchiveRecord> {
        if !id.starts_with("archive-") {
            return Err(ServiceError::ArchiveNotFound(id.to_string()));
        }
        match self.store(ArchiveStoreCommand::Get { id: id.to_string() }).await? {
            ArchiveStoreReply::Archive(archive) => Ok(*archive),
            _ => Err(unexpected("archive get")),
        }
    }

    async fn records(&self, command: ArchiveStoreCommand) -> ServiceResult<Vec<ArchiveRecord>> {
        match self.store(command).await? {
            ArchiveStoreReply::Archives(archives) => Ok(archives),
            _ => Err(unexpected("archive list")),
        }
    }

    pub async fn create(&self, request: CreateArchive) -> ServiceResult<Value> {
        let from_config = request.embedding_config.as_ref().and_then(|config| config.handle());
        let embedding =
            self.catalog.resolve_embedding(request.embedding.as_deref().or(from_config.as_deref()))?;
        let now = self.env.clock.wall_ms();
        let record = ArchiveRecord {
            id: new_id("archive", self.env.rng.as_ref()),
            name: request.name,
            description: request.description,
            metadata: None,
            embedding,
            agent_ids: Vec::new(),
            created_ms: now,
            updated_ms: now,
        };
        match self.store(ArchiveStoreCommand::Create(Box::new(record))).await? {
            ArchiveStoreReply::Archive(archive) => Ok(archive_json(&archive)),
            _ => Err(unexpected("archive create")),
        }
    }

    /// `GET /v1/archives/`: a page of archives (creation order), of one
    /// name and attached to one agent when given (404 for an unknown agent).
    pub async fn list(
        &self,
        name: Option<&str>,
        agent_id: Option<&str>,
        page: &Page,
    ) -> ServiceResult<Vec<Value>> {
        let archives = match agent_id {
            Some(agent_id) => {
                self.actors.record(agent_id).await?;
                self.records(ArchiveStoreCommand::OfAgent { agent_id: agent_id.to_string() }).await?
            }
            None => self.records(ArchiveStoreCommand::List).await?,
        };
        let archives: Vec<Value> = archives
            .iter()
            .filter(|archive| name.is_none_or(|name| archive.name == name))
            .map(archive_json)
            .collect();
        Ok(paginate(archives, json_id, page))
    }

    /// Every archive with the number of passages it holds, in creation
    /// order (at most `ARCHIVES_COUNT_MAX`, one small invocation each).
    pub async fn passage_counts(&self) -> ServiceResult<Vec<(ArchiveRecord, u64)>> {
        let archives = self.records(ArchiveStoreCommand::List).await?;
        let mut counted = Vec::with_capacity(archives.len());
        for archive in archives {
            let count = match self.archive(&archive.id, ArchiveCommand::Count).await {
                Ok(ArchiveReply::Count(count)) => count,
                Ok(_) => return Err(unexpected("archive count")),
                Err(ServiceError::ArchiveNotFound(_)) => continue,
                Err(error) => return Err(error),
            };
            counted.push((archive, count));
        }
        Ok(counted)
    }

    pub async fn get(&self, id: &str) -> ServiceResult<Value> {
        Ok(archive_json(&self.record(id).await?))
    }

    /// Sets what `request` gives (name, description).
    pub async fn modify(&self, id: &str, request: ModifyArchive) -> ServiceResult<Value> {
        let mut record = self.record(id).await?;
        if let Some(name) = request.name {
            record.name = name;
        }
        if request.description.is_some() {
            record.description = request.description;
        }
        record.updated_ms = self.env.clock.wall_ms();
        match self.store(ArchiveStoreCommand::Replace(Box::new(record))).await? {
            ArchiveStoreReply::Archive(archive) => Ok(archive_json(&archive)),
            _ => Err(unexpected("archive modify")),
        }
    }

    /// Gone at once: unlisted and detached from every agent in one
    /// transaction; its passages are reclaimed in the background.
    pub async fn delete(&self, id: &str) -> ServiceResult<()> {
        self.record(id).await?;
        self.store(ArchiveStoreCommand::Delete { id: id.to_string() }).await?;
        // Were this lost to a crash, the worker marks the actor deleted
        // before reclaiming it: the store's list says it is.
        self.archive(id, ArchiveCommand::DeleteAll).await?;
        self.work.notify_one();
        Ok(())
    }

    /// `GET /v1/archives/{id}/agents`: the attached agents as Letta's
    /// `AgentState`, paged by agent id in attach order.
    pub async fn agents(&self, archive_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let archive = self.record(archive_id).await?;
        let ids: Vec<Value> = archive.agent_ids.iter().map(|id| json!({"id": id})).collect();
        let mut agents = Vec::new();
        for item in paginate(ids, json_id, page) {
            match self.actors.record(json_id(&item)).await {
                Ok(agent) => agents.push(self.actors.render(&agent).await?),
                // Deleted since (its detach follows its delete).
                Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(agents)
    }

    /// Embeds and stores `passages` in archive `archive_id`, in one
    /// transaction; Letta's `Passage` of each, in order.
    pub async fn insert(
        &self,
        archive_id: &str,
        passages: Vec<CreateArchivePassage>,
    ) -> ServiceResult<Vec<Value>> {
        if passages.len() > ARCHIVE_INSERT_PASSAGES_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "{} passages, over ARCHIVE_INSERT_PASSAGES_COUNT_MAX = {ARCHIVE_INSERT_PASSAGES_COUNT_MAX} per request",
                passages.len()
            )));
        }
        let mut times = Vec::with_capacity(passages.len());
        for passage in &passages {
            times.push(check_passage(passage)?);
        }
        let archive = self.record(archive_id).await?;
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = passages.iter().map(|passage| passage.text.clone()).collect();
        let vectors = self.llm.embed(&archive.embedding, &texts).await?;
        assert_eq!(vectors.len(), texts.len(), "one embedding per text");
        let now = self.env.clock.wall_ms();
        let stored: Vec<ArchivePassage> = passages
            .into_iter()
            .zip(vectors)
            .zip(times)
            .map(|((passage, embedding), created_ms)| ArchivePassage {
                id: new_id("passage", self.env.rng.as_ref()),
                text: passage.text,
                tags: passage.tags,
                metadata: Value::Object(passage.metadata.unwrap_or_default()),
                embedding,
                created_ms: created_ms.unwrap_or(now),
            })
            .collect();
        let ArchiveReply::Passages(stored) = self.archive(archive_id, ArchiveCommand::Insert(stored)).await?
        else {
            return Err(unexpected("archive insert"));
        };
        Ok(stored.iter().map(|passage| archive_passage_json(passage, &archive)).collect())
    }

    pub async fn delete_passage(&self, archive_id: &str, passage_id: &str) -> ServiceResult<()> {
        self.record(archive_id).await?;
        self.archive(archive_id, ArchiveCommand::Delete { id: passage_id.to_string() }).await?;
        Ok(())
    }

    /// One page of archive `archive_id`'s passages, oldest first.
    pub async fn passages(
        &self,
        archive_id: &str,
        after: Option<String>,
        limit: usize,
    ) -> ServiceResult<Vec<Value>> {
        let archive = self.record(archive_id).await?;
        let ArchiveReply::Passages(passages) =
            self.archive(archive_id, ArchiveCommand::Page { after, limit }).await?
        else {
            return Err(unexpected("archive passages"));
        };
        Ok(passages.iter().map(|passage| archive_passage_json(passage, &archive)).collect())
    }

    /// Attaches (`attached`) or detaches archive `archive_id` and agent
    /// `agent_id`; both must exist. Detaching what is not attached changes nothing.
    pub async fn attach(&self, agent_id: &str, archive_id: &str, attached: bool) -> ServiceResult<()> {
        self.actors.record(agent_id).await?;
        self.record(archive_id).await?;
        let command = ArchiveStoreCommand::Attach {
            id: archive_id.to_string(),
            agent_id: agent_id.to_string(),
            attached,
        };
        self.store(command).await?;
        Ok(())
    }

    /// The archives agent `agent_id` has attached.
    pub async fn of_agent(&self, agent_id: &str) -> ServiceResult<Vec<ArchiveRecord>> {
        self.records(ArchiveStoreCommand::OfAgent { agent_id: agent_id.to_string() }).await
    }

    /// Agent `agent_id` is deleted: it leaves every archive.
    pub async fn forget_agent(&self, agent_id: &str) -> ServiceResult<()> {
        self.store(ArchiveStoreCommand::ForgetAgent { agent_id: agent_id.to_string() }).await?;
        Ok(())
    }

    /// The `top_k` best passages passing `filter` among `archives` for
    /// `query`, best first. `known` is the query already embedded with
    /// that embedding (the agent's), reused for archives embedded alike.
    pub async fn search(
        &self,
        archives: Vec<ArchiveRecord>,
        (query, known): (&str, Option<(&EmbeddingSettings, &[f32])>),
        top_k: usize,
        filter: &TagFilter,
    ) -> ServiceResult<Vec<SharedHit>> {
        let mut embedded: Vec<(EmbeddingSettings, Vec<f32>)> = Vec::new();
        if let Some((settings, vector)) = known {
            embedded.push((settings.clone(), vector.to_vec()));
        }
        let mut hits = Vec::new();
        for archive in archives {
            let vector = match embedded.iter().find(|(settings, _)| *settings == archive.embedding) {
                Some((_, vector)) => vector.clone(),
                None => {
                    let mut vectors = self.llm.embed(&archive.embedding, &[query.to_string()]).await?;
                    assert_eq!(vectors.len(), 1, "one text, one embedding");
                    let vector = vectors.remove(0);
                    embedded.push((archive.embedding.clone(), vector.clone()));
                    vector
                }
            };
            let command = ArchiveCommand::Search { query: vector, top_k, filter: filter.clone() };
            let found = match self.archive(&archive.id, command).await {
                Ok(ArchiveReply::Scored(found)) => found,
                Ok(_) => return Err(unexpected("archive search")),
                // Deleted between the listing and the search.
                Err(ServiceError::ArchiveNotFound(_)) => continue,
                Err(err) => return Err(err),
            };
            let archive = Arc::new(archive);
            hits.extend(found.into_iter().map(|(passage, score)| SharedHit {
                archive: Arc::clone(&archive),
                passage,
                score,
            }));
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(top_k);
        Ok(hits)
    }

    /// The first `limit` passages of `archive` passing `filter`, oldest
    /// first with score 0, read page by page until there are enough.
    pub async fn first_matching(
        &self,
        archive: &ArchiveRecord,
        filter: &TagFilter,
        limit: usize,
    ) -> ServiceResult<Vec<SharedHit>> {
        let shared = Arc::new(archive.clone());
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let command = ArchiveCommand::Page { after: after.clone(), limit: STORE_PAGE_COUNT_MAX };
            let ArchiveReply::Passages(passages) = self.archive(&archive.id, command).await? else {
                return Err(unexpected("archive passages"));
            };
            let full = passages.len() == STORE_PAGE_COUNT_MAX;
            after = passages.last().map(|passage| passage.id.clone());
            found.extend(
                passages
                    .into_iter()
                    .filter(|passage| filter.matches(&passage.as_passage()))
                    .map(|passage| SharedHit { archive: Arc::clone(&shared), passage, score: 0.0 }),
            );
            if !full || found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
        }
    }

    /// Reclaims every deleted archive's keys; how many archives were finished.
    pub async fn reclaim_once(&self) -> ServiceResult<usize> {
        let ArchiveStoreReply::Ids(deleted) = self.store(ArchiveStoreCommand::Deleted).await? else {
            return Err(unexpected("deleted archives"));
        };
        for id in &deleted {
            self.archive(id, ArchiveCommand::DeleteAll).await?;
            loop {
                match self.archive(id, ArchiveCommand::Reclaim { keys_max: RECLAIM_BATCH_KEYS_COUNT }).await?
                {
                    ArchiveReply::Reclaimed { done: true } => break,
                    ArchiveReply::Reclaimed { done: false } => continue,
                    _ => return Err(unexpected("archive reclaim")),
                }
            }
            self.store(ArchiveStoreCommand::Reclaimed { id: id.clone() }).await?;
        }
        Ok(deleted.len())
    }

    /// Starts the reclaim worker: a pass whenever an archive is deleted and
    /// at least every `ARCHIVE_RECLAIM_IDLE_POLL_MS`.
    pub fn start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let spec = WorkerSpec {
            name: "archives",
            failure: "reclaiming deleted archives failed",
            idle_poll_ms: ARCHIVE_RECLAIM_IDLE_POLL_MS,
            wake: Some(Arc::clone(&self.work)),
        };
        self.worker.start(&self.env, spec, move || {
            let this = Arc::clone(&this);
            async move { this.reclaim_once().await }
        });
    }

    pub async fn shutdown(&self) {
        self.worker.stop();
        self.archives.shutdown().await;
        self.store.shutdown().await;
    }
}
