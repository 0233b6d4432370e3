//! The emulated link: two TUN devices and a forwarder between them.
//!
//! ```text
//!  host network namespace                      the agent's namespace (tern-wb-<id>)
//!  server 10.77.N.1 ── twb<id>h ══ forwarder ══ twb<id>a ── 10.77.N.2 agent, baseline client
//!                      (fd)        rate, delay,  (fd, moved into the namespace)
//!                                  loss, counts
//! ```
//!
//! This kernel has no `netem` qdisc (`CONFIG_NET_SCH_NETEM` is not set), so
//! the link is emulated in user space: every IP packet either side sends
//! is read from its TUN device, counted, and written to the other one after
//! the link's serialization time (a rate with a bounded queue, tail drop),
//! a fixed one-way delay, and a random loss drawn from a seeded PRNG (the
//! same seed gives the same loss pattern for the same packets).
//!
//! Each server port is its own **class** with its own pair of pipes (its
//! own queue, clock and PRNG), as if tern's agent and the baseline client
//! each had a link of their own: they run side by side without sharing a
//! 50 kbit/s queue, and their bytes are counted apart.
//!
//! The link can be changed while it runs (the link-fault tests,
//! `tests/link_faults`): [`Link::set_shapes`] changes the shaping of each
//! direction, [`Link::set_down`] makes every packet vanish silently (those
//! in flight too: a blackhole, or the down half of a flapping link), and
//! [`Link::nat`] puts a NAT in front of the agent whose mapping
//! [`Link::rebind`] moves to another address and port ([`super::nat`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use super::nat::{Nat, NatStats};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Which traffic a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Class {
    /// To and from tern's server port.
    Tern,
    /// To and from the baseline sink's port.
    Baseline,
    /// Anything else (none is expected: IPv6 is off on both devices).
    Other,
}

const CLASSES: [Class; 3] = [Class::Tern, Class::Baseline, Class::Other];

fn class_index(c: Class) -> usize {
    match c {
        Class::Tern => 0,
        Class::Baseline => 1,
        Class::Other => 2,
    }
}

/// One direction's shaping.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// Serialization rate in bit/s; `None`: as fast as the host goes.
    pub rate_bps: Option<u64>,
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Probability that a packet is lost (0 to 1).
    pub loss: f64,
    /// Bytes the queue in front of the rate holds; a packet that would
    /// wait behind more is dropped (tail drop).
    pub queue_bytes: usize,
}

impl Shape {
    /// No rate limit, no delay, no loss.
    pub const CLEAN: Shape = Shape { rate_bps: None, delay: Duration::ZERO, loss: 0.0, queue_bytes: 64 * 1024 };
}

/// Counts for one direction of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirCount {
    /// Packets the sender put on the link (lost and dropped ones included).
    pub packets: u64,
    /// Their IP bytes (headers included).
    pub bytes: u64,
    /// Packets lost at random.
    pub lost: u64,
    /// Packets dropped because the queue was full.
    pub dropped: u64,
}

impl DirCount {
    /// `self - earlier`.
    pub fn since(&self, earlier: &DirCount) -> DirCount {
        DirCount {
            packets: self.packets - earlier.packets,
            bytes: self.bytes - earlier.bytes,
            lost: self.lost - earlier.lost,
            dropped: self.dropped - earlier.dropped,
        }
    }
}

/// Counts for one class, both ways. Up is from the agent's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowCount {
    /// Agent to server.
    pub up: DirCount,
    /// Server to agent.
    pub down: DirCount,
}

impl FlowCount {
    /// `self - earlier`.
    pub fn since(&self, earlier: &FlowCount) -> FlowCount {
        FlowCount { up: self.up.since(&earlier.up), down: self.down.since(&earlier.down) }
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.up.bytes + self.down.bytes
    }

    /// Packets both ways.
    pub fn packets(&self) -> u64 {
        self.up.packets + self.down.packets
    }
}

/// What happened to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fate {
    /// Delivered (after its delay).
    Sent,
    /// Lost at random.
    Lost,
    /// Dropped: queue full.
    Dropped,
}

/// One packet, as the log keeps it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Packet {
    /// When the sender put it on the link, since the link started.
    pub at: Duration,
    /// Its class.
    pub class: Class,
    /// From the agent's side.
    pub up: bool,
    /// IP bytes.
    pub len: u16,
    /// TCP payload bytes (0 for a bare ACK, SYN or FIN).
    pub payload: u16,
    /// A TCP SYN.
    pub syn: bool,
    /// A TCP FIN or RST.
    pub fin: bool,
    /// What became of it.
    pub fate: Fate,
}

