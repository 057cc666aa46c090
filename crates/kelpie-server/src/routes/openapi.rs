//! `GET /openapi.json`: an OpenAPI 3.1 document of every route this server
//! serves. [`ROUTES`] is the list of operations (a test checks that every
//! route registered in `routes/*.rs` is in it and every entry is served, so
//! the document cannot drift from the router). Each operation Letta 0.16.8
//! has takes its parameters, request body and success response, typed, from
//! the wire contract in `openapi/letta-contract.json` (the shapes of Letta's
//! reference, vendored by `scripts/vendor_letta_reference.py`), with the
//! places Kelpie answers otherwise on purpose applied on top
//! ([`RESPONSE_OVERRIDES`], [`EXTRA_FIELDS`]). Kelpie's own operations are
//! described loosely. Errors are the exact `{"detail", "trace_id"}` body;
//! the bearer scheme is declared, with the routes open without it marked.
//!
//! That the server keeps to this document is checked by schemathesis
//! against a running server (`tests/python/test_openapi_fuzz.py`).

use std::sync::OnceLock;

use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::state::{AppState, SERVER_VERSION};

/// One served operation: method, path (Letta's spelling; the variant with
/// or without a trailing slash is served too), summary, and the Letta
/// schema names of its request body and response, if any.
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub body: Option<&'static str>,
    pub response: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    response: &'static str,
) -> RouteDoc {
    RouteDoc { method, path, summary, body, response }
}

