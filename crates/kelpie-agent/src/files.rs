//! An agent's view of its folders' files, as Letta shows it: the folders
//! attached to the agent, the files it holds open (each a window of lines,
//! least recently used closed first past `max_files_open`), the
//! `<directories>` block of its prompt, and the texts its file tools
//! answer. Pure: the agent actor keeps this state, the service fills it.

use serde::{Deserialize, Serialize};

/// How many files of a folder the prompt names (open files always show);
/// the rest are counted, and found by `grep_files` and `semantic_search_files`.
pub const PROMPT_FOLDER_FILES_COUNT_MAX: usize = 50;
/// Most files an agent may hold open (Letta refuses more than 1 000).
pub const FILES_OPEN_COUNT_MAX: u32 = 1_000;
/// Largest window of one open file, in characters.
pub const FILE_WINDOW_CHARS_MAX: u64 = 1_000_000;
/// What a window cut at its limit ends with (Letta's wording, so agents
/// moved from Letta read what they are used to).
pub const TRUNCATED_NOTE: &str =
    "...[TRUNCATED]\n# NOTE: This block is truncated, use functions to view the full content.";

/// A folder attached to an agent, as its prompt shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentFolder {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub instructions: Option<String>,
    /// What `GET /v1/agents/{id}/folders` and the agent's `sources` show.
    pub metadata: Option<serde_json::Value>,
    pub embedding: kelpie_llm::EmbeddingSettings,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Files in the folder.
    pub files_count: u64,
    /// The first `PROMPT_FOLDER_FILES_COUNT_MAX` of them: (file id, name in the folder).
    pub files: Vec<(String, String)>,
}

/// A file open in the agent's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenFile {
    pub file_id: String,
    pub folder_id: String,
    /// `<folder name>/<file name>`, as the agent names it.
    pub file_name: String,
    /// The window, 1-based and inclusive; `None` for the whole file.
    pub start_line: Option<u64>,
    pub end_line: Option<u64>,
    /// The window as the agent reads it, cut to the agent's limit.
    pub visible: String,
    pub accessed_ms: u64,
}

/// A change to the agent's open files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FileOp {
    /// Opens (or moves the window of) a file, closing the least recently
    /// used past the limit.
    Open(OpenFile),
    Close {
        file_id: String,
    },
    CloseAll,
    /// Closes every file but these.
    CloseOthers {
        keep: Vec<String>,
    },
    /// Closes the files of a folder (detached or deleted).
    CloseFolder {
        folder_id: String,
    },
}

/// Checks a client's `max_files_open` and `per_file_view_window_char_limit`;
/// the reason when refused.
pub fn check_limits(max_open: Option<u32>, window_chars: Option<u64>) -> Result<(), String> {
    if max_open.is_some_and(|n| n == 0 || n > FILES_OPEN_COUNT_MAX) {
        return Err(format!("max_files_open must be 1..={FILES_OPEN_COUNT_MAX} (FILES_OPEN_COUNT_MAX)"));
    }
    if window_chars.is_some_and(|n| n < TRUNCATED_NOTE.len() as u64 || n > FILE_WINDOW_CHARS_MAX) {
        return Err(format!(
            "per_file_view_window_char_limit must be {}..={FILE_WINDOW_CHARS_MAX} (FILE_WINDOW_CHARS_MAX)",
            TRUNCATED_NOTE.len()
        ));
    }
    Ok(())
}

/// Letta's defaults of `max_files_open` and `per_file_view_window_char_limit`
/// for a context window of `tokens`.
pub fn default_limits(tokens: u64) -> (u32, u64) {
    match tokens {
        0..=8_000 => (3, 5_000),
        8_001..=32_000 => (5, 15_000),
        32_001..=128_000 => (10, 25_000),
        128_001..=200_000 => (10, 40_000),
        _ => (15, 40_000),
    }
}

/// `text` cut to `chars_max` characters with the truncation note at its end.
pub fn truncate_visible(text: &str, chars_max: u64) -> String {
    let chars_max = chars_max as usize;
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let keep = chars_max.saturating_sub(TRUNCATED_NOTE.chars().count());
    let mut cut: String = text.chars().take(keep).collect();
    cut.push_str(TRUNCATED_NOTE);
    cut
}

