//! The OAuth authorization-code flow of MCP servers (the MCP
//! authorization spec, as Letta's connect stream runs it): a server that
//! refuses with a `WWW-Authenticate` challenge is looked up (its protected
//! resource metadata, RFC 9728, names its authorization server; that
//! server's metadata, RFC 8414, names its endpoints), Kelpie registers as
//! a public client (RFC 7591) with the callback as redirect URI, and hands
//! the user an authorization URL with a PKCE S256 challenge (RFC 7636) and
//! a random state. The callback (`GET /v1/tools/mcp/oauth/callback`)
//! brings the code back by state to the connect stream waiting for it,
//! which exchanges it for an access token; the caller stores the token as
//! the server's bearer token, used by every later connection.
//!
//! Pending authorizations live in this process's memory only (at most
//! [`MCP_OAUTH_SESSIONS_COUNT_MAX`], each waited for at most
//! [`MCP_OAUTH_WAIT_MS`]): a restart, or a callback reaching another node
//! of a cluster, finds no session and the user connects again. Every URL
//! the flow fetches passes the MCP URL check (internal addresses need
//! `mcp.allow_internal_urls`), answers are read up to
//! [`MCP_OAUTH_RESPONSE_BYTES_MAX`] and redirects are not followed.
//! Refresh tokens are not kept: an expired token makes the server refuse
//! again, and connecting again renews it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use kelpie_core::RngSource;
use kelpie_tools::mcp::url;
use reqwest::Url;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// Longest wait for the user to authorize, from the authorization URL on.
pub const MCP_OAUTH_WAIT_MS: u64 = 300_000;
/// Most authorizations awaited at once.
pub const MCP_OAUTH_SESSIONS_COUNT_MAX: usize = 64;
/// Longest an HTTP request of the flow (metadata, registration, token) may take.
pub const MCP_OAUTH_HTTP_TIMEOUT_MS: u64 = 10_000;
/// Largest answer of the authorization server read.
pub const MCP_OAUTH_RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// The name Kelpie registers under.
pub const MCP_OAUTH_CLIENT_NAME: &str = "Kelpie";
/// Random bytes of a PKCE verifier and of a state (43 characters each, encoded).
const MCP_OAUTH_SECRET_BYTES: usize = 32;

/// An authorization awaited: what the callback reports back to.
struct Pending {
    server_url: String,
    reply: oneshot::Sender<Result<String, String>>,
}

/// The authorizations awaited, by state.
#[derive(Default)]
pub struct OAuthSessions {
    pending: Mutex<BTreeMap<String, Pending>>,
}

/// What the callback brought for one state: the code, or the provider's error.
pub type CallbackOutcome = Result<String, String>;

impl OAuthSessions {
    /// Awaits the callback of `state`; refused past the limit.
    fn begin(&self, state: &str, server_url: &str) -> Result<oneshot::Receiver<CallbackOutcome>, String> {
        let mut pending = self.pending.lock().expect("oauth sessions lock");
        if pending.len() >= MCP_OAUTH_SESSIONS_COUNT_MAX {
            return Err(format!(
                "{MCP_OAUTH_SESSIONS_COUNT_MAX} authorizations are already awaited (MCP_OAUTH_SESSIONS_COUNT_MAX); try again later"
            ));
        }
        let (reply, receiver) = oneshot::channel();
        let previous =
            pending.insert(state.to_string(), Pending { server_url: server_url.to_string(), reply });
        assert!(previous.is_none(), "a state is drawn afresh for every authorization");
        Ok(receiver)
    }

    fn forget(&self, state: &str) {
        self.pending.lock().expect("oauth sessions lock").remove(state);
    }

    /// Hands `outcome` to the stream awaiting `state`; the server's URL,
    /// or `None` when no authorization awaits that state.
    pub fn complete(&self, state: &str, outcome: CallbackOutcome) -> Option<String> {
        let pending = self.pending.lock().expect("oauth sessions lock").remove(state)?;
        // The stream may have stopped waiting (its client left): nothing to do.
        let _ = pending.reply.send(outcome);
        Some(pending.server_url)
    }
}

/// The endpoints of an authorization server.
#[derive(Debug, Clone, PartialEq)]
struct Endpoints {
    authorization: String,
    token: String,
    registration: Option<String>,
}

/// A flow started: the URL to send the user to, and what finishing needs.
pub struct Started {
    pub authorization_url: String,
    state: String,
    verifier: String,
    client_id: String,
    client_secret: Option<String>,
    token_endpoint: String,
    redirect_uri: String,
    server_url: String,
    receiver: oneshot::Receiver<CallbackOutcome>,
}

impl Started {
    /// The id the stream reports the authorization under: its state, which
    /// the callback answers to.
    pub fn session_id(&self) -> &str {
        &self.state
    }
}

