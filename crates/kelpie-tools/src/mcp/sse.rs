//! The legacy HTTP+SSE transport of MCP (protocol 2024-11-05), which the
//! official SDK no longer ships but many servers and Letta's `sse` servers
//! still speak: a GET opens an event stream whose first `endpoint` event
//! names where to POST messages; answers come back as `message` events.
//!
//! It is bridged to JSON lines, the framing of the stdio transport: the
//! client gets one end of an in-memory pipe, each line it writes is POSTed,
//! and each `message` event is written back as a line. When either side
//! ends, the bridge ends and the client sees its pipe close.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use crate::mcp::types::{McpError, MCP_MESSAGE_BYTES_MAX};
use crate::runner::SESSION_PIPE_BYTES;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Splits a byte stream into events (`event:` and `data:` fields; other
/// fields and comments ignored), bounded by [`MCP_MESSAGE_BYTES_MAX`].
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: Vec<String>,
    data_bytes: usize,
}

impl SseParser {
    /// Feeds `bytes`; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, McpError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let event = if event.is_empty() { "message".to_string() } else { event };
                    events.push(SseEvent { event, data: self.data.join("\n") });
                }
                self.data.clear();
                self.data_bytes = 0;
                self.event.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    self.data_bytes += value.len() + 1;
                    self.data.push(value.to_string());
                }
                _ => {}
            }
        }
        if self.buffer.len() + self.data_bytes > MCP_MESSAGE_BYTES_MAX {
            return Err(McpError::Protocol(format!(
                "an SSE event is over MCP_MESSAGE_BYTES_MAX = {MCP_MESSAGE_BYTES_MAX} bytes"
            )));
        }
        Ok(events)
    }
}

/// Where to POST, from the `endpoint` event's data: a path on the stream's
/// own origin, or an absolute URL of that same origin (anything else would
/// let a server redirect our requests elsewhere).
pub fn resolve_endpoint(stream_url: &str, endpoint: &str) -> Result<String, McpError> {
    let (scheme, rest) = stream_url.split_once("://").unwrap_or(("http", stream_url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let origin = format!("{scheme}://{authority}");
    if endpoint.starts_with('/') {
        return Ok(format!("{origin}{endpoint}"));
    }
    if endpoint.starts_with(&format!("{origin}/")) {
        return Ok(endpoint.to_string());
    }
    Err(McpError::Protocol(format!("the SSE endpoint {endpoint:?} is not on the server's origin {origin}")))
}

/// Opens the event stream at `url` and bridges it: the pipe's other end
/// speaks JSON lines. Fails when the stream does not open or name its
/// endpoint within `timeout`.
pub async fn connect(
    url: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<DuplexStream, McpError> {
    let connect_error = |reason: String| McpError::Connect(format!("SSE stream {url}: {reason}"));
    let http = reqwest::Client::builder()
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| connect_error(e.to_string()))?;
    let mut request = http.get(url).header("Accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let opened = async {
        let response = request.send().await.map_err(|e| connect_error(e.to_string()))?;
        let challenge = response.headers().get(reqwest::header::WWW_AUTHENTICATE);
        if let (reqwest::StatusCode::UNAUTHORIZED, Some(challenge)) = (response.status(), challenge) {
            let challenge = String::from_utf8_lossy(challenge.as_bytes()).into_owned();
            return Err(McpError::AuthRequired { url: url.to_string(), challenge });
        }
        if !response.status().is_success() {
            return Err(connect_error(format!("answered {}", response.status())));
        }
        let mut stream = response.bytes_stream();
        let mut parser = SseParser::default();
        loop {
            let Some(chunk) = stream.next().await else {
                return Err(connect_error("the stream ended before naming its endpoint".into()));
            };
            let chunk = chunk.map_err(|e| connect_error(e.to_string()))?;
            let events = parser.feed(&chunk)?;
            if let Some(endpoint) = events.iter().find(|event| event.event == "endpoint") {
                let endpoint = resolve_endpoint(url, endpoint.data.trim())?;
                return Ok((stream, parser, endpoint));
            }
        }
    };
    let (mut stream, mut parser, endpoint) =
        tokio::time::timeout(timeout, opened).await.map_err(|_| McpError::Timeout {
            what: format!("opening the SSE stream {url}"),
            timeout_ms: timeout.as_millis() as u64,
        })??;
    let (client_side, bridge_side) = tokio::io::duplex(SESSION_PIPE_BYTES);
    let (bridge_read, mut bridge_write) = tokio::io::split(bridge_side);
    let headers = headers.to_vec();
    tokio::spawn(async move {
        let outgoing = async {
            let mut lines = BufReader::new(bridge_read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut post = http.post(&endpoint).header("Content-Type", "application/json").body(line);
                for (name, value) in &headers {
                    post = post.header(name.as_str(), value.as_str());
                }
                match post.send().await {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => {
                        tracing::warn!(%endpoint, status = %response.status(), "MCP SSE server refused a message");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%endpoint, %error, "cannot POST to the MCP SSE server");
                        return;
                    }
                }
            }
        };
        let incoming = async {
            while let Some(Ok(chunk)) = stream.next().await {
                let Ok(events) = parser.feed(&chunk) else { return };
                for event in events.into_iter().filter(|event| event.event == "message") {
                    let mut line = event.data.replace('\n', "");
                    line.push('\n');
                    if bridge_write.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = outgoing => {}
            () = incoming => {}
        }
    });
    Ok(client_side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_lines() {
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(b"event: endpoint\r\ndata: /messages?s").unwrap(), vec![]);
        let events = parser.feed(b"=1\r\n\r\n: comment\n\ndata: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent { event: "endpoint".into(), data: "/messages?s=1".into() },
                SseEvent { event: "message".into(), data: "{\"a\":\n1}".into() },
            ]
        );
    }

    #[test]
    fn an_event_over_the_limit_is_refused() {
        let mut parser = SseParser::default();
        let big = vec![b'x'; MCP_MESSAGE_BYTES_MAX + 1];
        assert!(matches!(parser.feed(&big), Err(McpError::Protocol(_))));
    }

    #[test]
    fn the_endpoint_must_be_on_the_stream_origin() {
        let url = "http://127.0.0.1:3001/sse";
        assert_eq!(resolve_endpoint(url, "/message?x=1").unwrap(), "http://127.0.0.1:3001/message?x=1");
        assert_eq!(resolve_endpoint(url, "http://127.0.0.1:3001/m").unwrap(), "http://127.0.0.1:3001/m");
        assert!(resolve_endpoint(url, "http://169.254.169.254/m").is_err());
        assert!(resolve_endpoint(url, "http://127.0.0.1:3001.evil/m").is_err());
    }
}
