//! The agent file: one JSON object holding Kelpie's whole agent,
//!
//! ```text
//! {"kelpie_agent_file_version":1,"kelpie_agent":{...},"kelpie_messages":[...],
//!  "kelpie_passages":[...],"kelpie_conversations":[...],
//!  "kelpie_messages_of_conversations":[...],"kelpie_custom_tools":[...]}
//! ```
//!
//! An export of a group's manager holds every agent of the group: the
//! manager under the names above, each member under the same names keyed
//! by its id in the file (`"kelpie_agent@agent-1":{...}`,
//! `"kelpie_messages@agent-1":[...]`, ...), and the group in
//! `kelpie_groups`; an import takes these parts in any order.
//!
//! (files of earlier releases name these `agent`, `messages`, `passages`,
//! `custom_tools`; both are read; a file without conversations still
//! is). Exports also carry Letta's agent file fields beside them
//! (`agents`, `blocks`, `tools`, ...; see [`crate::letta_af`]), which an
//! import of a Kelpie file skips.
//!
//! written and read a piece at a time, so an agent of any size is exported
//! and imported in bounded memory. [`FileReader`] is the sans-IO reader:
//! fed bytes in chunks of any size, it hands back each top-level field's
//! value and, for the lists, each element on its own, as raw JSON to
//! decode. Nothing here does I/O.

use std::collections::VecDeque;

/// The version written into every export; import refuses any other.
pub const AGENT_FILE_VERSION: u32 = 1;
/// Largest single value the reader holds (a field, or one list element),
/// in bytes: a message or passage is far smaller.
pub const AGENT_FILE_VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The top-level fields whose value is a list read element by element.
pub const LIST_FIELDS: [&str; 10] = [
    "messages",
    "passages",
    "custom_tools",
    "conversations",
    "messages_of_conversations",
    "kelpie_messages",
    "kelpie_passages",
    "kelpie_custom_tools",
    "kelpie_conversations",
    "kelpie_messages_of_conversations",
];

/// Whether top-level field `key` is a list read element by element: one of
/// [`LIST_FIELDS`], a group manager's `kelpie_groups`, or Kelpie's list of
/// a further agent of the file (`kelpie_messages@agent-1`).
pub fn is_list_field(key: &str) -> bool {
    let base = key.split_once('@').map_or(key, |(base, _)| base);
    let member_lists =
        ["kelpie_messages", "kelpie_passages", "kelpie_conversations", "kelpie_messages_of_conversations"];
    LIST_FIELDS.contains(&key) || key == "kelpie_groups" || (base != key && member_lists.contains(&base))
}

/// The file, whole (tests, small tools, and the conversion of Letta's
/// agent files, [`crate::letta_af`], build it this way).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentFile {
    pub kelpie_agent_file_version: u32,
    pub agent: crate::model::AgentRecord,
    pub messages: Vec<crate::model::StoredMessage>,
    pub passages: Vec<kelpie_memory::Passage>,
    pub custom_tools: Vec<crate::actors::tool_store::ToolRecord>,
    /// The agent's conversations as stored (their ids and windows are the
    /// exporting server's; an import gives them new ones).
    #[serde(default)]
    pub conversations: Vec<crate::actors::agent::ConversationRecord>,
    /// Named to sort after `conversations`: a file re-serialized with
    /// sorted keys still has each conversation before its messages.
    #[serde(default)]
    pub messages_of_conversations: Vec<ConversationMessage>,
}

/// One message of a conversation of the file, its `seq` the exporting
/// server's (compared with the conversation's window start on import).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConversationMessage {
    pub conversation_id: String,
    pub message: crate::model::StoredMessage,
}

/// What the reader found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// A top-level field other than the lists, with its raw JSON value.
    Field { key: String, value: Vec<u8> },
    /// One element of list field `key`, as raw JSON.
    Item { key: String, value: Vec<u8> },
    /// The end of the top-level object.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// After `{` or `,`: a key, or `}` when the object is empty.
    KeyOrEnd {
        first: bool,
    },
    /// Inside a key string.
    Key,
    Colon,
    Value,
    /// Inside a list field: an element, `,` or `]`.
    List {
        first: bool,
        after_item: bool,
    },
    /// After a field's value: `,` or `}`.
    CommaOrEnd,
    Done,
}

