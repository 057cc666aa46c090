//! The agent file (our own export format, not Letta's `.af`): one JSON
//! object
//!
//! ```text
//! {"kelpie_agent_file_version":1,"agent":{...},"messages":[...],"passages":[...],"custom_tools":[...]}
//! ```
//!
//! written and read a piece at a time, so an agent of any size is exported
//! and imported in bounded memory. [`FileReader`] is the sans-IO reader:
//! fed bytes in chunks of any size, it hands back each top-level field's
//! value and, for the three lists, each element on its own, as raw JSON to
//! decode. Nothing here does I/O.

use std::collections::VecDeque;

/// The version written into every export; import refuses any other.
pub const AGENT_FILE_VERSION: u32 = 1;
/// Largest single value the reader holds (a field, or one list element),
/// in bytes: a message or passage is far smaller.
pub const AGENT_FILE_VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The top-level fields whose value is a list read element by element.
pub const LIST_FIELDS: [&str; 3] = ["messages", "passages", "custom_tools"];

/// The file, whole (tests, small tools, and the conversion of Letta's
/// agent files, [`crate::letta_af`], build it this way).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentFile {
    pub kelpie_agent_file_version: u32,
    pub agent: crate::model::AgentRecord,
    pub messages: Vec<crate::model::StoredMessage>,
    pub passages: Vec<kelpie_memory::Passage>,
    pub custom_tools: Vec<crate::actors::tool_store::ToolRecord>,
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
        }
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
            State::Value if byte == b'[' && LIST_FIELDS.contains(&self.current_key.as_str()) => {
                self.state = State::List { first: true, after_item: false };
                Ok(())
            }
            State::Value => {
                self.capture = Some(Capture::default());
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
            && !capture.bytes.is_empty()
            && (byte.is_ascii_whitespace() || matches!(byte, b',' | b'}' | b']'));
        if scalar_end {
            self.complete()?;
            return self.step(byte);
        }
        capture.bytes.push(byte);
        if capture.bytes.len() > AGENT_FILE_VALUE_BYTES_MAX {
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
        if capture.item {
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
