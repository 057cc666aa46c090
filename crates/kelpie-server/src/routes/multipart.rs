//! A small streaming `multipart/form-data` reader for the one upload route
//! (agent import). Fed the body in chunks of any size, it hands back each
//! part's name and then its content in pieces, so a file of any size passes
//! through in bounded memory. Sans-IO: the route does the reading.

/// Most parts one form may have.
const FORM_PARTS_COUNT_MAX: usize = 32;
/// Longest header block of one part, in bytes.
const PART_HEADERS_BYTES_MAX: usize = 8 * 1024;

/// What the reader found, in body order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormEvent {
    /// A part begins: its field name, and for a file its name and type
    /// as the client gave them.
    Part { name: String, file_name: Option<String>, content_type: Option<String> },
    /// Some of the current part's content.
    Data(Vec<u8>),
    /// The current part is complete.
    PartEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter (a preamble is skipped).
    Preamble,
    /// Right after a delimiter: `--` (the end) or a line break.
    AfterDelimiter,
    Headers,
    Content,
    Done,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        let value = value.trim().trim_matches('"');
        (key.trim().eq_ignore_ascii_case("boundary") && !value.is_empty()).then(|| value.to_string())
    })
}

/// The parameter `key` of a `Content-Disposition` value (`name`,
/// `filename`), quoted or not; a key is matched whole, so `name` is never
/// read out of `filename`.
fn disposition_param(disposition: &str, key: &str) -> Option<String> {
    let params = disposition.split_once(';')?.1;
    let mut rest = params;
    while !rest.is_empty() {
        let (param, after) = split_param(rest.trim_start());
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case(key) {
                let v = v.trim();
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                return Some(v.replace("\\\"", "\"").replace("\\\\", "\\"));
            }
        }
        rest = after;
    }
    None
}

/// The first `;`-separated parameter of `text` (a `;` inside quotes does
/// not separate) and what follows it.
fn split_param(text: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return (&text[..at], &text[at + 1..]),
            _ => {}
        }
    }
    (text, "")
}

/// The value of header `name` in a part's header block.
fn header<'h>(headers: &'h str, name: &str) -> Option<&'h str> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

pub struct FormReader {
    /// `\r\n--boundary`: what ends a part's content.
    closing: Vec<u8>,
    state: State,
    buffer: Vec<u8>,
    parts_count: usize,
    events: Vec<FormEvent>,
}

impl FormReader {
    pub fn new(boundary: &str) -> Self {
        FormReader {
            closing: format!("\r\n--{boundary}").into_bytes(),
            state: State::Preamble,
            // The first delimiter may open the body without a line break.
            buffer: b"\r\n".to_vec(),
            parts_count: 0,
            events: Vec::new(),
        }
    }

