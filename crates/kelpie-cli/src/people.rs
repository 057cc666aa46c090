//! The commands for people at a terminal: `kelpie agents list|create|show|
//! delete` and `kelpie chat`, all through a server's HTTP API (the same
//! routes a Letta SDK calls), so they work against any node, local or not.
//!
//! Output is a table or text by default and the server's JSON with
//! `--json`; failures print the server's `detail` and exit non-zero.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Agents listed per request while paging through `kelpie agents list`.
const LIST_PAGE_COUNT: usize = 100;
/// Most agents `kelpie agents list` prints (more are counted, not shown).
pub const LIST_AGENTS_COUNT_MAX: usize = 100_000;
/// Longest wait for an answer to one request, a chat turn included.
const REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Longest tool result `kelpie chat` prints, in characters.
const TOOL_RETURN_SHOWN_CHARS_MAX: usize = 200;

/// Where the server is.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of the Kelpie server's HTTP API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8283", env = "KELPIE_URL")]
    url: String,
    /// Bearer token, when the server requires one [env: KELPIE_API_KEY].
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Every agent, oldest first (paged through to the end).
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only agents with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only agents with this tag (repeat for several: all must match).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Print the agents as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an agent and print its id.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// The agent's name.
        #[arg(long)]
        name: String,
        /// Model handle (provider/model) [default: the server's].
        #[arg(long, value_name = "HANDLE")]
        model: Option<String>,
        /// System prompt [default: the server's].
        #[arg(long)]
        system: Option<String>,
        /// A core memory block, as label=value (repeat for several).
        #[arg(long = "block", value_name = "LABEL=VALUE")]
        blocks: Vec<String>,
        /// Print the created agent as JSON.
        #[arg(long)]
        json: bool,
    },
    /// An agent's settings, memory blocks and tools.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
        /// Print the agent as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an agent and everything it holds.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
}

/// `kelpie chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    server: ServerArgs,
    agent_id: String,
    /// Send this one message, print the answer and exit (else read
    /// messages from standard input, one per line, until end of input).
    #[arg(long, short = 'm')]
    message: Option<String>,
    /// Also print the model's reasoning.
    #[arg(long)]
    reasoning: bool,
}

