//! Uploaded documents turned into passages: which kind a file is, its
//! plain text, and that text cut into passages an agent can search.
//!
//! Everything here is pure: bytes and text in, text and chunks out, no
//! disk, network or clock, so the upload path, the tests and the simulator
//! drive the same code. Both stages stream with bounded memory:
//! - [`parse`]: [`parse::detect`] names a file's [`parse::FileKind`] from
//!   its name and content type, and [`parse::TextExtractor`] turns pushed
//!   bytes into text (UTF-8 validated; HTML reduced to its visible text;
//!   PDF, the one kind read whole, up to [`parse::PDF_BYTES_MAX`]);
//! - [`chunk`]: [`chunk::Chunker`] cuts pushed text into passages of at
//!   most [`chunk::FILE_CHUNK_CHARS_MAX`] characters, preferring line ends,
//!   then whitespace, and numbers each passage by its first line;
//! - [`fixture`]: [`fixture::pdf_fixture`] writes a minimal text PDF, for
//!   tests here and in other crates.

pub mod chunk;
pub mod fixture;
pub mod parse;
