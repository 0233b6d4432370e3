//! What a run sets up on the machine, and takes down again: a network
//! namespace for the agent, the two TUN devices of the link, and a Docker
//! engine of its own inside the namespace (the edge host), all named
//! `tern-wb-<id>`. [`Run`] removes everything on drop, on success or
//! failure; [`sweep`] removes what a killed run left behind.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::link::Tun;

/// Runs a command; its stdout, or an error with its stderr.
pub fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets a sysctl (`net.ipv4.ip_forward`) in network namespace `ns`, by
/// writing its `/proc/sys` file from inside the namespace (no procps
/// needed: `ip` and `sh` are).
///
/// # Errors
/// When the namespace or the setting does not exist.
pub fn netns_sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<String> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    run_cmd("ip", &["netns", "exec", ns, "sh", "-c", &format!("echo {value} > {file}")])
}

fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// The prefix of everything a run makes.
pub const PREFIX: &str = "tern-wb-";

/// One run's names and directory.
pub struct Run {
    /// Four hex digits.
    pub id: String,
    /// `/tmp/tern-wb-<id>`: the engine's data, the server's and agent's
    /// data, logs, the fixture's bind-mounted files.
    pub dir: PathBuf,
    /// The agent's network namespace, `tern-wb-<id>`.
    pub netns: String,
    /// The link's host-side device (`twb<id>h`) and agent-side one (`twb<id>a`).
    pub host_dev: String,
    /// See `host_dev`.
    pub agent_dev: String,
    /// The link's /24: `10.77.<subnet>.0`.
    pub subnet: u8,
    engine: Option<Child>,
}

