//! The web console: `GET /` answers its page, `GET /console/{asset}` its
//! style sheet, scripts and icon. Every file is compiled into the binary
//! (`crates/kelpie-server/console/`), so the console needs no other
//! service, no build step and nothing from another site.
//!
//! The page holds no data: its scripts read everything through the same
//! Letta-compatible API a client uses, sending the bearer token the person
//! typed. So these two routes are mounted outside the bearer-token check
//! (`routes::router`), and only these exact routes: every other path still
//! needs the token. Every answer carries a Content-Security-Policy that
//! allows this origin only and no inline script or style, so a value the
//! scripts render (they render data as text, never as markup) cannot run
//! code even if one slipped through. Answers carry an ETag (a hash of the
//! bytes) and `Cache-Control: no-cache`: a browser revalidates each time
//! and gets 304 while the binary is the same.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

/// The console's page (exactly this path).
pub const PAGE_PATH: &str = "/";
/// Where the console's assets are served, each under its file name.
pub const ASSET_PATH_PREFIX: &str = "/console/";
/// This origin only; no inline script or style, no plugins, no framing, no
/// `<base>`; forms are sent by the scripts, never by navigation.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";
/// Largest embedded file; a bigger one is a mistake in the console, caught
/// when the binary is built.
pub const ASSET_BYTES_MAX: usize = 256 * 1024;

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    /// FNV-1a of `bytes`, the ETag's value.
    pub hash: u64,
}

/// FNV-1a, 64 bits: a fingerprint for ETags (not a security hash: the
/// bytes are ours, compiled in).
const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

const fn asset(name: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    assert!(!bytes.is_empty() && bytes.len() <= ASSET_BYTES_MAX, "a console file is over ASSET_BYTES_MAX");
    Asset { name, content_type, bytes, hash: fnv1a64(bytes) }
}

/// The page served at [`PAGE_PATH`].
pub const PAGE: Asset =
    asset("index.html", "text/html; charset=utf-8", include_bytes!("../../console/index.html"));

/// Every file served under [`ASSET_PATH_PREFIX`].
pub const ASSETS: &[Asset] = &[
    asset("console.css", "text/css; charset=utf-8", include_bytes!("../../console/console.css")),
    asset("api.js", "text/javascript; charset=utf-8", include_bytes!("../../console/api.js")),
    asset("dom.js", "text/javascript; charset=utf-8", include_bytes!("../../console/dom.js")),
    asset("views.js", "text/javascript; charset=utf-8", include_bytes!("../../console/views.js")),
    asset("agent.js", "text/javascript; charset=utf-8", include_bytes!("../../console/agent.js")),
    asset("app.js", "text/javascript; charset=utf-8", include_bytes!("../../console/app.js")),
    asset("icon.svg", "image/svg+xml", include_bytes!("../../console/icon.svg")),
];

/// The console's routes, outside the bearer-token check (see the module
/// doc); the literal paths are [`PAGE_PATH`] and [`ASSET_PATH_PREFIX`].
pub fn router() -> Router {
    Router::new().route("/", get(page)).route("/console/{asset}", get(asset_file))
}

async fn page(headers: HeaderMap) -> Response {
    serve(&PAGE, &headers)
}

async fn asset_file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset, &headers),
        None => {
            let known: Vec<&str> = ASSETS.iter().map(|asset| asset.name).collect();
            let detail = format!("no console asset named {name:?}; the console has {}", known.join(", "));
            ApiError::new(StatusCode::NOT_FOUND, detail).into_response()
        }
    }
}

/// The ETag of `asset`: its hash as 16 hex digits, quoted.
pub fn etag(asset: &Asset) -> String {
    format!("\"{:016x}\"", asset.hash)
}

/// Whether an `If-None-Match` value names `etag` (or is `*`); weak tags
/// match too, as HTTP has it for GET.
fn none_match_names(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    assert_eq!(asset.hash, fnv1a64(asset.bytes), "an asset's hash is of its bytes");
    let etag = etag(asset);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| none_match_names(value, &etag));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.bytes.into_response() };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex digits in quotes"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn if_none_match_names_the_tag_in_a_list_weakly_or_by_star() {
        let tag = "\"00000000000000ab\"";
        assert!(none_match_names(tag, tag));
        assert!(none_match_names(&format!("\"x\", W/{tag}"), tag));
        assert!(none_match_names("*", tag));
        assert!(!none_match_names("\"00000000000000ac\"", tag));
        assert!(!none_match_names("", tag));
    }

    #[test]
    fn an_asset_at_the_size_limit_is_taken() {
        static LARGEST: [u8; ASSET_BYTES_MAX] = [b'x'; ASSET_BYTES_MAX];
        let largest = asset("largest.js", "text/javascript", &LARGEST);
        assert_eq!((largest.bytes.len(), largest.hash), (ASSET_BYTES_MAX, fnv1a64(&LARGEST)));
    }

    #[test]
    #[should_panic(expected = "a console file is over ASSET_BYTES_MAX")]
    fn an_asset_over_the_size_limit_is_refused() {
        static TOO_BIG: [u8; ASSET_BYTES_MAX + 1] = [b'x'; ASSET_BYTES_MAX + 1];
        asset("too-big.js", "text/javascript", &TOO_BIG);
    }

    #[test]
    fn asset_names_are_unique_and_the_page_is_not_among_them() {
        let mut names: Vec<&str> = ASSETS.iter().map(|asset| asset.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        assert!(!names.contains(&PAGE.name));
    }
}
