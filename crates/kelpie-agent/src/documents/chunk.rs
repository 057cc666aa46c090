//! A document's text cut into passages an agent can search.
//!
//! [`Chunker`] takes text as it is extracted and returns [`Chunk`]s of at
//! most [`FILE_CHUNK_CHARS_MAX`] characters. Whole lines are grouped while
//! they fit; a line longer than a chunk is cut at its last whitespace
//! before the limit, or at the limit when a run has no whitespace.
//!
//! Invariants: no chunk is empty or only whitespace (blank lines never
//! start a chunk, trailing whitespace is trimmed); the chunks do not depend
//! on how the text was split into pushes; the chunker holds at most one
//! chunk and one line piece of at most [`FILE_CHUNK_CHARS_MAX`] characters
//! each.

/// Most characters (Unicode scalar values) of one passage cut from a file:
/// a few paragraphs, small enough that a search result shows the LLM one
/// focused piece of the document.
pub const FILE_CHUNK_CHARS_MAX: usize = 1_500;

/// One passage of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    /// 1-based line number of the chunk's first line in the document.
    pub first_line: u64,
}

/// Streams text into chunks; see the module docs.
pub struct Chunker {
    /// The chunk being filled: whole lines, or the start of a long line.
    chunk: String,
    chunk_chars: usize,
    chunk_first_line: u64,
    /// The line being read since its last cut, without its `\n`.
    line: String,
    line_chars: usize,
    /// 1-based number of the line being read.
    line_number: u64,
    /// The line being read was cut at the limit: its leading whitespace
    /// is dropped, as a chunk does not start with it.
    line_is_continuation: bool,
    lines_completed: u64,
    line_started: bool,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    pub fn new() -> Self {
        Chunker {
            chunk: String::new(),
            chunk_chars: 0,
            chunk_first_line: 1,
            line: String::new(),
            line_chars: 0,
            line_number: 1,
            line_is_continuation: false,
            lines_completed: 0,
            line_started: false,
        }
    }

    /// Takes the document's next text and returns the chunks it completes.
    pub fn push(&mut self, text: &str) -> Vec<Chunk> {
        let mut done = Vec::new();
        for c in text.chars() {
            self.push_char(c, &mut done);
        }
        done
    }

    /// Ends the document: the chunks still held.
    pub fn finish(mut self) -> Vec<Chunk> {
        let mut done = Vec::new();
        self.end_line(&mut done);
        self.emit_chunk(&mut done);
        assert!(self.chunk.is_empty() && self.line.is_empty());
        done
    }

    /// Lines of the text pushed so far, counted as [`str::lines`] does
    /// (a last line without `\n` counts); [`Chunker::finish`] adds none.
    pub fn lines(&self) -> u64 {
        self.lines_completed + u64::from(self.line_started)
    }

    fn push_char(&mut self, c: char, done: &mut Vec<Chunk>) {
        if c == '\n' {
            self.end_line(done);
            self.line_number += 1;
            self.lines_completed += 1;
            self.line_started = false;
            self.line_is_continuation = false;
            return;
        }
        self.line_started = true;
        if self.line_is_continuation && self.line_chars == 0 && c.is_whitespace() {
            return;
        }
        self.line.push(c);
        self.line_chars += 1;
        if self.line_chars > FILE_CHUNK_CHARS_MAX {
            self.cut_line(done);
        }
        assert!(self.line_chars <= FILE_CHUNK_CHARS_MAX);
    }

    /// The line being read is complete: it joins the chunk if it fits,
    /// otherwise it starts the next one.
    fn end_line(&mut self, done: &mut Vec<Chunk>) {
        let line = std::mem::take(&mut self.line);
        let line_chars = std::mem::take(&mut self.line_chars);
        assert!(line_chars <= FILE_CHUNK_CHARS_MAX);
        if !self.chunk.is_empty() {
            if self.chunk_chars + 1 + line_chars <= FILE_CHUNK_CHARS_MAX {
                self.chunk.push('\n');
                self.chunk.push_str(&line);
                self.chunk_chars += 1 + line_chars;
                return;
            }
            self.emit_chunk(done);
        }
        if !line.trim().is_empty() {
            self.chunk = line;
            self.chunk_chars = line_chars;
            self.chunk_first_line = self.line_number;
        }
    }

