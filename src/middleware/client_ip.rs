//! The client's address (through trusted proxies only) and IP allow/deny lists by CIDR.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::FORWARDED;
use http::{HeaderMap, HeaderName};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

/// `X-Forwarded-For`, the de facto header most proxies append to.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `ip = { allow = [...], deny = [...] }` as written in the config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIpRules {
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses; empty means everyone.
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// Networks or addresses refused even when an allow entry matches.
    #[serde(default)]
    pub(crate) deny: Vec<String>,
}

/// A list of networks, IPv4-mapped IPv6 ones stored as IPv4 so both spellings match alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Networks {
    v4: PrefixSet<u32>,
    v6: PrefixSet<u128>,
}

impl Networks {
    fn parse(list: &[String], key: &str, problems: &mut Vec<String>) -> Networks {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for text in list {
            let net = IpNet::from_str(text)
                .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
                .map(canonical_net);
            match net {
                Ok(IpNet::V4(net)) => v4.push((net.prefix_len(), net.addr().to_bits())),
                Ok(IpNet::V6(net)) => v6.push((net.prefix_len(), net.addr().to_bits())),
                Err(_) => problems.push(format!(
                    "{key}: {text:?} is not an IP address or network such as 10.0.0.0/8 or \
                     2001:db8::/32"
                )),
            }
        }
        Networks {
            v4: PrefixSet::new(v4),
            v6: PrefixSet::new(v6),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// `ip` must already be canonical (see [`IpAddr::to_canonical`]).
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.contains(ip.to_bits()),
            IpAddr::V6(ip) => self.v6.contains(ip.to_bits()),
        }
    }
}

/// An address as an unsigned integer, so a network is its masked bits.
trait AddressBits: Copy + Ord {
    const WIDTH: u8;
    /// Keeps the first `len` bits (`len <= WIDTH`).
    fn prefix(self, len: u8) -> Self;
}

impl AddressBits for u32 {
    const WIDTH: u8 = 32;
    fn prefix(self, len: u8) -> u32 {
        match len {
            0 => 0,
            len => self & (u32::MAX << (Self::WIDTH - len)),
        }
    }
}

impl AddressBits for u128 {
    const WIDTH: u8 = 128;
    fn prefix(self, len: u8) -> u128 {
        match len {
            0 => 0,
            len => self & (u128::MAX << (Self::WIDTH - len)),
        }
    }
}

/// Networks grouped by prefix length, each group sorted: a lookup costs one binary search per
/// distinct length (at most 33 or 129), so long block lists stay cheap per request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PrefixSet<T> {
    by_len: Vec<(u8, Vec<T>)>,
}

impl<T> Default for PrefixSet<T> {
    fn default() -> Self {
        PrefixSet { by_len: Vec::new() }
    }
}

impl<T: AddressBits> PrefixSet<T> {
    /// The set of `addr/len` networks; host bits set in `addr` are ignored.
    fn new(mut nets: Vec<(u8, T)>) -> PrefixSet<T> {
        for (len, addr) in &mut nets {
            *len = (*len).min(T::WIDTH);
            *addr = addr.prefix(*len);
        }
        nets.sort_unstable();
        nets.dedup();
        let mut by_len: Vec<(u8, Vec<T>)> = Vec::new();
        for (len, addr) in nets {
            match by_len.last_mut() {
                Some((last, group)) if *last == len => group.push(addr),
                _ => by_len.push((len, vec![addr])),
            }
        }
        PrefixSet { by_len }
    }

    fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }

    fn contains(&self, addr: T) -> bool {
        self.by_len
            .iter()
            .any(|(len, nets)| nets.binary_search(&addr.prefix(*len)).is_ok())
    }
}

