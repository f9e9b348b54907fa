//! Loopback ports for test members, chosen where no outgoing connection can take them.
//!
//! A test member that stops and restarts must bind the same port again (its address is in the
//! group's configuration). A port picked by binding `127.0.0.1:0` lies in the kernel's
//! ephemeral range (32768–60999 by default), which is also where every outgoing connection
//! gets its source port: while the member is down, any connection made on the machine (a peer
//! redialling, another test, the CI runner) may take the port, and the restart then fails with
//! `Address already in use` for as long as that connection lives. So ports here are drawn at
//! random from *outside* the ephemeral range, where the kernel never assigns a source port,
//! and reserved by a bound listener until the member takes it over.
//!
//! Two tests running at once can still draw the same port only while neither holds it bound;
//! binding decides, and a taken port is skipped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// The kernel's ephemeral port range, inclusive (`/proc/sys/net/ipv4/ip_local_port_range`;
/// Linux's default when it cannot be read).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The ports tests draw from: below the ephemeral range (from 10000, clear of the well-known
/// ports and of the demo's 7xxx), or above it when the range starts too low.
fn candidate_range() -> std::ops::RangeInclusive<u16> {
    let (low, high) = ephemeral_range();
    if low > 12_000 {
        10_000..=low - 1
    } else {
        assert!(
            high < 64_000,
            "the ephemeral port range {low}-{high} leaves no room for test ports"
        );
        high + 1..=65_535
    }
}

/// A listener on a loopback port outside the ephemeral range (see the module docs).
pub fn reserve() -> TcpListener {
    use rand::Rng;
    let range = candidate_range();
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let port = rng.gen_range(range.clone());
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return l;
        }
    }
    panic!("no free loopback port in {range:?}");
}

/// A loopback port outside the ephemeral range that was free a moment ago, for a server in
/// another process to bind. No outgoing connection can take it meanwhile; only another test
/// drawing the same number could.
pub fn free_port() -> u16 {
    reserve().local_addr().expect("local address").port()
}

/// `reserve()` as a tokio listener.
pub fn reserve_tokio() -> tokio::net::TcpListener {
    to_tokio(reserve())
}

/// A std listener as a tokio one (inside a runtime).
pub fn to_tokio(l: TcpListener) -> tokio::net::TcpListener {
    l.set_nonblocking(true).expect("non-blocking listener");
    tokio::net::TcpListener::from_std(l).expect("tokio listener")
}

/// Binds `addr` again for a restarted member. The previous listener's socket may linger for a
/// moment after its server stopped, so this retries for a bounded time (10 s).
pub async fn rebind(addr: impl std::fmt::Display) -> tokio::net::TcpListener {
    let addr: SocketAddr = addr.to_string().parse().expect("a socket address");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, %addr, "rebind retry");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        assert!(low <= high, "{low}-{high}");
        for _ in 0..50 {
            let port = reserve().local_addr().unwrap().port();
            assert!(
                !(low..=high).contains(&port),
                "port {port} is in the ephemeral range {low}-{high}, where an outgoing \
                 connection may take it while its member is down"
            );
        }
    }

    #[tokio::test]
    async fn a_released_port_can_be_bound_again() {
        let l = reserve_tokio();
        let addr = l.local_addr().unwrap();
        // A connection accepted and closed leaves the server's side in TIME_WAIT.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        drop(server);
        drop(client);
        drop(l);
        let again = rebind(addr).await;
        assert_eq!(again.local_addr().unwrap(), addr);
    }
}
