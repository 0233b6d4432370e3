//! A carrier NAT in front of the agent, for the link emulator: packets
//! from the agent's side leave with the NAT's external address and a port
//! of its own choosing, and the server's answers to that address and port
//! come back rewritten to the agent's. [`Nat::rebind`] moves the mapping
//! to another address and port range and forgets the old one, as a carrier
//! NAT does when it reboots or its mapping times out: the client's next
//! packet appears from a new address and port, and packets the server
//! sends to the old ones are dropped.
//!
//! Addresses and ports are rewritten in place and the IPv4 header checksum
//! and the TCP (or UDP) checksum are updated incrementally (RFC 1624,
//! equation 3: `HC' = ~(~HC + ~m + m')`), as a NAT does in hardware.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// One's-complement sum of `bytes` as 16-bit big-endian words (an odd last
/// byte is padded with zero), not yet folded.
fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum `check` of a packet after the field bytes `old` (an even
/// number of bytes at an even offset) became `new` (RFC 1624, eqn. 3).
pub fn checksum_update(check: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    debug_assert_eq!(old.len() % 2, 0);
    // ~HC + ~m + m', with ~m summed word by word.
    let mut sum = u32::from(!check);
    for c in old.chunks_exact(2) {
        sum += u32::from(!u16::from_be_bytes([c[0], c[1]]));
    }
    sum += sum16(new);
    !fold(sum)
}

/// The Internet checksum of `bytes` (for tests and for checking).
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum16(bytes))
}

/// The parts of an IPv4 packet a NAT rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    ihl: usize,
    proto: u8,
    /// Where the transport checksum is (TCP 16, UDP 6), when the packet
    /// carries a whole transport header.
    check_at: Option<usize>,
}

fn view(p: &[u8]) -> Option<View> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    let proto = p[9];
    // Only the first fragment holds the ports (none is expected: TCP sets DF).
    let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
    let check_at = match proto {
        6 if first_fragment && p.len() >= ihl + 20 => Some(16),
        17 if first_fragment && p.len() >= ihl + 8 => Some(6),
        _ => None,
    };
    Some(View { ihl, proto, check_at })
}

/// Replaces the address at `addr_at` (12: source, 16: destination) and,
/// when the packet has ports, the port at `port_at` of the transport header
/// (0: source, 2: destination), updating both checksums.
fn rewrite(p: &mut [u8], v: View, addr_at: usize, addr: Ipv4Addr, port_at: usize, port: Option<u16>) {
    let old_addr: [u8; 4] = p[addr_at..addr_at + 4].try_into().expect("4 bytes");
    let new_addr = addr.octets();
    p[addr_at..addr_at + 4].copy_from_slice(&new_addr);
    let ip_check = u16::from_be_bytes([p[10], p[11]]);
    p[10..12].copy_from_slice(&checksum_update(ip_check, &old_addr, &new_addr).to_be_bytes());
    let Some(check_at) = v.check_at else { return };
    let t = v.ihl;
    let c = t + check_at;
    let old_check = u16::from_be_bytes([p[c], p[c + 1]]);
    // A UDP checksum of 0 means none was computed: leave it so.
    if v.proto == 17 && old_check == 0 {
        if let Some(port) = port {
            p[t + port_at..t + port_at + 2].copy_from_slice(&port.to_be_bytes());
        }
        return;
    }
    // The pseudo-header holds the addresses.
    let mut check = checksum_update(old_check, &old_addr, &new_addr);
    if let Some(port) = port {
        let old_port = [p[t + port_at], p[t + port_at + 1]];
        let new_port = port.to_be_bytes();
        p[t + port_at..t + port_at + 2].copy_from_slice(&new_port);
        check = checksum_update(check, &old_port, &new_port);
    }
    // UDP sends a computed 0 as 0xffff.
    if v.proto == 17 && check == 0 {
        check = 0xffff;
    }
    p[c..c + 2].copy_from_slice(&check.to_be_bytes());
}

fn ports(p: &[u8], v: View) -> Option<(u16, u16)> {
    v.check_at?;
    let t = &p[v.ihl..];
    Some((u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]])))
}

