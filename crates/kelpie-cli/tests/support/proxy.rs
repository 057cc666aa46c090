//! A fault-injecting TCP proxy on 127.0.0.1: forwards bytes both ways
//! between each accepted connection and a fresh connection to its target,
//! until it is cut. Cutting closes every open connection (both sides) and
//! refuses new ones (accepted, then closed at once) until it is healed.
//!
//! Invariant: once [`FaultProxy::cut`] has returned, not one byte more
//! passes in either direction until [`FaultProxy::heal`]: every forwarding
//! task has been aborted *and awaited*, and the accept loop checks the cut
//! under the same lock that registers new forwarding tasks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_RETRY_MS: u64 = 10;

#[derive(Default)]
struct Links {
    cut: bool,
    /// Forwarding tasks, one per accepted connection (finished ones are
    /// pruned as new ones arrive).
    tasks: Vec<JoinHandle<()>>,
}

pub struct FaultProxy {
    listen: SocketAddr,
    target: SocketAddr,
    links: Arc<Mutex<Links>>,
    accept_loop: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        assert!(target.ip().is_loopback(), "proxies stay on loopback: {target}");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let listen = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Links::default()));
        let accept_loop = tokio::spawn(accept(listener, target, links.clone()));
        FaultProxy { listen, target, links, accept_loop }
    }

    /// Where clients connect.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Closes every open connection and refuses new ones. When this returns,
    /// no forwarding task runs any more.
    pub async fn cut(&self) {
        let tasks = {
            let mut links = self.links.lock().unwrap();
            links.cut = true;
            std::mem::take(&mut links.tasks)
        };
        for task in tasks {
            task.abort();
            // Cancelled (or already finished): either way it forwards no more.
            let _ = task.await;
        }
        assert!(self.links.lock().unwrap().tasks.is_empty(), "no link registered while cut");
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        let mut links = self.links.lock().unwrap();
        assert!(links.tasks.is_empty(), "no link survives a cut");
        links.cut = false;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        for task in self.links.lock().unwrap().tasks.drain(..) {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, links: Arc<Mutex<Links>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_RETRY_MS)).await;
            continue;
        };
        let mut links = links.lock().unwrap();
        if links.cut {
            drop(inbound);
            continue;
        }
        links.tasks.retain(|task| !task.is_finished());
        links.tasks.push(tokio::spawn(forward(inbound, target)));
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    // Either side closing or failing ends the link; both sockets drop here.
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