impl Run {
    /// Picks free names, creates the directory (with an `owner` file
    /// naming this process, for [`sweep`]) and the namespace.
    ///
    /// # Errors
    /// When the namespace cannot be made (not root, no `ip`).
    pub fn create() -> anyhow::Result<Self> {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mut rng = fastrand::Rng::with_seed(u64::from(seed) ^ u64::from(std::process::id()));
        // Runs made side by side (the link-fault tests run in parallel, each
        // in its own process) pick their names under one lock, and each
        // claims its subnet in its directory before its devices have it.
        let _lock = NamesLock::take()?;
        let used = run_cmd("ip", &["-4", "-o", "addr"]).unwrap_or_default();
        let claimed = claimed_subnets();
        for _ in 0..100 {
            let id = format!("{:04x}", rng.u16(..));
            let subnet = rng.u8(2..=254);
            let dir = std::env::temp_dir().join(format!("{PREFIX}{id}"));
            if dir.exists() || used.contains(&format!("10.77.{subnet}.")) || claimed.contains(&subnet) {
                continue;
            }
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("owner"), std::process::id().to_string())?;
            std::fs::write(dir.join("subnet"), subnet.to_string())?;
            let run = Self {
                netns: format!("{PREFIX}{id}"),
                host_dev: format!("twb{id}h"),
                agent_dev: format!("twb{id}a"),
                id,
                dir,
                subnet,
                engine: None,
            };
            run_cmd("ip", &["netns", "add", &run.netns]).context("creating the network namespace")?;
            run_cmd("ip", &["-n", &run.netns, "link", "set", "lo", "up"])?;
            return Ok(run);
        }
        bail!("no free run id")
    }

    /// The server's address on the link.
    pub fn host_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// The agent's address on the link.
    pub fn agent_ip(&self) -> String {
        format!("10.77.{}.2", self.subnet)
    }

    /// The namespace's file, for `setns` and `nsenter`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// The baseline client's namespace, `tern-wb-<id>-b`.
    pub fn baseline_netns(&self) -> String {
        format!("{}-b", self.netns)
    }

    /// Its file, for `setns`.
    pub fn baseline_netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(self.baseline_netns())
    }

    /// The agent's namespace as the generated `docker run` command makes
    /// the agent container's (TCP timestamps off), and the baseline's as
    /// Portainer's command makes its agent's (the kernel's defaults).
    ///
    /// The baseline client gets a namespace of its own, behind the agent's:
    /// a veth pair (`twb<id>v` in the agent's namespace, 10.77.<subnet>.5;
    /// `twb<id>w` in the baseline's, .6) and forwarding in the agent's
    /// namespace, so its packets still cross the one emulated link (the
    /// veth hop is not counted, and forwarding changes no TCP option) with
    /// TCP set up by its own namespace's settings.
    ///
    /// # Errors
    /// When a device, address, route or setting cannot be made.
    pub fn namespaces_as_deployed(&self) -> anyhow::Result<()> {
        let (ns, b) = (self.netns.as_str(), self.baseline_netns());
        let (v, w) = (format!("twb{}v", self.id), format!("twb{}w", self.id));
        let sub = self.subnet;
        let sysctl = netns_sysctl;
        let (key, value) = tern::server::domain::deploy::NO_TCP_TIMESTAMPS.split_once('=').context("a sysctl")?;
        sysctl(ns, key, value)?;
        run_cmd("ip", &["netns", "add", &b]).context("creating the baseline's namespace")?;
        run_cmd("ip", &["-n", &b, "link", "set", "lo", "up"])?;
        run_cmd("ip", &["-n", ns, "link", "add", &v, "type", "veth", "peer", "name", &w, "netns", &b])?;
        // Not fatal: a kernel booted without IPv6 has nothing to turn off.
        for (n, dev) in [(ns, v.as_str()), (b.as_str(), w.as_str())] {
            let _ = sysctl(n, &format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
        }
        run_cmd("ip", &["-n", ns, "addr", "add", &format!("10.77.{sub}.5/30"), "dev", &v])?;
        run_cmd("ip", &["-n", ns, "link", "set", &v, "up"])?;
        run_cmd("ip", &["-n", &b, "addr", "add", &format!("10.77.{sub}.6/30"), "dev", &w])?;
        run_cmd("ip", &["-n", &b, "link", "set", &w, "up"])?;
        run_cmd("ip", &["-n", &b, "route", "add", "default", "via", &format!("10.77.{sub}.5")])?;
        sysctl(ns, "net.ipv4.ip_forward", "1")?;
        run_cmd("ip", &["route", "add", &format!("10.77.{sub}.4/30"), "dev", &self.host_dev])
            .context("routing the baseline's addresses over the link")?;
        Ok(())
    }

    /// Makes the two TUN devices, moves the agent's into the namespace and
    /// gives both their point-to-point addresses. IPv6 is off on both, so
    /// nothing but the benchmark's IPv4 crosses the link.
    ///
    /// # Errors
    /// When a device cannot be made or configured.
    pub fn link_devices(&self) -> anyhow::Result<(Tun, Tun)> {
        let host = Tun::create(&self.host_dev).context("creating the host-side TUN device")?;
        let agent = Tun::create(&self.agent_dev).context("creating the agent-side TUN device")?;
        // The descriptor keeps working once its device is in another namespace.
        run_cmd("ip", &["link", "set", &self.agent_dev, "netns", &self.netns])?;
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.host_dev), "1");
        let _ = netns_sysctl(&self.netns, &format!("net.ipv6.conf.{}.disable_ipv6", self.agent_dev), "1");
        run_cmd("ip", &["addr", "add", &self.host_ip(), "peer", &self.agent_ip(), "dev", &self.host_dev])?;
        run_cmd("ip", &["link", "set", &self.host_dev, "up"])?;
        run_cmd(
            "ip",
            &["-n", &self.netns, "addr", "add", &self.agent_ip(), "peer", &self.host_ip(), "dev", &self.agent_dev],
        )?;
        run_cmd("ip", &["-n", &self.netns, "link", "set", &self.agent_dev, "up"])?;
        Ok((host, agent))
    }

    /// A device's own counters: (rx bytes, rx packets, tx bytes, tx
    /// packets). For a TUN device, tx is what the kernel sent out (the
    /// forwarder read), rx what the forwarder wrote in.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn device_counters(&self, agent_side: bool) -> anyhow::Result<[u64; 4]> {
        let (ns, dev) = if agent_side { (Some(self.netns.as_str()), &self.agent_dev) } else { (None, &self.host_dev) };
        let mut args = Vec::new();
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        args.extend(["-s", "-j", "link", "show", "dev", dev.as_str()]);
        let json: serde_json::Value = serde_json::from_str(&run_cmd("ip", &args)?)?;
        let s = &json[0]["stats64"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        Ok([n(&s["rx"]["bytes"]), n(&s["rx"]["packets"]), n(&s["tx"]["bytes"]), n(&s["tx"]["packets"])])
    }

    /// The private engine's socket.
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix://...` for DOCKER_HOST.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.docker_socket().display())
    }

    /// Starts a Docker engine of the run's own inside the namespace (its
    /// bridges and published ports live there), and waits until it answers.
    /// No iptables, no default bridge: the fixture's compose projects make
    /// their own networks.
    ///
    /// # Errors
    /// When `dockerd` is missing or does not come up within a minute.
    pub fn start_engine(&mut self) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("daemon.json"), "{}\n")?;
        let log = std::fs::File::create(self.dir.join("dockerd.log"))?;
        let d = |p: &str| self.dir.join(p).display().to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .arg("dockerd")
            .args(["--config-file", &d("daemon.json"), "--data-root", &d("root"), "--exec-root", &d("exec")])
            .args(["--pidfile", &d("dockerd.pid"), "-H", &self.docker_host()])
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false", "--storage-driver", "overlay2"])
            .args(["--cgroup-parent", &self.netns, "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd (is Docker installed?)")?;
        self.engine = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("docker")
                .args(["-H", &self.docker_host(), "version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if let Some(child) = self.engine.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd exited ({status}): {}", log.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within a minute (see {})", self.dir.join("dockerd.log").display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The docker CLI against the run's engine.
    ///
    /// # Errors
    /// When the command fails.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let host = self.docker_host();
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        run_cmd("docker", &all)
    }
}

/// An exclusive `flock` on `/tmp/tern-wb.lock`, held while a run picks its
/// names.
struct NamesLock {
    _file: std::fs::File,
}

impl NamesLock {
    fn take() -> anyhow::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("tern-wb.lock"))
            .context("opening the runs' lock file")?;
        // SAFETY: flock on a descriptor we hold open; released when it closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } < 0 {
            return Err(io::Error::last_os_error()).context("locking the runs' lock file");
        }
        Ok(Self { _file: f })
    }
}

