//! Where a URL a user gives may point: an MCP server's, and (through
//! [`check_outbound`]) any other the server fetches for a user, such as an
//! LLM provider's base URL. Such a URL is fetched by the server, so unless
//! the configuration allows private addresses, one whose host resolves to a
//! loopback, private, link-local or otherwise internal address is refused
//! (SSRF): checked when the URL is registered and again at every
//! connection, so a name that later resolves elsewhere is caught too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::mcp::types::McpError;

/// Longest URL a user may give (MCP server, LLM provider), in bytes.
pub const MCP_URL_BYTES_MAX: usize = 2_048;

/// Why a URL a user gave is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundUrlError {
    /// Not an `http(s)` URL this server can fetch; the reason names the field.
    Malformed(String),
    /// Its host resolves to an internal address the configuration does not allow.
    Internal { url: String, address: IpAddr },
}

impl From<OutboundUrlError> for McpError {
    fn from(err: OutboundUrlError) -> Self {
        match err {
            OutboundUrlError::Malformed(reason) => McpError::BadConfig(reason),
            OutboundUrlError::Internal { url, address } => McpError::InternalAddress { url, address },
        }
    }
}

/// Whether `address` is not on the public internet.
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        // Carrier-grade NAT (100.64.0.0/10) and benchmarking (198.18.0.0/15).
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // Unique local (fc00::/7) and link-local (fe80::/10).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// The scheme, host and port of an MCP server's `http(s)` URL.
pub fn parse(url: &str) -> Result<(String, String, u16), McpError> {
    parse_outbound("server_url", url).map_err(McpError::from)
}

/// The scheme, host and port of the `http(s)` URL a user gave as `field`.
pub fn parse_outbound(field: &str, url: &str) -> Result<(String, String, u16), OutboundUrlError> {
    let bad = |reason: &str| OutboundUrlError::Malformed(format!("{field} {url:?} {reason}"));
    if url.len() > MCP_URL_BYTES_MAX {
        return Err(bad(&format!("is over MCP_URL_BYTES_MAX = {MCP_URL_BYTES_MAX} bytes")));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("is not an absolute http(s) URL"))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad("must not carry credentials in the URL"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| bad("has an unclosed [ in its host"))?;
        let port = after.strip_prefix(':').map(str::to_string);
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port.to_string())),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| bad("has a bad port"))?,
        None => default_port,
    };
    Ok((scheme.to_ascii_lowercase(), host, port))
}

/// Checks an MCP server's `url` (see [`check_outbound`]).
pub async fn check(url: &str, allow_internal: bool) -> Result<(), McpError> {
    check_outbound("server_url", url, allow_internal).await.map_err(McpError::from)
}

/// Checks the URL a user gave as `field` is http(s) and, unless
/// `allow_internal`, that every address its host resolves to is public.
pub async fn check_outbound(field: &str, url: &str, allow_internal: bool) -> Result<(), OutboundUrlError> {
    let (_, host, port) = parse_outbound(field, url)?;
    if allow_internal {
        return Ok(());
    }
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(address) => vec![address],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| OutboundUrlError::Malformed(format!("{field} {url:?}: cannot resolve {host}: {e}")))?
            .map(|socket| socket.ip())
            .collect(),
    };
    match addresses.iter().find(|address| is_internal(**address)) {
        Some(address) => Err(OutboundUrlError::Internal { url: url.to_string(), address: *address }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_parsed_with_default_ports_and_bad_ones_refused() {
        assert_eq!(
            parse("https://mcp.example.com/mcp").unwrap(),
            ("https".into(), "mcp.example.com".into(), 443)
        );
        assert_eq!(parse("http://[::1]:8080/sse").unwrap(), ("http".into(), "::1".into(), 8080));
        assert_eq!(parse("HTTP://h:81").unwrap(), ("http".into(), "h".into(), 81));
        for bad in ["ftp://h/", "h/mcp", "http://user:pw@h/", "http://:80/", "http://h:99999/"] {
            assert!(matches!(parse(bad), Err(McpError::BadConfig(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let refused = check("http://127.0.0.1:9/mcp", false).await.unwrap_err();
        assert_eq!(
            refused,
            McpError::InternalAddress {
                url: "http://127.0.0.1:9/mcp".into(),
                address: "127.0.0.1".parse().unwrap()
            }
        );
        let by_name = check("http://localhost:9/mcp", false).await.unwrap_err();
        assert!(matches!(by_name, McpError::InternalAddress { .. }), "{by_name:?}");
        check("http://127.0.0.1:9/mcp", true).await.unwrap();
    }

    #[tokio::test]
    async fn other_urls_follow_the_same_rule_and_name_their_field() {
        let refused = check_outbound("base_url", "http://10.1.2.3/v1", false).await.unwrap_err();
        assert_eq!(
            refused,
            OutboundUrlError::Internal {
                url: "http://10.1.2.3/v1".into(),
                address: "10.1.2.3".parse().unwrap()
            }
        );
        let OutboundUrlError::Malformed(reason) =
            check_outbound("base_url", "ftp://h/", true).await.unwrap_err()
        else {
            panic!("malformed")
        };
        assert!(reason.starts_with("base_url \"ftp://h/\""), "{reason}");
        check_outbound("base_url", "http://10.1.2.3/v1", true).await.unwrap();
    }
}
