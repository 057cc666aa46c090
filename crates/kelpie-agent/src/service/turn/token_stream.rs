//! Token streaming of a turn (`stream_tokens`): while the LLM answers, each
//! delta becomes a partial Letta message — `reasoning_message` or
//! `assistant_message` text, the `message` argument of a `send_message` call
//! as `assistant_message` text, other tool calls as `tool_call_message`
//! argument fragments — carrying the id of the assistant message the step
//! will store. The step is still committed whole, after the answer is
//! complete; the parts of it the stream already showed are not sent again.
//!
//! Text is streamed as `reasoning_message` when the request offers tools
//! (text next to a tool call is the agent's reasoning) and as
//! `assistant_message` otherwise. An answer whose stored rendering differs
//! from what was streamed (text without a tool call although tools were
//! offered, or `send_message` arguments that are not JSON) has that part
//! sent whole after the commit.

use kelpie_tools::SEND_MESSAGE;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use kelpie_llm::stream::ChatDelta;

use crate::letta::letta_chunk;
use crate::model::{MessageBody, StoredMessage};

/// Where a turn's events go, and whether tokens are streamed too.
#[derive(Debug, Clone)]
pub struct TurnEvents {
    pub sender: UnboundedSender<Value>,
    pub stream_tokens: bool,
}

#[derive(Debug, Default)]
enum Escape {
    #[default]
    None,
    Backslash,
    Unicode(String),
}

/// Decodes, fragment by fragment, the top-level `"message"` string of a
/// JSON object being streamed, returning the newly decoded text each time.
#[derive(Debug, Default)]
pub struct MessageArgDecoder {
    depth: u32,
    in_string: bool,
    escape: Escape,
    expect_key: bool,
    string_is_key: bool,
    string_is_target: bool,
    key: String,
    last_key: String,
    high_surrogate: Option<u32>,
}

impl MessageArgDecoder {
    pub fn feed(&mut self, fragment: &str) -> String {
        let mut out = String::new();
        for c in fragment.chars() {
            if self.in_string {
                self.string_char(c, &mut out);
            } else {
                self.structural_char(c);
            }
        }
        out
    }

    fn structural_char(&mut self, c: char) {
        match c {
            '{' | '[' => {
                self.depth += 1;
                self.expect_key = c == '{' && self.depth == 1;
            }
            '}' | ']' => self.depth = self.depth.saturating_sub(1),
            ',' if self.depth == 1 => self.expect_key = true,
            ':' if self.depth == 1 => self.expect_key = false,
            '"' => {
                self.in_string = true;
                self.string_is_key = self.depth == 1 && self.expect_key;
                self.string_is_target = self.depth == 1 && !self.expect_key && self.last_key == "message";
                self.key.clear();
            }
            _ => {}
        }
    }

    fn string_char(&mut self, c: char, out: &mut String) {
        match std::mem::take(&mut self.escape) {
            Escape::Backslash => {
                let decoded = match c {
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        self.escape = Escape::Unicode(String::new());
                        return;
                    }
                    other => other,
                };
                self.push(decoded, out);
            }
            Escape::Unicode(mut hex) => {
                hex.push(c);
                if hex.len() < 4 {
                    self.escape = Escape::Unicode(hex);
                    return;
                }
                let code = u32::from_str_radix(&hex, 16).unwrap_or(0xFFFD);
                match (self.high_surrogate.take(), code) {
                    (None, 0xD800..=0xDBFF) => self.high_surrogate = Some(code),
                    (Some(high), 0xDC00..=0xDFFF) => {
                        let joined = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00);
                        self.push(char::from_u32(joined).unwrap_or('\u{FFFD}'), out);
                    }
                    (_, code) => self.push(char::from_u32(code).unwrap_or('\u{FFFD}'), out),
                }
            }
            Escape::None => match c {
                '\\' => self.escape = Escape::Backslash,
                '"' => {
                    self.in_string = false;
                    if self.string_is_key {
                        self.last_key = std::mem::take(&mut self.key);
                    }
                }
                other => self.push(other, out),
            },
        }
    }

    fn push(&mut self, c: char, out: &mut String) {
        if self.string_is_key {
            self.key.push(c);
        } else if self.string_is_target {
            out.push(c);
        }
    }
}