/// A failure to print: the server's reason, or why it was not reached.
#[derive(Debug)]
pub struct CliError(String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type CliResult<T> = Result<T, CliError>;

struct Api {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Api {
    fn new(server: &ServerArgs) -> CliResult<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| CliError(format!("cannot make an HTTP client: {e}")))?;
        let api_key = server
            .api_key
            .clone()
            .or_else(|| std::env::var("KELPIE_API_KEY").ok())
            .filter(|key| !key.is_empty());
        Ok(Api { http, base: server.url.trim_end_matches('/').to_string(), api_key })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The response, or the server's `detail` as the error.
    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> CliResult<reqwest::Response> {
        let response =
            request.send().await.map_err(|e| CliError(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let detail = body["detail"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        Err(CliError(format!("{what}: {status}: {detail}")))
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> CliResult<Value> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self.send(request, path).await?;
        response.json().await.map_err(|e| CliError(format!("{path} answered no JSON: {e}")))
    }
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))
}

/// Runs `kelpie agents ...`, printing to `out`.
pub fn agents(command: AgentsCommand, out: &mut impl Write) -> CliResult<()> {
    runtime()?.block_on(async move {
        match command {
            AgentsCommand::List { server, name, tags, json } => {
                let agents = list(&Api::new(&server)?, name.as_deref(), &tags).await?;
                match json {
                    true => print_json(out, &Value::Array(agents)),
                    false => write_text(out, &agents_table(&agents)),
                }
            }
            AgentsCommand::Create { server, name, model, system, blocks, json } => {
                let mut memory_blocks = Vec::new();
                for block in &blocks {
                    let (label, value) = block
                        .split_once('=')
                        .filter(|(label, _)| !label.is_empty())
                        .ok_or_else(|| CliError(format!("--block {block:?}: give it as label=value")))?;
                    memory_blocks.push(json!({"label": label, "value": value}));
                }
                let mut body = json!({"name": name, "memory_blocks": memory_blocks});
                if let Some(model) = model {
                    body["model"] = Value::from(model);
                }
                if let Some(system) = system {
                    body["system"] = Value::from(system);
                }
                let api = Api::new(&server)?;
                let agent = api.json(reqwest::Method::POST, "/v1/agents/", Some(body)).await?;
                match json {
                    true => print_json(out, &agent),
                    false => write_text(out, &format!("{}\n", text(&agent["id"]))),
                }
            }
            AgentsCommand::Show { server, agent_id, json } => {
                let path = format!("/v1/agents/{agent_id}");
                let agent = Api::new(&server)?.json(reqwest::Method::GET, &path, None).await?;
                match json {
                    true => print_json(out, &agent),
                    false => write_text(out, &agent_text(&agent)),
                }
            }
            AgentsCommand::Delete { server, agent_id } => {
                let path = format!("/v1/agents/{agent_id}");
                Api::new(&server)?.json(reqwest::Method::DELETE, &path, None).await?;
                write_text(out, &format!("deleted {agent_id}\n"))
            }
        }
    })
}

/// Every agent the server lists (with `name` and all of `tags`), paged
/// through with the `after` cursor, at most [`LIST_AGENTS_COUNT_MAX`].
async fn list(api: &Api, name: Option<&str>, tags: &[String]) -> CliResult<Vec<Value>> {
    let mut agents: Vec<Value> = Vec::new();
    loop {
        let mut query: Vec<(&str, String)> =
            vec![("limit", LIST_PAGE_COUNT.to_string()), ("order", "asc".into())];
        if let Some(name) = name {
            query.push(("name", name.to_string()));
        }
        for tag in tags {
            query.push(("tags", tag.clone()));
        }
        if !tags.is_empty() {
            query.push(("match_all_tags", "true".into()));
        }
        if let Some(last) = agents.last() {
            query.push(("after", text(&last["id"])));
        }
        let request = api.request(reqwest::Method::GET, "/v1/agents/").query(&query);
        let response = api.send(request, "/v1/agents/").await?;
        let page: Vec<Value> =
            response.json().await.map_err(|e| CliError(format!("/v1/agents/ answered no list: {e}")))?;
        let full = page.len() == LIST_PAGE_COUNT;
        agents.extend(page);
        if !full {
            return Ok(agents);
        }
        if agents.len() >= LIST_AGENTS_COUNT_MAX {
            agents.truncate(LIST_AGENTS_COUNT_MAX);
            return Ok(agents);
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn agents_table(agents: &[Value]) -> String {
    let mut out = format!("{:<42} {:<24} {:<28} {}\n", "ID", "NAME", "MODEL", "CREATED");
    for agent in agents {
        out.push_str(&format!(
            "{:<42} {:<24} {:<28} {}\n",
            text(&agent["id"]),
            text(&agent["name"]),
            text(&agent["llm_config"]["handle"]),
            text(&agent["created_at"]),
        ));
    }
    out.push_str(&format!("{} agent{}\n", agents.len(), if agents.len() == 1 { "" } else { "s" }));
    out
}

fn agent_text(agent: &Value) -> String {
    let mut out = String::new();
    for (field, value) in [
        ("id", &agent["id"]),
        ("name", &agent["name"]),
        ("model", &agent["llm_config"]["handle"]),
        ("embedding", &agent["embedding_config"]["handle"]),
        ("created", &agent["created_at"]),
        ("tags", &agent["tags"]),
    ] {
        out.push_str(&format!("{field:<10} {}\n", text(value)));
    }
    out.push_str("memory:\n");
    for block in agent["memory"]["blocks"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let value = text(&block["value"]);
        out.push_str(&format!(
            "  [{}] ({} of {} chars)\n",
            text(&block["label"]),
            value.chars().count(),
            text(&block["limit"])
        ));
        for line in value.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    let tools: Vec<String> = agent["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|tool| text(&tool["name"]))
        .collect();
    out.push_str(&format!("tools:     {}\n", tools.join(", ")));
    out
}

fn print_json(out: &mut impl Write, value: &Value) -> CliResult<()> {
    write_text(out, &format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()))
}

fn write_text(out: &mut impl Write, text: &str) -> CliResult<()> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError(format!("cannot write: {e}")))
}

/// Runs `kelpie chat`: each message a streamed turn, the answer printed as
/// its tokens arrive.
pub fn chat(args: ChatArgs, input: impl BufRead, out: &mut impl Write) -> CliResult<()> {
    runtime()?.block_on(async move {
        let api = Api::new(&args.server)?;
        let agent = api.json(reqwest::Method::GET, &format!("/v1/agents/{}", args.agent_id), None).await?;
        if let Some(message) = &args.message {
            return turn(&api, &args, message, out).await;
        }
        write_text(
            out,
            &format!("chatting with {} ({}); end of input to stop\n", text(&agent["name"]), args.agent_id),
        )?;
        for line in input.lines() {
            let line = line.map_err(|e| CliError(format!("cannot read standard input: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            turn(&api, &args, &line, out).await?;
        }
        Ok(())
    })
}

/// One streamed turn: `POST .../messages/stream` with `stream_tokens`,
/// printing assistant text as it arrives, tool calls and results as
/// single lines, and the stream's error if it ends with one.
async fn turn(api: &Api, args: &ChatArgs, message: &str, out: &mut impl Write) -> CliResult<()> {
    let path = format!("/v1/agents/{}/messages/stream", args.agent_id);
    let body = json!({"messages": [{"role": "user", "content": message}], "stream_tokens": true});
    let request = api.request(reqwest::Method::POST, &path).json(&body);
    let mut response = api.send(request, &path).await?;
    let mut printer = TurnPrinter { reasoning: args.reasoning, ..TurnPrinter::default() };
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| CliError(format!("the stream broke: {e}")))? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|pair| pair == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            for data in event.lines().filter_map(|line| line.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                let value: Value = serde_json::from_str(data)
                    .map_err(|e| CliError(format!("the stream sent an event that is not JSON: {e}")))?;
                write_text(out, &printer.print(&value))?;
                if let Some(error) = printer.error.take() {
                    return Err(CliError(error));
                }
            }
        }
    }
    write_text(out, &printer.finish())
}

/// What a turn's events print as, kept between events (a message's
/// fragments share its id).
#[derive(Default)]
struct TurnPrinter {
    reasoning: bool,
    /// The kind and id of the message being printed, if its line is open.
    open: Option<(String, String)>,
    /// Tool calls already announced, by message id.
    announced: Vec<String>,
    error: Option<String>,
}

impl TurnPrinter {
    fn close(&mut self) -> String {
        match self.open.take() {
            Some(_) => "\n".to_string(),
            None => String::new(),
        }
    }

    /// The text event `event` adds to the terminal.
    fn print(&mut self, event: &Value) -> String {
        let kind = event["message_type"].as_str().unwrap_or_default().to_string();
        let id = text(&event["id"]);
        let same = self.open.as_ref() == Some(&(kind.clone(), id.clone()));
        match kind.as_str() {
            "assistant_message" | "reasoning_message" => {
                let fragment = match kind.as_str() {
                    "assistant_message" => event["content"].as_str().unwrap_or_default(),
                    _ if self.reasoning => event["reasoning"].as_str().unwrap_or_default(),
                    _ => return String::new(),
                };
                let mut shown = String::new();
                if !same {
                    shown.push_str(&self.close());
                    shown.push_str(if kind == "assistant_message" { "agent: " } else { "(thinking) " });
                    self.open = Some((kind, id));
                }
                shown.push_str(fragment);
                shown
            }
            "tool_call_message" | "approval_request_message" => {
                let name = event["tool_call"]["name"].as_str().unwrap_or_default();
                if name.is_empty() || self.announced.contains(&id) {
                    return String::new();
                }
                self.announced.push(id);
                format!("{}  -> calls {name}\n", self.close())
            }
            "tool_return_message" => {
                let result = text(&event["tool_return"]);
                let shown: String = result.chars().take(TOOL_RETURN_SHOWN_CHARS_MAX).collect();
                let more = if shown.len() < result.len() { "..." } else { "" };
                format!("{}  <- {} {shown}{more}\n", self.close(), text(&event["status"]))
            }
            "error_message" | "error" => {
                self.error = Some(format!(
                    "the turn failed: {}",
                    event["detail"].as_str().or(event["message"].as_str()).unwrap_or("no reason given")
                ));
                self.close()
            }
            _ => String::new(),
        }
    }

    fn finish(&mut self) -> String {
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_of_one_message_print_on_one_line_and_tools_once() {
        let mut printer = TurnPrinter::default();
        let events = [
            json!({"message_type": "reasoning_message", "id": "m1", "reasoning": "hidden"}),
            json!({"message_type": "assistant_message", "id": "m2", "content": "Hel"}),
            json!({"message_type": "assistant_message", "id": "m2", "content": "lo"}),
            json!({"message_type": "tool_call_message", "id": "m3", "tool_call": {"name": "web_search"}}),
            json!({"message_type": "tool_call_message", "id": "m3", "tool_call": {"name": "web_search"}}),
            json!({"message_type": "tool_return_message", "id": "m4", "status": "success", "tool_return": "x".repeat(300)}),
            json!({"message_type": "assistant_message", "id": "m5", "content": "Done."}),
            json!({"message_type": "stop_reason", "stop_reason": "end_turn"}),
        ];
        let shown: String =
            events.iter().map(|event| printer.print(event)).collect::<String>() + &printer.finish();
        let expected = format!(
            "agent: Hello\n  -> calls web_search\n  <- success {}...\nagent: Done.\n",
            "x".repeat(TOOL_RETURN_SHOWN_CHARS_MAX)
        );
        assert_eq!(shown, expected);
        assert!(printer.error.is_none());
    }

    #[test]
    fn reasoning_shows_when_asked_and_an_error_event_ends_the_turn() {
        let mut printer = TurnPrinter { reasoning: true, ..TurnPrinter::default() };
        let shown =
            printer.print(&json!({"message_type": "reasoning_message", "id": "m1", "reasoning": "hmm"}));
        assert_eq!(shown, "(thinking) hmm");
        let shown = printer.print(&json!({"message_type": "error_message", "detail": "the model is down"}));
        assert_eq!(shown, "\n");
        assert_eq!(printer.error.as_deref(), Some("the turn failed: the model is down"));
    }

    #[test]
    fn a_block_without_a_label_is_refused() {
        let server = ServerArgs { url: "http://127.0.0.1:9".into(), api_key: None };
        let command = AgentsCommand::Create {
            server,
            name: "a".into(),
            model: None,
            system: None,
            blocks: vec!["=value".into()],
            json: false,
        };
        let err = agents(command, &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "--block \"=value\": give it as label=value");
    }
}
