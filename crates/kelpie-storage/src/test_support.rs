//! Test support (feature `test-support`): a real, throwaway PostgreSQL
//! server for integration tests of this crate and of the crates above it.
//!
//! [`PostgresServer::start`] finds the PostgreSQL binaries (`pg_ctl` on
//! `PATH`, else the newest `/usr/lib/postgresql/*/bin`), runs `initdb` into a
//! temporary directory and starts the server on a free loopback port with
//! its socket in that directory. PostgreSQL refuses to run as root, so when
//! the tests run as root the server runs as the `postgres` user (or `nobody`)
//! through `runuser`, with the directory handed over to it. Dropping the
//! handle stops the server immediately and deletes the directory.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Attempts at starting a server (a free port can be taken in between).
const POSTGRES_START_ATTEMPTS_COUNT_MAX: usize = 3;

/// Users a root test process may run PostgreSQL as, in order of preference.
const UNPRIVILEGED_USERS: [&str; 2] = ["postgres", "nobody"];

/// A running PostgreSQL server, stopped when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    bin_dir: PathBuf,
    dir: TempDir,
    port: u16,
    run_as: Option<String>,
}

/// Where the PostgreSQL binaries are, if installed.
pub fn find_postgres_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("pg_ctl"))
        .find(|candidate| candidate.is_file())
        .and_then(|pg_ctl| std::fs::canonicalize(pg_ctl).ok())
        .and_then(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf));
    let has_all = |dir: &PathBuf| ["initdb", "pg_ctl", "postgres"].iter().all(|bin| dir.join(bin).is_file());
    if let Some(dir) = on_path.filter(has_all) {
        return Some(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(has_all)
        .collect();
    versions.sort_by_key(|dir| {
        dir.parent().and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    versions.pop()
}

fn run(command: &mut Command, what: &str) -> io::Result<Output> {
    let output = command.output().map_err(|err| io::Error::other(format!("{what}: {err}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output)
}

fn is_root() -> io::Result<bool> {
    let output = run(Command::new("id").arg("-u"), "id -u")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The user to run PostgreSQL as when we are root.
fn unprivileged_user() -> io::Result<String> {
    UNPRIVILEGED_USERS
        .iter()
        .find(|user| Command::new("id").arg("-u").arg(user).output().is_ok_and(|out| out.status.success()))
        .map(|user| user.to_string())
        .ok_or_else(|| io::Error::other("running as root and no unprivileged user (postgres, nobody) exists"))
}

fn free_loopback_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The environment variable that lets PostgreSQL-needing tests skip on a
/// machine without PostgreSQL. An explicit opt-out for local runs; CI never
/// sets it, so there a missing PostgreSQL fails those tests.
pub const SKIP_POSTGRES_ENV: &str = "KELPIE_SKIP_POSTGRES";

/// Whether a test skips after failing to start PostgreSQL with `kind`:
/// only when the binaries are missing and the opt-out is exactly `1`.
fn skips(opt_out: Option<&str>, kind: io::ErrorKind) -> bool {
    opt_out == Some("1") && kind == io::ErrorKind::NotFound
}

impl PostgresServer {
    /// Starts a server for `test`, or `None` (printing why) when this
    /// machine has no PostgreSQL and `KELPIE_SKIP_POSTGRES=1` asks to skip.
    /// Any other failure to start, or no PostgreSQL without the opt-out,
    /// panics: the test fails.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        Self::start_with_or_skip(test, &[])
    }

    /// [`Self::start_or_skip`] with extra server settings.
    pub fn start_with_or_skip(test: &str, settings: &[&str]) -> Option<Self> {
        let opt_out = std::env::var(SKIP_POSTGRES_ENV).ok();
        match Self::start_with(settings) {
            Ok(server) => Some(server),
            Err(err) if skips(opt_out.as_deref(), err.kind()) => {
                eprintln!("{test}: SKIPPED ({SKIP_POSTGRES_ENV}=1 and no PostgreSQL: {err})");
                None
            }
            Err(err) => panic!("{test}: cannot start PostgreSQL (set {SKIP_POSTGRES_ENV}=1 to skip where it is not installed): {err}"),
        }
    }

    /// Starts a fresh server. A machine without the PostgreSQL binaries is
    /// an error, never a skip: a test that needs PostgreSQL fails without it.
    pub fn start() -> io::Result<Self> {
        Self::start_with(&[])
    }

    /// [`Self::start`] with extra server settings (`name=value`, as
    /// `postgres -c` takes them), e.g. for a benchmark's statistics.
    pub fn start_with(settings: &[&str]) -> io::Result<Self> {
        let Some(bin_dir) = find_postgres_bin_dir() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH or in /usr/lib/postgresql/*/bin: install the Debian `postgresql` package",
            ));
        };
        let run_as = if is_root()? { Some(unprivileged_user()?) } else { None };
        let mut last_error = io::Error::other("no start attempt made");
        for _ in 0..POSTGRES_START_ATTEMPTS_COUNT_MAX {
            match Self::start_once(&bin_dir, run_as.clone(), settings) {
                Ok(server) => return Ok(server),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    fn start_once(bin_dir: &Path, run_as: Option<String>, settings: &[&str]) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kelpie-pg-").tempdir()?;
        if let Some(user) = &run_as {
            run(Command::new("chown").arg(user).arg(dir.path()), "chown data dir")?;
        }
        let port = free_loopback_port()?;
        let server = PostgresServer { bin_dir: bin_dir.to_path_buf(), dir, port, run_as };
        let data = server.data_dir();
        server.pg(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        )?;
        let mut options =
            format!("-p {port} -k {} -c listen_addresses=127.0.0.1", server.dir.path().display());
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let log = server.dir.path().join("server.log").display().to_string();
        server.pg("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "-t", "30", "start"]).map_err(
            |err| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                io::Error::other(format!("{err}\nserver log:\n{log}"))
            },
        )?;
        Ok(server)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one PostgreSQL binary, as the unprivileged user when needed.
    fn pg(&self, binary: &str, args: &[&str]) -> io::Result<Output> {
        let program = self.bin_dir.join(binary);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.arg("-u").arg(user).arg("--").arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command.args(args).current_dir(self.dir.path());
        run(&mut command, binary)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its connection URL.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        let port = self.port.to_string();
        let createdb = self.bin_dir.join("createdb");
        run(
            Command::new(createdb).args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name]),
            "createdb",
        )?;
        Ok(self.url(name))
    }

    /// The connection URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        if let Err(err) = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]) {
            eprintln!("could not stop the test PostgreSQL server: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_binaries_with_the_explicit_opt_out_skip() {
        assert!(skips(Some("1"), io::ErrorKind::NotFound));
        assert!(!skips(None, io::ErrorKind::NotFound), "no opt-out: the test fails");
        assert!(!skips(Some("0"), io::ErrorKind::NotFound));
        assert!(!skips(Some("yes"), io::ErrorKind::NotFound));
        assert!(!skips(Some("1"), io::ErrorKind::Other), "a server that fails to start fails the test");
    }
}
