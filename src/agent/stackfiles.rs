//! A stack's directory on the host, written without following a symbolic
//! link (issue #17: configuration files).
//!
//! A service may mount a directory of its stack read-write
//! (`./data:/data`), so whatever runs in it can put a symbolic link, a
//! FIFO or a directory where the agent writes next. The agent runs as root
//! on the engine's host, so a write that followed such a link would write
//! (and a read could block) anywhere on the host. Every name here is
//! therefore opened relative to its parent directory's descriptor with
//! `O_NOFOLLOW` (`openat`, `mkdirat`, `renameat`, `unlinkat` through
//! rustix), from the stack's own directory down: a link is refused, never
//! followed, and swapping a directory for a link after a check gains
//! nothing, since no path is looked up twice.
//!
//! A file is written to a new temporary name (`O_CREAT|O_EXCL`) and renamed
//! over its path, so a service reading it sees the old or the new bytes,
//! never half.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

/// The list of configuration files written (one path a line).
pub const FILES_LIST: &str = ".tern-files";

/// The digest of the files the host's compose tool last brought up, so a
/// deploy that failed after writing them still makes the services again
/// on its retry.
pub const APPLIED: &str = ".tern-applied";

/// The most bytes read back of the list (64 files of 255 bytes and more).
const MAX_LIST: u64 = 64 * 1024;

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The stack's directory, opened (made first when missing, with its
/// parents; it is the agent's own, under `DATA_PATH`).
///
/// # Errors
/// When it cannot be made or opened.
pub fn open_dir(dir: &Path) -> Result<OwnedFd, String> {
    std::fs::create_dir_all(dir).map_err(|e| err(&dir.display().to_string(), e))?;
    rustix::fs::openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err(&dir.display().to_string(), e))
}

/// The directory that holds `path`'s last name (with that name), walked
/// from `base` name by name without following links; made where missing
/// when `create`, else `None` when a directory is missing.
fn parent<'p>(base: &OwnedFd, path: &'p str, create: bool) -> Result<Option<(OwnedFd, &'p str)>, String> {
    let mut names: Vec<&str> = path.split('/').collect();
    let last = names.pop().unwrap_or_default();
    let mut at = rustix::io::dup(base).map_err(|e| err(path, e))?;
    for name in names {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        at = match rustix::fs::openat(&at, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755)).map_err(|e| err(path, e))?;
                rustix::fs::openat(&at, name, flags, Mode::empty()).map_err(|e| err(path, e))?
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return Err(format!("{path}: {name} is not a directory (a file or a link there is left alone)"));
            }
            Err(e) => return Err(err(path, e)),
        };
    }
    Ok(Some((at, last)))
}

/// What is at `name` in `dir`, not following a link.
fn kind(dir: &OwnedFd, name: &str) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok().map(|st| FileType::from_raw_mode(st.st_mode))
}

/// A regular file's bytes (at most `limit`), `None` for anything else.
fn read_regular(dir: &OwnedFd, name: &str, limit: u64) -> Option<Vec<u8>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd).take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Writes `bytes` at `path` (under `base`) with `mode`: a new temporary
/// file renamed over it. An empty directory in its place (the engine makes
/// a missing bind source one) gives way; anything else that is not a
/// regular file or a link is an error.
///
/// # Errors
/// What failed, naming the path.
pub fn write(base: &OwnedFd, path: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let Some((dir, name)) = parent(base, path, true)? else { unreachable!("made") };
    if kind(&dir, name) == Some(FileType::Directory) {
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
            .map_err(|_| format!("{path} is a directory, and not an empty one"))?;
    }
    let tmp = format!(".{name}.{:016x}.tern-new", fastrand::u64(..));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(mode)).map_err(|e| err(path, e))?;
    let written = (|| {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes)?;
        f.sync_all()?;
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)?;
        Ok::<(), std::io::Error>(())
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(err(path, e));
    }
    Ok(())
}

/// Deletes the file (or link) at `path`, then its directories that this
/// leaves empty, up to `base`. A missing one is no error; a directory in
/// its place is left.
fn delete(base: &OwnedFd, path: &str) -> Result<bool, String> {
    let Some((dir, name)) = parent(base, path, false)? else { return Ok(false) };
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(err(path, e)),
    }
    let names: Vec<&str> = path.split('/').collect();
    for depth in (1..names.len()).rev() {
        let dir_path = names[..depth].join("/");
        let Ok(Some((up, name))) = parent(base, &dir_path, false) else { break };
        if rustix::fs::unlinkat(&up, name, AtFlags::REMOVEDIR).is_err() {
            break;
        }
    }
    Ok(true)
}