/// Where a raw value being captured stands.
#[derive(Debug, Clone, Default)]
struct Capture {
    bytes: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Whether this is an element of a list (else a field's value).
    item: bool,
    /// A skipped field's value: read through, not kept.
    skip: bool,
    /// Bytes of the value read so far.
    len: usize,
}

/// The sans-IO agent file reader.
#[derive(Debug)]
pub struct FileReader {
    state: State,
    key: Vec<u8>,
    key_escaped: bool,
    current_key: String,
    capture: Option<Capture>,
    events: VecDeque<FileEvent>,
    /// Top-level fields whose values are read through without being kept.
    skipped: std::collections::BTreeSet<String>,
}

impl Default for FileReader {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(what: impl Into<String>) -> String {
    format!("not a kelpie agent file: {}", what.into())
}

impl FileReader {
    pub fn new() -> Self {
        FileReader {
            state: State::Start,
            key: Vec::new(),
            key_escaped: false,
            current_key: String::new(),
            capture: None,
            events: VecDeque::new(),
            skipped: std::collections::BTreeSet::new(),
        }
    }

    /// The values of fields `keys` met from now on are read through (of
    /// any size) and yield no event.
    pub fn skip_fields(&mut self, keys: &[&str]) {
        self.skipped.extend(keys.iter().map(|key| key.to_string()));
    }

    /// Reads `chunk`; the events it completed come from [`Self::next_event`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        for &byte in chunk {
            self.step(byte)?;
        }
        Ok(())
    }

    pub fn next_event(&mut self) -> Option<FileEvent> {
        self.events.pop_front()
    }

    /// The input is over: an error unless the object was complete.
    pub fn finish(&mut self) -> Result<(), String> {
        match self.state {
            State::Done => Ok(()),
            _ => Err(invalid("the file ends before its closing brace")),
        }
    }

