//! Which kind an uploaded file is, and its plain text.
//!
//! [`detect`] names a [`FileKind`] from the file's name (its extension
//! first) and the content type the client sent. [`TextExtractor`] turns the
//! file's bytes into text as they arrive: text kinds are validated as UTF-8
//! and passed through (a leading BOM dropped, line ends made `\n`), HTML is
//! reduced to its visible text by a state machine, and a PDF, which can
//! only be read whole, is buffered up to [`PDF_BYTES_MAX`] and read on
//! [`TextExtractor::finish`].
//!
//! Invariants: the text of a file does not depend on how its bytes were
//! split into pushes; between pushes a text kind holds at most
//! three undecoded bytes (an incomplete code point) and fixed-size HTML name
//! buffers; a malformed PDF is an error, never a panic of the caller.

use std::any::Any;

/// Largest PDF read, in bytes: a PDF is buffered whole before it is read.
pub const PDF_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Bytes of an incomplete UTF-8 sequence held between pushes (a code point
/// is at most four bytes, so at most three wait for the rest).
const UTF8_PENDING_BYTES_MAX: usize = 3;
/// Longest HTML tag name kept, in bytes; longer names are unknown tags.
const HTML_TAG_NAME_BYTES_MAX: usize = 16;
/// Longest HTML entity name kept, in bytes (`#x10FFFF` and `hellip` fit);
/// a longer `&...` run is kept as literal text.
const HTML_ENTITY_BYTES_MAX: usize = 10;
/// Line breaks in a row that HTML `<br>`s add; more collapse into these.
const HTML_BREAKS_COUNT_MAX: u8 = 2;

/// The kinds of uploaded file whose text can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Text,
    Markdown,
    Html,
    Json,
    Csv,
    /// Source code or configuration; [`code_language`] names the language.
    Code,
    Pdf,
}

impl FileKind {
    /// The MIME type of files of this kind; code is `text/plain` here, and
    /// [`file_mime_type`] gives its language's `text/x-<lang>`.
    pub fn mime_type(&self) -> &'static str {
        match self {
            FileKind::Text | FileKind::Code => "text/plain",
            FileKind::Markdown => "text/markdown",
            FileKind::Html => "text/html",
            FileKind::Json => "application/json",
            FileKind::Csv => "text/csv",
            FileKind::Pdf => "application/pdf",
        }
    }
}

/// Why a file's text cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "unsupported file type: {file_name:?} ({}); supported are text, Markdown, HTML, JSON, CSV, \
         source code and PDF files",
        content_type.as_deref().unwrap_or("no content type")
    )]
    Unsupported { file_name: String, content_type: Option<String> },
    /// Invalid UTF-8 or a NUL byte (a binary file), at this byte offset.
    #[error("not UTF-8 text at byte {offset_bytes}")]
    NotText { offset_bytes: u64 },
    #[error("file too large: more than {limit_bytes} bytes")]
    TooLarge { limit_bytes: u64 },
    #[error("cannot read the PDF: {reason}")]
    Pdf { reason: String },
}

/// Extensions of the non-code kinds, lower case.
const KIND_EXTENSIONS: &[(&str, FileKind)] = &[
    ("txt", FileKind::Text),
    ("text", FileKind::Text),
    ("log", FileKind::Text),
    ("md", FileKind::Markdown),
    ("markdown", FileKind::Markdown),
    ("html", FileKind::Html),
    ("htm", FileKind::Html),
    ("json", FileKind::Json),
    ("jsonl", FileKind::Json),
    ("csv", FileKind::Csv),
    ("tsv", FileKind::Csv),
    ("pdf", FileKind::Pdf),
];

/// Extensions of source code and configuration files: (extension, language,
/// MIME type).
const CODE_EXTENSIONS: &[(&str, &str, &str)] = &[
    ("py", "python", "text/x-python"),
    ("rs", "rust", "text/x-rust"),
    ("js", "javascript", "text/x-javascript"),
    ("jsx", "javascript", "text/x-javascript"),
    ("ts", "typescript", "text/x-typescript"),
    ("tsx", "typescript", "text/x-typescript"),
    ("java", "java", "text/x-java"),
    ("go", "go", "text/x-go"),
    ("c", "c", "text/x-c"),
    ("h", "c", "text/x-c"),
    ("cpp", "cpp", "text/x-cpp"),
    ("hpp", "cpp", "text/x-cpp"),
    ("cc", "cpp", "text/x-cpp"),
    ("rb", "ruby", "text/x-ruby"),
    ("php", "php", "text/x-php"),
    ("sh", "shell", "text/x-shellscript"),
    ("sql", "sql", "text/x-sql"),
    ("yaml", "yaml", "text/x-yaml"),
    ("yml", "yaml", "text/x-yaml"),
    ("toml", "toml", "text/x-toml"),
    ("xml", "xml", "text/x-xml"),
    ("css", "css", "text/x-css"),
    ("kt", "kotlin", "text/x-kotlin"),
    ("swift", "swift", "text/x-swift"),
    ("scala", "scala", "text/x-scala"),
    ("r", "r", "text/x-r"),
    ("lua", "lua", "text/x-lua"),
];