struct StreamedCall {
    id: String,
    name: String,
    arguments: String,
    /// The decoded `message` of a `send_message` call.
    message: Option<(MessageArgDecoder, String)>,
}

/// Turns the deltas of one LLM answer into partial Letta messages.
pub struct TokenRenderer<'a> {
    events: &'a UnboundedSender<Value>,
    envelope: StoredMessage,
    text_is_reasoning: bool,
    text: String,
    calls: Vec<StreamedCall>,
}

impl<'a> TokenRenderer<'a> {
    /// `envelope` is the assistant message to be stored (its body unused).
    pub fn new(events: &'a UnboundedSender<Value>, envelope: StoredMessage, tools_offered: bool) -> Self {
        TokenRenderer {
            events,
            envelope,
            text_is_reasoning: tools_offered,
            text: String::new(),
            calls: Vec::new(),
        }
    }

    fn send(&self, message_type: &str, fields: Value) {
        // A client that went away does not stop the turn.
        let _ = self.events.send(letta_chunk(&self.envelope, message_type, fields));
    }

    fn send_tool_call(&self, call: &StreamedCall, arguments: &str) {
        let tool_call = json!({"name": call.name, "arguments": arguments, "tool_call_id": call.id});
        self.send("tool_call_message", json!({"tool_call": tool_call, "tool_calls": [tool_call]}));
    }

    pub fn on_delta(&mut self, delta: ChatDelta) {
        match delta {
            ChatDelta::Text(text) => {
                self.text.push_str(&text);
                if self.text_is_reasoning {
                    self.send(
                        "reasoning_message",
                        json!({"reasoning": text, "source": "reasoner_model", "signature": null}),
                    );
                } else {
                    self.send("assistant_message", json!({"content": text}));
                }
            }
            ChatDelta::ToolCallStart { index, id, name } => {
                assert_eq!(index, self.calls.len(), "tool calls start in order");
                let message = (name == SEND_MESSAGE).then(|| (MessageArgDecoder::default(), String::new()));
                let call = StreamedCall { id, name, arguments: String::new(), message };
                if call.message.is_none() {
                    self.send_tool_call(&call, "");
                }
                self.calls.push(call);
            }
            ChatDelta::ToolCallArguments { index, fragment } => {
                let call = &mut self.calls[index];
                call.arguments.push_str(&fragment);
                let decoded = call.message.as_mut().map(|(decoder, text)| {
                    let decoded = decoder.feed(&fragment);
                    text.push_str(&decoded);
                    decoded
                });
                match decoded {
                    Some(decoded) if decoded.is_empty() => {}
                    Some(decoded) => self.send("assistant_message", json!({"content": decoded})),
                    None => self.send_tool_call(&self.calls[index], &fragment),
                }
            }
        }
    }

    /// Whether the stream already showed all of `rendered`, one Letta
    /// message of the stored assistant message.
    pub fn covers(&self, rendered: &Value) -> bool {
        let same_json = |a: &str, b: &str| {
            serde_json::from_str::<Value>(a).ok().is_some_and(|a| Some(a) == serde_json::from_str(b).ok())
        };
        match rendered["message_type"].as_str() {
            Some("assistant_message") => {
                let content = rendered["content"].as_str();
                (!self.text_is_reasoning && content == Some(self.text.as_str()))
                    || self.calls.iter().any(|call| {
                        call.message.as_ref().is_some_and(|(_, text)| content == Some(text.as_str()))
                    })
            }
            Some("reasoning_message") => {
                self.text_is_reasoning && rendered["reasoning"].as_str() == Some(self.text.as_str())
            }
            Some("tool_call_message") => {
                let tool_call = &rendered["tool_call"];
                self.calls.iter().any(|call| {
                    call.message.is_none()
                        && tool_call["tool_call_id"] == call.id.as_str()
                        && same_json(tool_call["arguments"].as_str().unwrap_or_default(), &call.arguments)
                })
            }
            _ => false,
        }
    }
}

