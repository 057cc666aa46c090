//! Where a simulation's seed comes from, and how to replay it.
//!
//! `DST_SEED=<u64>` in the environment pins the seed (and makes seed sweeps
//! run only that seed). Without it a seed is drawn from the operating system
//! once and printed, so a failure seen once can always be replayed. Every
//! failure report carries [`replay_command`].

use std::ops::Range;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// The environment variable that pins the seed.
pub const DST_SEED_ENV: &str = "DST_SEED";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SeedError {
    #[error("{DST_SEED_ENV}={value:?} is not an unsigned 64-bit integer")]
    Invalid { value: String },
}

/// The pinned seed from `DST_SEED`, if any.
pub fn pinned_seed() -> Result<Option<u64>, SeedError> {
    match std::env::var(DST_SEED_ENV) {
        Ok(value) => parse_seed(&value).map(Some),
        Err(_) => Ok(None),
    }
}

fn parse_seed(value: &str) -> Result<u64, SeedError> {
    value.trim().parse::<u64>().map_err(|_| SeedError::Invalid { value: value.to_string() })
}

/// `DST_SEED` when set, otherwise a fresh random seed that is printed
/// (to stderr, which the test harness shows when the test fails).
pub fn seed_from_env() -> Result<u64, SeedError> {
    if let Some(seed) = pinned_seed()? {
        return Ok(seed);
    }
    // The one deliberate nondeterministic read of the crate: choosing which
    // execution to explore. It is printed, so the run stays replayable.
    #[allow(clippy::disallowed_methods)]
    let seed = ChaCha8Rng::from_os_rng().next_u64();
    eprintln!("DST: random seed {seed}; replay with: {}", replay_command(seed));
    Ok(seed)
}

/// The seeds a sweep should run: only the pinned one when `DST_SEED` is set,
/// otherwise `default`.
pub fn seeds_to_run(default: Range<u64>) -> Result<Vec<u64>, SeedError> {
    assert!(!default.is_empty(), "a seed sweep needs at least one seed");
    Ok(match pinned_seed()? {
        Some(seed) => vec![seed],
        None => default.collect(),
    })
}

/// The command that reruns the current test with `seed`, e.g.
/// `DST_SEED=7 cargo test -p kelpie-dst --test racy_toy -- caught --exact`.
/// Package, test target and test name are read from the running test harness
/// (cargo's `CARGO_PKG_NAME`, the binary name, libtest's thread name).
pub fn replay_command(seed: u64) -> String {
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "<package>".to_string());
    let target = test_target(&package);
    let mut command = format!("{DST_SEED_ENV}={seed} cargo test -p {package} {target}");
    if let Some(name) = std::thread::current().name().filter(|name| *name != "main") {
        command.push_str(&format!(" -- {name} --exact"));
    }
    command
}

/// `--test <name>` for an integration test binary, `--lib` for unit tests.
fn test_target(package: &str) -> String {
    let binary = std::env::args().next().unwrap_or_default();
    let stem = std::path::Path::new(&binary)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default()
        .to_string();
    // Cargo names test binaries `<target>-<16 hex digit hash>`.
    let target = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => name,
        _ => stem.as_str(),
    };
    if target == package.replace('-', "_") {
        "--lib".to_string()
    } else {
        format!("--test {target}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seeds_and_rejects_garbage() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed(" 18446744073709551615\n"), Ok(u64::MAX));
        assert_eq!(parse_seed("-1"), Err(SeedError::Invalid { value: "-1".into() }));
        assert_eq!(
            SeedError::Invalid { value: "x".into() }.to_string(),
            "DST_SEED=\"x\" is not an unsigned 64-bit integer"
        );
    }

    #[test]
    fn replay_command_names_seed_package_target_and_test() {
        let command = replay_command(1234);
        assert!(command.starts_with("DST_SEED=1234 cargo test -p kelpie-dst --lib"), "{command}");
        // libtest runs each test on a thread named after it (unless single-threaded).
        if std::thread::current().name() != Some("main") {
            assert!(
                command
                    .ends_with("-- seed::tests::replay_command_names_seed_package_target_and_test --exact"),
                "{command}"
            );
        }
    }
}