/// The kind of a file: by its extension when known, otherwise by its
/// content type (`text/*` is text); anything else is
/// [`ParseError::Unsupported`].
pub fn detect(file_name: &str, content_type: Option<&str>) -> Result<FileKind, ParseError> {
    if let Some(extension) = extension(file_name) {
        if let Some((_, kind)) = KIND_EXTENSIONS.iter().find(|(e, _)| e.eq_ignore_ascii_case(extension)) {
            return Ok(*kind);
        }
        if CODE_EXTENSIONS.iter().any(|(e, _, _)| e.eq_ignore_ascii_case(extension)) {
            return Ok(FileKind::Code);
        }
    }
    content_type.and_then(kind_of_content_type).ok_or_else(|| ParseError::Unsupported {
        file_name: file_name.to_owned(),
        content_type: content_type.map(str::to_owned),
    })
}

/// The language of a code file by its extension (`"python"` for `a.py`).
pub fn code_language(file_name: &str) -> Option<&'static str> {
    let extension = extension(file_name)?;
    CODE_EXTENSIONS
        .iter()
        .find(|(e, _, _)| e.eq_ignore_ascii_case(extension))
        .map(|(_, language, _)| *language)
}

/// The MIME type of a file of this kind: the kind's, or for code the
/// language's `text/x-<lang>` when its extension names one.
pub fn file_mime_type(kind: FileKind, file_name: &str) -> &'static str {
    let code_mime = || {
        let extension = extension(file_name)?;
        CODE_EXTENSIONS.iter().find(|(e, _, _)| e.eq_ignore_ascii_case(extension)).map(|(_, _, mime)| *mime)
    };
    match kind {
        FileKind::Code => code_mime().unwrap_or(kind.mime_type()),
        _ => kind.mime_type(),
    }
}

/// The extension of a file name's last path segment; none for dot files
/// (`.bashrc`) and names without a dot.
fn extension(file_name: &str) -> Option<&str> {
    let base = file_name.rsplit(['/', '\\']).next()?;
    let (stem, extension) = base.rsplit_once('.')?;
    (!stem.is_empty() && !extension.is_empty()).then_some(extension)
}

fn kind_of_content_type(content_type: &str) -> Option<FileKind> {
    let essence = content_type.split(';').next()?.trim();
    let is = |name: &str| essence.eq_ignore_ascii_case(name);
    if is("application/pdf") {
        Some(FileKind::Pdf)
    } else if is("application/json") || is("application/x-ndjson") || ends_with_ignore_case(essence, "+json")
    {
        Some(FileKind::Json)
    } else if is("text/markdown") || is("text/x-markdown") {
        Some(FileKind::Markdown)
    } else if is("text/html") {
        Some(FileKind::Html)
    } else if is("text/csv") || is("text/tab-separated-values") {
        Some(FileKind::Csv)
    } else if essence.len() > "text/".len() && starts_with_ignore_case(essence, "text/") {
        Some(FileKind::Text)
    } else {
        None
    }
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.get(text.len() - suffix.len()..).is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// The text read from a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// What [`TextExtractor::finish`] adds after the pushes' text (the
    /// whole text of a PDF, whose pushes return nothing).
    pub text: String,
    /// Pages of a PDF; `None` for the kinds that have no pages.
    pub pages: Option<u32>,
}

/// Streams a file's bytes into its text; see the module docs.
///
/// A push or finish that returned an error ends the file: pushing again
/// is a bug (asserted).
pub struct TextExtractor {
    kind: FileKind,
    decoder: Utf8Decoder,
    body: Body,
    failed: bool,
}

enum Body {
    Plain(LineEnds),
    Html(HtmlText),
    Pdf(Vec<u8>),
}

impl TextExtractor {
    pub fn new(kind: FileKind) -> Self {
        let body = match kind {
            FileKind::Html => Body::Html(HtmlText::new()),
            FileKind::Pdf => Body::Pdf(Vec::new()),
            FileKind::Text | FileKind::Markdown | FileKind::Json | FileKind::Csv | FileKind::Code => {
                Body::Plain(LineEnds { after_cr: false })
            }
        };
        TextExtractor { kind, decoder: Utf8Decoder::new(), body, failed: false }
    }

    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// Takes the file's next bytes and returns the text they complete
    /// (always empty for a PDF, read on [`TextExtractor::finish`]).
    pub fn push(&mut self, bytes: &[u8]) -> Result<String, ParseError> {
        assert!(!self.failed, "a TextExtractor was pushed to after an error");
        let mut text = String::new();
        let result = match &mut self.body {
            Body::Pdf(buffer) => {
                if buffer.len().saturating_add(bytes.len()) > PDF_BYTES_MAX {
                    Err(ParseError::TooLarge { limit_bytes: PDF_BYTES_MAX as u64 })
                } else {
                    buffer.extend_from_slice(bytes);
                    Ok(())
                }
            }
            Body::Plain(line_ends) => self.decoder.decode(bytes, &mut |s| line_ends.feed(s, &mut text)),
            Body::Html(html) => self.decoder.decode(bytes, &mut |s| html.feed(s, &mut text)),
        };
        self.failed = result.is_err();
        assert!(self.decoder.pending_len <= UTF8_PENDING_BYTES_MAX);
        result.map(|()| text)
    }