/// The bytes of data a TCP segment carries (0 for other packets and for
/// a truncated header).
fn tcp_payload(p: &[u8], v: View) -> usize {
    if v.proto != 6 || v.check_at.is_none() {
        return 0;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
    let data_offset = usize::from(p[v.ihl + 12] >> 4) * 4;
    total.saturating_sub(v.ihl + data_offset)
}

/// What the NAT did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NatStats {
    /// Rebinds so far (0: the first mapping).
    pub epoch: u32,
    /// The current external address.
    pub external: Option<Ipv4Addr>,
    /// Mappings made (one per flow per epoch).
    pub mappings: u64,
    /// Of those, in the current epoch.
    pub mappings_now: u64,
    /// Packets from the agent's side rewritten.
    pub out: u64,
    /// Packets to the agent's side rewritten back.
    pub back: u64,
    /// Packets to an external address and port with no mapping (an old
    /// one, forgotten at a rebind): dropped.
    pub dropped_stale: u64,
}

/// The NAT's table.
#[derive(Debug, Clone)]
pub struct Nat {
    inside: Ipv4Addr,
    external: Ipv4Addr,
    next_port: u16,
    port_base: u16,
    /// (protocol, inside port) -> external port.
    out: HashMap<(u8, u16), u16>,
    /// (protocol, external port) -> inside port.
    back: HashMap<(u8, u16), u16>,
    stats: NatStats,
    /// A rebinding armed to strike right after the next TCP segment with
    /// data leaves the agent's side (see [`Nat::rebind_after_next_data`]).
    armed: Option<(Ipv4Addr, u16)>,
}

/// External ports are taken from `base` up, at most this many per epoch.
const PORTS_PER_EPOCH: u16 = 4096;

impl Nat {
    /// A NAT for the agent at `inside`, mapping its flows to `external`
    /// and ports from `port_base` up.
    pub fn new(inside: Ipv4Addr, external: Ipv4Addr, port_base: u16) -> Self {
        Self {
            inside,
            external,
            next_port: port_base,
            port_base,
            out: HashMap::new(),
            back: HashMap::new(),
            stats: NatStats { external: Some(external), ..NatStats::default() },
            armed: None,
        }
    }

    /// Forgets every mapping and maps from now on to `external` and ports
    /// from `port_base` up (the same address with another base: a port-only
    /// rebinding).
    pub fn rebind(&mut self, external: Ipv4Addr, port_base: u16) {
        self.out.clear();
        self.back.clear();
        self.external = external;
        self.port_base = port_base;
        self.next_port = port_base;
        self.stats.epoch += 1;
        self.stats.external = Some(external);
        self.stats.mappings_now = 0;
    }

    /// Rebinds (as [`Nat::rebind`]) right after the next TCP segment that
    /// carries data leaves the agent's side: that segment goes out on the
    /// old mapping, and everything the server sends back to it, its ACK and
    /// its answer, finds the mapping forgotten. Armed here, inside the
    /// link, the rebinding cannot miss the request it means to strike, as
    /// a caller watching the link and then rebinding can when it is slow.
    pub fn rebind_after_next_data(&mut self, external: Ipv4Addr, port_base: u16) {
        self.armed = Some((external, port_base));
    }

    /// The counters.
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// Rewrites a packet from the agent's side (source address and port).
    /// Packets from another address, and non-IPv4 ones, pass unchanged.
    pub fn outbound(&mut self, p: &mut [u8]) {
        let Some(v) = view(p) else { return };
        if p[12..16] != self.inside.octets() {
            return;
        }
        let port = match ports(p, v) {
            Some((sport, _)) => Some(match self.out.get(&(v.proto, sport)) {
                Some(&e) => e,
                None => {
                    let e = self.next_port;
                    self.next_port = self.port_base + (self.next_port - self.port_base + 1) % PORTS_PER_EPOCH.max(1);
                    self.out.insert((v.proto, sport), e);
                    self.back.insert((v.proto, e), sport);
                    self.stats.mappings += 1;
                    self.stats.mappings_now += 1;
                    e
                }
            }),
            None => None,
        };
        rewrite(p, v, 12, self.external, 0, port);
        self.stats.out += 1;
        if tcp_payload(p, v) > 0
            && let Some((external, port_base)) = self.armed.take()
        {
            self.rebind(external, port_base);
        }
    }