/// Reads a small file of the agent's own in the stack's directory (the
/// list, the applied digest): empty when missing or not a regular file.
#[must_use]
pub fn read_own(base: &OwnedFd, name: &str) -> String {
    read_regular(base, name, MAX_LIST).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Writes a stack's configuration files and deletes those the previous
/// version wrote that this one does not ship ([`FILES_LIST`]). The files
/// dropped go first (so `conf` may become `conf/a.ini` and back), then the
/// new list (so a failure part way leaves no file unlisted), then the files,
/// each only when its bytes changed. Files are 0644: the services read them
/// as whatever user they run as.
///
/// # Errors
/// The first that failed, naming its path.
pub fn write_config_files(base: &OwnedFd, files: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let previous = read_own(base, FILES_LIST);
    for old in previous.lines().filter(|p| !p.is_empty() && !files.contains_key(*p)) {
        // Only what a list may name: a list edited on the host must not
        // reach outside the directory.
        if crate::stack::check_file_path(old).is_ok()
            && let Err(e) = delete(base, old)
        {
            tracing::warn!("removing the stack's old file {old}: {e}");
        }
    }
    let list: String = files.keys().map(|k| format!("{k}\n")).collect();
    write(base, FILES_LIST, list.as_bytes(), 0o600)?;
    for (path, bytes) in files {
        let same = parent(base, path, false)?
            .and_then(|(dir, name)| read_regular(&dir, name, bytes.len() as u64 + 1))
            .is_some_and(|old| old == *bytes);
        if !same {
            write(base, path, bytes, 0o644)?;
        }
    }
    Ok(())
}

/// A digest of a stack's files (paths and bytes), for [`APPLIED`].
#[must_use]
pub fn digest(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = blake3::Hasher::new();
    for (path, bytes) in files {
        hash_file(&mut h, path, bytes);
    }
    h.finalize().to_hex().to_string()
}

/// Adds one file (its path and bytes, each length-prefixed) to a digest.
pub fn hash_file(h: &mut blake3::Hasher, path: &str, bytes: &[u8]) {
    h.update(&(path.len() as u64).to_le_bytes());
    h.update(path.as_bytes());
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(p, t)| ((*p).to_owned(), t.as_bytes().to_vec())).collect()
    }

    #[test]
    fn links_planted_in_the_directory_are_never_followed() {
        let root = std::env::temp_dir().join(format!("tern-stackfiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (dir, outside) = (root.join("stack"), root.join("outside"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host file").unwrap();
        let base = open_dir(&dir).unwrap();
        write_config_files(&base, &files(&[("conf/a.conf", "1"), ("motd", "hi")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("conf/a.conf")).unwrap(), "1");

        // A service replaces a directory with a link to the host's: the next
        // write is refused, nothing outside changes.
        std::fs::remove_dir_all(dir.join("conf")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("conf")).unwrap();
        let e = write_config_files(&base, &files(&[("conf/secret", "pwned"), ("motd", "hi")])).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "host file");
        // A link in the file's own place is replaced, not written through.
        std::fs::remove_file(dir.join("conf")).unwrap();
        std::fs::remove_file(dir.join("motd")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("motd")).unwrap();
        write_config_files(&base, &files(&[("motd", "new")])).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "host file");
        assert!(!std::fs::symlink_metadata(dir.join("motd")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(dir.join("motd")).unwrap(), "new");
        // A dropped file whose directory became a link: the link is not
        // followed to delete a host file.
        write_config_files(&base, &files(&[("d/secret", "x"), ("motd", "new")])).unwrap();
        std::fs::remove_dir_all(dir.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("d")).unwrap();
        write_config_files(&base, &files(&[("motd", "new")])).unwrap();
        assert!(outside.join("secret").exists(), "the host's file stays");
        // A FIFO where a file goes does not block the agent.
        std::fs::remove_file(dir.join("d")).unwrap();
        rustix::fs::mknodat(&base, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        write_config_files(&base, &files(&[("fifo", "text")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("fifo")).unwrap(), "text");
        // A file may become a directory and back.
        write_config_files(&base, &files(&[("conf", "a file")])).unwrap();
        write_config_files(&base, &files(&[("conf/a.ini", "now a directory")])).unwrap();
        write_config_files(&base, &files(&[("conf", "a file again")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("conf")).unwrap(), "a file again");
        let _ = std::fs::remove_dir_all(&root);
    }
}