/// Every operation served.
pub const ROUTES: &[RouteDoc] = &[
    route("get", "/openapi.json", "This document", None, "OpenAPI"),
    route("get", "/", "The web console's page (HTML; answered without a bearer token: the page holds no data)", None, "text/html"),
    route("get", "/console/{asset}", "A file of the web console (CSS, JavaScript, SVG; no bearer token needed)", None, "text/css, text/javascript, image/svg+xml"),
    route("get", "/v1/health/", "Liveness and version", None, "Health"),
    route("get", "/v1/ready/", "Readiness: answers once the node has started", None, "Health"),
    route("post", "/v1/auth", "Log in with the server's API key as password: the user's uuid, is_admin (no bearer token needed)", Some("AuthRequest"), "AuthResponse"),
    route("get", "/v1/embeddings/total_storage_size", "Estimated size of the stored archival embeddings in the storage-unit header's unit (B, KB, MB, GB, TB; GB default)", None, "number"),
    route("get", "/v1/cluster/nodes", "Cluster members as this node sees them (Kelpie only)", None, "ClusterNodes"),
    route(
        "get",
        "/v1/agents/",
        "List agents (limit, before, after, order, name, tags)",
        None,
        "AgentState[]",
    ),
    route("post", "/v1/agents/", "Create an agent", Some("CreateAgentRequest"), "AgentState"),
    route("get", "/v1/agents/count", "How many agents match (name, tags, match_all_tags)", None, "integer"),
    route("post", "/v1/agents/{agent_id}/recompile", "The system prompt the agent's next step sends (built at every step; nothing stored)", None, "string"),
    route("post", "/v1/agents/{agent_id}/system-prompt/recompile", "As /recompile", None, "string"),
    route("post", "/v1/agents/{agent_id}/messages/preview-raw-payload", "The body the next step would send its provider with these messages (nothing sent or stored)", Some("LettaRequest"), "object"),
    route("post", "/v1/agents/{agent_id}/generate", "One completion from the agent's model (no memory, tools or storage)", Some("GenerateRequest"), "GenerateResponse"),
    route("get", "/v1/telemetry/{step_id}", "A step's provider trace: null (deprecated name of /v1/steps/{step_id}/trace)", None, "ProviderTrace"),
    route("post", "/v1/conversations/", "Create a conversation of an agent (agent_id query): its own message history and context window, sharing the agent's memory", Some("CreateConversation"), "Conversation"),
    route("get", "/v1/conversations/", "List conversations (agent_id, after, limit, summary_search, order, order_by)", None, "Conversation[]"),
    route("get", "/v1/conversations/{conversation_id}", "Retrieve a conversation with its in-context message ids", None, "Conversation"),
    route("patch", "/v1/conversations/{conversation_id}", "Modify a conversation (summary, model, model_settings, last_message_at)", Some("UpdateConversation"), "Conversation"),
    route("delete", "/v1/conversations/{conversation_id}", "Delete a conversation and its messages", None, "null"),
    route("post", "/v1/conversations/{conversation_id}/fork", "Fork a conversation (or an agent's own history: default with agent_id) into a new one", None, "Conversation"),
    route("get", "/v1/conversations/{conversation_id}/messages", "List a conversation's messages (paged)", None, "LettaMessageUnion[]"),
    route("post", "/v1/conversations/{conversation_id}/messages", "Send messages to a conversation: a turn in its history (streams unless streaming is false)", Some("ConversationMessageRequest"), "LettaResponse"),
    route("post", "/v1/conversations/{conversation_id}/messages/preview-raw-payload", "The provider request a conversation's next step would send", Some("ConversationMessageRequest"), "object"),
    route("post", "/v1/conversations/{conversation_id}/stream", "Resume the stream of a conversation's background run", Some("RetrieveStreamRequest"), "LettaStreamingResponse"),
    route("post", "/v1/conversations/{conversation_id}/cancel", "Cancel a conversation's active runs", None, "object"),
    route("post", "/v1/conversations/{conversation_id}/recompile", "The system prompt a conversation's next step sends", Some("CompactionRequest"), "string"),
    route("post", "/v1/conversations/{conversation_id}/compact", "Summarize a conversation's context window now", Some("CompactionRequest"), "CompactionResponse"),
    route("get", "/v1/identities/", "List identities (name, identifier_key, identity_type, project_id; paged)", None, "Identity[]"),
    route("post", "/v1/identities/", "Create an identity (its identifier_key unique)", Some("IdentityCreate"), "Identity"),
    route("put", "/v1/identities/", "Create or replace the identity with the identifier_key", Some("IdentityUpsert"), "Identity"),
    route("get", "/v1/identities/count", "How many identities", None, "integer"),
    route("get", "/v1/identities/{identity_id}", "Retrieve an identity", None, "Identity"),
    route("patch", "/v1/identities/{identity_id}", "Modify an identity (the fields given)", Some("IdentityUpdate"), "Identity"),
    route("delete", "/v1/identities/{identity_id}", "Delete an identity (its agents and blocks stay)", None, "null"),
    route("put", "/v1/identities/{identity_id}/properties", "Replace an identity's properties", Some("IdentityProperty[]"), "Identity"),
    route("get", "/v1/identities/{identity_id}/agents", "An identity's agents, paged", None, "AgentState[]"),
    route("get", "/v1/identities/{identity_id}/blocks", "An identity's standalone blocks, paged", None, "Block[]"),
    route("patch", "/v1/agents/{agent_id}/identities/attach/{identity_id}", "Link an agent and an identity", None, "AgentState"),
    route("patch", "/v1/agents/{agent_id}/identities/detach/{identity_id}", "Unlink an agent and an identity", None, "AgentState"),
    route("get", "/v1/archives/", "List archives (name, agent_id; paged, newest first by default)", None, "Archive[]"),
    route("post", "/v1/archives/", "Create an archive (its embedding fixed at creation)", Some("ArchiveCreateRequest"), "Archive"),
    route("get", "/v1/archives/{archive_id}", "Retrieve an archive", None, "Archive"),
    route("patch", "/v1/archives/{archive_id}", "Modify an archive's name or description", Some("ArchiveUpdateRequest"), "Archive"),
    route("delete", "/v1/archives/{archive_id}", "Delete an archive and its passages (detached from every agent)", None, "null"),
    route("get", "/v1/archives/{archive_id}/agents", "The agents an archive is attached to, paged (attach order)", None, "AgentState[]"),
    route("post", "/v1/archives/{archive_id}/passages", "Add a passage, embedded with the archive's embedding", Some("PassageCreateRequest"), "Passage"),
    route("post", "/v1/archives/{archive_id}/passages/batch", "Add passages in one transaction", Some("PassageBatchCreateRequest"), "Passage[]"),
    route("delete", "/v1/archives/{archive_id}/passages/{passage_id}", "Delete a passage of an archive", None, "null"),
    route("patch", "/v1/agents/{agent_id}/archives/attach/{archive_id}", "Attach an archive: the agent's archival search covers it", None, "null"),
    route("patch", "/v1/agents/{agent_id}/archives/detach/{archive_id}", "Detach an archive from an agent", None, "null"),
    route("patch", "/v1/blocks/{block_id}/identities/attach/{identity_id}", "Link a standalone block and an identity", None, "Block"),
    route("patch", "/v1/blocks/{block_id}/identities/detach/{identity_id}", "Unlink a standalone block and an identity", None, "Block"),
    route("get", "/v1/groups/", "List groups (manager_type, project_id; hidden ones left out; oldest first, paged)", None, "Group[]"),
    route("post", "/v1/groups/", "Create a group (round_robin, supervisor, dynamic, sleeptime, voice_sleeptime)", Some("GroupCreate"), "Group"),
    route("get", "/v1/groups/count", "How many groups", None, "integer"),
    route("get", "/v1/groups/{group_id}", "Retrieve a group", None, "Group"),
    route("patch", "/v1/groups/{group_id}", "Modify a group (members, description, its manager's settings)", Some("GroupUpdate"), "Group"),
    route("delete", "/v1/groups/{group_id}", "Delete a group (its agents stay)", None, "object"),
    route("get", "/v1/groups/{group_id}/messages", "The messages of the group's turns (newest first, paged)", None, "LettaMessageUnion[]"),
    route("post", "/v1/groups/{group_id}/messages", "One turn of a round robin group across its members (Kelpie; Letta 0.16.8 has none)", Some("LettaRequest"), "LettaResponse"),
    route("patch", "/v1/groups/{group_id}/messages/{message_id}", "Edit a message of an agent of the group", Some("LettaMessageUpdateUnion"), "LettaMessageUnion"),
    route("patch", "/v1/groups/{group_id}/reset-messages", "Delete the members' messages; the group forgets its turns", None, "null"),
    route("patch", "/v1/groups/{group_id}/blocks/attach/{block_id}", "Share a standalone block with every agent of the group", None, "null"),
    route("patch", "/v1/groups/{group_id}/blocks/detach/{block_id}", "Stop sharing a block with the agents of the group", None, "null"),
    route("get", "/v1/agents/{agent_id}/groups", "The groups an agent is a member of (manager_type; newest first, paged)", None, "Group[]"),
    route("get", "/v1/folders/", "List folders (oldest first; name; paged)", None, "Folder[]"),
    route("post", "/v1/folders/", "Create a folder (its name unique)", Some("SourceCreate"), "Folder"),
    route("get", "/v1/folders/count", "How many folders", None, "integer"),
    route("get", "/v1/folders/metadata", "Totals of files and bytes, per folder when asked", None, "OrganizationSourcesStats"),
    route("get", "/v1/folders/name/{folder_name}", "The id of the folder with this name", None, "string"),
    route("get", "/v1/folders/{folder_id}", "Retrieve a folder", None, "Folder"),
    route("patch", "/v1/folders/{folder_id}", "Modify name, description, instructions, metadata", Some("SourceUpdate"), "Folder"),
    route("delete", "/v1/folders/{folder_id}", "Delete a folder and its files", None, "null"),
    route("post", "/v1/folders/{folder_id}/upload", "Upload a file (multipart, streamed); processed in the background", Some("Body_upload_file_to_folder"), "FileMetadata"),
    route("get", "/v1/folders/{folder_id}/agents", "The ids of the agents the folder is attached to", None, "string[]"),
    route("get", "/v1/folders/{folder_id}/passages", "The passages of the completed files, paged", None, "Passage[]"),
    route("get", "/v1/folders/{folder_id}/files", "The files, paged (include_content)", None, "FileMetadata[]"),
    route("get", "/v1/folders/{folder_id}/files/{file_id}", "A file and its processing status", None, "FileMetadata"),
    route("delete", "/v1/folders/{folder_id}/{file_id}", "Delete a file", None, "null"),
    route("get", "/v1/sources/", "List sources (oldest first; name; paged)", None, "Source[]"),
    route("post", "/v1/sources/", "Create a source (its name unique)", Some("SourceCreate"), "Source"),
    route("get", "/v1/sources/count", "How many sources", None, "integer"),
    route("get", "/v1/sources/metadata", "Totals of files and bytes, per folder when asked", None, "OrganizationSourcesStats"),
    route("get", "/v1/sources/name/{folder_name}", "The id of the folder with this name", None, "string"),
    route("get", "/v1/sources/{folder_id}", "Retrieve a source", None, "Source"),
    route("patch", "/v1/sources/{folder_id}", "Modify name, description, instructions, metadata", Some("SourceUpdate"), "Source"),
    route("delete", "/v1/sources/{folder_id}", "Delete a folder and its files", None, "null"),
    route("post", "/v1/sources/{folder_id}/upload", "Upload a file (multipart, streamed); processed in the background", Some("Body_upload_file_to_folder"), "FileMetadata"),
    route("get", "/v1/sources/{folder_id}/agents", "The ids of the agents the folder is attached to", None, "string[]"),
    route("get", "/v1/sources/{folder_id}/passages", "The passages of the completed files, paged", None, "Passage[]"),
    route("get", "/v1/sources/{folder_id}/files", "The files, paged (include_content)", None, "FileMetadata[]"),
    route("get", "/v1/sources/{folder_id}/files/{file_id}", "A file and its processing status", None, "FileMetadata"),
    route("delete", "/v1/sources/{folder_id}/{file_id}", "Delete a file", None, "null"),
    route("get", "/v1/agents/{agent_id}/folders", "The agent's folders, paged", None, "Source[]"),
    route("patch", "/v1/agents/{agent_id}/folders/attach/{folder_id}", "Attach a folder (with the file tools)", None, "AgentState"),
    route("patch", "/v1/agents/{agent_id}/folders/detach/{folder_id}", "Detach a folder", None, "AgentState"),
    route("get", "/v1/agents/{agent_id}/sources", "The agent's folders, paged", None, "Source[]"),
    route("patch", "/v1/agents/{agent_id}/sources/attach/{folder_id}", "Attach a folder (with the file tools)", None, "AgentState"),
    route("patch", "/v1/agents/{agent_id}/sources/detach/{folder_id}", "Detach a folder", None, "AgentState"),
    route("get", "/v1/agents/{agent_id}/files", "The files of the agent's folders, open or closed, paged", None, "PaginatedAgentFiles"),
    route("patch", "/v1/agents/{agent_id}/files/close-all", "Close every open file", None, "string[]"),
    route("patch", "/v1/agents/{agent_id}/files/{file_id}/open", "Open a whole file; the files closed to make room", None, "string[]"),
    route("patch", "/v1/agents/{agent_id}/files/{file_id}/close", "Close a file", None, "object"),
    route("patch", "/v1/agents/{agent_id}/messages/{message_id}", "Edit a user message, an assistant reply or its reasoning", Some("UpdateUserMessage"), "LettaMessageUnion"),
    route("post", "/v1/chat/completions", "OpenAI's chat completions with an agent id as the model (stream or not)", Some("ChatCompletionRequest"), "ChatCompletion"),
    route("get", "/v1/messages/", "Every agent's messages in time order (before, after, limit, order, include_return_message_types)", None, "LettaMessageUnion[]"),
    route("get", "/v1/messages/{message_id}", "A message of any agent, by id (as Letta's messages)", None, "LettaMessageUnion[]"),
    route("post", "/v1/messages/search", "Keyword search of messages across agents (agent_id, dates; newest first)", Some("SearchAllMessagesRequest"), "LettaMessageSearchResult[]"),
    route("post", "/v1/agents/messages/search", "Keyword search of messages (agent_id, roles, dates; newest first)", Some("MessageSearchRequest"), "MessageSearchResult[]"),
    route("post", "/v1/messages/batches", "Send messages to many agents: a background run per request", Some("CreateBatch"), "BatchJob"),
    route("get", "/v1/messages/batches", "The running batches, paged", None, "BatchJob[]"),
    route("get", "/v1/messages/batches/{batch_id}", "A batch: running until every run ended", None, "BatchJob"),
    route("get", "/v1/messages/batches/{batch_id}/messages", "The messages a batch's runs stored (agent_id; paged)", None, "LettaBatchMessages"),
    route("patch", "/v1/messages/batches/{batch_id}/cancel", "Cancel a batch and its runs", None, "BatchJob"),
    route("get", "/v1/jobs/", "Jobs of type job: none (Letta 0.16.8 creates none either)", None, "Job[]"),
    route("get", "/v1/jobs/active", "Active jobs: none", None, "Job[]"),
    route("get", "/v1/jobs/{job_id}", "A job: always not found", None, "Job"),
    route("delete", "/v1/jobs/{job_id}", "Delete a job: always not found", None, "Job"),
    route("patch", "/v1/jobs/{job_id}/cancel", "Cancel a job: always not found", None, "Job"),
    route("get", "/v1/tags/", "The distinct tags of the agents (query_text; paged by tag)", None, "string[]"),
    route("get", "/v1/agents/{agent_id}/core-memory", "The agent's core memory (Letta's Memory)", None, "Memory"),
    route("post", "/v1/agents/{agent_id}/export", "Export the agent (as GET; the request body is not read)", Some("ExportAgentRequest"), "string"),
    route("get", "/v1/blocks/count", "How many standalone blocks (label)", None, "integer"),
    route("get", "/v1/blocks/{block_id}/agents", "The agents a block is attached to, paged", None, "AgentState[]"),
    route("get", "/v1/agents/{agent_id}", "Retrieve an agent", None, "AgentState"),
    route("patch", "/v1/agents/{agent_id}", "Modify an agent", Some("UpdateAgent"), "AgentState"),
    route("delete", "/v1/agents/{agent_id}", "Delete an agent and its messages and passages", None, "object"),
    route("patch", "/v1/agents/{agent_id}/tools/attach/{tool_id}", "Attach a tool", None, "AgentState"),
    route("patch", "/v1/agents/{agent_id}/tools/detach/{tool_id}", "Detach a tool", None, "AgentState"),
    route("post", "/v1/agents/{agent_id}/tools/{tool_name}/run", "Run one of the agent's tools once with its environment", Some("ToolExecuteRequest"), "ToolExecutionResult"),
    route("patch", "/v1/agents/{agent_id}/tools/approval/{tool_name}", "Whether calls of a tool wait for approval (requires_approval in body or query)", Some("ModifyApprovalRequest"), "AgentState"),
    route("get", "/v1/agents/{agent_id}/core-memory/blocks", "List core memory blocks", None, "Block[]"),
    route("get", "/v1/agents/{agent_id}/core-memory/blocks/{label}", "Retrieve a block", None, "Block"),
    route(
        "patch",
        "/v1/agents/{agent_id}/core-memory/blocks/{label}",
        "Modify a block (limits enforced)",
        Some("BlockUpdate"),
        "Block",
    ),
    route(
        "patch",
        "/v1/agents/{agent_id}/core-memory/blocks/attach/{block_id}",
        "Attach a standalone block",
        None,
        "AgentState",
    ),
    route(
        "patch",
        "/v1/agents/{agent_id}/core-memory/blocks/detach/{block_id}",
        "Detach a block",
        None,
        "AgentState",
    ),
    route(
        "get",
        "/v1/blocks/",
        "List standalone blocks (label, limit, before, after, order)",
        None,
        "BlockResponse[]",
    ),
    route("post", "/v1/blocks/", "Create a standalone block", Some("CreateBlock"), "BlockResponse"),
    route("get", "/v1/blocks/{block_id}", "Retrieve a standalone block", None, "BlockResponse"),
    route(
        "patch",
        "/v1/blocks/{block_id}",
        "Modify a standalone block and every attached agent's copy",
        Some("BlockUpdate"),
        "BlockResponse",
    ),
    route("delete", "/v1/blocks/{block_id}", "Delete a standalone block, detaching it", None, "object"),
    route(
        "get",
        "/v1/agents/{agent_id}/messages",
        "List messages (limit, before, after, order)",
        None,
        "LettaMessageUnion[]",
    ),
    route(
        "post",
        "/v1/agents/{agent_id}/messages",
        "Send messages; runs the agent loop",
        Some("LettaRequest"),
        "LettaResponse",
    ),
    route(
        "post",
        "/v1/agents/{agent_id}/messages/stream",
        "Send messages; steps as Server-Sent Events",
        Some("LettaStreamingRequest"),
        "text/event-stream",
    ),
    route(
        "post",
        "/v1/agents/{agent_id}/messages/async",
        "Send messages in the background; returns a run",
        Some("LettaAsyncRequest"),
        "Run",
    ),
    route(
        "post",
        "/v1/agents/{agent_id}/messages/cancel",
        "Cancel active runs (synchronous, streaming or background)",
        Some("CancelAgentRunRequest"),
        "object",
    ),
    route(
        "patch",
        "/v1/agents/{agent_id}/reset-messages",
        "Delete the agent's messages",
        Some("ResetMessagesRequest"),
        "AgentState",
    ),
    route(
        "post",
        "/v1/agents/{agent_id}/summarize",
        "Summarize the oldest messages of the context window now (compaction_settings over the agent's)",
        Some("CompactionRequest"),
        "CompactionResponse",
    ),
    route(
        "get",
        "/v1/agents/{agent_id}/context",
        "The context window: what the next prompt holds and its estimated tokens",
        None,
        "ContextWindowOverview",
    ),
    route(
        "get",
        "/v1/agents/{agent_id}/export",
        "Export the agent, its messages, passages and custom tools as one JSON file",
        None,
        "object",
    ),
    route(
        "post",
        "/v1/agents/import",
        "Import an exported agent as a new agent (multipart form: file, override_name, append_copy_suffix, strip_messages)",
        Some("Body_import_agent"),
        "ImportedAgentsResponse",
    ),
    route("get", "/v1/runs/", "List runs (agent_id, statuses, background, stop_reason, active filters; paged)", None, "Run[]"),
    route("get", "/v1/runs/active", "Background runs in flight (agent_id filter), oldest first", None, "Run[]"),
    route("get", "/v1/runs/{run_id}", "Retrieve a run", None, "Run"),
    route("delete", "/v1/runs/{run_id}", "Delete a run (cancelled first if active; its messages stay)", None, "null"),
    route("get", "/v1/runs/{run_id}/messages", "The messages a run stored, paged", None, "LettaMessage[]"),
    route("get", "/v1/runs/{run_id}/usage", "Token usage of a run", None, "UsageStatistics"),
    route("get", "/v1/runs/{run_id}/steps", "The steps of a run, paged", None, "Step[]"),
    route("get", "/v1/runs/{run_id}/metrics", "When a run began, how long it took, its steps and the tools it ran", None, "RunMetrics"),
    route("get", "/v1/runs/{run_id}/trace", "501: Kelpie keeps no OpenTelemetry traces (Letta without ClickHouse answers the same)", None, "object[]"),
    route("post", "/v1/runs/{run_id}/stream", "Follow a run's events from starting_after (SSE, seq_id on each)", Some("RetrieveStreamRequest"), "text/event-stream"),
    route("get", "/v1/steps/", "List steps (agent_id, model, start_date, end_date, feedback, has_feedback, tags, trace_ids; paged, newest first)", None, "Step[]"),
    route("get", "/v1/steps/{step_id}", "Retrieve a step", None, "Step"),
    route("get", "/v1/steps/{step_id}/metrics", "Where a step's time went", None, "StepMetrics"),
    route("get", "/v1/steps/{step_id}/trace", "A step's provider trace: null (Kelpie keeps none)", None, "ProviderTrace"),
    route("get", "/v1/steps/{step_id}/messages", "The messages a step stored, paged", None, "LettaMessage[]"),
    route("patch", "/v1/steps/{step_id}/feedback", "Set a step's feedback and tags", Some("ModifyFeedbackRequest"), "Step"),
    route("patch", "/v1/steps/{step_id}/transaction/{transaction_id}", "Set a step's transaction id", None, "Step"),
    route("get", "/v1/agents/{agent_id}/archival-memory", "List passages", None, "Passage[]"),
    route(
        "post",
        "/v1/agents/{agent_id}/archival-memory",
        "Insert a passage",
        Some("CreateArchivalMemory"),
        "Passage[]",
    ),
    route(
        "get",
        "/v1/agents/{agent_id}/archival-memory/search",
        "Search the agent's passages (query, top_k)",
        None,
        "ArchivalMemorySearchResponse",
    ),
    route("delete", "/v1/agents/{agent_id}/archival-memory/{memory_id}", "Delete a passage", None, "object"),
    route(
        "post",
        "/v1/passages/search",
        "Search an agent's passages and its archives', or one archive's (agent_id or archive_id, query, tags, tag_match_mode, limit)",
        Some("PassageSearchRequest"),
        "PassageSearchResult[]",
    ),
    route("get", "/v1/models/", "LLM models of the configured and created providers (provider_category, provider_name, provider_type)", None, "Model[]"),
    route("get", "/v1/models/embedding", "Embedding models", None, "EmbeddingModel[]"),
    route("get", "/v1/providers/", "List providers, base and created (name, provider_type; paged); keys never shown", None, "Provider[]"),
    route("post", "/v1/providers/", "Create a provider (bring your own key); its models are read", Some("ProviderCreate"), "Provider"),
    route("post", "/v1/providers/check", "Check a key against a provider's model listing", Some("ProviderCheck"), "object"),
    route("get", "/v1/providers/{provider_id}", "Retrieve a provider", None, "Provider"),
    route("patch", "/v1/providers/{provider_id}", "Modify a created provider (api_key required)", Some("ProviderUpdate"), "Provider"),
    route("delete", "/v1/providers/{provider_id}", "Delete a created provider (agents on it fail their next turn)", None, "object"),
    route("post", "/v1/providers/{provider_id}/check", "Check a provider's stored key", None, "object"),
    route("patch", "/v1/providers/{provider_id}/refresh", "Read a created provider's models again", None, "Provider"),
    route(
        "get",
        "/v1/tools/",
        "List built-in, custom and MCP tools (limit, before, after, order, name, names, search, tool_ids, tool_types, exclude_tool_types, return_only_letta_tools)",
        None,
        "Tool[]",
    ),
    route("post", "/v1/tools/run", "Run a Python function once from its source, in a sandbox", Some("ToolRunFromSource"), "ToolReturnMessage"),
    route("post", "/v1/tools/generate-schema", "The JSON schema derived from Python source", Some("CodeInput"), "object"),
    route("post", "/v1/tools/generate-tool", "A Python tool the model writes from a prompt, parsed but not stored", Some("GenerateToolInput"), "GenerateToolOutput"),
    route("get", "/v1/tools/mcp/oauth/callback", "MCP OAuth callback (code, state, error, error_description): hands the code to the connect stream awaiting the state (no bearer token needed)", None, "object"),
    route("post", "/v1/tools/add-base-tools", "The built-in tools (always present)", None, "Tool[]"),
    route("get", "/v1/tools/count", "Count tools (the list's filters)", None, "integer"),
    route("post", "/v1/tools/search", "Rank tools by the words of a query", Some("ToolSearchRequest"), "ToolSearchResult[]"),
    route("get", "/v1/agents/{agent_id}/tools", "List an agent's tools (limit, before, after, order)", None, "Tool[]"),
    route("post", "/v1/mcp-servers/", "Register an MCP server (stdio, sse, streamable_http) and list its tools", Some("CreateMCPServerRequest"), "MCPServer"),
    route("get", "/v1/mcp-servers/", "List MCP servers (secrets masked)", None, "MCPServer[]"),
    route("get", "/v1/mcp-servers/{server_id}", "Retrieve an MCP server", None, "MCPServer"),
    route("patch", "/v1/mcp-servers/{server_id}", "Modify an MCP server", Some("UpdateMCPServerRequest"), "MCPServer"),
    route("delete", "/v1/mcp-servers/{server_id}", "Delete an MCP server and its tools (204)", None, "null"),
    route("get", "/v1/mcp-servers/{server_id}/tools", "List an MCP server's tools", None, "Tool[]"),
    route("get", "/v1/mcp-servers/{server_id}/tools/{tool_id}", "Retrieve an MCP server's tool", None, "Tool"),
    route("post", "/v1/mcp-servers/{server_id}/tools/{tool_id}/run", "Run an MCP tool once", Some("ToolRunRequest"), "ToolExecutionResult"),
    route("get", "/v1/tools/mcp/servers", "Older route: MCP server configs by name", None, "object"),
    route("put", "/v1/tools/mcp/servers", "Older route: register an MCP server", Some("MCPServerConfig"), "MCPServerConfig[]"),
    route("post", "/v1/tools/mcp/servers/test", "Older route: connect with a config without storing it", Some("MCPServerConfig"), "object"),
    route("post", "/v1/tools/mcp/servers/connect", "Older route: as test (answered as JSON, no OAuth)", Some("MCPServerConfig"), "object"),
    route("patch", "/v1/tools/mcp/servers/{server_name}", "Older route: modify an MCP server", Some("object"), "MCPServerConfig"),
    route("delete", "/v1/tools/mcp/servers/{server_name}", "Older route: delete an MCP server and its tools", None, "MCPServerConfig[]"),
    route("get", "/v1/tools/mcp/servers/{server_name}/tools", "Older route: the server's tools as it lists them now", None, "MCPTool[]"),
    route("post", "/v1/tools/mcp/servers/{server_name}/resync", "Older route: list the server's tools again and store them", None, "object"),
    route("post", "/v1/tools/mcp/servers/{server_name}/{tool_name}", "Older route: the server's tool as a Letta tool", None, "Tool"),
    route("post", "/v1/tools/mcp/servers/{server_name}/tools/{tool_name}/execute", "Older route: run an MCP tool once", Some("ToolExecuteRequest"), "ToolExecutionResult"),
    route("patch", "/v1/mcp-servers/{server_id}/refresh", "List an MCP server's tools again and store them", None, "object"),
    route("get", "/v1/mcp-servers/connect/{server_id}", "Connect to a registered MCP server: connection_attempt, the OAuth flow's events when it asks for authorization, then success with its tools or error (SSE)", None, "text/event-stream"),
    route("post", "/v1/tools/", "Create a custom Python tool", Some("ToolCreate"), "Tool"),
    route("put", "/v1/tools/", "Create or replace a custom Python tool by name", Some("ToolCreate"), "Tool"),
    route("get", "/v1/tools/{tool_id}", "Retrieve a tool", None, "Tool"),
    route("patch", "/v1/tools/{tool_id}", "Modify a custom tool", Some("ToolUpdate"), "Tool"),
    route("delete", "/v1/tools/{tool_id}", "Delete a custom tool", None, "object"),
    route("post", "/v1/sandbox-config/", "Create or replace the local sandbox configuration (e2b and modal are refused)", Some("SandboxConfigCreate"), "SandboxConfig"),
    route("get", "/v1/sandbox-config/", "List sandbox configurations (sandbox_type, limit, after)", None, "SandboxConfig[]"),
    route("post", "/v1/sandbox-config/e2b/default", "Refused: Kelpie runs tool code in its own sandboxes", None, "SandboxConfig"),
    route("post", "/v1/sandbox-config/local/default", "The local sandbox configuration, created if missing", None, "SandboxConfig"),
    route("post", "/v1/sandbox-config/local", "Create or replace the local sandbox configuration", Some("LocalSandboxConfig"), "SandboxConfig"),
    route("post", "/v1/sandbox-config/local/recreate-venv", "Install the local configuration's packages afresh", None, "SandboxConfig"),
    route("patch", "/v1/sandbox-config/{sandbox_config_id}", "Modify a sandbox configuration", Some("SandboxConfigUpdate"), "SandboxConfig"),
    route("delete", "/v1/sandbox-config/{sandbox_config_id}", "Delete a sandbox configuration and its variables (204)", None, "null"),
    route("post", "/v1/sandbox-config/{sandbox_config_id}/environment-variable", "Add an environment variable every tool call gets (never echoed back)", Some("SandboxEnvironmentVariableCreate"), "SandboxEnvironmentVariable"),
    route("get", "/v1/sandbox-config/{sandbox_config_id}/environment-variable", "List a configuration's variables (values hidden)", None, "SandboxEnvironmentVariable[]"),
    route("patch", "/v1/sandbox-config/environment-variable/{env_var_id}", "Modify an environment variable", Some("SandboxEnvironmentVariableUpdate"), "SandboxEnvironmentVariable"),
    route("delete", "/v1/sandbox-config/environment-variable/{env_var_id}", "Delete an environment variable (204)", None, "null"),
];

