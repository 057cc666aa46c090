//! Runs the fake OpenAI-compatible LLM server (see `kelpie_llm::fake`)
//! for tests outside Rust. Prints its base URL on the first line of stdout,
//! then serves until killed.
//!
//! Usage: `kelpie-fake-llm [PORT] [--api-key KEY]...` (default: any free
//! port on 127.0.0.1; with keys, requests carrying none of them get 401).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut port: u16 = 0;
    let mut keys = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--api-key" {
            let key = args.next().filter(|key| !key.is_empty());
            keys.push(key.ok_or_else(|| anyhow::anyhow!("--api-key needs a non-empty key"))?);
        } else {
            port = arg.parse().map_err(|e| anyhow::anyhow!("bad port {arg:?}: {e}"))?;
        }
    }
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let fake = kelpie_llm::fake::FakeLlm::start_with_keys(address, keys).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", fake.base_url())?;
    stdout.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