    /// Reads `chunk`; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<FormEvent>, String> {
        self.buffer.extend_from_slice(chunk);
        loop {
            let progressed = match self.state {
                State::Preamble => self.preamble(),
                State::AfterDelimiter => self.after_delimiter()?,
                State::Headers => self.headers()?,
                State::Content => self.content(),
                State::Done => {
                    self.buffer.clear();
                    false
                }
            };
            if !progressed {
                return Ok(std::mem::take(&mut self.events));
            }
        }
    }

    /// The body is over: an error unless the closing delimiter was read.
    pub fn finish(&self) -> Result<(), String> {
        match self.state {
            State::Done => Ok(()),
            State::Preamble => Err("multipart body has no boundary".into()),
            _ => Err("multipart part not closed".into()),
        }
    }

    fn preamble(&mut self) -> bool {
        match find(&self.buffer, &self.closing) {
            Some(at) => {
                self.buffer.drain(..at + self.closing.len());
                self.state = State::AfterDelimiter;
                true
            }
            None => {
                // Keep only what could be the start of a delimiter.
                let keep = self.closing.len().min(self.buffer.len());
                self.buffer.drain(..self.buffer.len() - keep);
                false
            }
        }
    }

    fn after_delimiter(&mut self) -> Result<bool, String> {
        if self.buffer.len() < 2 {
            return Ok(false);
        }
        if self.buffer.starts_with(b"--") {
            self.state = State::Done;
            return Ok(true);
        }
        if !self.buffer.starts_with(b"\r\n") {
            return Err("multipart delimiter not followed by a line break".into());
        }
        self.buffer.drain(..2);
        self.state = State::Headers;
        Ok(true)
    }

    fn headers(&mut self) -> Result<bool, String> {
        let Some(end) = find(&self.buffer, b"\r\n\r\n") else {
            if self.buffer.len() > PART_HEADERS_BYTES_MAX {
                return Err("multipart part headers not ended".into());
            }
            return Ok(false);
        };
        if self.parts_count == FORM_PARTS_COUNT_MAX {
            return Err(format!("a form has at most {FORM_PARTS_COUNT_MAX} parts"));
        }
        let headers = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        let disposition = header(&headers, "content-disposition").unwrap_or_default();
        let name = disposition_param(disposition, "name").ok_or("multipart part without a name")?;
        let file_name = disposition_param(disposition, "filename");
        let content_type = header(&headers, "content-type").map(str::to_string);
        self.buffer.drain(..end + 4);
        self.parts_count += 1;
        self.events.push(FormEvent::Part { name, file_name, content_type });
        self.state = State::Content;
        Ok(true)
    }

    fn content(&mut self) -> bool {
        match find(&self.buffer, &self.closing) {
            Some(at) => {
                if at > 0 {
                    self.events.push(FormEvent::Data(self.buffer[..at].to_vec()));
                }
                self.buffer.drain(..at + self.closing.len());
                self.events.push(FormEvent::PartEnd);
                self.state = State::AfterDelimiter;
                true
            }
            None => {
                // Everything but a possible start of the delimiter is content.
                let safe = self.buffer.len().saturating_sub(self.closing.len());
                if safe > 0 {
                    self.events.push(FormEvent::Data(self.buffer.drain(..safe).collect()));
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"preamble\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.json\"\r\n\
Content-Type: application/json\r\n\r\n{\"a\":\"--xy\r\n--xy\"}\r\n--xyz\r\nContent-Disposition: form-data; name=\"strip_messages\"\r\n\r\ntrue\r\n--xyz--\r\n";

    /// The parts of `body` read in chunks of `size`: (name, content).
    fn parts(body: &[u8], size: usize) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut reader = FormReader::new("xyz");
        let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
        let mut open = false;
        for chunk in body.chunks(size) {
            for event in reader.feed(chunk)? {
                match event {
                    FormEvent::Part { name, .. } => {
                        assert!(!open);
                        open = true;
                        parts.push((name, Vec::new()));
                    }
                    FormEvent::Data(bytes) => parts.last_mut().unwrap().1.extend(bytes),
                    FormEvent::PartEnd => open = false,
                }
            }
        }
        reader.finish()?;
        Ok(parts)
    }

    #[test]
    fn reads_fields_whatever_the_chunk_size() {
        assert_eq!(boundary("multipart/form-data; boundary=\"xyz\"").as_deref(), Some("xyz"));
        assert_eq!(boundary("application/json"), None);
        let expected = vec![
            ("file".to_string(), b"{\"a\":\"--xy\r\n--xy\"}".to_vec()),
            ("strip_messages".to_string(), b"true".to_vec()),
        ];
        for size in 1..=BODY.len() {
            assert_eq!(parts(BODY, size).unwrap(), expected, "chunks of {size}");
        }
        let clean = b"--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nabc\r\n--xy\r\n--xyz--";
        for size in 1..=clean.len() {
            assert_eq!(parts(clean, size).unwrap(), vec![("f".to_string(), b"abc\r\n--xy".to_vec())]);
        }
    }

    #[test]
    fn parts_carry_their_file_name_and_type() {
        let body = b"--xyz\r\nContent-Disposition: form-data; filename=\"we;ird \\\"name\\\".md\"; name=\"file\"\r\n\
content-type: text/markdown\r\n\r\n# hi\r\n--xyz\r\nContent-Disposition: form-data; name=plain\r\n\r\nx\r\n--xyz--";
        let mut reader = FormReader::new("xyz");
        let events = reader.feed(body).unwrap();
        reader.finish().unwrap();
        let starts: Vec<_> = events.into_iter().filter(|e| matches!(e, FormEvent::Part { .. })).collect();
        assert_eq!(
            starts,
            vec![
                FormEvent::Part {
                    name: "file".into(),
                    file_name: Some("we;ird \"name\".md".into()),
                    content_type: Some("text/markdown".into()),
                },
                FormEvent::Part { name: "plain".into(), file_name: None, content_type: None },
            ]
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(parts(b"nothing here", 4).unwrap_err(), "multipart body has no boundary");
        let unclosed = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc";
        assert_eq!(parts(unclosed, 4).unwrap_err(), "multipart part not closed");
        let nameless = b"--xyz\r\nContent-Type: text/plain\r\n\r\nabc\r\n--xyz--";
        assert_eq!(parts(nameless, 4).unwrap_err(), "multipart part without a name");
        let mut many = Vec::new();
        for _ in 0..=FORM_PARTS_COUNT_MAX {
            many.extend_from_slice(b"--xyz\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n");
        }
        many.extend_from_slice(b"--xyz--");
        assert!(parts(&many, 64).unwrap_err().contains("at most 32 parts"));
    }
}