/// Base64url without padding (RFC 7636's encoding).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn random_secret(rng: &dyn RngSource) -> String {
    let mut bytes = Vec::with_capacity(MCP_OAUTH_SECRET_BYTES);
    while bytes.len() < MCP_OAUTH_SECRET_BYTES {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    base64url(&bytes[..MCP_OAUTH_SECRET_BYTES])
}

/// The S256 challenge of a PKCE verifier.
fn pkce_challenge(verifier: &str) -> String {
    base64url(&Sha256::digest(verifier.as_bytes()))
}

/// The `resource_metadata` URL a `WWW-Authenticate` challenge names.
fn resource_metadata_of(challenge: &str) -> Option<String> {
    let start = challenge.find("resource_metadata=")? + "resource_metadata=".len();
    let rest = challenge[start..].trim_start_matches('"');
    let end = rest.find(['"', ',', ' ']).unwrap_or(rest.len());
    Some(rest[..end].to_string()).filter(|url| !url.is_empty())
}

/// `<origin>/.well-known/<name><path>` (RFC 8414's place for metadata).
fn well_known(base: &str, name: &str) -> Result<String, String> {
    let url = Url::parse(base).map_err(|e| format!("{base} is not a URL: {e}"))?;
    let path = url.path().trim_end_matches('/');
    Ok(format!("{}/.well-known/{name}{path}", url.origin().ascii_serialization()))
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(MCP_OAUTH_HTTP_TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the OAuth HTTP client: {e}"))
}

/// Reads a JSON object answer, up to [`MCP_OAUTH_RESPONSE_BYTES_MAX`].
async fn json_answer(response: reqwest::Response, what: &str) -> Result<Value, String> {
    let status = response.status();
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{what}: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > MCP_OAUTH_RESPONSE_BYTES_MAX {
            return Err(format!("{what}: the answer is over MCP_OAUTH_RESPONSE_BYTES_MAX = {MCP_OAUTH_RESPONSE_BYTES_MAX} bytes"));
        }
    }
    if !status.is_success() {
        return Err(format!("{what}: answered {status}: {}", String::from_utf8_lossy(&body)));
    }
    match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(format!("{what}: the answer is not a JSON object")),
    }
}

/// The authorization flow's outbound requests, each URL checked first.
pub struct OAuthClient {
    http: reqwest::Client,
    allow_internal: bool,
}

impl OAuthClient {
    pub fn new(allow_internal: bool) -> Result<Self, String> {
        Ok(OAuthClient { http: http_client()?, allow_internal })
    }

    async fn checked(&self, target: &str) -> Result<(), String> {
        url::check(target, self.allow_internal).await.map_err(|e| e.to_string())
    }

    async fn get_json(&self, target: &str, what: &str) -> Result<Value, String> {
        self.checked(target).await?;
        let response = self.http.get(target).send().await.map_err(|e| format!("{what} ({target}): {e}"))?;
        json_answer(response, &format!("{what} ({target})")).await
    }

    /// The authorization server's endpoints, from the challenge's resource
    /// metadata (or the MCP server's origin when it has none).
    async fn discover(&self, server_url: &str, challenge: &str) -> Result<Endpoints, String> {
        let metadata_url = match resource_metadata_of(challenge) {
            Some(url) => url,
            None => well_known(server_url, "oauth-protected-resource")?,
        };
        let issuer = match self.get_json(&metadata_url, "the protected resource metadata").await {
            Ok(metadata) => metadata["authorization_servers"][0]
                .as_str()
                .ok_or("the protected resource metadata names no authorization server")?
                .to_string(),
            // Servers of the 2025-03-26 spec are their own authorization server.
            Err(_) => Url::parse(server_url).map_err(|e| e.to_string())?.origin().ascii_serialization(),
        };
        let metadata = self
            .get_json(
                &well_known(&issuer, "oauth-authorization-server")?,
                "the authorization server metadata",
            )
            .await?;
        let field = |name: &str| metadata[name].as_str().map(str::to_string);
        Ok(Endpoints {
            authorization: field("authorization_endpoint")
                .ok_or("the authorization server names no authorization_endpoint")?,
            token: field("token_endpoint").ok_or("the authorization server names no token_endpoint")?,
            registration: field("registration_endpoint"),
        })
    }