/// Lines `(number, text)` of a file of `lines_count` lines as an open file
/// shows them: a header saying which lines, then `n: text` per line.
pub fn render_window(
    lines: &[(u64, String)],
    lines_count: u64,
    window: (Option<u64>, Option<u64>),
) -> String {
    let header = match window {
        (None, None) | (Some(1), None) => format!("[Viewing file start (out of {lines_count} lines)]"),
        (start, Some(end)) if end < lines_count => {
            format!("[Viewing lines {} to {end} (out of {lines_count} lines)]", start.unwrap_or(1))
        }
        (start, _) => format!("[Viewing lines {} to end (out of {lines_count} lines)]", start.unwrap_or(1)),
    };
    let mut text = header;
    for (number, line) in lines {
        text.push('\n');
        text.push_str(&format!("{number}: {line}"));
    }
    text
}

/// Applies `op` to `open` (least recently used first) with at most
/// `max_open` files open; the names of the files it closed.
pub fn apply(open: &mut Vec<OpenFile>, op: FileOp, max_open: u32) -> Vec<String> {
    let closed_names = |files: Vec<OpenFile>| files.into_iter().map(|file| file.file_name).collect();
    match op {
        FileOp::Open(file) => {
            open.retain(|other| other.file_id != file.file_id);
            let max_open = max_open.max(1) as usize;
            let excess = (open.len() + 1).saturating_sub(max_open);
            let closed: Vec<OpenFile> = open.drain(..excess).collect();
            open.push(file);
            closed_names(closed)
        }
        FileOp::Close { file_id } => {
            let (closed, kept): (Vec<_>, Vec<_>) = open.drain(..).partition(|file| file.file_id == file_id);
            *open = kept;
            closed_names(closed)
        }
        FileOp::CloseAll => closed_names(std::mem::take(open)),
        FileOp::CloseOthers { keep } => {
            let (kept, closed): (Vec<_>, Vec<_>) =
                open.drain(..).partition(|file| keep.contains(&file.file_id));
            *open = kept;
            closed_names(closed)
        }
        FileOp::CloseFolder { folder_id } => {
            let (closed, kept): (Vec<_>, Vec<_>) =
                open.drain(..).partition(|file| file.folder_id == folder_id);
            *open = kept;
            closed_names(closed)
        }
    }
}

