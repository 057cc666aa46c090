//! Core memory: the ordered blocks rendered into every prompt.
//!
//! Invariants, checked on every write and asserted on read:
//! - labels are unique and non-empty;
//! - every block's value is at most its `limit` characters;
//! - the values together are at most [`CORE_MEMORY_TOTAL_CHARS_MAX`].
//!
//! A write that would break one is refused with a [`MemoryError`] and the
//! memory is left exactly as it was.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default per-block limit, in characters, when a block is created without one.
pub const BLOCK_VALUE_CHARS_DEFAULT: u64 = 100_000;
/// Largest per-block limit a client may ask for, in characters.
pub const BLOCK_VALUE_CHARS_MAX: u64 = 1_000_000;
/// Largest sum of all block values of one agent, in characters.
pub const CORE_MEMORY_TOTAL_CHARS_MAX: u64 = 2_000_000;
/// Most blocks one agent may hold.
pub const CORE_MEMORY_BLOCKS_COUNT_MAX: usize = 64;
/// Longest block label, in bytes.
pub const BLOCK_LABEL_BYTES_MAX: usize = 128;
/// `insert_line` of [`CoreMemory::insert_lines`] meaning "after the last line".
pub const INSERT_LINE_END: i64 = -1;
/// Most line numbers an ambiguous-replace error lists.
pub const AMBIGUOUS_LINES_COUNT_MAX: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemoryError {
    #[error("block {label:?}: value is {actual_chars} characters, over the block's limit of {limit_chars}")]
    BlockOverLimit { label: String, actual_chars: u64, limit_chars: u64 },
    #[error("core memory would hold {actual_chars} characters, over the total limit of {limit_chars}")]
    TotalOverLimit { actual_chars: u64, limit_chars: u64 },
    #[error("block with label {label:?} not found")]
    BlockNotFound { label: String },
    #[error("block with id {id} not found")]
    BlockIdNotFound { id: String },
    #[error("block with label {label:?} already exists")]
    DuplicateLabel { label: String },
    #[error("block {label:?} is read-only")]
    ReadOnly { label: String },
    #[error("invalid block label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: &'static str },
    #[error("block limit {limit_chars} is outside 1..={max_chars}")]
    InvalidLimit { limit_chars: u64, max_chars: u64 },
    #[error("an agent holds at most {max} blocks")]
    TooManyBlocks { max: usize },
    #[error("block {label:?}: text to replace {old:?} not found")]
    ReplaceTargetMissing { label: String, old: String },
    #[error("block {label:?}: text to replace {old:?} occurs {occurrences_count} times (starting on lines {lines:?}); it must occur exactly once, so include more context")]
    ReplaceTargetAmbiguous { label: String, old: String, occurrences_count: usize, lines: Vec<usize> },
    #[error("block {label:?}: insert_line {insert_line} is outside 0..={lines_count} (or -1 for the end); the block has {lines_count} lines")]
    InsertLineOutOfRange { label: String, insert_line: i64, lines_count: usize },
}

/// One core memory block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub id: String,
    pub label: String,
    pub value: String,
    pub limit: u64,
    pub description: Option<String>,
    pub read_only: bool,
}

fn chars(text: &str) -> u64 {
    text.chars().count() as u64
}

impl Block {
    /// A block checked against its own limits (label, limit, value length).
    pub fn new(id: String, label: String, value: String, limit: Option<u64>) -> Result<Block, MemoryError> {
        let limit = limit.unwrap_or(BLOCK_VALUE_CHARS_DEFAULT);
        check_label(&label)?;
        if limit == 0 || limit > BLOCK_VALUE_CHARS_MAX {
            return Err(MemoryError::InvalidLimit { limit_chars: limit, max_chars: BLOCK_VALUE_CHARS_MAX });
        }
        let block = Block { id, label, value, limit, description: None, read_only: false };
        block.check_value(&block.value)?;
        Ok(block)
    }

    fn check_value(&self, value: &str) -> Result<(), MemoryError> {
        let actual_chars = chars(value);
        if actual_chars > self.limit {
            return Err(MemoryError::BlockOverLimit {
                label: self.label.clone(),
                actual_chars,
                limit_chars: self.limit,
            });
        }
        Ok(())
    }

