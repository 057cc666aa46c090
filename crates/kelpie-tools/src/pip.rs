//! A tool's `pip_requirements`: checked (a requirement is a package name and
//! an optional version, never a pip option), installed once per distinct set
//! into a cached directory, and mounted read-only into the tool's sandbox.
//!
//! The install itself runs in a sandbox with network (pip reaches the index)
//! and only wheels (`--only-binary=:all:`), so no package code runs while
//! installing. It writes into a fresh build directory that is renamed into
//! place only when pip succeeded: a set is either fully installed or absent,
//! and a failure names the package pip could not install.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ToolError;

/// Most requirements one tool (or sandbox config) may list.
pub const PIP_REQUIREMENTS_COUNT_MAX: usize = 64;
/// Longest package name or version, in bytes.
pub const PIP_REQUIREMENT_BYTES_MAX: usize = 128;
/// Longest a package install may run.
pub const PIP_INSTALL_WALL_MS_MAX: u64 = 300_000;
/// Where an installed set is mounted inside a sandbox.
pub const SITE_PACKAGES_SANDBOX_PATH: &str = "/opt/kelpie/site-packages";

/// Letta's `PipRequirement`: a package and an optional version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PipRequirement {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

impl PipRequirement {
    /// The requirement as pip reads it: `name==version`, or `name` followed
    /// by the version when it starts with its own comparison (`>=1.2`).
    pub fn spec(&self) -> String {
        match &self.version {
            None => self.name.clone(),
            Some(version) if version.starts_with(['<', '>', '=', '!', '~']) => {
                format!("{}{version}", self.name)
            }
            Some(version) => format!("{}=={version}", self.name),
        }
    }
}