/// The `<directories>` block of the prompt: each attached folder with its
/// files, open ones with their window; empty without folders.
pub fn directories_text(
    folders: &[AgentFolder],
    open: &[OpenFile],
    (max_open, chars_limit): (u32, u64),
) -> String {
    if folders.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "<directories>\n<file_limits>\n- current_files_open={}\n- max_files_open={max_open}\n</file_limits>\n",
        open.len()
    );
    for folder in folders {
        text.push_str(&format!("<directory name=\"{}\">\n", folder.name));
        if let Some(description) = folder.description.as_deref().filter(|d| !d.is_empty()) {
            text.push_str(&format!("<description>{description}</description>\n"));
        }
        if let Some(instructions) = folder.instructions.as_deref().filter(|d| !d.is_empty()) {
            text.push_str(&format!("<instructions>{instructions}</instructions>\n"));
        }
        for file in open.iter().filter(|file| file.folder_id == folder.id) {
            let visible = truncate_visible(&file.visible, chars_limit);
            text.push_str(&format!(
                "<file status=\"open\" name=\"{}\">\n<metadata>\n- read_only=true\n- chars_current={}\n- chars_limit={chars_limit}\n</metadata>\n<value>\n{visible}\n</value>\n</file>\n",
                file.file_name,
                visible.chars().count(),
            ));
        }
        let mut named = 0;
        for (file_id, name) in &folder.files {
            if open.iter().any(|file| &file.file_id == file_id) {
                continue;
            }
            named += 1;
            text.push_str(&format!("<file status=\"closed\" name=\"{}/{name}\"></file>\n", folder.name));
        }
        let shown = named + open.iter().filter(|file| file.folder_id == folder.id).count() as u64;
        if folder.files_count > shown {
            text.push_str(&format!(
                "<more_files count=\"{}\">grep_files and semantic_search_files search these too</more_files>\n",
                folder.files_count - shown
            ));
        }
        text.push_str("</directory>\n");
    }
    text.push_str("</directories>");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, folder: &str) -> OpenFile {
        OpenFile {
            file_id: id.into(),
            folder_id: folder.into(),
            file_name: format!("{folder}/{id}.txt"),
            start_line: None,
            end_line: None,
            visible: format!("[Viewing file start (out of 1 lines)]\n1: {id}"),
            accessed_ms: 0,
        }
    }

    #[test]
    fn opening_past_the_limit_closes_the_least_recently_used() {
        let mut open = Vec::new();
        for id in ["a", "b", "c"] {
            assert!(apply(&mut open, FileOp::Open(file(id, "f")), 3).is_empty());
        }
        // Reopening "a" makes it the most recent; "b" is now the oldest.
        assert!(apply(&mut open, FileOp::Open(file("a", "f")), 3).is_empty());
        assert_eq!(apply(&mut open, FileOp::Open(file("d", "g")), 3), vec!["f/b.txt".to_string()]);
        let ids: Vec<&str> = open.iter().map(|f| f.file_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "d"]);
        assert_eq!(apply(&mut open, FileOp::CloseFolder { folder_id: "f".into() }, 3).len(), 2);
        assert_eq!(apply(&mut open, FileOp::Close { file_id: "d".into() }, 3), vec!["g/d.txt".to_string()]);
        assert!(open.is_empty());
        for id in ["a", "b"] {
            apply(&mut open, FileOp::Open(file(id, "f")), 3);
        }
        assert_eq!(
            apply(&mut open, FileOp::CloseOthers { keep: vec!["b".into()] }, 3),
            vec!["f/a.txt".to_string()]
        );
        assert_eq!(apply(&mut open, FileOp::CloseAll, 3), vec!["f/b.txt".to_string()]);
    }

    #[test]
    fn windows_and_truncation_read_as_letta_writes_them() {
        let lines = vec![(2, "two".to_string()), (3, "three".to_string())];
        assert_eq!(
            render_window(&lines, 10, (Some(2), Some(3))),
            "[Viewing lines 2 to 3 (out of 10 lines)]\n2: two\n3: three"
        );
        assert_eq!(
            render_window(&lines, 3, (Some(2), None)),
            "[Viewing lines 2 to end (out of 3 lines)]\n2: two\n3: three"
        );
        assert!(render_window(&[], 0, (None, None)).starts_with("[Viewing file start (out of 0 lines)]"));
        let long = "x".repeat(500);
        let cut = truncate_visible(&long, 200);
        assert_eq!(cut.chars().count(), 200);
        assert!(cut.ends_with(TRUNCATED_NOTE));
        assert_eq!(truncate_visible("short", 200), "short");
        assert_eq!(default_limits(30_000), (5, 15_000));
        assert_eq!(default_limits(1_000_000), (15, 40_000));
        assert_eq!(check_limits(Some(5), Some(15_000)), Ok(()));
        assert!(check_limits(Some(0), None).unwrap_err().contains("FILES_OPEN_COUNT_MAX"));
        assert!(check_limits(Some(FILES_OPEN_COUNT_MAX + 1), None).is_err());
        assert!(check_limits(None, Some(FILE_WINDOW_CHARS_MAX + 1))
            .unwrap_err()
            .contains("FILE_WINDOW_CHARS_MAX"));
        assert!(check_limits(None, Some(10)).is_err(), "too small to hold the truncation note");
    }

    #[test]
    fn the_prompt_names_folders_and_files_and_counts_the_rest() {
        let folder = AgentFolder {
            id: "s1".into(),
            name: "docs".into(),
            description: Some("Manuals".into()),
            instructions: None,
            metadata: None,
            embedding: kelpie_llm::EmbeddingSettings {
                handle: "h/m".into(),
                model: "m".into(),
                dim: 8,
                byok_provider: None,
            },
            created_ms: 0,
            updated_ms: 0,
            files_count: 60,
            files: vec![("a".into(), "a.txt".into()), ("b".into(), "b.txt".into())],
        };
        let text = directories_text(&[folder], &[file("a", "s1")], (5, 100));
        assert!(
            text.starts_with("<directories>\n<file_limits>\n- current_files_open=1\n- max_files_open=5\n")
        );
        assert!(text.contains("<directory name=\"docs\">\n<description>Manuals</description>\n"));
        assert!(text.contains("<file status=\"open\" name=\"s1/a.txt\">"));
        assert!(text.contains("<file status=\"closed\" name=\"docs/b.txt\"></file>"));
        assert!(text.contains("<more_files count=\"58\">"));
        assert!(text.ends_with("</directory>\n</directories>"));
        assert_eq!(directories_text(&[], &[], (5, 100)), "");
    }
}
