//! A minimal text PDF, written by hand, for tests that upload PDF files.
//!
//! The file has one page per given text, each line set in the standard
//! Helvetica font (no embedded font), and an exact cross-reference table,
//! so [`super::parse::TextExtractor`] reads back the same words.

/// Pages a fixture holds at most (a fixture is for tests, not documents).
const FIXTURE_PAGES_COUNT_MAX: usize = 1_000;
/// Distance between the lines of a page, in points.
const LINE_LEADING_POINTS: u32 = 14;

/// A PDF with one page per entry of `pages`, each `\n`-separated line of
/// it on its own line of the page. Characters outside printable ASCII are
/// written as `?` (the fixture's font encoding covers only those).
pub fn pdf_fixture(pages: &[&str]) -> Vec<u8> {
    assert!(pages.len() <= FIXTURE_PAGES_COUNT_MAX, "a fixture of {} pages", pages.len());
    // Objects: 1 catalog, 2 page tree, 3 font, then per page its page
    // object (4 + 2i) and its content stream (5 + 2i).
    let mut writer = PdfWriter { out: b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec(), offsets: Vec::new() };
    writer.object(b"<< /Type /Catalog /Pages 2 0 R >>");
    let kids: Vec<String> = (0..pages.len()).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    writer.object(format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pages.len()).as_bytes());
    writer.object(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>");
    for (i, page) in pages.iter().enumerate() {
        let page_object = format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            5 + 2 * i
        );
        writer.object(page_object.as_bytes());
        let content = page_content(page);
        let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
        stream.extend_from_slice(&content);
        stream.extend_from_slice(b"endstream");
        writer.object(&stream);
    }
    assert_eq!(writer.offsets.len(), 3 + 2 * pages.len());
    writer.finish()
}

/// The drawing operators of one page: each line shown, then the next.
fn page_content(page: &str) -> Vec<u8> {
    let mut content = format!("BT\n/F1 12 Tf\n{LINE_LEADING_POINTS} TL\n72 720 Td\n").into_bytes();
    for (i, line) in page.lines().enumerate() {
        if i > 0 {
            content.extend_from_slice(b"T*\n");
        }
        content.push(b'(');
        for c in line.chars() {
            match c {
                '(' | ')' | '\\' => content.extend_from_slice(&[b'\\', c as u8]),
                ' '..='~' => content.push(c as u8),
                _ => content.push(b'?'),
            }
        }
        content.extend_from_slice(b") Tj\n");
    }
    content.extend_from_slice(b"ET\n");
    content
}

/// Writes numbered objects in order, remembering where each starts for the
/// cross-reference table.
struct PdfWriter {
    out: Vec<u8>,
    offsets: Vec<usize>,
}

impl PdfWriter {
    fn object(&mut self, body: &[u8]) {
        self.offsets.push(self.out.len());
        self.out.extend_from_slice(format!("{} 0 obj\n", self.offsets.len()).as_bytes());
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\nendobj\n");
    }

    fn finish(mut self) -> Vec<u8> {
        let xref_offset = self.out.len();
        let size = self.offsets.len() + 1;
        self.out.extend_from_slice(format!("xref\n0 {size}\n0000000000 65535 f \n").as_bytes());
        for offset in &self.offsets {
            // Each entry is exactly 20 bytes, end of line included.
            let entry = format!("{offset:010} 00000 n \n");
            assert_eq!(entry.len(), 20);
            self.out.extend_from_slice(entry.as_bytes());
        }
        let trailer = format!("trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref_offset}\n%%EOF\n");
        self.out.extend_from_slice(trailer.as_bytes());
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_cross_references_point_at_their_objects() {
        let pdf = pdf_fixture(&["one", "two (2)"]);
        let startxref = pdf.windows(10).rposition(|w| w == b"startxref\n").unwrap() + 10;
        let tail = std::str::from_utf8(&pdf[startxref..]).unwrap();
        let xref_at: usize = tail.lines().next().unwrap().parse().unwrap();
        let xref = std::str::from_utf8(&pdf[xref_at..]).unwrap();
        assert!(xref.starts_with("xref\n0 8\n"), "{xref}");
        for (i, entry) in xref.lines().skip(3).take(7).enumerate() {
            let offset: usize = entry[..10].parse().unwrap();
            assert!(pdf[offset..].starts_with(format!("{} 0 obj\n", i + 1).as_bytes()), "object {}", i + 1);
        }
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains("(two \\(2\\)) Tj"));
    }

    #[test]
    fn fixture_writes_non_ascii_as_question_marks() {
        assert_eq!(
            page_content("caf\u{e9}\nb"),
            b"BT\n/F1 12 Tf\n14 TL\n72 720 Td\n(caf?) Tj\nT*\n(b) Tj\nET\n"
        );
    }
}