/// Request bodies sent as a form (an upload), not as JSON.
const MULTIPART_BODIES: &[&str] = &["Body_import_agent"];

/// Letta 0.16.8's wire contract: `operations` keyed `"METHOD /path"` and
/// the `schemas` they reach, shapes only (generated; see the module doc).
const LETTA_CONTRACT_JSON: &str = include_str!("../../openapi/letta-contract.json");

/// Operations whose success body Kelpie answers with another schema than
/// Letta's document names, and why (the same list the response-schema
/// test validates against: tests/python/test_response_schemas.py).
pub const RESPONSE_OVERRIDES: &[(&str, &str, &str)] = &[
    (
        "GET /v1/agents/{agent_id}/export",
        "AgentFileSchema",
        "Letta documents a string and answers this object",
    ),
    (
        "POST /v1/agents/{agent_id}/export",
        "AgentFileSchema",
        "Letta documents a string and answers this object",
    ),
    (
        "POST /v1/conversations/{conversation_id}/messages",
        "LettaStreamingResponse",
        "it streams by default: each event is a stream's",
    ),
    ("POST /v1/conversations/{conversation_id}/stream", "LettaStreamingResponse", "each event is a stream's"),
];

/// Fields Kelpie answers beyond a Letta schema that allows no others:
/// `(schema, field, its schema)`.
const EXTRA_FIELDS: &[(&str, &str, &str)] = &[
    // When the step was stored: what the steps list's start_date/end_date compare (docs/runs.md).
    ("Step", "created_at", r#"{"type": "string", "format": "date-time"}"#),
];

/// Paths answered without a bearer token even when the server has a key
/// (`routes/mod.rs`'s `require_api_key`, the console beside the API).
const OPEN_PATHS: &[&str] =
    &["/", "/console/{asset}", "/v1/health/", "/v1/ready/", "/v1/auth", "/v1/tools/mcp/oauth/callback"];

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { document_bytes() }))
}

