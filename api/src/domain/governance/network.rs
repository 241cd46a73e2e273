//! Where a request comes from: the client address (the socket's peer, or `X-Forwarded-For`
//! when that peer is a trusted proxy) and whether it arrived over TLS (`X-Forwarded-Proto`
//! of a trusted proxy). A header from any other peer is ignored: anyone can write one.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Most addresses read from `X-Forwarded-For` (a longer chain is cut; its left part is what
/// the client itself wrote, and is never trusted anyway).
const MAX_FORWARDED_HOPS: usize = 32;

/// The client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client's address (`None` when the server did not see a peer, e.g. in-process).
    pub ip: Option<IpAddr>,
    /// The request arrived over TLS.
    pub tls: bool,
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (as `/32` or `/128`).
/// The host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// An address as the allow-lists compare it: an IPv4-mapped IPv6 address is its IPv4 one.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether `ip` is in one of `nets`.
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// The origin of a request whose immediate peer is `peer`. When the peer is in `trusted`,
/// the client is the right-most address of `X-Forwarded-For` that is not itself a trusted
/// proxy, and TLS is what the right-most `X-Forwarded-Proto` says; otherwise both headers
/// are ignored and TLS is off (this server does not terminate TLS itself).
pub fn origin(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Origin {
    let Some(peer) = peer.map(canonical) else {
        return Origin {
            ip: None,
            tls: false,
        };
    };
    if !contains(trusted, peer) {
        return Origin {
            ip: Some(peer),
            tls: false,
        };
    }
    // Entries left of a malformed one are dropped: nothing there can be trusted.
    let mut hops: std::collections::VecDeque<IpAddr> = Default::default();
    for value in headers.get_all("x-forwarded-for") {
        let items = value.to_str().map(|t| t.split(',').collect::<Vec<_>>());
        for item in items.unwrap_or_else(|_| vec![""]) {
            match parse_hop(item) {
                Some(ip) => hops.push_back(canonical(ip)),
                None => hops.clear(),
            }
            if hops.len() > MAX_FORWARDED_HOPS {
                hops.pop_front();
            }
        }
    }
    // Right to left: the first address that is not a trusted proxy is the client.
    let mut client = peer;
    for ip in hops.iter().rev() {
        client = *ip;
        if !contains(trusted, client) {
            break;
        }
    }
    let tls = headers
        .get_all("x-forwarded-proto")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    Origin {
        ip: Some(client),
        tls,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(item: &str) -> Option<IpAddr> {
    let item = item.trim();
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = item.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn cidrs_parse_and_truncate() {
        assert_eq!(
            parse_cidr("10.1.2.3/8").expect("valid").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("192.0.2.7").expect("valid").to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::1/32").expect("valid").to_string(),
            "2001:db8::/32"
        );
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("example.com").is_none());
        assert!(parse_cidr("").is_none());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted = vec![parse_cidr("127.0.0.1/32").expect("valid")];
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let from_proxy = origin(Some("127.0.0.1".parse().expect("valid")), &h, &trusted);
        assert_eq!(from_proxy.ip, Some("10.0.0.1".parse().expect("valid")));
        assert!(from_proxy.tls);
        let stranger = origin(Some("192.0.2.1".parse().expect("valid")), &h, &trusted);
        assert_eq!(stranger.ip, Some("192.0.2.1".parse().expect("valid")));
        assert!(!stranger.tls);
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let trusted = vec![
            parse_cidr("127.0.0.1/32").expect("valid"),
            parse_cidr("10.0.0.0/8").expect("valid"),
        ];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.1")]);
        let o = origin(Some("127.0.0.1".parse().expect("valid")), &h, &trusted);
        assert_eq!(o.ip, Some("203.0.113.9".parse().expect("valid")));
        let v6 = headers(&[("x-forwarded-for", "[2001:db8::5]:443")]);
        let o = origin(
            Some("::ffff:127.0.0.1".parse().expect("valid")),
            &v6,
            &trusted,
        );
        assert_eq!(o.ip, Some("2001:db8::5".parse().expect("valid")));
    }

    #[test]
    fn mapped_addresses_match_ipv4_lists() {
        let nets = vec![parse_cidr("127.0.0.0/8").expect("valid")];
        assert!(contains(&nets, "::ffff:127.0.0.1".parse().expect("valid")));
        assert!(!contains(&nets, "::1".parse().expect("valid")));
    }
}
