//! Embeddings of passage texts and queries, computed in the service (never
//! inside an actor invocation, since a remote provider may be slow) with the
//! agent's embedding: the local hash embedding, or `openai/<model>` through
//! the OpenAI-compatible `/embeddings`. The actor stores and ranks the vectors
//! it is given, so every vector of one agent comes from one embedding.

use kelpie_memory::embed_local;
use kelpie_tools::builtin::{ARCHIVAL_MEMORY_INSERT, ARCHIVAL_MEMORY_SEARCH};
use serde_json::Value;

use super::model::{EmbeddingSettings, ToolCallRecord};
use super::service::{AgentService, ServiceResult};
use crate::models::LOCAL_EMBEDDING_HANDLE;

/// A text and its embedding, handed to the actor with a step.
pub type TextEmbedding = (String, Vec<f32>);

impl AgentService {
    /// One vector per text, in order.
    pub(super) async fn embed_texts(
        &self,
        settings: &EmbeddingSettings,
        texts: &[String],
    ) -> ServiceResult<Vec<Vec<f32>>> {
        if settings.handle == LOCAL_EMBEDDING_HANDLE {
            return Ok(texts.iter().map(|text| embed_local(text)).collect());
        }
        Ok(self.llm.openai.embed(&settings.model, texts).await?)
    }

    pub(super) async fn embed_one(
        &self,
        settings: &EmbeddingSettings,
        text: &str,
    ) -> ServiceResult<Vec<f32>> {
        let mut vectors = self.embed_texts(settings, &[text.to_string()]).await?;
        assert_eq!(vectors.len(), 1, "one text, one embedding");
        Ok(vectors.remove(0))
    }

    /// Embeddings of the texts the archival tools among `calls` will store
    /// or search for, so the actor needs no network during the step.
    pub(super) async fn embed_tool_texts(
        &self,
        settings: &EmbeddingSettings,
        calls: &[ToolCallRecord],
    ) -> ServiceResult<Vec<TextEmbedding>> {
        let texts: Vec<String> = calls.iter().filter_map(archival_text).collect();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self.embed_texts(settings, &texts).await?;
        Ok(texts.into_iter().zip(vectors).collect())
    }
}

/// The text an archival tool call embeds: `content` to insert, `query` to search.
fn archival_text(call: &ToolCallRecord) -> Option<String> {
    let field = match call.name.as_str() {
        ARCHIVAL_MEMORY_INSERT => "content",
        ARCHIVAL_MEMORY_SEARCH => "query",
        _ => return None,
    };
    let args: Value = serde_json::from_str(&call.arguments).ok()?;
    args[field].as_str().map(str::to_string)
}