    /// Ends the file: the text still held back (a PDF's whole text) and
    /// the page count of a PDF.
    pub fn finish(self) -> Result<Extracted, ParseError> {
        assert!(!self.failed, "a TextExtractor was finished after an error");
        match self.body {
            Body::Pdf(buffer) => extract_pdf(&buffer),
            Body::Plain(_) => {
                self.decoder.finish()?;
                Ok(Extracted { text: String::new(), pages: None })
            }
            Body::Html(html) => {
                self.decoder.finish()?;
                let mut text = String::new();
                html.finish(&mut text);
                Ok(Extracted { text, pages: None })
            }
        }
    }
}

/// The whole text of a file held in memory.
pub fn extract_all(kind: FileKind, bytes: &[u8]) -> Result<String, ParseError> {
    let mut extractor = TextExtractor::new(kind);
    let mut text = extractor.push(bytes)?;
    text.push_str(&extractor.finish()?.text);
    Ok(text)
}

/// Validates pushed bytes as UTF-8 and hands on whole code points, holding
/// an incomplete last sequence for the next push.
struct Utf8Decoder {
    pending: [u8; 4],
    pending_len: usize,
    /// Offset in the file of `pending[0]`.
    pending_offset_bytes: u64,
    /// Bytes of the file pushed before the current push.
    consumed_bytes: u64,
    /// Whether any text was handed on (a BOM is dropped only before that).
    started: bool,
}

impl Utf8Decoder {
    fn new() -> Self {
        Utf8Decoder {
            pending: [0; 4],
            pending_len: 0,
            pending_offset_bytes: 0,
            consumed_bytes: 0,
            started: false,
        }
    }

    fn decode(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) -> Result<(), ParseError> {
        let nul = bytes.iter().position(|&b| b == 0);
        self.decode_without_nul(&bytes[..nul.unwrap_or(bytes.len())], sink)?;
        if let Some(nul) = nul {
            // An incomplete sequence before the NUL is the first bad byte.
            let offset_bytes = if self.pending_len > 0 {
                self.pending_offset_bytes
            } else {
                self.consumed_bytes + nul as u64
            };
            return Err(ParseError::NotText { offset_bytes });
        }
        self.consumed_bytes += bytes.len() as u64;
        Ok(())
    }

    fn decode_without_nul(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) -> Result<(), ParseError> {
        let mut rest = bytes;
        if self.pending_len > 0 {
            let sequence_len = utf8_sequence_len(self.pending[0]);
            assert!(self.pending_len < sequence_len && sequence_len <= self.pending.len());
            let take = (sequence_len - self.pending_len).min(rest.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&rest[..take]);
            self.pending_len += take;
            rest = &rest[take..];
            let pending = self.pending;
            match std::str::from_utf8(&pending[..self.pending_len]) {
                Ok(s) => {
                    self.pending_len = 0;
                    self.hand_on(s, sink);
                }
                Err(error) if error.error_len().is_none() => {
                    assert!(rest.is_empty(), "an incomplete sequence takes every byte there is");
                    return Ok(());
                }
                Err(_) => return Err(ParseError::NotText { offset_bytes: self.pending_offset_bytes }),
            }
        }
        let rest_offset_bytes = self.consumed_bytes + (bytes.len() - rest.len()) as u64;
        match std::str::from_utf8(rest) {
            Ok(s) => self.hand_on(s, sink),
            Err(error) => {
                let valid_len = error.valid_up_to();
                let bad_offset_bytes = rest_offset_bytes + valid_len as u64;
                let valid = std::str::from_utf8(&rest[..valid_len])
                    .map_err(|_| ParseError::NotText { offset_bytes: bad_offset_bytes })?;
                self.hand_on(valid, sink);
                if error.error_len().is_some() {
                    return Err(ParseError::NotText { offset_bytes: bad_offset_bytes });
                }
                let tail = &rest[valid_len..];
                assert!(!tail.is_empty() && tail.len() <= UTF8_PENDING_BYTES_MAX);
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                self.pending_offset_bytes = bad_offset_bytes;
            }
        }
        Ok(())
    }