    /// Rewrites a packet to the agent's side back (destination address and
    /// port). `false`: it is for an external address or port with no
    /// mapping (forgotten at a rebind, or never made) and must be dropped.
    /// Packets to other addresses pass unchanged.
    pub fn inbound(&mut self, p: &mut [u8]) -> bool {
        let Some(v) = view(p) else { return true };
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        if dst == self.inside {
            // Addressed to the agent directly, past the NAT: no NAT lets
            // that through once it is in place.
            self.stats.dropped_stale += 1;
            return false;
        }
        if dst != self.external {
            // An address the NAT had before a rebind, or another.
            self.stats.dropped_stale += 1;
            return false;
        }
        let port = match ports(p, v) {
            Some((_, dport)) => match self.back.get(&(v.proto, dport)) {
                Some(&inside) => Some(inside),
                None => {
                    self.stats.dropped_stale += 1;
                    return false;
                }
            },
            None => None,
        };
        rewrite(p, v, 16, self.inside, 2, port);
        self.stats.back += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);

    /// A TCP/IPv4 packet with both checksums computed from scratch.
    fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..28].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x18;
        p[34..36].copy_from_slice(&502u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let c = tcp_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The TCP checksum of `p` computed from scratch (its own field as 0).
    fn tcp_checksum(p: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        let mut seg = p[20..].to_vec();
        seg[16] = 0;
        seg[17] = 0;
        pseudo.extend_from_slice(&seg);
        checksum(&pseudo)
    }

    fn valid(p: &[u8]) -> bool {
        checksum(&p[..20]) == 0 && u16::from_be_bytes([p[36], p[37]]) == tcp_checksum(p)
    }

    #[test]
    fn the_incremental_update_equals_a_full_recompute() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(2..64) & !1;
            let mut data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let check = checksum(&data);
            let at = rng.usize(..len / 2) * 2;
            let n = (rng.usize(1..=3) * 2).min(len - at);
            let old = data[at..at + n].to_vec();
            let new: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            data[at..at + n].copy_from_slice(&new);
            // RFC 1624's point: eqn. 3 never yields the -0 (0x0000 for
            // 0xffff) that eqn. 2 can; a recompute and the update agree
            // as one's-complement numbers.
            let full = checksum(&data);
            let inc = checksum_update(check, &old, &new);
            assert!(inc == full || (inc, full) == (0xffff, 0) || (inc, full) == (0, 0xffff), "{inc:#x} {full:#x}");
        }
        // RFC 1624's own example (section 4): HC 0xdd2f, m 0x5555 -> m' 0x3285.
        assert_eq!(checksum_update(0xdd2f, &[0x55, 0x55], &[0x32, 0x85]), 0x0000);
    }

    #[test]
    fn packets_leave_with_the_external_tuple_and_answers_come_back() {
        let external = Ipv4Addr::new(10, 77, 9, 100);
        let mut nat = Nat::new(AGENT, external, 40_000);
        let mut up = tcp(AGENT, 51_234, SERVER, 9443, b"hello");
        nat.outbound(&mut up);
        assert_eq!(&up[12..16], &external.octets());
        assert_eq!(u16::from_be_bytes([up[20], up[21]]), 40_000);
        assert_eq!(&up[16..20], &SERVER.octets(), "the destination is left alone");
        assert!(valid(&up), "both checksums are right after the rewrite");
        // The same flow keeps its mapping; another flow gets the next port.
        let mut again = tcp(AGENT, 51_234, SERVER, 9443, b"more");
        nat.outbound(&mut again);
        assert_eq!(u16::from_be_bytes([again[20], again[21]]), 40_000);
        let mut other = tcp(AGENT, 51_300, SERVER, 9443, b"");
        nat.outbound(&mut other);
        assert_eq!(u16::from_be_bytes([other[20], other[21]]), 40_001);
        assert!(valid(&other));

        let mut down = tcp(SERVER, 9443, external, 40_000, b"world!");
        assert!(nat.inbound(&mut down));
        assert_eq!(&down[16..20], &AGENT.octets());
        assert_eq!(u16::from_be_bytes([down[22], down[23]]), 51_234);
        assert!(valid(&down));
        let s = nat.stats();
        assert_eq!((s.out, s.back, s.mappings, s.dropped_stale), (3, 1, 2, 0));
    }

    #[test]
    fn an_armed_rebind_strikes_right_after_the_next_segment_with_data() {
        let first = Ipv4Addr::new(10, 77, 9, 100);
        let second = Ipv4Addr::new(10, 77, 9, 101);
        let mut nat = Nat::new(AGENT, first, 40_000);
        nat.rebind_after_next_data(second, 45_000);
        // A bare ACK (no data) leaves on the old mapping and arms nothing.
        let mut ack = tcp(AGENT, 51_234, SERVER, 9443, b"");
        nat.outbound(&mut ack);
        assert_eq!(nat.stats().epoch, 0);
        // The request leaves on the old mapping too, then the NAT rebinds.
        let mut request = tcp(AGENT, 51_234, SERVER, 9443, b"poll");
        nat.outbound(&mut request);
        assert_eq!(&request[12..16], &first.octets());
        assert_eq!(nat.stats().epoch, 1);
        // The answer to it, sent to the old tuple, is dropped.
        let mut answer = tcp(SERVER, 9443, first, 40_000, b"reply");
        assert!(!nat.inbound(&mut answer));
        // The agent's next segment leaves from the new address; once only.
        let mut next = tcp(AGENT, 51_234, SERVER, 9443, b"again");
        nat.outbound(&mut next);
        assert_eq!(&next[12..16], &second.octets());
        assert_eq!(nat.stats().epoch, 1);
    }

    #[test]
    fn a_rebind_forgets_the_old_mapping() {
        let first = Ipv4Addr::new(10, 77, 9, 100);
        let second = Ipv4Addr::new(10, 77, 9, 101);
        let mut nat = Nat::new(AGENT, first, 40_000);
        let mut up = tcp(AGENT, 51_234, SERVER, 9443, b"x");
        nat.outbound(&mut up);
        nat.rebind(second, 45_000);
        // The server still answers the old tuple: dropped.
        let mut late = tcp(SERVER, 9443, first, 40_000, b"late");
        assert!(!nat.inbound(&mut late));
        // The same flow from the agent now appears from a new address and port.
        let mut up = tcp(AGENT, 51_234, SERVER, 9443, b"y");
        nat.outbound(&mut up);
        assert_eq!(&up[12..16], &second.octets());
        assert_eq!(u16::from_be_bytes([up[20], up[21]]), 45_000);
        assert!(valid(&up));
        // A port-only rebind: same address, new ports; the old port is dead.
        nat.rebind(second, 47_000);
        let mut late = tcp(SERVER, 9443, second, 45_000, b"late");
        assert!(!nat.inbound(&mut late));
        let mut up = tcp(AGENT, 51_234, SERVER, 9443, b"z");
        nat.outbound(&mut up);
        assert_eq!(u16::from_be_bytes([up[20], up[21]]), 47_000);
        let mut back = tcp(SERVER, 9443, second, 47_000, b"ok");
        assert!(nat.inbound(&mut back));
        assert!(valid(&back));
        // Straight to the agent's inside address: no NAT lets it through.
        let mut direct = tcp(SERVER, 9443, AGENT, 51_234, b"");
        assert!(!nat.inbound(&mut direct));
        let s = nat.stats();
        assert_eq!((s.epoch, s.dropped_stale, s.mappings, s.mappings_now), (2, 3, 3, 1));
    }

    #[test]
    fn udp_checksums_follow_and_a_missing_one_stays_missing() {
        let external = Ipv4Addr::new(10, 77, 9, 100);
        let mut nat = Nat::new(AGENT, external, 40_000);
        let mut p = tcp(AGENT, 5353, SERVER, 53, b"abcd");
        p[9] = 17;
        // UDP header: ports, length, checksum 0 (none).
        p[24..26].copy_from_slice(&12u16.to_be_bytes());
        p[26..28].copy_from_slice(&0u16.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        nat.outbound(&mut p);
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), 0, "no checksum stays none");
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 40_000);
        assert_eq!(checksum(&p[..20]), 0);
    }

    #[test]
    fn other_addresses_and_short_packets_pass() {
        let mut nat = Nat::new(AGENT, Ipv4Addr::new(10, 77, 9, 100), 40_000);
        let mut p = tcp(Ipv4Addr::new(10, 77, 9, 5), 1, SERVER, 2, b"");
        let before = p.clone();
        nat.outbound(&mut p);
        assert_eq!(p, before);
        let mut short = vec![0x45, 0, 0];
        nat.outbound(&mut short);
        assert!(nat.inbound(&mut short));
    }
}
