//! The commands for people against a live `kelpie serve`: `kelpie agents
//! create|list|show|delete` and `kelpie chat` (piped lines and `-m`), and
//! `kelpie serve --host/--port` as Letta's server takes them.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use support::{call, serve};

fn kelpie(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kelpie"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KELPIE_") {
            command.env_remove(name);
        }
    }
    command.args(args);
    command
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn run(args: &[&str], input: &str) -> Output {
    let mut child =
        kelpie(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The command's standard output, asserting it succeeded.
fn ok(args: &[&str]) -> String {
    let out = run(args, "");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_created_listed_shown_chatted_with_and_deleted() {
    let fake = FakeLlm::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) = serve(&dir.path().join("data"), &fake.base_url());
    let url = ["--url", base.as_str()];
    let with_url =
        |args: &[&str]| -> Vec<String> { args.iter().chain(url.iter()).map(|s| s.to_string()).collect() };

    let args = with_url(&[
        "agents",
        "create",
        "--name",
        "tutor",
        "--block",
        "human=Name: Ana.",
        "--block",
        "persona=A tutor.",
    ]);
    let id = ok(&strs(&args)).trim().to_string();
    assert!(id.starts_with("agent-"), "{id}");
    let shown = ok(&strs(&with_url(&["agents", "show", &id])));
    assert!(shown.contains(&format!("id         {id}\n")) && shown.contains("name       tutor\n"), "{shown}");
    assert!(shown.contains("  [human] (10 of ") && shown.contains("    Name: Ana.\n"), "{shown}");
    assert!(shown.contains("tools:     send_message, "), "{shown}");

    // Piped lines are one turn each; the answer streams back as text, a
    // tool call and its result as one line each.
    let chat = with_url(&["chat", &id]);
    let lines = "hello there\n\n/call core_memory_append {\"label\":\"human\",\"content\":\"Likes tea.\"}\n";
    let out = run(&strs(&chat), lines);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "chatting with tutor ({id}); end of input to stop\nagent: echo: hello there\n  -> calls core_memory_append\n  <- success "
    );
    assert!(said.starts_with(&expected), "{said}");
    let one = ok(&strs(&with_url(&["chat", &id, "-m", "one more"])));
    assert_eq!(one, "agent: echo: one more\n");
    let memory =
        call(&reqwest::Client::new(), reqwest::Method::GET, format!("{base}/v1/agents/{id}"), None).await;
    let human =
        memory["memory"]["blocks"].as_array().unwrap().iter().find(|b| b["label"] == "human").unwrap();
    assert_eq!(human["value"], "Name: Ana.\nLikes tea.");
    let history = call(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        format!("{base}/v1/agents/{id}/messages?order=asc&limit=100"),
        None,
    )
    .await;
    let users: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "user_message")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        vec![
            "hello there",
            "/call core_memory_append {\"label\":\"human\",\"content\":\"Likes tea.\"}",
            "one more"
        ]
    );

    // The list pages through to the end: more agents than one page (100).
    let http = reqwest::Client::new();
    let mut ids = vec![id.clone()];
    for n in 0..101 {
        let body = json!({"name": format!("extra-{n}"), "tags": if n % 2 == 0 { json!(["even"]) } else { json!([]) }});
        ids.push(
            call(&http, reqwest::Method::POST, format!("{base}/v1/agents/"), Some(body)).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let listed: Value = serde_json::from_str(&ok(&strs(&with_url(&["agents", "list", "--json"])))).unwrap();
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let table = ok(&strs(&with_url(&["agents", "list"])));
    assert!(table.starts_with("ID ") && table.ends_with("\n102 agents\n"), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with(&format!("{id} tutor ")), "{table}");
    let evens = ok(&strs(&with_url(&["agents", "list", "--tag", "even"])));
    assert!(evens.ends_with("\n51 agents\n"), "{evens}");
    let named = ok(&strs(&with_url(&["agents", "list", "--name", "tutor"])));
    assert!(named.ends_with("\n1 agent\n"), "{named}");

    // Delete, then every command about it fails with the server's reason.
    assert_eq!(ok(&strs(&with_url(&["agents", "delete", &id]))), format!("deleted {id}\n"));
    for args in [with_url(&["agents", "show", &id]), with_url(&["chat", &id, "-m", "hi"])] {
        let out = run(&strs(&args), "");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("404 Not Found") && stderr.contains(&format!("Agent with ID {id} not found")),
            "{stderr}"
        );
    }
    let bad = run(&strs(&with_url(&["agents", "create", "--name", "x", "--block", "novalue"])), "");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8(bad.stderr).unwrap().contains("--block \"novalue\": give it as label=value"));
    server.kill().unwrap();
    server.wait().unwrap();
    // A server that is not there is said so.
    let gone = run(&strs(&with_url(&["agents", "list"])), "");
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8(gone.stderr).unwrap().contains(&format!("cannot reach {base}")));
}

#[test]
fn serve_takes_host_and_port_as_letta_does() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let data_dir = dir.path().join("data");
    let mut child = kelpie(&[
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "the server exited before listening"
        );
        if line.contains("listening on http://") {
            break;
        }
    }
    assert!(line.contains(&format!("listening on http://127.0.0.1:{port} ")), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    // --bind and --port together are refused before anything starts.
    let out = kelpie(&["serve", "--bind", "127.0.0.1:1", "--port", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("cannot be used with"));
    // A bad host names the flags it came from.
    let out = kelpie(&["serve", "--host", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("config field `bind` (from flag --host/--port)"));
}