    fn hand_on(&mut self, text: &str, sink: &mut dyn FnMut(&str)) {
        let text = if self.started { text } else { text.strip_prefix('\u{FEFF}').unwrap_or(text) };
        if !text.is_empty() {
            self.started = true;
            sink(text);
        }
    }

    /// The file ended: an incomplete last sequence is not text.
    fn finish(&self) -> Result<(), ParseError> {
        match self.pending_len {
            0 => Ok(()),
            _ => Err(ParseError::NotText { offset_bytes: self.pending_offset_bytes }),
        }
    }
}

/// Bytes of the UTF-8 sequence a lead byte starts (a lead byte that
/// `from_utf8` reported as an incomplete sequence).
fn utf8_sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => unreachable!("{lead:#04x} does not start a multi-byte UTF-8 sequence"),
    }
}

/// Makes CRLF and lone CR line ends `\n`.
struct LineEnds {
    after_cr: bool,
}

impl LineEnds {
    fn feed(&mut self, text: &str, out: &mut String) {
        if !self.after_cr && !text.contains('\r') {
            out.push_str(text);
            return;
        }
        for c in text.chars() {
            match c {
                '\r' => out.push('\n'),
                '\n' if self.after_cr => {}
                c => out.push(c),
            }
            self.after_cr = c == '\r';
        }
    }
}

/// An ASCII name of at most `N` bytes (an HTML tag or entity name); a
/// longer or non-ASCII name is marked overflowed and matches nothing.
struct ShortName<const N: usize> {
    bytes: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> ShortName<N> {
    fn new() -> Self {
        ShortName { bytes: [0; N], len: 0, overflowed: false }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    fn push(&mut self, c: char) {
        if c.is_ascii() && self.len < N {
            self.bytes[self.len] = c as u8;
            self.len += 1;
        } else {
            self.overflowed = true;
        }
    }

    fn is_full(&self) -> bool {
        self.len == N
    }

    /// The name, if it fit.
    fn get(&self) -> Option<&str> {
        if self.overflowed {
            return None;
        }
        std::str::from_utf8(&self.bytes[..self.len]).ok()
    }
}

/// Where the HTML state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HtmlState {
    Text,
    /// After `&`: the entity name so far is in `HtmlText::entity`.
    Entity,
    /// After `<`.
    TagOpen,
    TagName {
        closing: bool,
    },
    Attributes {
        closing: bool,
    },
    Quoted {
        closing: bool,
        quote: char,
    },
    /// After `<!`.
    Declaration,
    /// After `<!-`.
    CommentOpen,
    /// Inside `<!-- -->`, with the dashes just seen.
    Comment {
        dashes: u8,
    },
    /// `<!DOCTYPE ...>`, `<?xml ...?>` and the like, skipped to `>`.
    Bogus,
    /// Inside `<script>` or `<style>`, with the bytes of the closing tag
    /// (`HtmlText::raw_end`) matched so far.
    RawText {
        matched: usize,
    },
}

/// Tags that start a new line of visible text.
const HTML_BLOCK_TAGS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "title",
    "tr",
    "ul",
];

/// The visible text of HTML, one code point at a time: tags, comments and
/// the contents of `<script>` and `<style>` are dropped, block tags become
/// line breaks, entities are decoded and whitespace runs become one space.
struct HtmlText {
    state: HtmlState,
    tag: ShortName<HTML_TAG_NAME_BYTES_MAX>,
    entity: ShortName<HTML_ENTITY_BYTES_MAX>,
    /// The closing tag that ends the current raw text (`</script`).
    raw_end: &'static str,
    space_pending: bool,
    breaks_pending: u8,
    wrote_any: bool,
}

impl HtmlText {
    fn new() -> Self {
        HtmlText {
            state: HtmlState::Text,
            tag: ShortName::new(),
            entity: ShortName::new(),
            raw_end: "",
            space_pending: false,
            breaks_pending: 0,
            wrote_any: false,
        }
    }

    fn feed(&mut self, text: &str, out: &mut String) {
        for c in text.chars() {
            self.feed_char(c, out);
        }
    }