    /// Checks the block's own limits, for a block changed after
    /// [`Block::new`] (a shared block edited in its store).
    pub fn check(&self) -> Result<(), MemoryError> {
        check_label(&self.label)?;
        if self.limit == 0 || self.limit > BLOCK_VALUE_CHARS_MAX {
            return Err(MemoryError::InvalidLimit {
                limit_chars: self.limit,
                max_chars: BLOCK_VALUE_CHARS_MAX,
            });
        }
        self.check_value(&self.value)
    }
}

fn check_label(label: &str) -> Result<(), MemoryError> {
    let bad = |reason| Err(MemoryError::InvalidLabel { label: label.to_string(), reason });
    if label.is_empty() {
        return bad("must not be empty");
    }
    if label.len() > BLOCK_LABEL_BYTES_MAX {
        return bad("longer than 128 bytes");
    }
    if label.contains('/') || label.chars().any(char::is_control) {
        return bad("must not contain '/' or control characters");
    }
    Ok(())
}

/// An agent's core memory: blocks in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreMemory {
    blocks: Vec<Block>,
}

impl CoreMemory {
    /// Core memory from blocks each already valid on its own; checks labels
    /// are unique and the totals fit.
    pub fn new(blocks: Vec<Block>) -> Result<CoreMemory, MemoryError> {
        if blocks.len() > CORE_MEMORY_BLOCKS_COUNT_MAX {
            return Err(MemoryError::TooManyBlocks { max: CORE_MEMORY_BLOCKS_COUNT_MAX });
        }
        for (index, block) in blocks.iter().enumerate() {
            if blocks[..index].iter().any(|earlier| earlier.label == block.label) {
                return Err(MemoryError::DuplicateLabel { label: block.label.clone() });
            }
        }
        let memory = CoreMemory { blocks };
        memory.check_total(0, None)?;
        Ok(memory)
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn get(&self, label: &str) -> Result<&Block, MemoryError> {
        let block = self
            .blocks
            .iter()
            .find(|block| block.label == label)
            .ok_or_else(|| MemoryError::BlockNotFound { label: label.to_string() })?;
        debug_assert!(chars(&block.value) <= block.limit, "stored block over its limit");
        Ok(block)
    }

    fn index_of(&self, label: &str) -> Result<usize, MemoryError> {
        self.blocks
            .iter()
            .position(|block| block.label == label)
            .ok_or_else(|| MemoryError::BlockNotFound { label: label.to_string() })
    }

    /// Checks the total characters if block `index` held `value` instead
    /// (`None`: as the blocks are now).
    fn check_total(&self, index: usize, value: Option<&str>) -> Result<(), MemoryError> {
        let total: u64 = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, block)| match value {
                Some(value) if i == index => chars(value),
                _ => chars(&block.value),
            })
            .sum();
        if total > CORE_MEMORY_TOTAL_CHARS_MAX {
            return Err(MemoryError::TotalOverLimit {
                actual_chars: total,
                limit_chars: CORE_MEMORY_TOTAL_CHARS_MAX,
            });
        }
        Ok(())
    }

    /// Adds a block (a shared block attached to this agent) at the end;
    /// refused when its label is taken or the count or total would go over.
    pub fn attach(&mut self, block: Block) -> Result<&Block, MemoryError> {
        if self.blocks.iter().any(|existing| existing.label == block.label) {
            return Err(MemoryError::DuplicateLabel { label: block.label });
        }
        if self.blocks.len() >= CORE_MEMORY_BLOCKS_COUNT_MAX {
            return Err(MemoryError::TooManyBlocks { max: CORE_MEMORY_BLOCKS_COUNT_MAX });
        }
        block.check_value(&block.value)?;
        let mut grown = self.clone();
        grown.blocks.push(block);
        grown.check_total(0, None)?;
        *self = grown;
        Ok(&self.blocks[self.blocks.len() - 1])
    }

    /// Removes the block with id `block_id`, answering it.
    pub fn detach(&mut self, block_id: &str) -> Result<Block, MemoryError> {
        let index = self
            .blocks
            .iter()
            .position(|block| block.id == block_id)
            .ok_or_else(|| MemoryError::BlockIdNotFound { id: block_id.to_string() })?;
        Ok(self.blocks.remove(index))
    }

    /// Replaces the block with `block.id` by `block` (a shared block changed
    /// in its store), checking its limits and the total; `Ok(None)` when this
    /// memory does not hold that block.
    pub fn sync(&mut self, block: Block) -> Result<Option<&Block>, MemoryError> {
        let Some(index) = self.blocks.iter().position(|held| held.id == block.id) else {
            return Ok(None);
        };
        block.check()?;
        if self.blocks.iter().any(|other| other.label == block.label && other.id != block.id) {
            return Err(MemoryError::DuplicateLabel { label: block.label });
        }
        self.check_total(index, Some(&block.value))?;
        self.blocks[index] = block;
        Ok(Some(&self.blocks[index]))
    }

    /// The label of the block with id `block_id`, if this memory holds it.
    pub fn label_of(&self, block_id: &str) -> Option<&str> {
        self.blocks.iter().find(|block| block.id == block_id).map(|block| block.label.as_str())
    }

    /// Replaces a block's whole value (an API edit: read-only blocks may be
    /// edited by their owner, only the agent's tools are refused).
    pub fn set_value(&mut self, label: &str, value: String) -> Result<&Block, MemoryError> {
        let index = self.index_of(label)?;
        self.blocks[index].check_value(&value)?;
        self.check_total(index, Some(&value))?;
        self.blocks[index].value = value;
        Ok(&self.blocks[index])
    }

    /// Changes a block's limit; refused if the current value would not fit.
    pub fn set_limit(&mut self, label: &str, limit: u64) -> Result<&Block, MemoryError> {
        let index = self.index_of(label)?;
        if limit == 0 || limit > BLOCK_VALUE_CHARS_MAX {
            return Err(MemoryError::InvalidLimit { limit_chars: limit, max_chars: BLOCK_VALUE_CHARS_MAX });
        }
        let mut changed = self.blocks[index].clone();
        changed.limit = limit;
        changed.check_value(&changed.value)?;
        self.blocks[index] = changed;
        Ok(&self.blocks[index])
    }

    /// Sets description and read-only flag; these carry no limits.
    pub fn set_details(
        &mut self,
        label: &str,
        description: Option<String>,
        read_only: Option<bool>,
    ) -> Result<(), MemoryError> {
        let index = self.index_of(label)?;
        if let Some(description) = description {
            self.blocks[index].description = Some(description);
        }
        if let Some(read_only) = read_only {
            self.blocks[index].read_only = read_only;
        }
        Ok(())
    }

    /// The agent's own append (a tool call): refused on read-only blocks.
    pub fn append(&mut self, label: &str, text: &str) -> Result<&Block, MemoryError> {
        let index = self.writable_index(label)?;
        let current = &self.blocks[index].value;
        let value = if current.is_empty() { text.to_string() } else { format!("{current}\n{text}") };
        self.set_value(label, value)
    }

    /// The agent's own replace of the first occurrence of `old` (a tool call).
    pub fn replace(&mut self, label: &str, old: &str, new: &str) -> Result<&Block, MemoryError> {
        let index = self.writable_index(label)?;
        let current = &self.blocks[index].value;
        if old.is_empty() || !current.contains(old) {
            return Err(MemoryError::ReplaceTargetMissing { label: label.to_string(), old: old.to_string() });
        }
        let value = current.replacen(old, new, 1);
        self.set_value(label, value)
    }

    /// The agent's own `memory_replace`: replaces `old` only when it occurs
    /// exactly once, so an edit never lands on an unintended copy.
    pub fn replace_unique(&mut self, label: &str, old: &str, new: &str) -> Result<&Block, MemoryError> {
        let index = self.writable_index(label)?;
        let current = &self.blocks[index].value;
        let starts: Vec<usize> = if old.is_empty() {
            Vec::new()
        } else {
            current.match_indices(old).map(|(start, _)| start).collect()
        };
        match starts.len() {
            0 => Err(MemoryError::ReplaceTargetMissing { label: label.to_string(), old: old.to_string() }),
            1 => {
                let value = current.replacen(old, new, 1);
                debug_assert_eq!(value.len() + old.len(), current.len() + new.len());
                self.set_value(label, value)
            }
            occurrences_count => Err(MemoryError::ReplaceTargetAmbiguous {
                label: label.to_string(),
                old: old.to_string(),
                occurrences_count,
                lines: starts
                    .iter()
                    .take(AMBIGUOUS_LINES_COUNT_MAX)
                    .map(|&start| current[..start].matches('\n').count() + 1)
                    .collect(),
            }),
        }
    }

    /// The agent's own `memory_insert`: `text` as new line(s) after line
    /// `insert_line` (0: before the first, [`INSERT_LINE_END`]: after the
    /// last). An empty block has no lines, so 0 and -1 both give `text`.
    pub fn insert_lines(&mut self, label: &str, text: &str, insert_line: i64) -> Result<&Block, MemoryError> {
        let index = self.writable_index(label)?;
        let current = &self.blocks[index].value;
        let mut lines: Vec<&str> =
            if current.is_empty() { Vec::new() } else { current.split('\n').collect() };
        let lines_count = lines.len();
        let at = match usize::try_from(insert_line) {
            _ if insert_line == INSERT_LINE_END => lines_count,
            Ok(at) if at <= lines_count => at,
            _ => {
                let label = label.to_string();
                return Err(MemoryError::InsertLineOutOfRange { label, insert_line, lines_count });
            }
        };
        let inserted: Vec<&str> = text.split('\n').collect();
        let inserted_count = inserted.len();
        lines.splice(at..at, inserted);
        debug_assert_eq!(lines.len(), lines_count + inserted_count);
        let value = lines.join("\n");
        self.set_value(label, value)
    }

    fn writable_index(&self, label: &str) -> Result<usize, MemoryError> {
        let index = self.index_of(label)?;
        if self.blocks[index].read_only {
            return Err(MemoryError::ReadOnly { label: label.to_string() });
        }
        Ok(index)
    }

    /// The blocks as prompt text, in order, each with its usage against its limit.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for block in &self.blocks {
            let used = chars(&block.value);
            out.push_str(&format!(
                "<{label} chars=\"{used}/{limit}\"",
                label = block.label,
                limit = block.limit
            ));
            if block.read_only {
                out.push_str(" read_only=\"true\"");
            }
            out.push_str(">\n");
            if let Some(description) = &block.description {
                out.push_str(&format!("({description})\n"));
            }
            out.push_str(&block.value);
            out.push_str(&format!("\n</{}>\n", block.label));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> CoreMemory {
        let human = Block::new("b1".into(), "human".into(), "Name: Ana.".into(), Some(20)).unwrap();
        let persona = Block::new("b2".into(), "persona".into(), "A tutor.".into(), None).unwrap();
        CoreMemory::new(vec![human, persona]).unwrap()
    }

    #[test]
    fn value_over_block_limit_is_refused_and_old_value_kept() {
        let mut memory = memory();
        let err = memory.set_value("human", "x".repeat(21)).unwrap_err();
        assert_eq!(
            err,
            MemoryError::BlockOverLimit { label: "human".into(), actual_chars: 21, limit_chars: 20 }
        );
        assert_eq!(memory.get("human").unwrap().value, "Name: Ana.");
        assert_eq!(memory.set_value("human", "x".repeat(20)).unwrap().value, "x".repeat(20));
    }

    #[test]
    fn limit_counts_characters_not_bytes() {
        let mut memory = memory();
        let value = "é".repeat(20);
        assert_eq!(memory.set_value("human", value.clone()).unwrap().value, value);
    }

    #[test]
    fn append_and_replace_edit_in_place_within_limits() {
        let mut memory = memory();
        assert_eq!(memory.append("human", "Chess.").unwrap().value, "Name: Ana.\nChess.");
        assert_eq!(memory.replace("human", "Ana", "Bo").unwrap().value, "Name: Bo.\nChess.");
        let err = memory.append("human", "too long for twenty").unwrap_err();
        assert!(matches!(err, MemoryError::BlockOverLimit { actual_chars: 36, .. }), "{err:?}");
        assert_eq!(memory.get("human").unwrap().value, "Name: Bo.\nChess.");
        let missing = memory.replace("human", "Zed", "x").unwrap_err();
        assert_eq!(missing, MemoryError::ReplaceTargetMissing { label: "human".into(), old: "Zed".into() });
    }

    #[test]
    fn replace_unique_edits_exactly_one_occurrence() {
        let mut memory = memory();
        memory.set_value("persona", "likes tea\nlikes cake\nhates rain".into()).unwrap();
        let block = memory.replace_unique("persona", "likes cake", "likes pie").unwrap();
        assert_eq!(block.value, "likes tea\nlikes pie\nhates rain");
        let block = memory.replace_unique("persona", "\nhates rain", "").unwrap();
        assert_eq!(block.value, "likes tea\nlikes pie");
    }

    #[test]
    fn replace_unique_refuses_missing_or_repeated_text_and_keeps_the_value() {
        let mut memory = memory();
        memory.set_value("persona", "likes tea\nlikes cake\nlikes tea".into()).unwrap();
        let err = memory.replace_unique("persona", "likes tea", "x").unwrap_err();
        assert_eq!(
            err,
            MemoryError::ReplaceTargetAmbiguous {
                label: "persona".into(),
                old: "likes tea".into(),
                occurrences_count: 2,
                lines: vec![1, 3],
            }
        );
        assert_eq!(
            err.to_string(),
            "block \"persona\": text to replace \"likes tea\" occurs 2 times (starting on lines [1, 3]); \
             it must occur exactly once, so include more context"
        );
        let missing = memory.replace_unique("persona", "coffee", "x").unwrap_err();
        assert_eq!(
            missing,
            MemoryError::ReplaceTargetMissing { label: "persona".into(), old: "coffee".into() }
        );
        let empty = memory.replace_unique("persona", "", "x").unwrap_err();
        assert!(matches!(empty, MemoryError::ReplaceTargetMissing { .. }), "{empty:?}");
        assert_eq!(memory.get("persona").unwrap().value, "likes tea\nlikes cake\nlikes tea");
    }

    #[test]
    fn replace_unique_over_the_limit_is_refused_not_truncated() {
        let mut memory = memory();
        let err = memory.replace_unique("human", "Ana", "Anastasia Nikolaevna").unwrap_err();
        assert_eq!(
            err,
            MemoryError::BlockOverLimit { label: "human".into(), actual_chars: 27, limit_chars: 20 }
        );
        assert_eq!(memory.get("human").unwrap().value, "Name: Ana.");
    }

    #[test]
    fn insert_lines_places_text_after_the_given_line() {
        let mut memory = memory();
        memory.set_value("persona", "one\ntwo".into()).unwrap();
        assert_eq!(memory.insert_lines("persona", "zero", 0).unwrap().value, "zero\none\ntwo");
        assert_eq!(memory.insert_lines("persona", "1.5", 2).unwrap().value, "zero\none\n1.5\ntwo");
        assert_eq!(
            memory.insert_lines("persona", "three", INSERT_LINE_END).unwrap().value,
            "zero\none\n1.5\ntwo\nthree"
        );
        assert_eq!(
            memory.insert_lines("persona", "a\nb", 5).unwrap().value,
            "zero\none\n1.5\ntwo\nthree\na\nb"
        );
        memory.set_value("persona", String::new()).unwrap();
        assert_eq!(memory.insert_lines("persona", "first", INSERT_LINE_END).unwrap().value, "first");
        memory.set_value("persona", String::new()).unwrap();
        assert_eq!(memory.insert_lines("persona", "first", 0).unwrap().value, "first");
    }

    #[test]
    fn insert_lines_refuses_out_of_range_lines_and_limits_and_keeps_the_value() {
        let mut memory = memory();
        for insert_line in [2, -2, i64::MAX, i64::MIN] {
            let err = memory.insert_lines("human", "x", insert_line).unwrap_err();
            assert_eq!(
                err,
                MemoryError::InsertLineOutOfRange { label: "human".into(), insert_line, lines_count: 1 }
            );
        }
        let err = memory.insert_lines("human", "Likes long walks.", INSERT_LINE_END).unwrap_err();
        assert_eq!(
            err,
            MemoryError::BlockOverLimit { label: "human".into(), actual_chars: 28, limit_chars: 20 }
        );
        memory.set_details("persona", None, Some(true)).unwrap();
        let err = memory.insert_lines("persona", "x", 0).unwrap_err();
        assert_eq!(err, MemoryError::ReadOnly { label: "persona".into() });
        assert_eq!(memory.get("human").unwrap().value, "Name: Ana.");
        assert_eq!(memory.get("persona").unwrap().value, "A tutor.");
    }

    #[test]
    fn read_only_blocks_refuse_agent_edits_but_not_api_edits() {
        let mut memory = memory();
        memory.set_details("persona", None, Some(true)).unwrap();
        assert_eq!(
            memory.append("persona", "x").unwrap_err(),
            MemoryError::ReadOnly { label: "persona".into() }
        );
        assert_eq!(memory.set_value("persona", "New.".into()).unwrap().value, "New.");
    }

    #[test]
    fn duplicate_labels_and_bad_limits_are_refused() {
        let a = Block::new("1".into(), "x".into(), String::new(), None).unwrap();
        let err = CoreMemory::new(vec![a.clone(), a]).unwrap_err();
        assert_eq!(err, MemoryError::DuplicateLabel { label: "x".into() });
        let err = Block::new("1".into(), "y".into(), String::new(), Some(0)).unwrap_err();
        assert_eq!(err, MemoryError::InvalidLimit { limit_chars: 0, max_chars: BLOCK_VALUE_CHARS_MAX });
        let err = Block::new("1".into(), "y".into(), "abc".into(), Some(2)).unwrap_err();
        assert!(matches!(err, MemoryError::BlockOverLimit { actual_chars: 3, limit_chars: 2, .. }));
        assert!(matches!(
            Block::new("1".into(), String::new(), String::new(), None),
            Err(MemoryError::InvalidLabel { .. })
        ));
    }

    #[test]
    fn shrinking_a_limit_below_the_value_is_refused() {
        let mut memory = memory();
        let err = memory.set_limit("human", 5).unwrap_err();
        assert!(matches!(err, MemoryError::BlockOverLimit { actual_chars: 10, limit_chars: 5, .. }));
        assert_eq!(memory.get("human").unwrap().limit, 20);
        assert_eq!(memory.set_limit("human", 50).unwrap().limit, 50);
    }

    #[test]
    fn render_lists_blocks_in_order_with_usage() {
        let text = memory().render();
        assert_eq!(text, "<human chars=\"10/20\">\nName: Ana.\n</human>\n<persona chars=\"8/100000\">\nA tutor.\n</persona>\n");
    }

    #[test]
    fn attach_refuses_taken_labels_and_totals_and_detach_removes_by_id() {
        let mut memory = memory();
        let shared = Block::new("b3".into(), "team".into(), "Shared.".into(), None).unwrap();
        assert_eq!(memory.attach(shared.clone()).unwrap().value, "Shared.");
        assert_eq!(memory.label_of("b3"), Some("team"));
        let clash = Block::new("b4".into(), "team".into(), String::new(), None).unwrap();
        assert_eq!(memory.attach(clash).unwrap_err(), MemoryError::DuplicateLabel { label: "team".into() });
        let mut changed = shared.clone();
        changed.value = "Changed.".into();
        assert_eq!(memory.sync(changed.clone()).unwrap(), Some(&changed));
        changed.value = "x".repeat(100_001);
        assert!(matches!(memory.sync(changed).unwrap_err(), MemoryError::BlockOverLimit { .. }));
        assert_eq!(memory.get("team").unwrap().value, "Changed.");
        assert_eq!(memory.detach("b3").unwrap().value, "Changed.");
        assert_eq!(memory.detach("b3").unwrap_err(), MemoryError::BlockIdNotFound { id: "b3".into() });
        assert_eq!(memory.blocks().len(), 2);
    }
}
