//! Which addresses are never a peer: the IANA special-purpose ranges (v4 and v6, with the v6
//! forms that embed a v4 address) and `localhost` names. Pure functions, used by every layer of
//! the guard (`check_url`, the resolver, the connector check).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges that are never a peer (IANA special-purpose registry, RFC 6890, and Mastodon's
/// `PrivateAddressCheck` list, which is the most complete one in use).
const FORBIDDEN_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),  // "this network"; 0.0.0.0 dials the local host on Linux
    (Ipv4Addr::new(10, 0, 0, 0), 8), // private, RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10), // carrier-grade NAT, RFC 6598
    (Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local, RFC 3927; cloud metadata 169.254.169.254
    (Ipv4Addr::new(172, 16, 0, 0), 12), // private, RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments, RFC 6890
    (Ipv4Addr::new(192, 0, 2, 0), 24), // TEST-NET-1, RFC 5737
    (Ipv4Addr::new(192, 88, 99, 0), 24), // 6to4 relay anycast, RFC 7526
    (Ipv4Addr::new(192, 168, 0, 0), 16), // private, RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking, RFC 2544
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2, RFC 5737
    (Ipv4Addr::new(203, 0, 113, 0), 24), // TEST-NET-3, RFC 5737
    (Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, RFC 1112, and 255.255.255.255 broadcast
];

/// Forbidden ranges inside IPv6 global unicast (2000::/3); everything outside it is refused.
const FORBIDDEN_V6_GLOBAL: &[(Ipv6Addr, u8)] = &[
    // IETF protocol assignments, RFC 2928: Teredo 2001::/32 (tunnels to an embedded IPv4 address),
    // benchmarking 2001:2::/48, ORCHID 2001:10::/28 and 2001:20::/28.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation, RFC 3849
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation, RFC 9637
];

const NAT64_WELL_KNOWN: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
const SIX_TO_FOUR: Ipv6Addr = Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0);
const GLOBAL_UNICAST: Ipv6Addr = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);

/// Is this address off limits for a peer? True for loopback, private (RFC 1918, fc00::/7),
/// link-local (including 169.254.169.254), site-local, unspecified, multicast, broadcast, CGNAT,
/// documentation, benchmarking and reserved ranges, and for IPv6 addresses that embed a forbidden
/// IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16). IPv6 outside global unicast
/// 2000::/3 is refused whole, which covers the deprecated IPv4-compatible ::/96 form
/// (`::127.0.0.1`) and every range IANA has not assigned for unicast.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    FORBIDDEN_V4.iter().any(|&(network, prefix)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        bits & mask == u32::from(network)
    })
}

fn in_v6(bits: u128, network: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    bits & mask == u128::from(network)
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    // ::ffff:a.b.c.d: a dual-stack socket connects to the IPv4 address itself (CVE-2021-21392).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    // NAT64 (RFC 6052): the translator forwards to the IPv4 address in the low 32 bits. Public
    // embeddings stay allowed, since IPv6-only hosts reach IPv4 peers this way through DNS64.
    if in_v6(bits, NAT64_WELL_KNOWN, 96) {
        return is_forbidden_v4(Ipv4Addr::from(bits as u32));
    }
    // 6to4 (RFC 3056): the relay forwards to the IPv4 address in bits 16..48.
    if in_v6(bits, SIX_TO_FOUR, 16) {
        return is_forbidden_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    !in_v6(bits, GLOBAL_UNICAST, 3) || FORBIDDEN_V6_GLOBAL.iter().any(|&(network, prefix)| in_v6(bits, network, prefix))
}

/// `localhost` and `*.localhost` are loopback by definition (RFC 6761 §6.3), whatever DNS says.
pub(super) fn is_localhost_name(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host.len() > ".localhost".len()
            && host.as_bytes()[host.len() - ".localhost".len()..].eq_ignore_ascii_case(b".localhost")
}