fn check_one(requirement: &PipRequirement) -> Result<(), ToolError> {
    let name = &requirement.name;
    let name_ok = !name.is_empty()
        && name.len() <= PIP_REQUIREMENT_BYTES_MAX
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(ToolError::BadRequirement(format!(
            "{name:?}: a package name is 1..={PIP_REQUIREMENT_BYTES_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if let Some(version) = &requirement.version {
        let version_ok = !version.is_empty()
            && version.len() <= PIP_REQUIREMENT_BYTES_MAX
            && version.bytes().all(|b| b.is_ascii_alphanumeric() || b".*+!<>=~,".contains(&b));
        if !version_ok {
            return Err(ToolError::BadRequirement(format!(
                "{name}: version {version:?} may hold only letters, digits and . * + ! < > = ~ ,"
            )));
        }
    }
    Ok(())
}

/// Checks `requirements` and returns them sorted without repeats.
pub fn normalize(requirements: &[PipRequirement]) -> Result<Vec<PipRequirement>, ToolError> {
    if requirements.len() > PIP_REQUIREMENTS_COUNT_MAX {
        return Err(ToolError::BadRequirement(format!(
            "list has {} entries; the limit is PIP_REQUIREMENTS_COUNT_MAX = {PIP_REQUIREMENTS_COUNT_MAX}",
            requirements.len()
        )));
    }
    for requirement in requirements {
        check_one(requirement)?;
    }
    let unique: BTreeSet<PipRequirement> = requirements.iter().cloned().collect();
    Ok(unique.into_iter().collect())
}

/// The directory name of a normalized set: a hash of its specs, the same on
/// every server and release.
pub fn set_name(requirements: &[PipRequirement]) -> String {
    let text: Vec<String> = requirements.iter().map(PipRequirement::spec).collect();
    let bytes = text.join("\n").into_bytes();
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("set-{hash:016x}")
}

/// The package pip's error output names, if it names one.
pub fn failed_package(stderr: &str, requirements: &[PipRequirement]) -> String {
    const MARKERS: [&str; 2] = ["No matching distribution found for ", "satisfies the requirement "];
    for line in stderr.lines() {
        for marker in MARKERS {
            if let Some(rest) = line.split(marker).nth(1) {
                let named = rest.split_whitespace().next().unwrap_or(rest).trim_end_matches(['.', ')']);
                if !named.is_empty() {
                    return named.to_string();
                }
            }
        }
    }
    let all: Vec<String> = requirements.iter().map(PipRequirement::spec).collect();
    all.join(", ")
}

/// The last lines of pip's error output, enough to say why.
pub fn pip_reason(stderr: &str) -> String {
    const REASON_LINES_MAX: usize = 3;
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(REASON_LINES_MAX);
    let reason = lines[start..].join(" | ");
    if reason.is_empty() {
        "pip failed without saying why".to_string()
    } else {
        reason
    }
}

/// Where the installed sets live on the host.
#[derive(Debug, Clone)]
pub struct PipCache {
    pub dir: PathBuf,
}

impl PipCache {
    /// The installed directory of a set, if it is installed.
    pub fn installed(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        path.is_dir().then_some(path)
    }

    /// A fresh build directory for set `name`.
    pub fn build_dir(&self, name: &str, attempt: u64) -> PathBuf {
        self.dir.join(format!(".build-{name}-{}-{attempt}", std::process::id()))
    }

    /// Moves a finished build into place; a set another call installed
    /// meanwhile wins and this build is dropped.
    pub fn publish(&self, build: &Path, name: &str) -> Result<PathBuf, ToolError> {
        let target = self.dir.join(name);
        if std::fs::rename(build, &target).is_err() && !target.is_dir() {
            return Err(ToolError::PipInstall {
                package: name.to_string(),
                reason: format!("cannot move the install into {}", target.display()),
            });
        }
        let _ = std::fs::remove_dir_all(build);
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, version: Option<&str>) -> PipRequirement {
        PipRequirement { name: name.into(), version: version.map(str::to_string) }
    }

    #[test]
    fn specs_pin_plain_versions_and_keep_comparisons() {
        assert_eq!(req("requests", None).spec(), "requests");
        assert_eq!(req("requests", Some("2.31.0")).spec(), "requests==2.31.0");
        assert_eq!(req("numpy", Some(">=1.26,<2")).spec(), "numpy>=1.26,<2");
    }

    #[test]
    fn options_and_odd_names_are_refused() {
        for bad in ["--index-url=http://x", "-e", "", "a b", "pkg;rm", "../x"] {
            assert!(normalize(&[req(bad, None)]).is_err(), "{bad:?}");
        }
        assert!(normalize(&[req("ok", Some("1.0 --pre"))]).is_err());
        let many: Vec<PipRequirement> =
            (0..=PIP_REQUIREMENTS_COUNT_MAX).map(|i| req(&format!("p{i}"), None)).collect();
        assert!(normalize(&many).unwrap_err().to_string().contains("PIP_REQUIREMENTS_COUNT_MAX"));
    }

    #[test]
    fn normalized_sets_are_sorted_unique_and_named_by_content() {
        let a = normalize(&[req("b", None), req("a", Some("1")), req("b", None)]).unwrap();
        assert_eq!(a, vec![req("a", Some("1")), req("b", None)]);
        let b = normalize(&[req("a", Some("1")), req("b", None)]).unwrap();
        assert_eq!(set_name(&a), set_name(&b));
        assert_ne!(set_name(&a), set_name(&[req("a", Some("2")), req("b", None)]));
    }

    #[test]
    fn the_failing_package_is_read_from_pip() {
        let stderr = "ERROR: Could not find a version that satisfies the requirement nopkg (from versions: none)\nERROR: No matching distribution found for nopkg\n";
        assert_eq!(failed_package(stderr, &[req("ok", None), req("nopkg", None)]), "nopkg");
        assert_eq!(failed_package("boom", &[req("a", None), req("b", Some("2"))]), "a, b==2");
        assert_eq!(pip_reason("x\n\ny\nz\nw\n"), "y | z | w");
    }
}