fn contract() -> &'static Value {
    static CONTRACT: OnceLock<Value> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let contract: Value =
            serde_json::from_str(LETTA_CONTRACT_JSON).expect("openapi/letta-contract.json is JSON");
        assert!(contract["operations"].is_object() && contract["schemas"].is_object());
        contract
    })
}

/// `path` with every `{parameter}` written `{}`: Kelpie and Letta name some
/// path parameters differently (`{folder_id}` for `{source_id}`); the URL
/// is the same.
pub fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') && segment.ends_with('}') { "{}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// Letta's operation served as `doc`, with its key (`"METHOD /path"` in
/// Letta's spelling).
fn letta_operation(doc: &RouteDoc) -> Option<(String, &'static Value)> {
    let method = doc.method.to_uppercase();
    let shape = path_shape(doc.path);
    contract()["operations"].as_object()?.iter().find_map(|(key, op)| {
        let (op_method, op_path) = key.split_once(' ')?;
        (op_method == method && path_shape(op_path) == shape).then(|| (key.clone(), op))
    })
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn error_responses() -> Value {
    json!({"description": "Error: the status says which; the body says why",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}})
}

/// An operation of Kelpie's own: path parameters, a loose body.
fn kelpie_operation(doc: &RouteDoc) -> Value {
    let mut op = json!({
        "summary": doc.summary,
        "operationId": format!("{}_{}", doc.method, doc.path.trim_matches('/').replace(['/', '{', '}', '-', '.'], "_")),
        "tags": ["kelpie"],
        "parameters": path_parameters(doc.path),
        "responses": {
            "200": {"description": format!("Success: {}", doc.response), "content": success_content(doc.response)},
            "default": error_responses(),
        },
    });
    if let Some(body) = doc.body {
        let media_type =
            if MULTIPART_BODIES.contains(&body) { "multipart/form-data" } else { "application/json" };
        op["requestBody"] = json!({
            "required": true,
            "description": format!("Letta's {body}"),
            "content": {media_type: {"schema": {"type": "object", "additionalProperties": true}}},
        });
    }
    op
}

/// An operation Letta has: its contract, typed, with Kelpie's overrides.
fn contract_operation(doc: &RouteDoc, key: &str, letta: &Value) -> Value {
    let status = letta["status"].as_str().expect("contract status is a string");
    let mut content = letta["content"].clone();
    if let Some((_, schema, _)) = RESPONSE_OVERRIDES.iter().find(|(op, _, _)| *op == key) {
        content = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}});
        if key.starts_with("POST /v1/conversations/") {
            content["text/event-stream"] = json!({});
        }
    }
    let mut op = json!({
        "summary": doc.summary,
        "operationId": letta["operation_id"],
        "tags": letta["tags"],
        "parameters": letta["parameters"],
        "responses": {
            status: {"description": format!("Success: {}", doc.response), "content": content},
            "default": error_responses(),
        },
    });
    if let Some(body) = letta.get("request_body") {
        op["requestBody"] = body.clone();
    }
    op
}

