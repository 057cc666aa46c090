//! What a sandboxed program sees as `/`, the same for the process and
//! gVisor backends: the host's `/usr` (programs and libraries, no secrets by
//! convention) read-only with its `/bin`, `/lib*` and `/sbin` links; an
//! `/etc` written by Kelpie (a user, a group, a hostname, the linker cache),
//! never the host's; a private `/tmp`; the sandbox's own `/work`; and, with
//! network, the host's name resolution and CA certificates. Nothing else of
//! the host: not its `/proc`, `/home`, `/root`, `/var`, `/etc/shadow`, nor the
//! server's data dir.

use std::path::{Path, PathBuf};

use crate::error::SandboxError;

/// The user and group a program runs as inside a sandbox.
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;
/// The hostname inside a sandbox.
pub const SANDBOX_HOSTNAME: &str = "sandbox";
/// The `PATH` of a sandboxed program.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Top-level host entries of the system: bound read-only when a directory,
/// recreated when a link (merged-/usr systems link `/bin` to `usr/bin`).
const SYSTEM_ENTRIES: [&str; 7] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Host files visible to a program allowed on the network.
const NETWORK_FILES: [&str; 4] = ["/etc/resolv.conf", "/etc/hosts", "/etc/ssl", "/etc/ca-certificates"];

/// One entry of the sandbox's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootEntry {
    /// A host path bound read-only at the same place.
    ReadOnly { host: PathBuf, at: String },
    /// A symbolic link `at` → `target`.
    Link { target: String, at: String },
}

/// The system part of the root: `/usr` and its links, as this host has them.
pub fn system_entries() -> Vec<RootEntry> {
    let mut entries = Vec::new();
    for path in SYSTEM_ENTRIES {
        let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(path) {
                entries.push(RootEntry::Link { target: target.display().to_string(), at: path.to_string() });
            }
        } else if meta.is_dir() {
            entries.push(RootEntry::ReadOnly { host: PathBuf::from(path), at: path.to_string() });
        }
    }
    entries
}

/// The host files name resolution and TLS need, for a program with network.
pub fn network_entries() -> Vec<RootEntry> {
    NETWORK_FILES
        .iter()
        .filter(|path| Path::new(path).exists())
        .map(|path| RootEntry::ReadOnly { host: PathBuf::from(path), at: path.to_string() })
        .collect()
}

/// Writes the sandbox's `/etc` into `dir` (made if missing): world-readable,
/// holding nothing of the host's but its linker cache.
pub fn write_etc(dir: &Path) -> Result<(), SandboxError> {
    let io =
        |what: &str, e: std::io::Error| SandboxError::Create(format!("{what} in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| io("mkdir", e))?;
    let files = [
        ("passwd", format!("root:x:0:0::/:/usr/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_GID}::/work:/usr/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")),
        ("group", format!("root:x:0:\nsandbox:x:{SANDBOX_GID}:\nnogroup:x:65534:\n")),
        ("hostname", format!("{SANDBOX_HOSTNAME}\n")),
        ("hosts", format!("127.0.0.1 localhost {SANDBOX_HOSTNAME}\n::1 localhost\n")),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n".to_string()),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).map_err(|e| io(name, e))?;
    }
    // The dynamic linker finds multiarch libraries through its cache.
    if Path::new("/etc/ld.so.cache").exists() {
        std::fs::copy("/etc/ld.so.cache", dir.join("ld.so.cache")).map_err(|e| io("ld.so.cache", e))?;
    }
    Ok(())
}
