//! The JSON log lines of a request carry its id, method and route
//! template. Alone in its test binary: the subscriber is set for this
//! test's thread only, and tracing caches per call site whether anyone
//! listens, so another test running at the same time on a thread without a
//! subscriber could make this one's lines go unrecorded.

mod common;

use std::sync::{Arc, Mutex};

use kelpie_core::config::LogFormat;
use serde_json::Value;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

// A current-thread runtime: the server's tasks run on this thread, under
// the subscriber set for it.
#[tokio::test(flavor = "current_thread")]
async fn json_log_lines_of_a_request_carry_its_id_and_route() {
    let captured = Captured::default();
    let filter = tracing_subscriber::EnvFilter::new("info");
    let subscriber = kelpie_server::telemetry::log_subscriber(LogFormat::Json, filter, captured.clone());
    let _logging = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let url = format!("{}/v1/identities/identity-none", server.base);
    let response = server.http.get(&url).header("x-request-id", "log-req-1").send().await.unwrap();
    assert_eq!(response.status(), 404);
    server.http.get(format!("{}/v1/health/", server.base)).send().await.unwrap();
    server.shutdown().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let of_request: Vec<&Value> =
        lines.iter().filter(|line| line["span"]["request_id"] == "log-req-1").collect();
    let answered =
        of_request.iter().find(|line| line["fields"]["message"] == "answered").expect("an answered line");
    assert_eq!(answered["fields"]["status"], 404);
    assert_eq!(answered["span"]["route"], "/v1/identities/{identity_id}");
    assert_eq!(answered["span"]["method"], "GET");
    // The health check's line has its own id.
    let health = lines
        .iter()
        .find(|line| line["span"]["route"] == "/v1/health/" && line["fields"]["message"] == "answered")
        .expect("the health check's line");
    assert_ne!(health["span"]["request_id"], "log-req-1");
    assert_eq!(health["span"]["request_id"].as_str().map(str::len), Some(32));
}
