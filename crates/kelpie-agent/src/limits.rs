//! Limits of the agent loop and of what it shows the LLM, with their units.

/// Longest tool result kept and shown to the LLM, in characters.
pub const TOOL_RETURN_CHARS_MAX: usize = 50_000;
/// Steps of the agent loop per request when the client does not say.
pub const AGENT_STEPS_COUNT_DEFAULT: u32 = 10;
/// Most steps of the agent loop per request.
pub const AGENT_STEPS_COUNT_MAX: u32 = 50;
/// Most in-context messages a step reads; a window holding this many is
/// compacted even when its tokens would fit (so a step's reads stay
/// bounded whatever the history).
pub const PROMPT_MESSAGES_COUNT_MAX: usize = 500;

/// Most rows one store read of an agent's messages or passages returns (a
/// page of a list, a batch of an export); lists longer than this are read
/// page by page.
pub const STORE_PAGE_COUNT_MAX: usize = 1_000;
/// Most conversations one agent holds: a list reads at most this many
/// records, and a list ordered by activity sorts them in memory.
pub const AGENT_CONVERSATIONS_COUNT_MAX: usize = 1_000;
/// Distinct words of one message kept in its search index (the first
/// ones); a message's later words are found by reading, not the index.
pub const MESSAGE_INDEXED_WORDS_COUNT_MAX: usize = 256;
/// Longest word kept in the search index, in bytes; longer runs of letters
/// are not indexed.
pub const SEARCH_WORD_BYTES_MAX: usize = 64;
/// Most candidate messages one conversation search reads.
pub const CONVERSATION_SEARCH_CANDIDATES_COUNT_MAX: usize = 5_000;
/// Keys of ended generations one reclaim invocation deletes.
pub const RECLAIM_BATCH_KEYS_COUNT: usize = 2_000;
/// Candidates an archival search ranks by their codes, per result, before
/// ranking them exactly.
pub const ARCHIVAL_RERANK_FACTOR: usize = 4;
/// More candidates a tag-filtered archival search takes, as a factor: the
/// filter applies to the `ARCHIVAL_RERANK_FACTOR × this × top_k` nearest.
pub const ARCHIVAL_TAGGED_CANDIDATES_FACTOR: usize = 10;
/// Memory the archival indexes of one node's active agents may hold, in
/// bytes; an index that would pass it evicts the others (rebuilt on use).
pub const ARCHIVAL_INDEX_CACHE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Newest messages of an active agent's context window held in memory
/// between turns (the most a prompt takes).
pub const WINDOW_CACHED_MESSAGES_COUNT_MAX: usize = PROMPT_MESSAGES_COUNT_MAX;
/// Memory the cached windows of one node's active agents may hold, in
/// bytes (their messages as stored); past it the least recently used are
/// dropped (read again on use).
pub const WINDOW_CACHE_BYTES_MAX: usize = 256 * 1024 * 1024;

const _: () = assert!(STORE_PAGE_COUNT_MAX <= kelpie_storage::limits::SCAN_ROWS_COUNT_MAX);
const _: () = assert!(WINDOW_CACHED_MESSAGES_COUNT_MAX <= STORE_PAGE_COUNT_MAX);
const _: () = assert!(
    RECLAIM_BATCH_KEYS_COUNT < kelpie_core::limits::TRANSACTION_OPS_COUNT_MAX,
    "a reclaim batch fits one transaction"
);
