//! Peer addresses: `host:port` strings and `id=host:port,...` member lists.
//!
//! Hosts are DNS names (or IP literals); they are validated here but never resolved: resolution
//! happens on every connect, in the transport.

use std::fmt;

use crate::CommonError;

/// A validated `host:port` address. The host is kept as written (a DNS name, an IPv4 literal or
/// a bracketed IPv6 literal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Parses and validates `host:port`.
    pub fn parse(s: &str) -> Result<Self, CommonError> {
        let bad = |why: &str| CommonError::InvalidArgument(format!("address {s:?}: {why}"));
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        if host.is_empty() {
            return Err(bad("host is empty"));
        }
        let valid = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        if !valid {
            return Err(bad("host must be a DNS name, an IPv4 address or [IPv6]"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// The host as written, without brackets for IPv6: what TLS verifies the peer's
    /// certificate against.
    pub fn tls_name(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for HostPort {
    type Err = CommonError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPort::parse(s)
    }
}

/// One member of a Raft group: its non-zero id and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: HostPort,
}

/// Parses `1=a:7000,2=b:7000,...` into members sorted by id. Ids must be non-zero and unique,
/// addresses unique.
pub fn parse_members(s: &str) -> Result<Vec<Member>, CommonError> {
    let mut out: Vec<Member> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            CommonError::InvalidArgument(format!("member {part:?}: expected id=host:port"))
        })?;
        let id: u64 = id.trim().parse().map_err(|_| {
            CommonError::InvalidArgument(format!("member {part:?}: id must be a positive integer"))
        })?;
        if id == 0 {
            return Err(CommonError::InvalidArgument(format!(
                "member {part:?}: id 0 is reserved"
            )));
        }
        let addr = HostPort::parse(addr.trim())?;
        if out.iter().any(|m| m.id == id) {
            return Err(CommonError::InvalidArgument(format!(
                "member id {id} appears twice"
            )));
        }
        if out.iter().any(|m| m.addr == addr) {
            return Err(CommonError::InvalidArgument(format!(
                "address {addr} appears twice"
            )));
        }
        out.push(Member { id, addr });
    }
    if out.is_empty() {
        return Err(CommonError::InvalidArgument(
            "member list is empty (expected id=host:port,...)".into(),
        ));
    }
    out.sort_by_key(|m| m.id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_rejects_garbage() {
        assert_eq!(
            HostPort::parse("a.b-c:7000").unwrap().to_string(),
            "a.b-c:7000"
        );
        assert_eq!(HostPort::parse("[::1]:1").unwrap().tls_name(), "::1");
        assert_eq!(
            HostPort::parse("127.0.0.1:9").unwrap().tls_name(),
            "127.0.0.1"
        );
        for bad in [
            "", "a", "a:", ":80", "a:0", "a:70000", "a b:1", "-a:1", "a..b:1", "[x]:1",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_member_lists() {
        let m = parse_members("2=b:1, 1=a:1").unwrap();
        assert_eq!(m.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(parse_members("").is_err());
        assert!(parse_members("0=a:1").is_err());
        assert!(parse_members("1=a:1,1=b:1").is_err());
        assert!(parse_members("1=a:1,2=a:1").is_err());
        assert!(parse_members("x=a:1").is_err());
    }
}
