//! A small `multipart/form-data` reader for the one upload route (agent
//! import): fields by name, each as bytes. The whole body is already in
//! memory under the route's body limit; this only splits it.

/// Most parts one form may have.
const FORM_PARTS_COUNT_MAX: usize = 32;

/// One form field: its name and raw content.
#[derive(Debug, Clone, PartialEq)]
pub struct FormField {
    pub name: String,
    pub content: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|window| window == needle).map(|at| at + from)
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

/// The `name` of a part from its header block.
fn field_name(headers: &str) -> Option<String> {
    let disposition =
        headers.lines().find(|line| line.to_ascii_lowercase().starts_with("content-disposition:"))?;
    let start = disposition.find("name=\"")? + "name=\"".len();
    let end = disposition[start..].find('"')? + start;
    Some(disposition[start..end].to_string())
}

/// Every field of `body`, in order; an error says what is malformed.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<FormField>, String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut at = find(body, &delimiter, 0).ok_or("multipart body has no boundary")? + delimiter.len();
    let mut fields = Vec::new();
    while !body[at..].starts_with(b"--") {
        if fields.len() == FORM_PARTS_COUNT_MAX {
            return Err(format!("a form has at most {FORM_PARTS_COUNT_MAX} parts"));
        }
        let head_start = find(body, b"\r\n", at).ok_or("multipart part without headers")? + 2;
        let head_end = find(body, b"\r\n\r\n", head_start).ok_or("multipart part headers not ended")?;
        let headers = String::from_utf8_lossy(&body[head_start..head_end]);
        let name = field_name(&headers).ok_or("multipart part without a name")?;
        let content_start = head_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let content_end = find(body, &closing, content_start).ok_or("multipart part not closed")?;
        fields.push(FormField { name, content: body[content_start..content_end].to_vec() });
        at = content_end + closing.len();
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_boundary() {
        let content_type = "multipart/form-data; boundary=\"xyz\"";
        assert_eq!(boundary(content_type).as_deref(), Some("xyz"));
        assert_eq!(boundary("application/json"), None);
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.json\"\r\n\
Content-Type: application/json\r\n\r\n{\"a\":1}\r\n--xyz\r\nContent-Disposition: form-data; name=\"strip_messages\"\r\n\r\ntrue\r\n--xyz--\r\n";
        let fields = parse(body, "xyz").unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(
            (fields[0].name.as_str(), fields[0].content.as_slice()),
            ("file", b"{\"a\":1}".as_slice())
        );
        assert_eq!(
            (fields[1].name.as_str(), fields[1].content.as_slice()),
            ("strip_messages", b"true".as_slice())
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(parse(b"nothing here", "xyz").unwrap_err(), "multipart body has no boundary");
        let unclosed = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc";
        assert_eq!(parse(unclosed, "xyz").unwrap_err(), "multipart part not closed");
    }
}