/// The envelope of the assistant message a step will store.
pub(super) fn assistant_envelope(id: &str, run_id: &str, step_id: &str, now_ms: u64) -> StoredMessage {
    StoredMessage {
        id: id.to_string(),
        seq: 0,
        created_ms: now_ms,
        run_id: Some(run_id.to_string()),
        step_id: Some(step_id.to_string()),
        body: MessageBody::Assistant { content: None, tool_calls: Vec::new(), awaiting_approval: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(arguments: &str, piece_chars: usize) -> String {
        let chars: Vec<char> = arguments.chars().collect();
        let mut decoder = MessageArgDecoder::default();
        chars.chunks(piece_chars).map(|piece| decoder.feed(&piece.iter().collect::<String>())).collect()
    }

    #[test]
    fn message_argument_is_decoded_across_any_fragmenting() {
        let args = json!({"request_heartbeat": false, "nested": {"message": "no"}, "list": ["message", ":"],
                          "message": "line\none \"quoted\" \\ tab\t é 🦀 \u{1}"});
        let expected = args["message"].as_str().unwrap().to_string();
        let text = args.to_string();
        for piece_chars in 1..=text.chars().count() {
            assert_eq!(decode_in_pieces(&text, piece_chars), expected, "pieces of {piece_chars}");
        }
        let escaped = r#"{"message": "crab \ud83e\udd80 and \u00e9\/"}"#;
        for piece_chars in 1..=escaped.len() {
            assert_eq!(decode_in_pieces(escaped, piece_chars), "crab 🦀 and é/", "pieces of {piece_chars}");
        }
        assert_eq!(decode_in_pieces(r#"{"other": "x"}"#, 3), "");
    }

    #[test]
    fn streamed_parts_cover_the_stored_rendering_and_nothing_else() {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let envelope = assistant_envelope("message-1", "run-1", "step-1", 0);
        let mut renderer = TokenRenderer::new(&sender, envelope, true);
        renderer.on_delta(ChatDelta::Text("Think".into()));
        renderer.on_delta(ChatDelta::Text("ing".into()));
        renderer.on_delta(ChatDelta::ToolCallStart { index: 0, id: "c0".into(), name: SEND_MESSAGE.into() });
        renderer.on_delta(ChatDelta::ToolCallArguments { index: 0, fragment: "{\"message\":\"h".into() });
        renderer.on_delta(ChatDelta::ToolCallArguments { index: 0, fragment: "i\"}".into() });
        renderer.on_delta(ChatDelta::ToolCallStart { index: 1, id: "c1".into(), name: "noop".into() });
        renderer.on_delta(ChatDelta::ToolCallArguments { index: 1, fragment: "{\"a\": 1}".into() });
        let mut chunks = Vec::new();
        while let Ok(chunk) = receiver.try_recv() {
            chunks.push(chunk);
        }
        let kinds: Vec<(&str, &str)> =
            chunks.iter().map(|c| (c["message_type"].as_str().unwrap(), c["id"].as_str().unwrap())).collect();
        assert_eq!(
            kinds,
            vec![
                ("reasoning_message", "message-1"),
                ("reasoning_message", "message-1"),
                ("assistant_message", "message-1"),
                ("assistant_message", "message-1"),
                ("tool_call_message", "message-1"),
                ("tool_call_message", "message-1"),
            ]
        );
        assert_eq!((chunks[2]["content"].as_str(), chunks[3]["content"].as_str()), (Some("h"), Some("i")));
        assert!(renderer.covers(&json!({"message_type": "reasoning_message", "reasoning": "Thinking"})));
        assert!(renderer.covers(&json!({"message_type": "assistant_message", "content": "hi"})));
        assert!(renderer.covers(&json!({"message_type": "tool_call_message",
                                        "tool_call": {"tool_call_id": "c1", "arguments": "{\"a\":1}"}})));
        assert!(!renderer.covers(&json!({"message_type": "assistant_message", "content": "Thinking"})));
        assert!(!renderer.covers(&json!({"message_type": "tool_return_message", "tool_call_id": "c1"})));
    }
}