    /// Registers Kelpie as a public client; its id and secret (if given).
    async fn register(&self, endpoint: &str, redirect_uri: &str) -> Result<(String, Option<String>), String> {
        self.checked(endpoint).await?;
        let body = serde_json::json!({
            "client_name": MCP_OAUTH_CLIENT_NAME, "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code"], "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        });
        let what = format!("the client registration ({endpoint})");
        let response =
            self.http.post(endpoint).json(&body).send().await.map_err(|e| format!("{what}: {e}"))?;
        let registered = json_answer(response, &what).await?;
        let client_id = registered["client_id"].as_str().ok_or(format!("{what}: no client_id"))?.to_string();
        Ok((client_id, registered["client_secret"].as_str().map(str::to_string)))
    }

    /// Discovers, registers and builds the authorization URL; the flow
    /// then awaits the callback of its state in `sessions`.
    pub async fn start(
        &self,
        (server_url, challenge): (&str, &str),
        redirect_uri: &str,
        sessions: &OAuthSessions,
        rng: &dyn RngSource,
    ) -> Result<Started, String> {
        let endpoints = self.discover(server_url, challenge).await?;
        let registration = endpoints
            .registration
            .as_deref()
            .ok_or("the authorization server offers no client registration")?;
        let (client_id, client_secret) = self.register(registration, redirect_uri).await?;
        let (verifier, state) = (random_secret(rng), random_secret(rng));
        let mut authorization_url = Url::parse(&endpoints.authorization)
            .map_err(|e| format!("authorization_endpoint {}: {e}", endpoints.authorization))?;
        authorization_url
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &state)
            .append_pair("resource", server_url);
        let receiver = sessions.begin(&state, server_url)?;
        Ok(Started {
            authorization_url: authorization_url.to_string(),
            state,
            verifier,
            client_id,
            client_secret,
            token_endpoint: endpoints.token,
            redirect_uri: redirect_uri.to_string(),
            server_url: server_url.to_string(),
            receiver,
        })
    }

    /// Waits for the callback (at most [`MCP_OAUTH_WAIT_MS`] on `clock`),
    /// then trades the code for an access token.
    pub async fn finish(
        &self,
        started: Started,
        sessions: &OAuthSessions,
        clock: &dyn kelpie_core::Clock,
    ) -> Result<String, String> {
        let Started {
            state,
            verifier,
            client_id,
            client_secret,
            token_endpoint,
            redirect_uri,
            server_url,
            receiver,
            ..
        } = started;
        let waited = tokio::select! {
            biased;
            outcome = receiver => outcome.map_err(|_| "the authorization was abandoned".to_string()),
            _ = clock.sleep(Duration::from_millis(MCP_OAUTH_WAIT_MS)) => {
                Err(format!("no authorization within MCP_OAUTH_WAIT_MS = {MCP_OAUTH_WAIT_MS} ms"))
            }
        };
        sessions.forget(&state);
        let code = waited??;
        self.checked(&token_endpoint).await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", client_id),
            ("code_verifier", verifier),
            ("resource", server_url),
        ];
        if let Some(secret) = client_secret {
            form.push(("client_secret", secret));
        }
        let what = format!("the token exchange ({token_endpoint})");
        let response =
            self.http.post(&token_endpoint).form(&form).send().await.map_err(|e| format!("{what}: {e}"))?;
        let answer = json_answer(response, &what).await?;
        let token = answer["access_token"].as_str().filter(|token| !token.is_empty());
        Ok(token.ok_or(format!("{what}: no access_token"))?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_and_the_s256_challenge_match_rfc_7636() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let rng = kelpie_core::env::ChaChaRngSource::from_seed(7);
        let secret = random_secret(&rng);
        assert_eq!(secret.len(), 43);
        assert_ne!(secret, random_secret(&rng));
    }

    #[test]
    fn the_challenge_and_well_known_urls_are_read_as_the_specs_place_them() {
        let challenge = "Bearer error=\"invalid_token\", resource_metadata=\"http://a.example/.well-known/oauth-protected-resource/mcp\"";
        assert_eq!(
            resource_metadata_of(challenge).as_deref(),
            Some("http://a.example/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(resource_metadata_of("Bearer realm=\"x\""), None);
        assert_eq!(
            well_known("https://auth.example/tenant1/", "oauth-authorization-server").unwrap(),
            "https://auth.example/.well-known/oauth-authorization-server/tenant1"
        );
        assert_eq!(
            well_known("http://127.0.0.1:9/", "oauth-protected-resource").unwrap(),
            "http://127.0.0.1:9/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn sessions_are_bounded_and_each_state_is_completed_once() {
        let sessions = OAuthSessions::default();
        let mut receiver = sessions.begin("s-0", "http://mcp.example/mcp").unwrap();
        assert_eq!(sessions.complete("s-0", Ok("code-1".into())).as_deref(), Some("http://mcp.example/mcp"));
        assert_eq!(receiver.try_recv().unwrap(), Ok("code-1".to_string()));
        assert_eq!(sessions.complete("s-0", Ok("again".into())), None, "a state is used once");
        let _held: Vec<_> = (0..MCP_OAUTH_SESSIONS_COUNT_MAX)
            .map(|n| sessions.begin(&format!("s-{n}"), "http://mcp.example/mcp").unwrap())
            .collect();
        let refused = sessions.begin("one-more", "http://mcp.example/mcp").err().unwrap();
        assert!(refused.contains("MCP_OAUTH_SESSIONS_COUNT_MAX"), "{refused}");
        sessions.forget("s-0");
        assert!(
            sessions.begin("one-more", "http://mcp.example/mcp").is_ok(),
            "a forgotten state frees its place"
        );
    }
}
