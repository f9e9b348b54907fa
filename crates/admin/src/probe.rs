//! A minimal HTTP/1.1 client over `std::net::TcpStream` for the servers' `probe` subcommand:
//! container images without curl can still run health checks. Plain `http://` only (the
//! admin port has no TLS); no new dependencies.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// GETs `url` and returns the HTTP status code. `timeout` bounds the whole exchange
/// (resolution aside). A probe exits 0 when this is `Ok(200..=299)`.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    get(url, timeout).map(|(code, _)| code)
}

/// Splits `http://host[:port][/path]` into (`host:port`, `host`, `/path`).
fn parse_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?}: only http:// URLs are supported (the admin port is plain HTTP)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_string(), path.to_string()))
}

/// GETs `url` and returns the status code and the body (`Connection: close`; chunked bodies
/// are decoded).
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let (addr, host, path) = parse_url(url)?;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .collect();
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut last_err = format!("{addr} resolves to no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_err)?;
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: quorumkv-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send the request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if Instant::now() >= deadline {
            return Err(format!("{url}: no complete answer within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{url}: reading the answer: {e}")),
        }
    }
    parse_response(&raw).map_err(|e| format!("{url}: {e}"))
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete header")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {status_line:?}"));
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = raw[end + 4..].to_vec();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(format!("body ended after {} of {len} bytes", body.len()));
        }
        body.truncate(len);
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&b[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health/ready").unwrap(),
            (
                "127.0.0.1:8080".into(),
                "127.0.0.1:8080".into(),
                "/health/ready".into()
            )
        );
        assert_eq!(
            parse_url("http://node-1.svc").unwrap(),
            ("node-1.svc:80".into(), "node-1.svc".into(), "/".into())
        );
        assert_eq!(parse_url("http://[::1]:9/x").unwrap().0, "[::1]:9");
        assert_eq!(parse_url("http://[::1]/x").unwrap().0, "[::1]:80");
        assert!(parse_url("https://a:1/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn parses_answers() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (503, "hello".into()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, "abcde".into()));
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn a_closed_port_is_an_error_not_a_hang() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = probe(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