    /// The line being read passed the limit: what the chunk holds goes
    /// first, then the line's start up to its last whitespace (or up to
    /// the limit) becomes a chunk of its own.
    fn cut_line(&mut self, done: &mut Vec<Chunk>) {
        assert_eq!(self.line_chars, FILE_CHUNK_CHARS_MAX + 1);
        self.emit_chunk(done);
        let (piece_end, rest_start) = cut_point(&self.line);
        let rest = self.line.split_off(rest_start);
        self.line.truncate(piece_end);
        self.chunk = std::mem::take(&mut self.line);
        self.chunk_chars = self.chunk.chars().count();
        self.chunk_first_line = self.line_number;
        self.emit_chunk(done);
        self.line.push_str(rest.trim_start());
        self.line_chars = self.line.chars().count();
        self.line_is_continuation = true;
    }

    /// Hands on the chunk, trailing whitespace trimmed, unless it is blank.
    fn emit_chunk(&mut self, done: &mut Vec<Chunk>) {
        let mut text = std::mem::take(&mut self.chunk);
        let chunk_chars = std::mem::take(&mut self.chunk_chars);
        debug_assert_eq!(text.chars().count(), chunk_chars);
        text.truncate(text.trim_end().len());
        if text.is_empty() {
            return;
        }
        assert!(text.chars().count() <= FILE_CHUNK_CHARS_MAX, "a chunk of {chunk_chars} characters");
        assert!(self.chunk_first_line <= self.line_number);
        done.push(Chunk { text, first_line: self.chunk_first_line });
    }
}

