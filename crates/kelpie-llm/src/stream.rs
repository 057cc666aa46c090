//! Sans-IO decoding of streamed completions. [`SseDecoder`] turns bytes,
//! cut anywhere, into Server-Sent Events; [`OpenAiStreamDecoder`] and
//! [`AnthropicStreamDecoder`] turn those events into [`ChatDelta`]s and, at
//! the end, the same [`ChatResponse`] the non-streaming call returns. None
//! of this touches a socket or a clock: the HTTP shell in the parent module
//! feeds it, and the tests feed it chunks split at every byte.

use serde_json::Value;
use thiserror::Error;

use crate::chat::{ChatResponse, TokenUsage, ToolCall};

/// Longest line of an event stream kept in memory, in bytes.
pub const SSE_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Tool calls one streamed answer may open.
pub const STREAM_TOOL_CALLS_COUNT_MAX: usize = 128;

/// One piece of an answer, as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatDelta {
    /// More of the answer's text.
    Text(String),
    /// The tool call at `index` (0-based, in answer order) begins.
    ToolCallStart { index: usize, id: String, name: String },
    /// More of the JSON arguments of the tool call at `index`.
    ToolCallArguments { index: usize, fragment: String },
}

/// Why a stream could not be read to a completion.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamError {
    #[error("an event line is longer than {limit_bytes} bytes")]
    LineTooLong { limit_bytes: usize },
    #[error("an event line is not UTF-8")]
    NotUtf8,
    #[error("an event is not the expected JSON: {reason}")]
    Malformed { reason: String },
    #[error("the provider sent an error event: {error_type}: {message}")]
    Provider { error_type: String, message: String },
    #[error("more than {limit_count} tool calls in one answer")]
    TooManyToolCalls { limit_count: usize },
    #[error("the stream ended before the answer was complete")]
    Incomplete,
    #[error("no data for {idle_ms} ms")]
    Idle { idle_ms: u64 },
    #[error("the connection failed mid-stream: {reason}")]
    Connection { reason: String },
}

