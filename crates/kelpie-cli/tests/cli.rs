//! The `kelpie` binary as a user runs it: flags, errors, and a live server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn kelpie() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelpie"));
    // Keep the caller's environment from leaking config into the test.
    for (name, _) in std::env::vars() {
        if name.starts_with("KELPIE_") || name.starts_with("OPENAI_") || name.starts_with("ANTHROPIC_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn version_and_help() {
    let out = kelpie().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("kelpie {}", env!("CARGO_PKG_VERSION"))
    );

    let out = kelpie().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--data-dir", "--bind", "--database-url", "--cluster", "--config"] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
}

#[test]
fn unknown_flag_fails_with_usage() {
    let out = kelpie().args(["serve", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
}

#[test]
fn invalid_config_is_rejected_before_serving() {
    let out = kelpie().args(["serve", "--storage", "postgres"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("config field `storage.database_url` (from the default): is required when storage.backend is \"postgres\""),
        "{stderr}"
    );

    let out =
        kelpie().args(["serve", "--bind", "nowhere"]).env("KELPIE_BIND", "127.0.0.1:1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("config field `bind` (from flag --bind)"), "flag beats env: {stderr}");

    // A cluster without a shared secret is refused unless the network is declared trusted.
    let cluster = [
        "serve",
        "--cluster",
        "--database-url",
        "postgres://k@127.0.0.1:1/k",
        "--advertise",
        "127.0.0.1:7100",
    ];
    let out = kelpie().args(cluster).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("config field `cluster.secret` (from the default): is required in a cluster"),
        "{stderr}"
    );
    let out = kelpie().args(cluster).env("KELPIE_CLUSTER_SECRET", "short").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("is 5 bytes; at least 16 are needed"), "{stderr}");
    assert!(!stderr.contains("short"), "the secret is never printed: {stderr}");
}

#[test]
fn serve_answers_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut child = kelpie()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited before listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(data_dir.is_dir());

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let body: serde_json::Value = runtime.block_on(async {
        reqwest::get(format!("http://{addr}/v1/health/")).await.unwrap().json().await.unwrap()
    });
    assert_eq!(body["status"], "ok");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0, got {status:?}");
}