    fn feed_char(&mut self, c: char, out: &mut String) {
        match self.state {
            HtmlState::Text => self.on_text(c, out),
            HtmlState::Entity => self.on_entity(c, out),
            HtmlState::TagOpen => match c {
                '!' => self.state = HtmlState::Declaration,
                '?' => self.state = HtmlState::Bogus,
                '/' => self.start_tag(true),
                c if c.is_ascii_alphabetic() => {
                    self.start_tag(false);
                    self.tag.push(c.to_ascii_lowercase());
                }
                c => {
                    // Not a tag ("a < b"): the `<` is text.
                    self.state = HtmlState::Text;
                    self.visible(out, '<');
                    self.on_text(c, out);
                }
            },
            HtmlState::TagName { closing } => match c {
                '>' => self.end_tag(closing),
                '/' => self.state = HtmlState::Attributes { closing },
                c if c.is_whitespace() => self.state = HtmlState::Attributes { closing },
                c => self.tag.push(c.to_ascii_lowercase()),
            },
            HtmlState::Attributes { closing } => match c {
                '>' => self.end_tag(closing),
                '"' | '\'' => self.state = HtmlState::Quoted { closing, quote: c },
                _ => {}
            },
            HtmlState::Quoted { closing, quote } => {
                if c == quote {
                    self.state = HtmlState::Attributes { closing };
                }
            }
            HtmlState::Declaration => match c {
                '-' => self.state = HtmlState::CommentOpen,
                '>' => self.state = HtmlState::Text,
                _ => self.state = HtmlState::Bogus,
            },
            HtmlState::CommentOpen => match c {
                '-' => self.state = HtmlState::Comment { dashes: 0 },
                '>' => self.state = HtmlState::Text,
                _ => self.state = HtmlState::Bogus,
            },
            HtmlState::Comment { dashes } => match c {
                '-' => self.state = HtmlState::Comment { dashes: dashes.saturating_add(1).min(2) },
                '>' if dashes >= 2 => self.state = HtmlState::Text,
                _ => self.state = HtmlState::Comment { dashes: 0 },
            },
            HtmlState::Bogus => {
                if c == '>' {
                    self.state = HtmlState::Text;
                }
            }
            HtmlState::RawText { matched } => self.on_raw_text(c, matched),
        }
    }

    fn on_text(&mut self, c: char, out: &mut String) {
        assert_eq!(self.state, HtmlState::Text);
        match c {
            '<' => self.state = HtmlState::TagOpen,
            '&' => {
                self.entity.clear();
                self.state = HtmlState::Entity;
            }
            c => self.visible(out, c),
        }
    }

    fn on_entity(&mut self, c: char, out: &mut String) {
        if c == ';' {
            self.state = HtmlState::Text;
            match self.entity.get().and_then(decode_entity) {
                Some(decoded) => self.visible(out, decoded),
                None => {
                    self.entity_as_text(out);
                    self.visible(out, ';');
                }
            }
        } else if (c.is_ascii_alphanumeric() || c == '#') && !self.entity.is_full() {
            self.entity.push(c);
        } else {
            // Not an entity ("fish & chips"): its characters are text.
            self.state = HtmlState::Text;
            self.entity_as_text(out);
            self.on_text(c, out);
        }
    }

    fn entity_as_text(&mut self, out: &mut String) {
        // A copy, as writing the name borrows the state machine.
        let (name, len) = (self.entity.bytes, self.entity.len);
        self.visible(out, '&');
        for &byte in &name[..len] {
            self.visible(out, char::from(byte));
        }
    }

    fn on_raw_text(&mut self, c: char, matched: usize) {
        let end = self.raw_end.as_bytes();
        assert!(matched < end.len());
        let matched = if c.is_ascii() && c.to_ascii_lowercase() as u8 == end[matched] {
            matched + 1
        } else if c == '<' {
            1
        } else {
            0
        };
        if matched == end.len() {
            // The closing tag's own name and attributes run to its `>`.
            self.state = HtmlState::Attributes { closing: true };
            self.tag.clear();
        } else {
            self.state = HtmlState::RawText { matched };
        }
    }

    fn start_tag(&mut self, closing: bool) {
        self.tag.clear();
        self.state = HtmlState::TagName { closing };
    }

    fn end_tag(&mut self, closing: bool) {
        self.state = HtmlState::Text;
        let Some(name) = self.tag.get() else { return };
        if name == "br" {
            self.breaks_pending = (self.breaks_pending + 1).min(HTML_BREAKS_COUNT_MAX);
        } else if HTML_BLOCK_TAGS.contains(&name) {
            self.breaks_pending = self.breaks_pending.max(1);
        } else if name == "td" || name == "th" {
            self.space_pending = self.wrote_any;
        }
        if !closing {
            self.raw_end = match name {
                "script" => "</script",
                "style" => "</style",
                _ => return,
            };
            self.state = HtmlState::RawText { matched: 0 };
        }
    }

    /// A character of visible text; whitespace is held and collapsed.
    fn visible(&mut self, out: &mut String, c: char) {
        if c.is_whitespace() {
            self.space_pending = self.wrote_any;
            return;
        }
        if self.breaks_pending > 0 && self.wrote_any {
            for _ in 0..self.breaks_pending {
                out.push('\n');
            }
        } else if self.space_pending {
            out.push(' ');
        }
        self.breaks_pending = 0;
        self.space_pending = false;
        out.push(c);
        self.wrote_any = true;
    }

    /// The file ended: a dangling `&name` or `<` is text; held whitespace
    /// and breaks are dropped.
    fn finish(mut self, out: &mut String) {
        match self.state {
            HtmlState::Entity => self.entity_as_text(out),
            HtmlState::TagOpen => self.visible(out, '<'),
            _ => {}
        }
    }
}