/// A success's media types: those a response names (`text/html`, a list
/// of them), else JSON.
fn success_content(response: &str) -> Value {
    if !response.contains('/') {
        return json!({"application/json": {"schema": {}}});
    }
    let types = response.split(", ").map(|media_type| (media_type.to_string(), json!({"schema": {}})));
    Value::Object(types.collect())
}

/// The OpenAPI document of [`ROUTES`], built once.
/// The document as served: printed once, each request answers the same
/// bytes (it is about 350 KB; cloning and printing it per request cost more
/// than the request).
fn document_bytes() -> impl axum::response::IntoResponse {
    static BYTES: OnceLock<axum::body::Bytes> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| serde_json::to_vec(document()).expect("a JSON value prints").into());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], bytes.clone())
}

pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build_document)
}

fn build_document() -> Value {
    let mut paths = Map::new();
    for doc in ROUTES {
        let (path, mut op) = match letta_operation(doc) {
            Some((key, letta)) => {
                let path = key.split_once(' ').map(|(_, path)| path.to_string()).expect("METHOD /path");
                (path, contract_operation(doc, &key, letta))
            }
            None => (doc.path.to_string(), kelpie_operation(doc)),
        };
        if OPEN_PATHS.contains(&doc.path) {
            op["security"] = json!([]);
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        assert!(entry.get(doc.method).is_none(), "{} {} is in ROUTES twice", doc.method, doc.path);
        entry[doc.method] = op;
    }
    let mut schemas = contract()["schemas"].as_object().expect("contract schemas").clone();
    for (schema, field, field_schema) in EXTRA_FIELDS {
        let field_schema: Value = serde_json::from_str(field_schema).expect("EXTRA_FIELDS schema is JSON");
        schemas[*schema]["properties"][*field] = field_schema;
    }
    schemas.insert(
        "HTTPError".to_string(),
        json!({
            "type": "object", "required": ["detail", "trace_id"],
            "properties": {"detail": {"type": "string"}, "trace_id": {"type": "string"}},
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Kelpie agent server (Letta-compatible)", "version": SERVER_VERSION},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "The server's API key (KELPIE_API_KEY), when it has one",
            }},
        },
    })
}