/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`; a shorter IPv6 prefix stays IPv6 (it also covers
/// addresses that are not mapped).
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// IP allow and deny lists; checked against the address [`TrustedProxies::client_ip`] gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    allow: Networks,
    deny: Networks,
}

impl IpRules {
    /// Checks raw lists; a bad entry is pushed to `problems` as `key.allow: reason` and left out.
    pub(crate) fn parse(raw: &RawIpRules, key: &str, problems: &mut Vec<String>) -> IpRules {
        IpRules {
            allow: Networks::parse(&raw.allow, &format!("{key}.allow"), problems),
            deny: Networks::parse(&raw.deny, &format!("{key}.deny"), problems),
        }
    }

    /// Whether the rules let everyone through, so the caller can skip them.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Deny wins over allow; an empty allow list admits everyone not denied. An IPv4-mapped IPv6
    /// address (`::ffff:10.1.2.3`) is judged as the IPv4 address it carries.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

/// Which header trusted proxies write the client's address into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// The proxies whose forwarding header is believed, and which header that is.
///
/// Only one header is read: a proxy that appends to one passes the other through from the client
/// untouched, so reading both would let a client choose what the gateway believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    proxies: Networks,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Checks the global `trusted_proxies` list and `forwarded_header` (`"x-forwarded-for"`, the
    /// default, or `"forwarded"`); problems are pushed as `key: reason`.
    pub(crate) fn parse(
        proxies: &[String],
        header: Option<&str>,
        problems: &mut Vec<String>,
    ) -> TrustedProxies {
        let header = match header {
            None => ForwardedHeader::XForwardedFor,
            Some(h) if h.eq_ignore_ascii_case("x-forwarded-for") => ForwardedHeader::XForwardedFor,
            Some(h) if h.eq_ignore_ascii_case("forwarded") => ForwardedHeader::Forwarded,
            Some(h) => {
                problems.push(format!(
                    "forwarded_header: {h:?} is not \"x-forwarded-for\" or \"forwarded\""
                ));
                ForwardedHeader::XForwardedFor
            }
        };
        TrustedProxies {
            proxies: Networks::parse(proxies, "trusted_proxies", problems),
            header,
        }
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy. Then the forwarding
    /// header is walked from the right (the entry the peer wrote) past every trusted hop, and the
    /// first untrusted address is the client; entries left of it were written by the client and
    /// are never read. A malformed entry ends the walk at the last trusted hop seen, the peer if
    /// it is the first. Addresses come back canonical (IPv4-mapped IPv6 as IPv4).
    pub fn client_ip(&self, remote: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = remote.ip().to_canonical();
        if !self.proxies.contains(peer) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => &FORWARDED,
        };
        let mut last_trusted = peer;
        // Field lines combine in order, so the rightmost entry is at the end of the last line.
        for line in headers.get_all(name).iter().rev() {
            let Ok(line) = line.to_str() else {
                return last_trusted;
            };
            for element in line.rsplit(',') {
                let hop = match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(element.trim()),
                    ForwardedHeader::Forwarded => forwarded_for(element),
                };
                match hop {
                    Some(ip) if self.proxies.contains(ip) => last_trusted = ip,
                    Some(ip) => return ip,
                    None => return last_trusted,
                }
            }
        }
        last_trusted
    }
}

/// The `for=` node of one `Forwarded` element, e.g. `for="[2001:db8::1]:4711";proto=https`.
/// A quoted comma splits an element in two, and the halves are then malformed: the walk stops,
/// which is the safe outcome.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in element.split(';') {
        let (name, value) = pair.trim().split_once('=')?;
        if name.eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None;
            }
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"')?,
                None => value,
            };
            found = Some(parse_node(value)?);
        }
    }
    found
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:80`. `unknown` and obfuscated names (`_hidden`) are not addresses.
fn parse_node(text: &str) -> Option<IpAddr> {
    let ip = IpAddr::from_str(text)
        .or_else(|_| SocketAddr::from_str(text).map(|s| s.ip()))
        .ok()
        .or_else(|| {
            let inner = text.strip_prefix('[')?.strip_suffix(']')?;
            IpAddr::from_str(inner).ok().filter(IpAddr::is_ipv6)
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ip_rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let mut problems = Vec::new();
        let raw = RawIpRules {
            allow: strings(allow),
            deny: strings(deny),
        };
        let rules = IpRules::parse(&raw, "ip", &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        rules
    }

    #[test]
    fn empty_rules_permit_everyone() {
        let rules = ip_rules(&[], &[]);
        assert!(rules.is_empty());
        assert!(rules.permits(ip("203.0.113.9")));
        assert!(rules.permits(ip("2001:db8::1")));
    }

    #[test]
    fn allow_list_admits_only_its_networks() {
        let rules = ip_rules(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], &[]);
        assert!(!rules.is_empty());
        for (addr, want) in [
            ("10.1.2.3", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8:1::5", true),
            ("2001:db9::1", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:11.1.2.3", false),
            ("::1", false),
        ] {
            assert_eq!(rules.permits(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = ip_rules(&["10.0.0.0/8"], &["10.9.0.0/16", "2001:db8::bad"]);
        assert!(rules.permits(ip("10.1.0.1")));
        assert!(!rules.permits(ip("10.9.3.4")));
        assert!(!rules.permits(ip("::ffff:10.9.3.4")));
        // The allow list is not empty, so an address outside it stays out.
        assert!(!rules.permits(ip("2001:db8::1")));

        let deny_only = ip_rules(&[], &["2001:db8::bad", "198.51.100.0/24"]);
        assert!(!deny_only.permits(ip("2001:db8::bad")));
        assert!(deny_only.permits(ip("2001:db8::bac")));
        assert!(!deny_only.permits(ip("198.51.100.200")));
        assert!(deny_only.permits(ip("198.51.101.1")));
    }

    #[test]
    fn mapped_networks_match_plain_ipv4_and_host_bits_are_ignored() {
        let rules = ip_rules(&["::ffff:10.0.0.0/104", "192.168.1.77/24"], &[]);
        assert!(rules.permits(ip("10.4.5.6")));
        assert!(rules.permits(ip("::ffff:10.4.5.6")));
        assert!(rules.permits(ip("192.168.1.1")));
        assert!(!rules.permits(ip("192.168.2.1")));
    }

    #[test]
    fn bad_entries_are_reported_with_their_key() {
        let mut problems = Vec::new();
        let raw = RawIpRules {
            allow: strings(&["10.0.0.0/33", "ten", "10.0.0.1"]),
            deny: strings(&[" 10.0.0.2", "2001:db8::/129"]),
        };
        let rules = IpRules::parse(&raw, "policies.\"shop.v1\".ip", &mut problems);
        let tail = "is not an IP address or network such as 10.0.0.0/8 or 2001:db8::/32";
        assert_eq!(
            problems,
            [
                format!("policies.\"shop.v1\".ip.allow: \"10.0.0.0/33\" {tail}"),
                format!("policies.\"shop.v1\".ip.allow: \"ten\" {tail}"),
                format!("policies.\"shop.v1\".ip.deny: \" 10.0.0.2\" {tail}"),
                format!("policies.\"shop.v1\".ip.deny: \"2001:db8::/129\" {tail}"),
            ]
        );
        assert!(rules.permits(ip("10.0.0.1")));
        assert!(!rules.permits(ip("10.0.0.3")));
    }

    #[test]
    fn long_lists_agree_with_a_plain_scan() {
        // A fixed pseudo-random sequence, so a failure reproduces.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut texts = Vec::new();
        for _ in 0..2_000 {
            let bits = next();
            // Mostly narrow networks, in a small part of the space so that probes hit some.
            let addr = std::net::Ipv4Addr::from_bits(0x0a00_0000 | (bits as u32 & 0x00ff_ffff));
            let v6 = std::net::Ipv6Addr::from_bits(
                (0x2001_0db8_u128 << 96) | u128::from(bits >> 40) << 64,
            );
            texts.push(format!("{addr}/{}", 8 + bits % 25));
            texts.push(format!("{v6}/{}", 32 + (bits >> 8) % 97));
        }
        let nets: Vec<IpNet> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let mut problems = Vec::new();
        let set = Networks::parse(&texts, "k", &mut problems);
        assert!(problems.is_empty());
        let (mut hits, mut misses) = (0, 0);
        for _ in 0..5_000 {
            let bits = next();
            for probe in [
                IpAddr::from(std::net::Ipv4Addr::from_bits(
                    0x0a00_0000 | (bits as u32 & 0x00ff_ffff),
                )),
                IpAddr::from(std::net::Ipv4Addr::from_bits(bits as u32)),
                IpAddr::from(std::net::Ipv6Addr::from_bits(
                    (0x2001_0db8_u128 << 96) | u128::from(bits >> 16) << 48,
                )),
            ] {
                let want = nets.iter().any(|net| net.contains(&probe));
                assert_eq!(set.contains(probe), want, "{probe}");
                if want {
                    hits += 1;
                } else {
                    misses += 1;
                }
            }
        }
        assert!(hits > 300 && misses > 300, "{hits} hits, {misses} misses");
    }

    #[test]
    fn prefix_lengths_at_the_edges() {
        let any4 = ip_rules(&["0.0.0.0/0"], &[]);
        assert!(any4.permits(ip("255.255.255.255")));
        assert!(!any4.permits(ip("::2")));
        let any6 = ip_rules(&["::/0"], &[]);
        assert!(any6.permits(ip("ffff::1")));
        assert!(!any6.permits(ip("1.2.3.4")));
        let host = ip_rules(&["2001:db8::1/128", "1.2.3.4/32"], &[]);
        assert!(host.permits(ip("2001:db8::1")));
        assert!(!host.permits(ip("2001:db8::2")));
        assert!(host.permits(ip("1.2.3.4")));
        assert!(!host.permits(ip("1.2.3.5")));
    }

    fn proxies(list: &[&str], header: Option<&str>) -> TrustedProxies {
        let mut problems = Vec::new();
        let proxies = TrustedProxies::parse(&strings(list), header, &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        proxies
    }

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(ip(text), 40000)
    }

    fn with(name: &HeaderName, lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(name, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = proxies(&["10.0.0.0/8"], None);
        let headers = with(&X_FORWARDED_FOR, &["198.51.100.1"]);
        assert_eq!(
            trusted.client_ip(peer("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(peer("10.0.0.1"), &headers), ip("10.0.0.1"));
        assert_eq!(
            none.client_ip(peer("::ffff:10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let trusted = proxies(&["10.0.0.0/8", "2001:db8:ffff::/48"], None);
        for (lines, want) in [
            // The peer's own entry names the client.
            (&["198.51.100.1"][..], "198.51.100.1"),
            // A client prepending addresses cannot choose the answer.
            (&["1.1.1.1, 2.2.2.2, 198.51.100.1"], "198.51.100.1"),
            // Trusted hops are skipped.
            (
                &["1.1.1.1, 198.51.100.1, 10.0.0.7, 10.0.0.8"],
                "198.51.100.1",
            ),
            (&["198.51.100.1, 2001:db8:ffff::1"], "198.51.100.1"),
            // Several lines read as one list, in order.
            (&["1.1.1.1, 198.51.100.1", "10.0.0.9"], "198.51.100.1"),
            (&["198.51.100.1", "10.1.1.1, 10.2.2.2"], "198.51.100.1"),
            // Spacing, ports and brackets as proxies write them.
            (&["  198.51.100.1:5555 ,10.0.0.2"], "198.51.100.1"),
            (&["[2001:db8::77]:443"], "2001:db8::77"),
            (&["[2001:db8::77]"], "2001:db8::77"),
            (&["::ffff:198.51.100.1"], "198.51.100.1"),
            // Every hop trusted: the furthest one is the best known client.
            (&["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // No header: the peer itself.
            (&[], "10.0.0.1"),
            // Malformed entries stop the walk at the last trusted hop.
            (&["198.51.100.1, garbage"], "10.0.0.1"),
            (&["198.51.100.1, unknown, 10.0.0.5"], "10.0.0.5"),
            (&["198.51.100.1,,10.0.0.5"], "10.0.0.5"),
            (&[""], "10.0.0.1"),
            (&["[198.51.100.1]"], "10.0.0.1"),
            (&["198.51.100.1", "not-an-ip"], "10.0.0.1"),
        ] {
            let headers = with(&X_FORWARDED_FOR, lines);
            assert_eq!(
                trusted.client_ip(peer("10.0.0.1"), &headers),
                ip(want),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn non_utf8_header_stops_the_walk() {
        let trusted = proxies(&["10.0.0.0/8"], None);
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        headers.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"10.0.0.4\xff").unwrap(),
        );
        assert_eq!(
            trusted.client_ip(peer("10.0.0.1"), &headers),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_header_is_read_only_when_configured() {
        let xff = proxies(&["10.0.0.0/8"], Some("X-Forwarded-For"));
        let fwd = proxies(&["10.0.0.0/8"], Some("forwarded"));
        let mut headers = with(&FORWARDED, &["for=198.51.100.1"]);
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.3"));
        assert_eq!(xff.client_ip(peer("10.0.0.1"), &headers), ip("203.0.113.3"));
        assert_eq!(
            fwd.client_ip(peer("10.0.0.1"), &headers),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn forwarded_elements_are_walked_like_x_forwarded_for() {
        let trusted = proxies(&["10.0.0.0/8"], Some("forwarded"));
        for (lines, want) in [
            (&["for=198.51.100.1"][..], "198.51.100.1"),
            (
                &["for=1.1.1.1, for=198.51.100.1;proto=https;by=10.0.0.1"],
                "198.51.100.1",
            ),
            (&["For=\"198.51.100.1:8080\", for=10.0.0.3"], "198.51.100.1"),
            (&["for=\"[2001:db8:cafe::17]:4711\""], "2001:db8:cafe::17"),
            (&["proto=http;for=198.51.100.1"], "198.51.100.1"),
            (&["for=198.51.100.1", "for=10.0.0.2"], "198.51.100.1"),
            (&["for=unknown, for=10.0.0.4"], "10.0.0.4"),
            (&["for=_hidden"], "10.0.0.1"),
            (&["proto=https"], "10.0.0.1"),
            (&["for=198.51.100.1;for=10.0.0.3"], "10.0.0.1"),
            (&["for=\"198.51.100.1"], "10.0.0.1"),
            (&["for=\"1.1.1.1,for=198.51.100.1\""], "10.0.0.1"),
            (&["for=2001:db8::1"], "2001:db8::1"),
            (&["garbage"], "10.0.0.1"),
        ] {
            let headers = with(&FORWARDED, lines);
            assert_eq!(
                trusted.client_ip(peer("10.0.0.1"), &headers),
                ip(want),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn bad_proxy_settings_are_reported() {
        let mut problems = Vec::new();
        let parsed = TrustedProxies::parse(
            &strings(&["10.0.0.0/8", "proxy.local"]),
            Some("via"),
            &mut problems,
        );
        assert_eq!(
            problems,
            [
                "forwarded_header: \"via\" is not \"x-forwarded-for\" or \"forwarded\"".to_string(),
                "trusted_proxies: \"proxy.local\" is not an IP address or network such as \
                 10.0.0.0/8 or 2001:db8::/32"
                    .to_string(),
            ]
        );
        let headers = with(&X_FORWARDED_FOR, &["198.51.100.1"]);
        assert_eq!(
            parsed.client_ip(peer("10.0.0.1"), &headers),
            ip("198.51.100.1")
        );
    }
}