/// The subnets that runs' directories claim.
fn claimed_subnets() -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .filter_map(|e| std::fs::read_to_string(e.path().join("subnet")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

impl Run {
    /// Restarts the run's engine as its service manager would: SIGTERM (the
    /// engine stops its containers, as it does on a host's reboot or
    /// upgrade), then the same engine on the same data again. Containers
    /// are kept; those that ran are stopped.
    ///
    /// # Errors
    /// When the engine does not come back within a minute.
    pub fn restart_engine(&mut self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        terminate_engine(&self.dir, self.engine.as_mut());
        self.engine = None;
        self.start_engine()?;
        Ok(t0.elapsed())
    }

    /// Stops the run's engine (SIGTERM, as its service manager would) and
    /// waits for it to exit; containers are kept. [`Self::start_engine`]
    /// brings it back.
    pub fn stop_engine_only(&mut self) {
        terminate_engine(&self.dir, self.engine.as_mut());
        self.engine = None;
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.engine.take() {
            stop_engine(&self.dir, Some(&mut child));
        }
        cleanup(&self.id);
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: sending a signal to a process of ours.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// SIGTERM to the engine in `dir`, and a wait for it to exit (at most 40
/// s, then SIGKILL). Our own child is reaped as it exits (a zombie would
/// still answer signal 0).
fn terminate_engine(dir: &Path, mut child: Option<&mut Child>) {
    let pid = std::fs::read_to_string(dir.join("dockerd.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
    let pid = pid.or_else(|| child.as_ref().map(|c| c.id() as i32));
    let Some(pid) = pid else { return };
    kill(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let gone = match child.as_deref_mut() {
            Some(c) if c.id() as i32 == pid => matches!(c.try_wait(), Ok(Some(_))),
            _ => !alive(pid),
        };
        if gone {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(pid, libc::SIGKILL);
    if let Some(child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The engine's containerd goes with it; its socket and pid files stay
    // for the next start to reuse.
}

/// Removes every container of the engine in `dir` (fast: no stop grace
/// period), then stops the engine.
fn stop_engine(dir: &Path, child: Option<&mut Child>) {
    let sock = format!("unix://{}", dir.join("docker.sock").display());
    if dir.join("docker.sock").exists()
        && let Ok(ids) = run_cmd("docker", &["-H", &sock, "ps", "-aq"])
    {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["-H", sock.as_str(), "rm", "-f"];
            args.extend(ids);
            quiet("docker", &args);
        }
    }
    terminate_engine(dir, child);
}

/// Takes down everything of run `id`: processes left in its cgroups or
/// namespace, mounts under its directory, the directory, its cgroups, the
/// host-side device and the namespace. Safe to call twice.
pub fn cleanup(id: &str) {
    let name = format!("{PREFIX}{id}");
    let dir = std::env::temp_dir().join(&name);
    // Containers' processes (their cgroups are under the run's parent).
    for cg in cgroup_dirs(&name) {
        for procs in walk(&cg).into_iter().map(|d| d.join("cgroup.procs")) {
            for pid in std::fs::read_to_string(procs).unwrap_or_default().split_whitespace() {
                kill(pid.parse().unwrap_or(0), libc::SIGKILL);
            }
        }
    }
    // dockerd, containerd and anything else still in the namespace.
    if let Ok(pids) = run_cmd("ip", &["netns", "pids", &name]) {
        let me = std::process::id() as i32;
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|p| *p != me) {
            kill(pid, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    // Mounts under the directory (overlays, the engine's netns files),
    // deepest first.
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m) {
            // SAFETY: umount2 of a NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for cg in cgroup_dirs(&name) {
        let mut dirs = walk(&cg);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
    quiet("ip", &["link", "del", &format!("twb{id}h")]);
    quiet("ip", &["netns", "del", &format!("{name}-b")]);
    quiet("ip", &["netns", "del", &name]);
}

fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    controllers.flatten().map(|c| c.path().join(name)).filter(|p| p.is_dir()).collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Removes what runs killed before they could clean up left behind: every
/// `/tmp/tern-wb-*` whose owner process is gone, and namespaces named so
/// without a directory.
///
/// It holds the lock [`Run::create`] names its runs under: a run being
/// created side by side has its directory before its `owner` file and its
/// namespace before it is returned, and a sweep that looked in between
/// took it for a leftover and removed its namespace (seen once in CI:
/// `ip -n tern-wb-<id> link set lo up` failed).
pub fn sweep() {
    let Ok(_lock) = NamesLock::take() else {
        tracing::warn!("not sweeping earlier runs' leftovers: the runs' lock cannot be taken");
        return;
    };
    let tmp = std::env::temp_dir();
    let mut ids = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(PREFIX) else { continue };
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let owner = std::fs::read_to_string(e.path().join("owner")).ok().and_then(|p| p.trim().parse().ok());
            if !owner.is_some_and(alive) {
                ids.push(id.to_owned());
            }
        }
    }
    for ns in run_cmd("ip", &["netns", "list"]).unwrap_or_default().lines() {
        let ns = ns.split_whitespace().next().unwrap_or_default();
        // A run's baseline namespace (`<name>-b`) belongs to the run's
        // directory as its agent namespace does.
        if let Some(id) = ns.strip_prefix(PREFIX).map(|id| id.strip_suffix("-b").unwrap_or(id))
            && !tmp.join(format!("{PREFIX}{id}")).exists()
            && !ids.iter().any(|known| known == id)
        {
            ids.push(id.to_owned());
        }
    }
    for id in ids {
        let dir = tmp.join(format!("{PREFIX}{id}"));
        tracing::warn!("removing what an earlier run left behind: {}", dir.display());
        stop_engine(&dir, None);
        cleanup(&id);
    }
}

/// Whether this process may make namespaces and TUN devices (root).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/net/tun").exists()
}

/// Enters the network namespace at `path` in the calling thread (its later
/// sockets are made there).
///
/// # Errors
/// When the namespace cannot be opened or entered.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns on a namespace file we hold open; affects this thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