    fn step(&mut self, byte: u8) -> Result<(), String> {
        if self.capture.is_some() {
            return self.capture_byte(byte);
        }
        let space = byte.is_ascii_whitespace();
        match self.state.clone() {
            State::Start if space => Ok(()),
            State::Start if byte == b'{' => {
                self.state = State::KeyOrEnd { first: true };
                Ok(())
            }
            State::KeyOrEnd { .. } | State::Colon | State::Value | State::CommaOrEnd if space => Ok(()),
            State::KeyOrEnd { .. } if byte == b'"' => {
                self.key.clear();
                self.key_escaped = false;
                self.state = State::Key;
                Ok(())
            }
            State::KeyOrEnd { first: true } if byte == b'}' => self.end(),
            State::Key => {
                if self.key_escaped {
                    self.key_escaped = false;
                } else if byte == b'\\' {
                    self.key_escaped = true;
                } else if byte == b'"' {
                    let mut quoted = vec![b'"'];
                    quoted.extend_from_slice(&self.key);
                    quoted.push(b'"');
                    self.current_key =
                        serde_json::from_slice(&quoted).map_err(|e| invalid(format!("a key: {e}")))?;
                    self.state = State::Colon;
                    return Ok(());
                }
                self.key.push(byte);
                if self.key.len() > AGENT_FILE_VALUE_BYTES_MAX {
                    return Err(invalid("a key is too long"));
                }
                Ok(())
            }
            State::Colon if byte == b':' => {
                self.state = State::Value;
                Ok(())
            }
            State::Value if byte == b'[' && is_list_field(&self.current_key) => {
                self.state = State::List { first: true, after_item: false };
                Ok(())
            }
            State::Value => {
                let skip = self.skipped.contains(&self.current_key);
                self.capture = Some(Capture { skip, ..Capture::default() });
                self.capture_byte(byte)
            }
            State::List { .. } if space => Ok(()),
            State::List { after_item: true, .. } if byte == b',' => {
                self.state = State::List { first: false, after_item: false };
                Ok(())
            }
            State::List { first: true, .. } | State::List { after_item: true, .. } if byte == b']' => {
                self.state = State::CommaOrEnd;
                Ok(())
            }
            State::List { after_item: false, .. } => {
                self.capture = Some(Capture { item: true, ..Capture::default() });
                self.capture_byte(byte)
            }
            State::CommaOrEnd if byte == b',' => {
                self.state = State::KeyOrEnd { first: false };
                Ok(())
            }
            State::CommaOrEnd if byte == b'}' => self.end(),
            State::Done if space => Ok(()),
            state => Err(invalid(format!("unexpected {:?} ({state:?})", byte as char))),
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.state = State::Done;
        self.events.push_back(FileEvent::End);
        Ok(())
    }

    /// Adds `byte` to the value being captured; a byte that ends a scalar
    /// is handed back to [`Self::step`] once the value is complete.
    fn capture_byte(&mut self, byte: u8) -> Result<(), String> {
        let capture = self.capture.as_mut().expect("capturing");
        let scalar_end = capture.depth == 0
            && !capture.in_string
            && capture.len > 0
            && (byte.is_ascii_whitespace() || matches!(byte, b',' | b'}' | b']'));
        if scalar_end {
            self.complete()?;
            return self.step(byte);
        }
        capture.len += 1;
        if !capture.skip {
            capture.bytes.push(byte);
        }
        if !capture.skip && capture.bytes.len() > AGENT_FILE_VALUE_BYTES_MAX {
            return Err(invalid(format!(
                "a value of {:?} is over AGENT_FILE_VALUE_BYTES_MAX = {AGENT_FILE_VALUE_BYTES_MAX} bytes",
                self.current_key
            )));
        }
        if capture.in_string {
            if capture.escaped {
                capture.escaped = false;
            } else if byte == b'\\' {
                capture.escaped = true;
            } else if byte == b'"' {
                capture.in_string = false;
                if capture.depth == 0 {
                    return self.complete();
                }
            }
            return Ok(());
        }
        match byte {
            b'"' => capture.in_string = true,
            b'{' | b'[' => capture.depth += 1,
            b'}' | b']' => {
                if capture.depth == 0 {
                    return Err(invalid(format!("unbalanced {:?}", byte as char)));
                }
                capture.depth -= 1;
                if capture.depth == 0 {
                    return self.complete();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<(), String> {
        let capture = self.capture.take().expect("capturing");
        let key = self.current_key.clone();
        if capture.skip {
            self.state = State::CommaOrEnd;
        } else if capture.item {
            self.events.push_back(FileEvent::Item { key, value: capture.bytes });
            self.state = State::List { first: false, after_item: true };
        } else {
            self.events.push_back(FileEvent::Field { key, value: capture.bytes });
            self.state = State::CommaOrEnd;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_lists_and_the_groups_are_read_element_by_element() {
        let mut reader = FileReader::new();
        let file = br#"{"kelpie_agent@agent-1": {"a": [1]}, "kelpie_messages@agent-1": [1, 2],
            "kelpie_groups": [{"id": "g"}], "kelpie_custom_tools@agent-1": [3], "messages@agent-1": [4]}"#;
        reader.feed(file).unwrap();
        reader.finish().unwrap();
        let events: Vec<FileEvent> = std::iter::from_fn(|| reader.next_event()).collect();
        let field =
            |key: &str, value: &str| FileEvent::Field { key: key.into(), value: value.as_bytes().to_vec() };
        let item =
            |key: &str, value: &str| FileEvent::Item { key: key.into(), value: value.as_bytes().to_vec() };
        assert_eq!(
            events,
            vec![
                field("kelpie_agent@agent-1", r#"{"a": [1]}"#),
                item("kelpie_messages@agent-1", "1"),
                item("kelpie_messages@agent-1", "2"),
                item("kelpie_groups", r#"{"id": "g"}"#),
                field("kelpie_custom_tools@agent-1", "[3]"),
                field("messages@agent-1", "[4]"),
                FileEvent::End,
            ]
        );
    }

    fn read_all(file: &[u8], chunk: usize) -> Result<Vec<FileEvent>, String> {
        let mut reader = FileReader::new();
        let mut events = Vec::new();
        for piece in file.chunks(chunk.max(1)) {
            reader.feed(piece)?;
            while let Some(event) = reader.next_event() {
                events.push(event);
            }
        }
        reader.finish()?;
        Ok(events)
    }

    fn field(key: &str, value: &str) -> FileEvent {
        FileEvent::Field { key: key.into(), value: value.as_bytes().to_vec() }
    }

    fn item(key: &str, value: &str) -> FileEvent {
        FileEvent::Item { key: key.into(), value: value.as_bytes().to_vec() }
    }

    const FILE: &str = r#" {"kelpie_agent_file_version": 1, "agent": {"name": "a \"q\" }]", "n": [1, {"x": null}]},
        "messages": [ {"id": "m1", "t": "[,]"} ,{"id":"m2"}], "passages": [], "extra": true,
        "custom_tools": [{"id": "t\\"}], "last": -1.5e3 } "#;

    #[test]
    fn skipped_fields_of_any_size_yield_nothing_and_the_rest_is_read() {
        let mut reader = FileReader::new();
        reader.skip_fields(&["agents"]);
        reader.feed(b"{\"agents\": [{\"messages\": [\"").unwrap();
        // Past the limit a kept value may have: a skipped one is not held.
        let chunk = vec![b'a'; 1024 * 1024];
        for _ in 0..=(AGENT_FILE_VALUE_BYTES_MAX / chunk.len()) {
            reader.feed(&chunk).unwrap();
        }
        reader.feed(b"\", {\"x\": \"]}\"}]}], \"kelpie_messages\": [1, 2], \"agent\": {\"a\": 1}}").unwrap();
        reader.finish().unwrap();
        let mut events = Vec::new();
        while let Some(event) = reader.next_event() {
            events.push(event);
        }
        assert_eq!(
            events,
            vec![
                FileEvent::Item { key: "kelpie_messages".into(), value: b"1".to_vec() },
                FileEvent::Item { key: "kelpie_messages".into(), value: b"2".to_vec() },
                FileEvent::Field { key: "agent".into(), value: b"{\"a\": 1}".to_vec() },
                FileEvent::End,
            ]
        );
        // Not skipped, the same value is refused past the limit.
        let mut kept = FileReader::new();
        kept.feed(b"{\"agents\": \"").unwrap();
        let refused = (0..=(AGENT_FILE_VALUE_BYTES_MAX / chunk.len())).find_map(|_| kept.feed(&chunk).err());
        assert!(refused.is_some_and(|err| err.contains("AGENT_FILE_VALUE_BYTES_MAX")));
    }

    #[test]
    fn every_field_and_element_comes_out_whole_whatever_the_chunk_size() {
        let expected = vec![
            field("kelpie_agent_file_version", "1"),
            field("agent", r#"{"name": "a \"q\" }]", "n": [1, {"x": null}]}"#),
            item("messages", r#"{"id": "m1", "t": "[,]"}"#),
            item("messages", r#"{"id":"m2"}"#),
            field("extra", "true"),
            item("custom_tools", r#"{"id": "t\\"}"#),
            field("last", "-1.5e3"),
            FileEvent::End,
        ];
        for chunk in 1..=FILE.len() {
            assert_eq!(read_all(FILE.as_bytes(), chunk).unwrap(), expected, "chunks of {chunk} bytes");
        }
        // Each raw value is valid JSON on its own.
        for event in &expected {
            if let FileEvent::Field { value, .. } | FileEvent::Item { value, .. } = event {
                serde_json::from_slice::<serde_json::Value>(value).unwrap();
            }
        }
    }

    #[test]
    fn broken_files_are_refused_with_a_reason() {
        for (file, reason) in [
            ("[1, 2]", "unexpected '['"),
            (r#"{"agent": {"a": 1}"#, "ends before its closing brace"),
            (r#"{"messages": [1 2]}"#, "unexpected '2'"),
            (r#"{"agent": }"#, "unbalanced '}'"),
            (r#"{"a" 1}"#, "unexpected '1'"),
            (r#"{} x"#, "unexpected 'x'"),
        ] {
            let err = read_all(file.as_bytes(), 3).unwrap_err();
            assert!(err.contains(reason), "{file}: {err}");
        }
        assert_eq!(read_all(b"{}", 1).unwrap(), vec![FileEvent::End]);
    }
}