/// The character an entity name (without `&` and `;`) stands for.
fn decode_entity(name: &str) -> Option<char> {
    if let Some(number) = name.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse::<u32>().ok()?,
        };
        return Some(char::from_u32(code).filter(|&c| c != '\0').unwrap_or(char::REPLACEMENT_CHARACTER));
    }
    let decoded = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "ldquo" => '\u{201C}',
        "rdquo" => '\u{201D}',
        "hellip" => '\u{2026}',
        "copy" => '\u{A9}',
        "reg" => '\u{AE}',
        _ => return None,
    };
    Some(decoded)
}

/// Reads a whole PDF's text, page by page, without letting the reader's
/// panics reach the caller (the process's panic hook still reports them).
fn extract_pdf(bytes: &[u8]) -> Result<Extracted, ParseError> {
    assert!(bytes.len() <= PDF_BYTES_MAX);
    let pages = match std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes)) {
        Ok(Ok(pages)) => pages,
        Ok(Err(error)) => return Err(ParseError::Pdf { reason: error.to_string() }),
        Err(panic) => return Err(ParseError::Pdf { reason: panic_reason(panic.as_ref()) }),
    };
    let mut text = String::new();
    for page in &pages {
        let page = page.trim();
        if page.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(page);
    }
    let pages = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    Ok(Extracted { text, pages: Some(pages) })
}

