//! Runs the fake OpenAI-compatible LLM server (see `kelpie_llm::fake`)
//! for tests outside Rust. Prints its base URL on the first line of stdout,
//! then serves until killed.
//!
//! Usage: `kelpie-fake-llm [PORT]` (default: any free port on 127.0.0.1).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse().map_err(|e| anyhow::anyhow!("bad port {port:?}: {e}"))?,
        None => 0,
    };
    let fake = kelpie_llm::fake::FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", fake.base_url())?;
    stdout.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
