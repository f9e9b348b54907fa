//! Validation of replica-server addresses carried by `Join`.
//!
//! The controller never connects to these addresses; it only hands them to clients and KV
//! servers in every later configuration. A typo accepted here would therefore be served forever
//! (history is immutable), so the check is strict and happens once, at `Join`.
//!
//! Accepted forms are `host:port` where the host is a DNS name (labels of ASCII letters, digits,
//! `-` and `_`, as container and service names use), an IPv4 literal, or a bracketed IPv6
//! literal (`[::1]:7000`), and the port is a decimal number in `1..=65535`.
//!
//! Duplicates are judged on a canonical key rather than on the raw text, because `Node1:7000`
//! and `node1:7000`, or `[::1]:7000` and `[0:0::1]:7000`, are the same server: two groups must
//! never claim one server, or both would believe they own its shards.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::CtrlError;

/// Checks that `addr` is a well-formed `host:port` server address.
///
/// Exposed so that a client or admin tool can reject a bad address before it is proposed
/// through Raft; `Join` performs the same check itself.
pub fn check_server_addr(addr: &str) -> Result<(), CtrlError> {
    canonical_addr(addr)
        .map(drop)
        .map_err(|why| CtrlError::InvalidArgument(format!("server address {addr:?}: {why}")))
}

/// The key two addresses share exactly when they name the same server: lowercase DNS name or
/// canonical IP text, plus the numeric port. The error is a human reason, without the address.
pub(crate) fn canonical_addr(addr: &str) -> Result<String, String> {
    if addr.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = addr.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains the character {c:?}"));
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or("opens '[' without a closing ']'")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected ':port' after the bracketed IPv6 host")?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or("expected host:port, found no ':'")?;
        if host.contains(':') {
            return Err("an IPv6 host must be bracketed, as in [::1]:7000".into());
        }
        (canonical_host(host)?, port)
    };
    Ok(format!("{host}:{}", parse_port(port)?))
}

/// Canonical text of an unbracketed host. A host of only digits and dots is read as IPv4, so
/// that `10.0.0.256` is rejected instead of being taken for a (never resolvable) DNS name.
fn canonical_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"))?;
        return Ok(ip.to_string());
    }
    if host.len() > 253 {
        return Err(format!("host is {} bytes long; at most 253", host.len()));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(format!("host {host:?} has an empty DNS label"));
        }
        if label.len() > 63 {
            return Err(format!("DNS label {label:?} is longer than 63 bytes"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("host {host:?} contains the character {c:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("DNS label {label:?} starts or ends with '-'"));
        }
    }
    Ok(host.to_ascii_lowercase())
}

/// Parses a port, refusing signs and other forms `u16::from_str` tolerates.
fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("port is empty".into());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a decimal number"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not a listening port; use 1..=65535".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {port} is out of range 1..=65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_ipv4_and_bracketed_ipv6() {
        for ok in [
            "localhost:7000",
            "kv-1.quorumkv.svc.cluster.local:65535",
            "quorumkv_server_1:1",
            "10.0.0.1:7000",
            "[::1]:7000",
            "[2001:db8::2]:80",
        ] {
            assert_eq!(check_server_addr(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason() {
        for (bad, why) in [
            ("", "is empty"),
            ("host", "no ':'"),
            (":7000", "host is empty"),
            ("host:", "port is empty"),
            ("host:0", "port 0"),
            ("host:65536", "out of range"),
            ("host:+80", "not a decimal"),
            ("ho st:80", "character ' '"),
            ("host!:80", "character '!'"),
            ("-host:80", "starts or ends with '-'"),
            ("a..b:80", "empty DNS label"),
            ("10.0.0.256:80", "not a valid IPv4"),
            ("1.2.3:80", "not a valid IPv4"),
            ("::1:80", "must be bracketed"),
            ("[::1:80", "closing ']'"),
            ("[::1]80", "expected ':port'"),
            ("[zz::1]:80", "not an IPv6"),
        ] {
            match check_server_addr(bad) {
                Err(CtrlError::InvalidArgument(msg)) => {
                    assert!(msg.contains(why), "{bad:?}: {msg:?} lacks {why:?}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let long_label = format!("{}:80", "a".repeat(64));
        assert!(check_server_addr(&long_label).is_err());
    }

    #[test]
    fn canonical_key_identifies_spellings_of_one_server() {
        let key = |a: &str| canonical_addr(a).unwrap();
        assert_eq!(key("Node1.Example:7000"), key("node1.example:7000"));
        assert_eq!(key("[0:0::1]:7000"), key("[::1]:7000"));
        assert_eq!(key("host:07000"), key("host:7000"));
        assert_ne!(key("host:7000"), key("host:7001"));
    }
}