struct Pipe {
    shape: Shape,
    rng: fastrand::Rng,
    /// When the rate's transmitter is free again.
    busy_until: Instant,
    queue: VecDeque<(Instant, Vec<u8>)>,
}

impl Pipe {
    fn new(shape: Shape, seed: u64) -> Self {
        Self { shape, rng: fastrand::Rng::with_seed(seed), busy_until: Instant::now(), queue: VecDeque::new() }
    }

    /// Takes a packet offered at `now`.
    fn offer(&mut self, now: Instant, packet: Vec<u8>) -> Fate {
        // Drawn for every packet, so the pattern depends on the packet's
        // position in its class and direction only.
        let draw = self.rng.f64();
        if draw < self.shape.loss {
            return Fate::Lost;
        }
        let start = self.busy_until.max(now);
        let depart = match self.shape.rate_bps {
            Some(rate) => {
                let backlog = (start - now).as_secs_f64() * rate as f64 / 8.0;
                if backlog + packet.len() as f64 > self.shape.queue_bytes as f64 {
                    return Fate::Dropped;
                }
                let serialize = Duration::from_secs_f64(packet.len() as f64 * 8.0 / rate as f64);
                self.busy_until = start + serialize;
                self.busy_until
            }
            None => now,
        };
        self.queue.push_back((depart + self.shape.delay, packet));
        Fate::Sent
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }
}

/// Shared between the forwarder and the harness.
struct State {
    start: Instant,
    ports: Vec<(u16, Class)>,
    counts: [FlowCount; 3],
    last: [Option<Instant>; 3],
    log: Vec<Packet>,
    /// New shapes (up, down) for every pipe, taken by the forwarder.
    reshape: Option<(Shape, Shape)>,
    /// Every packet vanishes, in flight or offered.
    down: bool,
    /// The NAT in front of the agent, when there is one.
    nat: Option<Nat>,
}

/// A TUN device, its file descriptor non-blocking.
pub struct Tun {
    fd: OwnedFd,
    /// The interface's name.
    pub name: String,
}

impl Tun {
    /// Creates `name` (at most 15 bytes) in the calling thread's network
    /// namespace: a layer-3 device without packet information, so reads
    /// and writes are bare IP packets. It disappears when the descriptor
    /// is closed.
    ///
    /// # Errors
    /// When `/dev/net/tun` cannot be opened or the device made (not root).
    pub fn create(name: &str) -> io::Result<Self> {
        if name.len() > 15 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?} too long")));
        }
        // SAFETY: a plain open(2) of a NUL-terminated path.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq { name: [0; 16], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes,
        // name then flags), which `IfReq` lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, name: name.to_owned() })
    }
}

fn read_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a buffer we own, of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