/// One Server-Sent Event: its `event:` name, if any, and its joined `data:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events. Lines end in `\n` or `\r\n`; a blank
/// line ends an event; `:` lines are comments.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseDecoder {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, StreamError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.len() >= SSE_LINE_BYTES_MAX {
                    return Err(StreamError::LineTooLong { limit_bytes: SSE_LINE_BYTES_MAX });
                }
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| StreamError::NotUtf8)?;
            events.extend(self.end_line(&line));
        }
        assert!(self.line.len() <= SSE_LINE_BYTES_MAX, "the partial line stays within its limit");
        Ok(events)
    }

    fn end_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| SseEvent { event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// A decoder of one provider's stream, driven by the HTTP shell.
pub trait StreamDecoder: Send {
    /// Bytes in, the deltas they complete out.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ChatDelta>, StreamError>;
    /// Whether the provider said the answer is complete.
    fn is_done(&self) -> bool;
    /// The whole answer, once the stream ended.
    fn finish(self) -> Result<ChatResponse, StreamError>;
}

/// Text, tool calls and usage gathered from deltas.
#[derive(Debug, Default)]
struct Assembly {
    text: String,
    saw_text: bool,
    calls: Vec<ToolCall>,
    usage: TokenUsage,
}

impl Assembly {
    fn apply(&mut self, delta: &ChatDelta) {
        match delta {
            ChatDelta::Text(text) => {
                self.saw_text = true;
                self.text.push_str(text);
            }
            ChatDelta::ToolCallStart { index, id, name } => {
                assert_eq!(*index, self.calls.len(), "tool calls start in order");
                self.calls.push(ToolCall { id: id.clone(), name: name.clone(), arguments: String::new() });
            }
            ChatDelta::ToolCallArguments { index, fragment } => {
                self.calls[*index].arguments.push_str(fragment);
            }
        }
    }

    fn into_response(self) -> ChatResponse {
        let tool_calls = self
            .calls
            .into_iter()
            .map(|mut call| {
                if call.arguments.is_empty() {
                    call.arguments = "{}".to_string();
                }
                if call.id.is_empty() {
                    call.id = call.name.clone();
                }
                call
            })
            .collect();
        let content = if self.saw_text { Some(self.text) } else { None };
        ChatResponse { content, tool_calls, usage: self.usage }
    }
}

fn parse_json(data: &str) -> Result<Value, StreamError> {
    serde_json::from_str(data).map_err(|e| StreamError::Malformed { reason: e.to_string() })
}

fn provider_error(error: &Value) -> StreamError {
    StreamError::Provider {
        error_type: error["type"].as_str().unwrap_or("error").to_string(),
        message: error["message"].as_str().map_or_else(|| error.to_string(), str::to_string),
    }
}

/// OpenAI chat completion chunks: `choices[0].delta.content`, incremental
/// `delta.tool_calls` by `index`, `usage` (with `include_usage`), `[DONE]`.
#[derive(Debug, Default)]
pub struct OpenAiStreamDecoder {
    sse: SseDecoder,
    assembly: Assembly,
    /// The provider's tool call `index` of each call, in answer order.
    call_indexes: Vec<u64>,
    finished: bool,
    done: bool,
}

impl OpenAiStreamDecoder {
    fn on_chunk(&mut self, chunk: &Value, out: &mut Vec<ChatDelta>) -> Result<(), StreamError> {
        if let Some(error) = chunk.get("error") {
            return Err(provider_error(error));
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.assembly.usage = TokenUsage {
                prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
            };
        }
        let Some(choice) = chunk["choices"].get(0) else { return Ok(()) };
        if !choice["finish_reason"].is_null() {
            self.finished = true;
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
            out.push(ChatDelta::Text(text.to_string()));
        }
        for (position, call) in
            delta["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate()
        {
            let provider_index = call["index"].as_u64().unwrap_or(position as u64);
            let index = match self.call_indexes.iter().position(|known| *known == provider_index) {
                Some(index) => index,
                None => {
                    if self.call_indexes.len() >= STREAM_TOOL_CALLS_COUNT_MAX {
                        return Err(StreamError::TooManyToolCalls {
                            limit_count: STREAM_TOOL_CALLS_COUNT_MAX,
                        });
                    }
                    self.call_indexes.push(provider_index);
                    let id = call["id"].as_str().unwrap_or_default().to_string();
                    let name = call["function"]["name"].as_str().unwrap_or_default().to_string();
                    out.push(ChatDelta::ToolCallStart { index: self.call_indexes.len() - 1, id, name });
                    self.call_indexes.len() - 1
                }
            };
            if let Some(fragment) = call["function"]["arguments"].as_str().filter(|f| !f.is_empty()) {
                out.push(ChatDelta::ToolCallArguments { index, fragment: fragment.to_string() });
            }
        }
        Ok(())
    }
}

impl StreamDecoder for OpenAiStreamDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ChatDelta>, StreamError> {
        let mut out = Vec::new();
        for event in self.sse.feed(bytes)? {
            if event.data.trim() == "[DONE]" {
                self.done = true;
                continue;
            }
            self.on_chunk(&parse_json(&event.data)?, &mut out)?;
        }
        out.iter().for_each(|delta| self.assembly.apply(delta));
        Ok(out)
    }

    fn is_done(&self) -> bool {
        self.done
    }

    /// Complete after `[DONE]`, or after a `finish_reason` for servers that
    /// close without `[DONE]`.
    fn finish(self) -> Result<ChatResponse, StreamError> {
        if !self.done && !self.finished {
            return Err(StreamError::Incomplete);
        }
        Ok(self.assembly.into_response())
    }
}

/// Anthropic Messages events: `message_start`, `content_block_start`,
/// `content_block_delta` (`text_delta`, `input_json_delta`),
/// `content_block_stop`, `message_delta`, `message_stop`, `ping`, `error`.
/// Text blocks are joined with `\n`, as the non-streaming parse joins them.
#[derive(Debug, Default)]
pub struct AnthropicStreamDecoder {
    sse: SseDecoder,
    assembly: Assembly,
    /// Content block index of each tool call, in answer order.
    tool_blocks: Vec<u64>,
    text_blocks_count: usize,
    done: bool,
}

impl AnthropicStreamDecoder {
    fn on_event(&mut self, event: &Value, out: &mut Vec<ChatDelta>) -> Result<(), StreamError> {
        match event["type"].as_str().unwrap_or_default() {
            "error" => return Err(provider_error(&event["error"])),
            "message_start" => {
                let usage = &event["message"]["usage"];
                self.assembly.usage.prompt_tokens = usage["input_tokens"].as_u64().unwrap_or(0);
                self.assembly.usage.completion_tokens = usage["output_tokens"].as_u64().unwrap_or(0);
            }
            "content_block_start" => self.on_block_start(event, out)?,
            "content_block_delta" => {
                let delta = &event["delta"];
                let block = event["index"].as_u64();
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => out.extend(
                        delta["text"]
                            .as_str()
                            .filter(|t| !t.is_empty())
                            .map(|t| ChatDelta::Text(t.to_string())),
                    ),
                    "input_json_delta" => {
                        let index =
                            self.tool_blocks.iter().position(|known| Some(*known) == block).ok_or_else(
                                || StreamError::Malformed {
                                    reason: format!("input_json_delta for unknown block {block:?}"),
                                },
                            )?;
                        if let Some(fragment) = delta["partial_json"].as_str().filter(|f| !f.is_empty()) {
                            out.push(ChatDelta::ToolCallArguments { index, fragment: fragment.to_string() });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                let usage = &event["usage"];
                if let Some(tokens) = usage["output_tokens"].as_u64() {
                    self.assembly.usage.completion_tokens = tokens;
                }
                if let Some(tokens) = usage["input_tokens"].as_u64() {
                    self.assembly.usage.prompt_tokens = tokens;
                }
            }
            "message_stop" => self.done = true,
            _ => {}
        }
        Ok(())
    }

    fn on_block_start(&mut self, event: &Value, out: &mut Vec<ChatDelta>) -> Result<(), StreamError> {
        let block = &event["content_block"];
        match block["type"].as_str().unwrap_or_default() {
            "text" => {
                if self.text_blocks_count > 0 {
                    out.push(ChatDelta::Text("\n".to_string()));
                }
                self.text_blocks_count += 1;
                out.extend(
                    block["text"].as_str().filter(|t| !t.is_empty()).map(|t| ChatDelta::Text(t.to_string())),
                );
                if self.text_blocks_count == 1 {
                    // An empty first text block still makes the content `Some("")`.
                    out.push(ChatDelta::Text(String::new()));
                }
            }
            "tool_use" => {
                if self.tool_blocks.len() >= STREAM_TOOL_CALLS_COUNT_MAX {
                    return Err(StreamError::TooManyToolCalls { limit_count: STREAM_TOOL_CALLS_COUNT_MAX });
                }
                let name = block["name"].as_str().ok_or_else(|| StreamError::Malformed {
                    reason: "tool_use block without a name".into(),
                })?;
                let id = block["id"].as_str().unwrap_or(name).to_string();
                self.tool_blocks.push(event["index"].as_u64().unwrap_or(u64::MAX));
                out.push(ChatDelta::ToolCallStart {
                    index: self.tool_blocks.len() - 1,
                    id,
                    name: name.to_string(),
                });
            }
            _ => {}
        }
        Ok(())
    }
}

impl StreamDecoder for AnthropicStreamDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ChatDelta>, StreamError> {
        let mut out = Vec::new();
        for event in self.sse.feed(bytes)? {
            self.on_event(&parse_json(&event.data)?, &mut out)?;
        }
        out.iter().for_each(|delta| self.assembly.apply(delta));
        out.retain(|delta| !matches!(delta, ChatDelta::Text(text) if text.is_empty()));
        Ok(out)
    }

    fn is_done(&self) -> bool {
        self.done
    }

    /// Complete only after `message_stop`.
    fn finish(self) -> Result<ChatResponse, StreamError> {
        if !self.done {
            return Err(StreamError::Incomplete);
        }
        let mut assembly = self.assembly;
        for call in &mut assembly.calls {
            // The non-streaming path renders `input` with serde; so does this one.
            if !call.arguments.is_empty() {
                call.arguments = parse_json(&call.arguments)?.to_string();
            }
        }
        Ok(assembly.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Feeds `bytes` cut at `cut` (and byte by byte when `cut` is `None`).
    fn run<D: StreamDecoder + Default>(
        bytes: &[u8],
        cut: Option<usize>,
    ) -> (Vec<ChatDelta>, Result<ChatResponse, StreamError>) {
        let mut decoder = D::default();
        let mut deltas = Vec::new();
        let pieces: Vec<&[u8]> = match cut {
            Some(cut) => vec![&bytes[..cut], &bytes[cut..]],
            None => bytes.chunks(1).collect(),
        };
        for piece in pieces {
            match decoder.feed(piece) {
                Ok(more) => deltas.extend(more),
                Err(err) => return (deltas, Err(err)),
            }
        }
        (deltas, decoder.finish())
    }

    /// The same deltas and answer whatever the cut, merged text fragments aside.
    fn assert_every_cut<D: StreamDecoder + Default>(
        bytes: &[u8],
    ) -> (Vec<ChatDelta>, Result<ChatResponse, StreamError>) {
        let (whole_deltas, whole) = run::<D>(bytes, Some(bytes.len()));
        for cut in (0..bytes.len()).map(Some).chain([None]) {
            let (deltas, answer) = run::<D>(bytes, cut);
            assert_eq!(answer, whole, "cut at {cut:?}");
            // Deltas decoded in the chunk that fails are dropped with it.
            if whole.is_ok() {
                assert_eq!(deltas, whole_deltas, "cut at {cut:?}");
            }
        }
        (whole_deltas, whole)
    }

    fn sse(events: &[Value]) -> String {
        events.iter().map(|event| format!("data: {event}\r\n\r\n")).collect()
    }

    fn openai_chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn sse_joins_data_lines_skips_comments_and_keeps_event_names() {
        let mut decoder = SseDecoder::default();
        let events = decoder.feed(b": keepalive\nevent: ping\ndata: a\ndata: b\n\ndata:c\n\n\n").unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent { event: Some("ping".into()), data: "a\nb".into() },
                SseEvent { event: None, data: "c".into() }
            ]
        );
    }

    #[test]
    fn openai_text_and_tool_call_fragments_reassemble_at_every_cut() {
        let mut stream = sse(&[
            openai_chunk(json!({"role": "assistant", "content": ""}), None),
            openai_chunk(json!({"content": "Think"}), None),
            openai_chunk(json!({"content": "ing é…"}), None),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "send_message", "arguments": ""}}]}),
                None,
            ),
            openai_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"mess"}}]}), None),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "age\":\"hi\"}"}}]}),
                None,
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "noop", "arguments": "{}"}}]}),
                None,
            ),
            openai_chunk(json!({}), Some("tool_calls")),
            json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4}}),
        ]);
        stream.push_str("data: [DONE]\n\n");
        let (deltas, answer) = assert_every_cut::<OpenAiStreamDecoder>(stream.as_bytes());
        assert_eq!(
            deltas,
            vec![
                ChatDelta::Text("Think".into()),
                ChatDelta::Text("ing é…".into()),
                ChatDelta::ToolCallStart { index: 0, id: "call_a".into(), name: "send_message".into() },
                ChatDelta::ToolCallArguments { index: 0, fragment: "{\"mess".into() },
                ChatDelta::ToolCallArguments { index: 0, fragment: "age\":\"hi\"}".into() },
                ChatDelta::ToolCallStart { index: 1, id: "call_b".into(), name: "noop".into() },
                ChatDelta::ToolCallArguments { index: 1, fragment: "{}".into() },
            ]
        );
        let answer = answer.unwrap();
        assert_eq!(answer.content.as_deref(), Some("Thinking é…"));
        assert_eq!(
            answer.tool_calls,
            vec![
                ToolCall {
                    id: "call_a".into(),
                    name: "send_message".into(),
                    arguments: "{\"message\":\"hi\"}".into()
                },
                ToolCall { id: "call_b".into(), name: "noop".into(), arguments: "{}".into() },
            ]
        );
        assert_eq!(answer.usage, TokenUsage { prompt_tokens: 11, completion_tokens: 4 });
    }

    #[test]
    fn openai_stream_cut_before_the_end_is_incomplete_and_an_error_chunk_is_surfaced() {
        let stream = sse(&[openai_chunk(json!({"content": "half"}), None)]);
        let (deltas, answer) = assert_every_cut::<OpenAiStreamDecoder>(stream.as_bytes());
        assert_eq!(deltas, vec![ChatDelta::Text("half".into())]);
        assert_eq!(answer, Err(StreamError::Incomplete));
        let stream = sse(&[json!({"error": {"type": "server_error", "message": "overloaded"}})]);
        let (_, answer) = assert_every_cut::<OpenAiStreamDecoder>(stream.as_bytes());
        assert_eq!(
            answer,
            Err(StreamError::Provider { error_type: "server_error".into(), message: "overloaded".into() })
        );
    }

    fn anthropic_events(events: &[Value]) -> String {
        events
            .iter()
            .map(|event| format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn anthropic_text_blocks_and_input_json_reassemble_at_every_cut() {
        let stream = anthropic_events(&[
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 21, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "answer"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "send_message", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"message\": \"he"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "llo\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": "after"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ]);
        let (deltas, answer) = assert_every_cut::<AnthropicStreamDecoder>(stream.as_bytes());
        assert_eq!(
            deltas,
            vec![
                ChatDelta::Text("Let me ".into()),
                ChatDelta::Text("answer".into()),
                ChatDelta::ToolCallStart { index: 0, id: "toolu_1".into(), name: "send_message".into() },
                ChatDelta::ToolCallArguments { index: 0, fragment: "{\"message\": \"he".into() },
                ChatDelta::ToolCallArguments { index: 0, fragment: "llo\"}".into() },
                ChatDelta::Text("\n".into()),
                ChatDelta::Text("after".into()),
            ]
        );
        let answer = answer.unwrap();
        assert_eq!(answer.content.as_deref(), Some("Let me answer\nafter"));
        assert_eq!(
            answer.tool_calls,
            vec![ToolCall {
                id: "toolu_1".into(),
                name: "send_message".into(),
                arguments: "{\"message\":\"hello\"}".into()
            }]
        );
        assert_eq!(answer.usage, TokenUsage { prompt_tokens: 21, completion_tokens: 9 });
    }

    #[test]
    fn anthropic_error_event_is_surfaced_and_a_cut_stream_is_incomplete() {
        let stream = anthropic_events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]);
        let (_, answer) = assert_every_cut::<AnthropicStreamDecoder>(stream.as_bytes());
        let (deltas, _) = run::<AnthropicStreamDecoder>(stream.as_bytes(), None);
        assert_eq!(deltas, vec![ChatDelta::Text("par".into())]);
        assert_eq!(
            answer,
            Err(StreamError::Provider {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into()
            })
        );
        let cut = anthropic_events(&[json!({"type": "message_start", "message": {"usage": {}}})]);
        assert_eq!(run::<AnthropicStreamDecoder>(cut.as_bytes(), None).1, Err(StreamError::Incomplete));
    }

    #[test]
    fn an_overlong_line_is_refused() {
        let mut decoder = SseDecoder::default();
        let line = vec![b'x'; SSE_LINE_BYTES_MAX + 1];
        assert_eq!(decoder.feed(&line), Err(StreamError::LineTooLong { limit_bytes: SSE_LINE_BYTES_MAX }));
    }
}