/// Where to cut a line of `FILE_CHUNK_CHARS_MAX + 1` characters: the byte
/// range `piece_end..rest_start` is dropped between the piece (at most
/// `FILE_CHUNK_CHARS_MAX` characters) and the rest. At the last whitespace
/// when text comes before it, otherwise hard at the limit.
fn cut_point(line: &str) -> (usize, usize) {
    let mut limit_byte = line.len();
    let mut last_space: Option<(usize, usize)> = None;
    for (i, (byte, c)) in line.char_indices().enumerate() {
        if i == FILE_CHUNK_CHARS_MAX {
            limit_byte = byte;
        }
        if c.is_whitespace() {
            last_space = Some((byte, byte + c.len_utf8()));
        }
    }
    assert!(limit_byte < line.len(), "only a line past the limit is cut");
    match last_space {
        Some((start, end)) if !line[..start].trim().is_empty() => (start, end),
        _ => (limit_byte, limit_byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_all(text: &str) -> Vec<Chunk> {
        let mut chunker = Chunker::new();
        let mut chunks = chunker.push(text);
        chunks.extend(chunker.finish());
        chunks
    }

    fn assert_well_formed(chunks: &[Chunk]) {
        for chunk in chunks {
            let chars = chunk.text.chars().count();
            assert!(chars > 0 && chars <= FILE_CHUNK_CHARS_MAX, "{chars} characters");
            assert!(!chunk.text.trim().is_empty());
            assert_eq!(chunk.text.trim_end(), chunk.text);
        }
    }

    #[test]
    fn short_lines_are_grouped_with_their_line_numbers() {
        let text: String = (1..=1_000).map(|i| format!("line {i}\n")).collect();
        let chunks = chunk_all(&text);
        assert_well_formed(&chunks);
        // "line N" is 6 to 9 characters: 1500 characters hold well over 100 lines.
        assert!(chunks.len() < 10, "{} chunks", chunks.len());
        let mut next_line = 1;
        for chunk in &chunks {
            assert_eq!(chunk.first_line, next_line);
            for line in chunk.text.lines() {
                assert_eq!(line, format!("line {next_line}"));
                next_line += 1;
            }
            // A chunk is closed only when the next line would not fit.
            let next = format!("line {next_line}");
            if next_line <= 1_000 {
                assert!(chunk.text.chars().count() + 1 + next.len() > FILE_CHUNK_CHARS_MAX);
            }
        }
        assert_eq!(next_line, 1_001);
    }

    #[test]
    fn a_long_line_is_cut_at_whitespace() {
        let words: Vec<String> = (0..700).map(|i| format!("w{i:03}")).collect();
        let line = words.join(" ");
        let text = format!("intro\n{line}\noutro");
        let chunks = chunk_all(&text);
        assert_well_formed(&chunks);
        assert_eq!(chunks.len(), 4, "{} characters in 1500-character chunks", line.len());
        assert_eq!(chunks[0], Chunk { text: "intro".into(), first_line: 1 });
        assert!(chunks[1..].iter().all(|c| c.first_line == 2));
        // 300 words of 4 characters and their spaces, the last space cut.
        assert_eq!(chunks[1].text.chars().count(), 1_499);
        assert!(chunks[2].text.starts_with("w300 "));
        // The line's last piece has room for the next line.
        let rejoined: Vec<&str> = chunks[1..].iter().map(|c| c.text.as_str()).collect();
        assert_eq!(rejoined.join(" "), format!("{line}\noutro"));
    }

    #[test]
    fn a_run_without_whitespace_is_cut_hard_at_the_limit() {
        let run: String = "é".repeat(4_000);
        let chunks = chunk_all(&format!("  {run}  \n\n  \nlast"));
        assert_well_formed(&chunks);
        let counts: Vec<usize> = chunks.iter().map(|c| c.text.chars().count()).collect();
        assert_eq!(counts, [1_500, 1_500, 1_013]);
        assert_eq!(chunks[0].text, format!("  {}", "é".repeat(1_498)));
        assert_eq!(chunks[1].text, "é".repeat(1_500));
        assert_eq!(chunks[2].text, format!("{}  \n\n  \nlast", "é".repeat(1_002)));
        assert!(chunks.iter().all(|c| c.first_line == 1));
    }

    #[test]
    fn blank_lines_start_no_chunk_and_are_counted() {
        let mut chunker = Chunker::new();
        assert!(chunker.push("\n \n\t\n").is_empty());
        assert_eq!(chunker.lines(), 3);
        assert!(chunker.push("first\n\nsecond   ").is_empty());
        assert_eq!(chunker.lines(), 6);
        assert_eq!(chunker.finish(), [Chunk { text: "first\n\nsecond".into(), first_line: 4 }]);
        assert!(chunk_all("").is_empty());
        assert!(chunk_all("   \n\n \t ").is_empty());
        let mut counter = Chunker::new();
        counter.push("a\nb\n");
        assert_eq!(counter.lines(), 2);
    }

    #[test]
    fn chunks_are_identical_however_the_text_is_split() {
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("Line {i} with ünïcode 日本 and some words to fill it up.\n"));
            if i % 9 == 0 {
                text.push('\n');
            }
        }
        text.push_str(&"long-ish words without end ".repeat(70));
        text.push('\n');
        text.push_str(&"x".repeat(1_700));
        text.push_str("\ntail");
        let whole = chunk_all(&text);
        assert_well_formed(&whole);
        assert!(whole.len() >= 4, "{} chunks", whole.len());
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        for &cut in &boundaries {
            let mut chunker = Chunker::new();
            let mut chunks = chunker.push(&text[..cut]);
            chunks.extend(chunker.push(&text[cut..]));
            assert_eq!(chunker.lines(), text.lines().count() as u64);
            chunks.extend(chunker.finish());
            assert_eq!(chunks, whole, "cut at byte {cut}");
        }
        let mut chunker = Chunker::new();
        let mut chunks = Vec::new();
        for c in text.chars() {
            chunks.extend(chunker.push(c.encode_utf8(&mut [0; 4])));
        }
        chunks.extend(chunker.finish());
        assert_eq!(chunks, whole);
    }

    #[test]
    fn text_far_larger_than_a_chunk_stays_within_the_limit() {
        let text = "a few words of prose, and then some more. ".repeat(5_000);
        let chunks = chunk_all(&text);
        assert_well_formed(&chunks);
        assert!(chunks.len() > text.len() / FILE_CHUNK_CHARS_MAX);
        // Each cut drops exactly the one space it was made at.
        let rejoined: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(rejoined.join(" "), text.trim_end());
    }
}
