//! Which registry an image reference pulls from, as the Docker engine reads
//! it, and a registry address as an operator types it: both sides must
//! agree, since the server picks the credentials a reply carries by it
//! and the agent hands them to the engine by it.

/// Docker Hub, as references name it implicitly.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry an image reference pulls from: the first path component
/// when it looks like a host (has a `.` or a `:`, or is `localhost`), else
/// Docker Hub. `nginx:1.25`, `library/nginx` → `docker.io`;
/// `10.0.0.5:5000/app:1` → `10.0.0.5:5000`; `registry.example.com/a/b` →
/// `registry.example.com`. Lower-cased: hosts are case-insensitive.
#[must_use]
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => normalize_host(first),
        _ => DOCKER_HUB.to_owned(),
    }
}

/// The repository of an image reference: without its tag or digest
/// (`10.0.0.5:5000/app:2` → `10.0.0.5:5000/app`). The images of one
/// repository on a host are the previous versions a transfer's deltas are
/// made against.
#[must_use]
pub fn repository_of(reference: &str) -> &str {
    let r = reference.split('@').next().unwrap_or(reference);
    match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => r,
    }
}

fn normalize_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_owned(),
        _ => host,
    }
}

/// A registry address as an operator gives it (`https://10.0.0.5:5000/`,
/// `registry.example.com`, `docker.io`) as references name it: no scheme,
/// no path, lower case.
///
/// # Errors
/// A text saying what is wrong: empty, a path, or characters no host has.
pub fn parse_registry(text: &str) -> Result<String, String> {
    let t = text.trim();
    let t = t.strip_prefix("https://").or_else(|| t.strip_prefix("http://")).unwrap_or(t);
    let host = t.trim_end_matches('/');
    if host.is_empty() {
        return Err("a registry's address: a host, with a port if not 443 (10.0.0.5:5000)".into());
    }
    if host.contains('/') {
        return Err(format!("{host:?}: a registry's address has no path"));
    }
    if host.len() > 255 || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(format!("{host:?}: not a host name or address"));
    }
    Ok(normalize_host(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_as_the_engine_reads_them() {
        for (reference, registry) in [
            ("nginx", "docker.io"),
            ("nginx:1.25", "docker.io"),
            ("library/nginx:1.25", "docker.io"),
            ("user/app@sha256:abcd", "docker.io"),
            ("10.0.0.5:5000/app:1", "10.0.0.5:5000"),
            ("Registry.Example.com/team/app", "registry.example.com"),
            ("localhost/app", "localhost"),
            ("index.docker.io/library/nginx", "docker.io"),
        ] {
            assert_eq!(registry_of(reference), registry, "{reference}");
        }
    }

    #[test]
    fn addresses_are_read_as_references_name_them() {
        assert_eq!(parse_registry("https://10.0.0.5:5000/").unwrap(), "10.0.0.5:5000");
        assert_eq!(parse_registry(" Registry.Example.com ").unwrap(), "registry.example.com");
        assert_eq!(parse_registry("https://index.docker.io").unwrap(), "docker.io");
        for bad in ["", "https://", "host/path", "a b", "x;y"] {
            assert!(parse_registry(bad).is_err(), "{bad:?}");
        }
    }
}
