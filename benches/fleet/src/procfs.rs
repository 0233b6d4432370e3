//! Readings of a process from Linux's `/proc`: CPU time (utime + stime of
//! `/proc/<pid>/stat`) and resident memory (`VmRSS` of
//! `/proc/<pid>/status`), and the size of a data directory's database
//! files.

use std::path::Path;
use std::time::Duration;

/// CPU time (user + system) a process has used so far.
///
/// # Errors
/// When `/proc/<pid>/stat` cannot be read or parsed.
pub fn cpu_time(pid: u32) -> std::io::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu(&text, clock_ticks()).ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/stat: unparsable")))
}

/// utime + stime of a `/proc/<pid>/stat` line, at `ticks` per second.
/// The command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted after its last `)`.
pub fn parse_cpu(stat: &str, ticks: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3; utime and stime are fields 14, 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = ticks.max(1);
    let t = utime + stime;
    Some(Duration::from_secs(t / ticks) + Duration::from_nanos((t % ticks) * 1_000_000_000 / ticks))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// A process's resident memory, in bytes.
///
/// # Errors
/// When `/proc/<pid>/status` cannot be read or has no `VmRSS`.
pub fn rss(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss(&text).ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/status: no VmRSS")))
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Open file descriptors of a process (its connections, mostly).
pub fn open_files(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(Iterator::count)
}

/// Bytes of the database files in a data directory: `tern.db` and its
/// `-wal` and `-shm` files (SQLite in WAL mode), after a checkpoint that
/// moves the WAL's pages into the database and truncates it (when the
/// server's connections let it; see [`checkpoint`]).
pub fn database_bytes(data: &Path) -> u64 {
    let db = data.join("tern.db");
    if db.exists() {
        let _ = checkpoint(&db);
    }
    file_bytes(data)
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` on a database another process is
/// using (SQLite allows it from any connection; it waits up to 5 s for
/// the server's writer). Without it, the WAL, which grows to about 4 MB
/// between the server's own checkpoints, would swamp a short window's
/// growth.
///
/// # Errors
/// When the database cannot be opened or the checkpoint fails.
pub fn checkpoint(db: &Path) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// The sizes of the `tern.db*` files as they are.
pub fn file_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("tern.db"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The open-file limit a run asks for when it may raise the hard limit
/// (root): enough for 50,000 connections on each side of a spawned server.
const WANTED_OPEN_FILES: u64 = 1 << 20;

/// Raises this process's open-file limit: to [`WANTED_OPEN_FILES`] (at
/// most the kernel's `fs.nr_open`) when it may raise the hard limit too
/// (root), else to the hard limit. Returns the limit now in force. A
/// spawned server inherits it.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_OPEN_FILES);
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        let wanted = WANTED_OPEN_FILES.min(nr_open) as libc::rlim_t;
        if lim.rlim_max < wanted {
            // Refused without CAP_SYS_RESOURCE: the hard limit stays.
            let raised = libc::rlimit { rlim_cur: wanted, rlim_max: wanted };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    {
        lim.rlim_cur as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "1234 (tern (x) y) S 1 1234 1234 0 -1 4194560 9 0 0 0 250 130 0 0 20 0 3 0 7 0 0";
        assert_eq!(parse_cpu(stat, 100), Some(Duration::from_millis(3800)));
        assert_eq!(parse_cpu("garbage", 100), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\ttern\nVmPeak:\t  9000 kB\nVmRSS:\t   5120 kB\nThreads:\t3\n";
        assert_eq!(parse_rss(status), Some(5 * 1024 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(rss(pid).unwrap() > 0);
        cpu_time(pid).unwrap();
        assert!(open_files(pid).unwrap() > 0);
    }

    #[test]
    fn database_files_are_summed_and_others_ignored() {
        let d = std::env::temp_dir().join(format!("tern-fleet-db-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tern.db"), [0u8; 4096]).unwrap();
        std::fs::write(d.join("tern.db-wal"), [0u8; 100]).unwrap();
        std::fs::write(d.join("cert.pem"), [0u8; 999]).unwrap();
        assert_eq!(file_bytes(&d), 4196);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_checkpoint_empties_the_wal_into_the_database() {
        let d = std::env::temp_dir().join(format!("tern-fleet-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let writer = rusqlite::Connection::open(d.join("tern.db")).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(200000));").unwrap();
        assert!(std::fs::metadata(d.join("tern.db-wal")).unwrap().len() > 200_000);
        let total = database_bytes(&d);
        assert_eq!(std::fs::metadata(d.join("tern.db-wal")).unwrap().len(), 0);
        assert!(std::fs::metadata(d.join("tern.db")).unwrap().len() > 200_000);
        assert!(total > 200_000);
        drop(writer);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