fn write_packet(fd: RawFd, packet: &[u8]) -> io::Result<()> {
    // SAFETY: writing a buffer we own, of its length.
    let n = unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The TCP ports and flags of an IPv4 packet: (source port, destination
/// port, payload bytes, SYN, FIN or RST).
fn tcp_of(p: &[u8]) -> Option<(u16, u16, u16, bool, bool)> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if p.len() < ihl + 20 {
        return None;
    }
    let t = &p[ihl..];
    let doff = usize::from(t[12] >> 4) * 4;
    let payload = total.saturating_sub(ihl + doff) as u16;
    let flags = t[13];
    Some((
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        payload,
        flags & 0x02 != 0,
        flags & 0x05 != 0,
    ))
}

/// The running link.
pub struct Link {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts forwarding between `host` (the server's side) and `agent`
    /// with `up` shaping packets from the agent's side and `down` the
    /// others. `seed` seeds every pipe's PRNG.
    ///
    /// # Errors
    /// When the descriptors cannot be registered with the runtime.
    pub fn start(host: Tun, agent: Tun, up: Shape, down: Shape, seed: u64) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            start: Instant::now(),
            ports: Vec::new(),
            counts: [FlowCount::default(); 3],
            last: [None; 3],
            log: Vec::new(),
            reshape: None,
            down: false,
            nat: None,
        }));
        let register = |fd: OwnedFd| -> io::Result<AsyncFd<OwnedFd>> {
            // SAFETY: the `OwnedFd` owns its descriptor and is moved into the
            // `AsyncFd`, so it stays open, and the same, for its lifetime.
            Ok(unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?)
        };
        let host = register(host.fd)?;
        let agent = register(agent.fd)?;
        let pipes = |dir: u64, shape: Shape| -> Vec<Pipe> {
            CLASSES.iter().map(|c| Pipe::new(shape, seed ^ (dir << 8) ^ class_index(*c) as u64)).collect()
        };
        let mut upstream = pipes(1, up);
        let mut downstream = pipes(2, down);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let due = upstream.iter().chain(downstream.iter()).filter_map(Pipe::next_due).min();
                tokio::select! {
                    r = host.readable() => {
                        let Ok(mut guard) = r else { return };
                        drain(&mut guard, &mut buf, false, &shared, &mut downstream);
                    }
                    r = agent.readable() => {
                        let Ok(mut guard) = r else { return };
                        drain(&mut guard, &mut buf, true, &shared, &mut upstream);
                    }
                    () = async {
                        match due {
                            Some(t) => tokio::time::sleep_until(t.into()).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                let now = Instant::now();
                let down = {
                    let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some((up, down)) = s.reshape.take() {
                        upstream.iter_mut().for_each(|p| p.shape = up);
                        downstream.iter_mut().for_each(|p| p.shape = down);
                    }
                    s.down
                };
                for (is_up, pipes, to) in
                    [(true, &mut upstream, host.get_ref()), (false, &mut downstream, agent.get_ref())]
                {
                    for (i, pipe) in pipes.iter_mut().enumerate() {
                        while pipe.next_due().is_some_and(|t| t <= now) {
                            let (_, packet) = pipe.queue.pop_front().expect("a packet is due");
                            if down {
                                // The link went down under it: lost in flight.
                                let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                let c = if is_up { &mut s.counts[i].up } else { &mut s.counts[i].down };
                                c.lost += 1;
                                continue;
                            }
                            // A TUN write only fails when the device is gone.
                            let _ = write_packet(to.as_raw_fd(), &packet);
                        }
                    }
                }
            }
        });
        Ok(Self { state, task })
    }

    /// From now on, shapes packets from the agent's side with `up` and the
    /// others with `down` (every class; what is queued keeps its times).
    pub fn set_shapes(&self, up: Shape, down: Shape) {
        self.lock().reshape = Some((up, down));
    }

    /// `true`: every packet vanishes without a trace (no ICMP, no reset),
    /// those already in flight too, and counts as lost; `false`: the link
    /// carries packets again.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Whether the link is down.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Puts a NAT in front of the agent at `inside`: its packets leave from
    /// `external` and ports from `port_base` up (the host must route
    /// `external` to the host-side device).
    pub fn nat(&self, inside: std::net::Ipv4Addr, external: std::net::Ipv4Addr, port_base: u16) {
        self.lock().nat = Some(Nat::new(inside, external, port_base));
    }

    /// Moves the NAT's mapping to `external` and ports from `port_base` up,
    /// and forgets the old one (see [`Nat::rebind`]).
    ///
    /// # Panics
    /// When the link has no NAT.
    pub fn rebind(&self, external: std::net::Ipv4Addr, port_base: u16) {
        self.lock().nat.as_mut().expect("the link has a NAT").rebind(external, port_base);
    }

    /// Moves the NAT's mapping as [`Link::rebind`] does, right after the
    /// next TCP segment with data leaves the agent's side (see
    /// [`Nat::rebind_after_next_data`]).
    ///
    /// # Panics
    /// When the link has no NAT.
    pub fn rebind_after_next_data(&self, external: std::net::Ipv4Addr, port_base: u16) {
        self.lock().nat.as_mut().expect("the link has a NAT").rebind_after_next_data(external, port_base);
    }

    /// The NAT's counters, when the link has one.
    pub fn nat_stats(&self) -> Option<NatStats> {
        self.lock().nat.as_ref().map(Nat::stats)
    }

    /// Packets to or from server port `port` are of class `class`.
    pub fn set_port(&self, port: u16, class: Class) {
        let mut s = self.lock();
        s.ports.retain(|(p, _)| *p != port);
        s.ports.push((port, class));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counts of `class` so far.
    pub fn counts(&self, class: Class) -> FlowCount {
        self.lock().counts[class_index(class)]
    }

    /// Every class's counts so far, summed (to compare with the devices'
    /// own counters).
    pub fn totals(&self) -> FlowCount {
        let s = self.lock();
        let mut t = FlowCount::default();
        for c in &s.counts {
            for (a, b) in [(&mut t.up, &c.up), (&mut t.down, &c.down)] {
                a.packets += b.packets;
                a.bytes += b.bytes;
                a.lost += b.lost;
                a.dropped += b.dropped;
            }
        }
        t
    }

    /// The counts of `class`, if none of its packets was put on the link
    /// in the last `quiet` (nothing in flight that started recently); the
    /// check and the read are one step.
    pub fn counts_if_quiet(&self, class: Class, quiet: Duration) -> Option<(FlowCount, Duration)> {
        let s = self.lock();
        let i = class_index(class);
        let now = Instant::now();
        let idle = s.last[i].map_or(Duration::MAX, |t| now - t);
        (idle >= quiet).then(|| (s.counts[i], now - s.start))
    }

    /// The time on the link's clock (since it started).
    pub fn now(&self) -> Duration {
        self.lock().start.elapsed()
    }

    /// The packets of `class` put on the link between `from` and `to`
    /// (link clock).
    pub fn packets(&self, class: Class, from: Duration, to: Duration) -> Vec<Packet> {
        self.lock().log.iter().filter(|p| p.class == class && p.at >= from && p.at < to).copied().collect()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads every packet waiting on one device and offers it to its pipe.
fn drain(
    guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>,
    buf: &mut [u8],
    up: bool,
    shared: &Arc<Mutex<State>>,
    pipes: &mut [Pipe],
) {
    loop {
        match read_packet(guard.get_inner().as_raw_fd(), buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut packet = buf[..n].to_vec();
                let now = Instant::now();
                let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // The NAT sits on the agent's end of the link: what the agent
                // sends is rewritten before it is put on the link, what
                // reaches its end is rewritten back (or dropped there).
                let mut nat_drop = false;
                if let Some(nat) = s.nat.as_mut() {
                    if up {
                        nat.outbound(&mut packet);
                    } else {
                        nat_drop = !nat.inbound(&mut packet);
                    }
                }
                let tcp = tcp_of(&packet);
                let class = tcp
                    .and_then(|(sport, dport, ..)| {
                        let server_port = if up { dport } else { sport };
                        s.ports.iter().find(|(p, _)| *p == server_port).map(|(_, c)| *c)
                    })
                    .unwrap_or(Class::Other);
                let i = class_index(class);
                let fate = if s.down || nat_drop { Fate::Lost } else { pipes[i].offer(now, packet) };
                let count = if up { &mut s.counts[i].up } else { &mut s.counts[i].down };
                count.packets += 1;
                count.bytes += n as u64;
                match fate {
                    Fate::Lost => count.lost += 1,
                    Fate::Dropped => count.dropped += 1,
                    Fate::Sent => {}
                }
                s.last[i] = Some(now);
                let (payload, syn, fin) = tcp.map_or((0, false, false), |(_, _, p, s, f)| (p, s, f));
                let at = now - s.start;
                s.log.push(Packet { at, class, up, len: n.min(usize::from(u16::MAX)) as u16, payload, syn, fin, fate });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The device went away: the link is being torn down.
            Err(_) => {
                guard.clear_ready();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_serializes_and_a_full_queue_drops() {
        let shape = Shape { rate_bps: Some(8_000), delay: Duration::from_millis(100), loss: 0.0, queue_bytes: 2_500 };
        let mut pipe = Pipe::new(shape, 1);
        let t0 = Instant::now();
        pipe.busy_until = t0;
        // 1,000 B at 8 kbit/s: one second each.
        assert_eq!(pipe.offer(t0, vec![0; 1000]), Fate::Sent);
        assert_eq!(pipe.offer(t0, vec![0; 1000]), Fate::Sent);
        // 2,000 B already waiting: a third would make 3,000 > 2,500.
        assert_eq!(pipe.offer(t0, vec![0; 1000]), Fate::Dropped);
        let due: Vec<Duration> = pipe.queue.iter().map(|(t, _)| *t - t0).collect();
        assert_eq!(due, [Duration::from_millis(1100), Duration::from_millis(2100)]);
    }

    #[test]
    fn the_same_seed_loses_the_same_packets() {
        let shape = Shape { loss: 0.2, ..Shape::CLEAN };
        let run = |seed| {
            let mut pipe = Pipe::new(shape, seed);
            let now = Instant::now();
            (0..200).map(|_| pipe.offer(now, vec![0; 60]) == Fate::Lost).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let lost = run(7).iter().filter(|l| **l).count();
        assert!((20..=60).contains(&lost), "{lost} of 200 lost at 20 %");
    }

    #[test]
    fn tcp_fields_are_read_from_an_ipv4_packet() {
        // IPv4, IHL 5, total 60, TCP; ports 40000 -> 9443, data offset 8
        // words (32 B with options), flags PSH|ACK, 8 B of payload.
        let mut p = vec![0u8; 60];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&60u16.to_be_bytes());
        p[9] = 6;
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&9443u16.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = 0x18;
        assert_eq!(tcp_of(&p), Some((40000, 9443, 8, false, false)));
        p[33] = 0x02;
        assert_eq!(tcp_of(&p).map(|t| t.3), Some(true));
        p[33] = 0x11;
        assert_eq!(tcp_of(&p).map(|t| t.4), Some(true));
        p[0] = 0x60;
        assert_eq!(tcp_of(&p), None);
    }
}