fn panic_reason(panic: &(dyn Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    format!("the PDF reader failed ({message})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::fixture::pdf_fixture;

    #[test]
    fn detect_names_kinds_by_extension_then_content_type() {
        let cases: &[(&str, Option<&str>, FileKind)] = &[
            ("notes.txt", None, FileKind::Text),
            ("server.LOG", Some("application/octet-stream"), FileKind::Text),
            ("a.text", None, FileKind::Text),
            ("README.md", Some("text/plain"), FileKind::Markdown),
            ("doc.markdown", None, FileKind::Markdown),
            ("page.HTM", None, FileKind::Html),
            ("page.html", Some("application/octet-stream"), FileKind::Html),
            ("data.json", None, FileKind::Json),
            ("rows.jsonl", None, FileKind::Json),
            ("table.csv", None, FileKind::Csv),
            ("table.tsv", None, FileKind::Csv),
            ("main.rs", None, FileKind::Code),
            ("dir/sub/app.py", None, FileKind::Code),
            ("C:\\src\\lib.tsx", None, FileKind::Code),
            ("config.yml", None, FileKind::Code),
            ("analysis.R", None, FileKind::Code),
            ("paper.pdf", Some("application/octet-stream"), FileKind::Pdf),
            ("upload", Some("application/pdf"), FileKind::Pdf),
            ("upload", Some("text/markdown; charset=utf-8"), FileKind::Markdown),
            ("upload", Some("TEXT/HTML"), FileKind::Html),
            ("upload", Some("application/json"), FileKind::Json),
            ("upload", Some("application/ld+json"), FileKind::Json),
            ("upload", Some("text/csv"), FileKind::Csv),
            ("upload.weird", Some("text/x-anything"), FileKind::Text),
            (".bashrc", Some("text/plain"), FileKind::Text),
        ];
        for &(name, content_type, expected) in cases {
            assert_eq!(detect(name, content_type), Ok(expected), "{name} {content_type:?}");
        }
    }

    #[test]
    fn detect_rejects_unknown_binary_files_with_a_message_naming_them() {
        let error = detect("photo.bin", Some("application/octet-stream")).unwrap_err();
        assert_eq!(
            error,
            ParseError::Unsupported {
                file_name: "photo.bin".into(),
                content_type: Some("application/octet-stream".into())
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("\"photo.bin\"") && message.contains("application/octet-stream"),
            "{message}"
        );
        assert!(matches!(detect("archive.zip", None), Err(ParseError::Unsupported { .. })));
        assert!(matches!(detect("noextension", None), Err(ParseError::Unsupported { .. })));
        assert!(matches!(detect("image.png", Some("image/png")), Err(ParseError::Unsupported { .. })));
        assert!(matches!(detect("x", Some("text/")), Err(ParseError::Unsupported { .. })));
        assert!(detect("noextension", None).unwrap_err().to_string().contains("no content type"));
    }

    #[test]
    fn mime_types_follow_kind_and_code_language() {
        assert_eq!(FileKind::Text.mime_type(), "text/plain");
        assert_eq!(FileKind::Markdown.mime_type(), "text/markdown");
        assert_eq!(FileKind::Html.mime_type(), "text/html");
        assert_eq!(FileKind::Json.mime_type(), "application/json");
        assert_eq!(FileKind::Csv.mime_type(), "text/csv");
        assert_eq!(FileKind::Code.mime_type(), "text/plain");
        assert_eq!(FileKind::Pdf.mime_type(), "application/pdf");
        assert_eq!(code_language("src/app.PY"), Some("python"));
        assert_eq!(code_language("notes.txt"), None);
        assert_eq!(file_mime_type(FileKind::Code, "main.rs"), "text/x-rust");
        assert_eq!(file_mime_type(FileKind::Code, "script"), "text/plain");
        assert_eq!(file_mime_type(FileKind::Pdf, "main.rs"), "application/pdf");
    }

    /// Pushes `bytes` cut at `cut` and returns the whole text or the error.
    fn extract_split(kind: FileKind, bytes: &[u8], cut: usize) -> Result<String, ParseError> {
        let mut extractor = TextExtractor::new(kind);
        let mut text = extractor.push(&bytes[..cut])?;
        text.push_str(&extractor.push(&bytes[cut..])?);
        text.push_str(&extractor.finish()?.text);
        Ok(text)
    }

    fn extract_bytewise(kind: FileKind, bytes: &[u8]) -> Result<String, ParseError> {
        let mut extractor = TextExtractor::new(kind);
        let mut text = String::new();
        for byte in bytes {
            text.push_str(&extractor.push(std::slice::from_ref(byte))?);
        }
        text.push_str(&extractor.finish()?.text);
        Ok(text)
    }

    #[test]
    fn utf8_text_is_identical_however_the_bytes_are_split() {
        let input = "\u{FEFF}héllo wörld — 日本語 🦀\r\nline two\rthree\n\u{FEFF}kept".as_bytes();
        let expected = "héllo wörld — 日本語 🦀\nline two\nthree\n\u{FEFF}kept";
        assert_eq!(extract_all(FileKind::Text, input).unwrap(), expected);
        for cut in 0..=input.len() {
            assert_eq!(extract_split(FileKind::Markdown, input, cut).unwrap(), expected, "cut at {cut}");
        }
        assert_eq!(extract_bytewise(FileKind::Code, input).unwrap(), expected);
    }

    #[test]
    fn a_push_returns_the_code_points_it_completes() {
        let mut extractor = TextExtractor::new(FileKind::Text);
        assert_eq!(extractor.push(b"a\xE2\x82").unwrap(), "a");
        assert_eq!(extractor.push(b"\xACb").unwrap(), "\u{20AC}b");
        assert_eq!(extractor.finish().unwrap(), Extracted { text: String::new(), pages: None });
    }

    #[test]
    fn invalid_utf8_is_reported_at_its_offset_however_split() {
        let cases: &[(&[u8], u64)] = &[
            (b"abc\xFFdef", 3),
            (b"ab\xE2\x28\xA1", 2),
            (b"caf\xC3", 3),
            (b"text\0more", 4),
            (b"ab\xE2\x82\0", 2),
            ("ok é then \u{1F980}".as_bytes(), u64::MAX),
        ];
        for &(input, offset_bytes) in cases {
            let expected = if offset_bytes == u64::MAX {
                Ok(String::from_utf8(input.to_vec()).unwrap())
            } else {
                Err(ParseError::NotText { offset_bytes })
            };
            for cut in 0..=input.len() {
                assert_eq!(extract_split(FileKind::Json, input, cut), expected, "{input:?} cut at {cut}");
            }
            assert_eq!(extract_bytewise(FileKind::Csv, input), expected, "{input:?} bytewise");
        }
        assert_eq!(ParseError::NotText { offset_bytes: 3 }.to_string(), "not UTF-8 text at byte 3");
    }

    const HTML_PAGE: &str = "<!DOCTYPE html>\r\n<html><head><title>Kelpie &amp; friends</title>\
        <style>p { color: red; } /* </p> */</style>\
        <script type=\"text/javascript\">if (a < b && c > d) { document.write('<p>hidden</p>'); }</SCRIPT >\
        </head><body>\n  <h1>Tide   pools</h1>\
        <!-- a comment with <p>tags</p> and -- dashes -->\
        <p class='intro' title=\"a > b\">Kelp &lt;grows&gt; fast&nbsp;&#8212; &#x1F980; &quot;quoted&quot; \
        it&#39;s &apos;ok&apos;</p>\
        <ul><li>one</li><li>two<br>three<br><br><br>four</li></ul>\
        <table><tr><td>a</td><td>b</td></tr></table>\
        <p>5 < 6 &amp;&amp; fish & chips &unknown; &toolongentityname; caf\u{e9}</p>\
        <div><span>in</span><b>line</b></div></body></html>\n";

    const HTML_TEXT: &str = "Kelpie & friends\nTide pools\nKelp <grows> fast \u{2014} \u{1F980} \"quoted\" \
        it's 'ok'\none\ntwo\nthree\n\nfour\na b\n5 < 6 && fish & chips &unknown; &toolongentityname; \
        caf\u{e9}\ninline";

    #[test]
    fn html_keeps_visible_text_only() {
        assert_eq!(extract_all(FileKind::Html, HTML_PAGE.as_bytes()).unwrap(), HTML_TEXT);
    }

    #[test]
    fn html_text_is_identical_however_the_bytes_are_split() {
        let input = HTML_PAGE.as_bytes();
        for cut in 0..=input.len() {
            assert_eq!(extract_split(FileKind::Html, input, cut).unwrap(), HTML_TEXT, "cut at {cut}");
        }
        assert_eq!(extract_bytewise(FileKind::Html, input).unwrap(), HTML_TEXT);
    }

    #[test]
    fn html_dangling_markup_at_the_end_is_handled() {
        assert_eq!(extract_all(FileKind::Html, b"a &amp").unwrap(), "a &amp");
        assert_eq!(extract_all(FileKind::Html, b"a <").unwrap(), "a <");
        assert_eq!(extract_all(FileKind::Html, b"a <b class=").unwrap(), "a");
        assert_eq!(extract_all(FileKind::Html, b"a <script>never closed").unwrap(), "a");
        assert_eq!(extract_all(FileKind::Html, b"<p>  </p>").unwrap(), "");
        assert_eq!(extract_all(FileKind::Html, b"x&#0;y&#xZZ;").unwrap(), "x\u{FFFD}y&#xZZ;");
        assert_eq!(extract_all(FileKind::Html, b"<p>\xFF</p>"), Err(ParseError::NotText { offset_bytes: 3 }));
    }

    #[test]
    fn pdf_text_and_pages_are_read() {
        let pdf =
            pdf_fixture(&["Kelpie reads PDF pages", "Second page (with parentheses)\nand a second line"]);
        let mut extractor = TextExtractor::new(FileKind::Pdf);
        for piece in pdf.chunks(7) {
            assert_eq!(extractor.push(piece).unwrap(), "");
        }
        let extracted = extractor.finish().unwrap();
        assert_eq!(extracted.pages, Some(2));
        let text = extracted.text;
        let first = text.find("Kelpie reads PDF pages").unwrap_or_else(|| panic!("{text:?}"));
        let second = text.find("Second page (with parentheses)").unwrap_or_else(|| panic!("{text:?}"));
        assert!(first < second, "{text:?}");
        assert!(text.contains("and a second line"), "{text:?}");
        assert_eq!(extract_all(FileKind::Pdf, &pdf).unwrap(), text);
    }

    #[test]
    fn corrupt_pdfs_are_errors_not_panics() {
        for bytes in [&b""[..], b"%PDF-1.4\nnot really a pdf", b"\x00\x01\x02"] {
            assert!(matches!(extract_all(FileKind::Pdf, bytes), Err(ParseError::Pdf { .. })), "{bytes:?}");
        }
        let pdf = pdf_fixture(&["Kelpie reads PDF pages"]);
        for len in (0..pdf.len()).step_by(17) {
            match extract_all(FileKind::Pdf, &pdf[..len]) {
                Ok(_) | Err(ParseError::Pdf { .. }) => {}
                Err(other) => panic!("truncated to {len}: {other}"),
            }
        }
        for at in (0..pdf.len()).step_by(13) {
            let mut mangled = pdf.clone();
            mangled[at] ^= 0x5A;
            match extract_all(FileKind::Pdf, &mangled) {
                Ok(_) | Err(ParseError::Pdf { .. }) => {}
                Err(other) => panic!("byte {at} changed: {other}"),
            }
        }
    }

    #[test]
    fn a_pdf_reader_panic_becomes_an_error() {
        let pdf = pdf_fixture(&["Kelpie reads PDF pages"]);
        let at = pdf.windows(9).position(|w| w == b"/F1 3 0 R").unwrap();
        let mut missing_font = pdf.clone();
        missing_font[at..at + 9].copy_from_slice(b"/F1 9 0 R");
        let error = extract_all(FileKind::Pdf, &missing_font).unwrap_err();
        let ParseError::Pdf { reason } = &error else { panic!("{error:?}") };
        assert!(reason.starts_with("the PDF reader failed ("), "{reason}");
        assert!(error.to_string().starts_with("cannot read the PDF: "), "{error}");
    }

    #[test]
    fn pdfs_past_the_limit_are_too_large() {
        const PIECE_BYTES: usize = 1024 * 1024;
        let piece = vec![b'%'; PIECE_BYTES];
        let mut extractor = TextExtractor::new(FileKind::Pdf);
        for _ in 0..PDF_BYTES_MAX / PIECE_BYTES {
            assert_eq!(extractor.push(&piece).unwrap(), "");
        }
        assert_eq!(extractor.push(b"%"), Err(ParseError::TooLarge { limit_bytes: PDF_BYTES_MAX as u64 }));
        assert_eq!(
            ParseError::TooLarge { limit_bytes: 10 }.to_string(),
            "file too large: more than 10 bytes"
        );
    }
}
