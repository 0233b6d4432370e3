//! What the server and the agent must agree on about edge stacks, in one
//! place, so the server refuses what the agent would refuse: the stack
//! (compose project) name, which variable names a stack may set, `${VAR}`
//! interpolation as compose does it, and the check of a stack's file
//! ([`check_file`], [`check_stack`]) through the typed model of
//! [`crate::compose`]. No I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::compose::Project;

/// How deep `${A:-${B:-...}}` may nest. Compose files nest two or three
/// deep; each level is a recursion, and 40,000 of them (a 240 KB file)
/// overflowed the agent's stack.
pub const MAX_NESTING: usize = 16;

/// Checks a compose project name: lowercase letters, digits, `-` and `_`,
/// starting with a letter or digit, at most 63 bytes.
///
/// # Errors
/// What is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "{:?} is not a compose project name: 1 to 63 lowercase letters, digits, '-' or '_', starting with a \
             letter or digit",
            name.chars().take(70).collect::<String>()
        ));
    }
    Ok(())
}

/// Variable names a stack may not set. A stack's variables are the compose
/// tool's environment when the agent runs the host's `docker compose`, so
/// these would change what the tool is, loads or talks to: the dynamic
/// loader's (`LD_PRELOAD` runs code in the agent's container), the shell's
/// and the C library's, Python's (`docker-compose` v1 is Python), and the
/// Docker CLI's and compose's own (`DOCKER_HOST` would send the deploy to
/// another engine). Exact names:
pub const RESERVED_NAMES: &[&str] = &[
    "PATH",
    "HOME",
    "SHELL",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "PS4",
    "TMPDIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "RES_OPTIONS",
    "NLSPATH",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CONTEXT",
    "DOCKER_API_VERSION",
    "DOCKER_DEFAULT_PLATFORM",
    "DOCKER_CONTENT_TRUST",
    "DOCKER_CONTENT_TRUST_SERVER",
];

/// ...and prefixes (compared without regard to case).
pub const RESERVED_PREFIXES: &[&str] = &["LD_", "DYLD_", "MALLOC_", "PYTHON", "XDG_", "COMPOSE_", "BUILDKIT_"];

/// Checks a stack variable's name: letters, digits and `_`, not starting
/// with a digit, at most 256 bytes, and not one of [`RESERVED_NAMES`] or
/// [`RESERVED_PREFIXES`].
///
/// # Errors
/// What is wrong with it.
pub fn check_variable(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
    if !ok || name.len() > 256 {
        return Err(format!(
            "{:?} is not a variable name (letters, digits and '_', not starting with a digit)",
            name.chars().take(70).collect::<String>()
        ));
    }
    let upper = name.to_ascii_uppercase();
    if RESERVED_NAMES.contains(&upper.as_str()) || RESERVED_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        return Err(format!(
            "{name} may not be set by a stack: it would change the compose tool itself (its loader, shell, engine or \
             settings), not the stack"
        ));
    }
    Ok(())
}

/// The most configuration files a stack ships.
pub const MAX_FILES: usize = 64;

/// The most bytes of configuration files (their contents) a stack ships:
/// they travel in its deploy command, inside one poll reply.
pub const MAX_FILES_BYTES: usize = 1024 * 1024;

/// The longest path of a configuration file, in bytes.
pub const MAX_FILE_PATH: usize = 255;

/// What the agent keeps in a stack's directory beside its configuration
/// files, which no file may be: the compose file, the variables, and the
/// list of the files it wrote (so it deletes those a later version drops).
pub const AGENT_FILES: &[&str] = &["compose.yml", "stack.env", ".tern-files", ".tern-applied"];

/// Checks a configuration file's path: relative to the stack's directory,
/// `/`-separated names of letters, digits, `.`, `-`, `_` and `@`, none
/// `.` or `..` (nothing reaches outside the directory), at most
/// [`MAX_FILE_PATH`] bytes, and none of [`AGENT_FILES`].
///
/// # Errors
/// What is wrong with it.
pub fn check_file_path(path: &str) -> Result<(), String> {
    let shown = || path.chars().take(70).collect::<String>();
    if path.is_empty() || path.len() > MAX_FILE_PATH {
        return Err(format!("file path {:?}: 1 to {MAX_FILE_PATH} bytes", shown()));
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n != "."
            && n != ".."
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
    };
    if !path.split('/').all(name_ok) {
        return Err(format!(
            "file path {:?}: a path relative to the stack's directory, of names made of letters, digits, '.', '-', \
             '_' and '@' separated by '/' (no leading '/', no '.' or '..')",
            shown()
        ));
    }
    if AGENT_FILES.contains(&path) {
        return Err(format!("file path {path:?}: the agent's own file in the stack's directory"));
    }
    Ok(())
}

/// Checks a stack's configuration files: each path ([`check_file_path`]),
/// at most [`MAX_FILES`] of them and [`MAX_FILES_BYTES`] in all, and no
/// path that is another's directory (`conf` and `conf/a.ini`).
///
/// # Errors
/// What is wrong, naming the file.
pub fn check_files<V: AsRef<[u8]>>(files: &BTreeMap<String, V>) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!("{} files; at most {MAX_FILES}", files.len()));
    }
    let total: usize = files.values().map(|v| v.as_ref().len()).sum();
    if total > MAX_FILES_BYTES {
        return Err(format!("{total} bytes of files; at most {MAX_FILES_BYTES} (1 MiB)"));
    }
    for path in files.keys() {
        check_file_path(path)?;
        // In key order, a directory's files follow it (`conf`, `conf/a`),
        // but `conf-x` or `conf.d` may sit between: look each prefix up.
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if files.contains_key(dir) {
                return Err(format!("file path {path:?}: {dir:?} is a file too"));
            }
            at += i + 1;
        }
    }
    Ok(())
}

/// The project name and directory a file is checked under where the
/// stack's own directory is not known (the server): neither changes
/// whether a file parses, only the engine names and paths in the project.
const CHECK_PROJECT: &str = "stack";
const CHECK_DIR: &str = "/stack";

/// Checks a compose file as the server does before it stores it: the
/// variables' names pass [`check_variable`], and the file parses into the
/// typed model the agent deploys ([`Project::parse`]: valid YAML within the
/// parser's budgets, a non-empty `services` mapping, each service named
/// with letters, digits, `-`, `_` or `.` and with an `image`, every string
/// interpolated with `env`, the values of the keys the built-in compose
/// reads in its subset). Returns the parse's warnings (keys the built-in
/// compose ignores, variables not set).
///
/// # Errors
/// What is wrong, naming the service or variable.
pub fn check_file(compose: &str, env: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    // Valid Compose beyond the built-in subset is the host tool's to run:
    // a warning here, refused only where the built-in deploys it.
    check_stack(CHECK_PROJECT, compose, env, Path::new(CHECK_DIR)).map(|p| {
        let beyond = p.unsupported.iter().map(|u| format!("{u} (the host's compose tool runs it)"));
        p.warnings.iter().cloned().chain(beyond).collect()
    })
}

/// Checks a stack as the agent does before it deploys it, with its own
/// project name and directory: what [`check_file`] checks, with the
/// project as the result.
///
/// # Errors
/// What is wrong, naming the service or variable.
pub fn check_stack(name: &str, compose: &str, env: &BTreeMap<String, String>, dir: &Path) -> Result<Project, String> {
    for name in env.keys() {
        check_variable(name).map_err(|e| format!("variables: {e}"))?;
    }
    Project::parse(name, compose, env, dir)
}

/// Interpolates every string in a value (not mapping keys).
///
/// # Errors
/// As [`interpolate`].
pub fn interpolate_all(
    v: &mut serde_json::Value,
    env: &BTreeMap<String, String>,
    unset: &mut BTreeSet<String>,
) -> Result<(), String> {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = interpolate(s, env, unset)?,
        Value::Array(a) => {
            for x in a {
                interpolate_all(x, env, unset)?;
            }
        }
        Value::Object(m) => {
            for (_, x) in m.iter_mut() {
                interpolate_all(x, env, unset)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?error}`, `${VAR?error}`, `${VAR:+other}`, `${VAR+other}` and
/// `$$` (a literal `$`) in `text`, as compose does. A variable that is not
/// set is empty (noted in `unset`).
///
/// Expressions nest (`${A:-${B:-x}}`) at most [`MAX_NESTING`] deep.
///
/// # Errors
/// A malformed expression, one nested too deeply, or a `?` one whose
/// variable is unset (or empty, with `:?`).
pub fn interpolate(text: &str, env: &BTreeMap<String, String>, unset: &mut BTreeSet<String>) -> Result<String, String> {
    interpolate_at(text, env, unset, 0)
}

fn interpolate_at(
    text: &str,
    env: &BTreeMap<String, String>,
    unset: &mut BTreeSet<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "interpolation nested more than {MAX_NESTING} deep (${{A:-${{B:-...}}}}): write it more simply"
        ));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = matching_brace(inner).ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            out.push_str(&expand(&inner[..end], env, unset, depth)?);
            rest = &inner[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "invalid interpolation in {text:?}: write $$ for a literal $, or ${{NAME}} for a variable"
                ));
            }
            out.push_str(&lookup(&after[..len], env, unset));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn lookup(name: &str, env: &BTreeMap<String, String>, unset: &mut BTreeSet<String>) -> String {
    env.get(name).cloned().unwrap_or_else(|| {
        unset.insert(name.to_owned());
        String::new()
    })
}

fn expand(
    expr: &str,
    env: &BTreeMap<String, String>,
    unset: &mut BTreeSet<String>,
    depth: usize,
) -> Result<String, String> {
    let len = name_len(expr);
    if len == 0 {
        return Err(format!("invalid interpolation ${{{expr}}}: no variable name"));
    }
    let (name, op) = expr.split_at(len);
    let value = env.get(name);
    let empty = value.is_none_or(String::is_empty);
    let arg = |op_len: usize, unset: &mut BTreeSet<String>| interpolate_at(&op[op_len..], env, unset, depth + 1);
    match op {
        "" => Ok(lookup(name, env, unset)),
        _ if op.starts_with(":-") => {
            if empty {
                arg(2, unset)
            } else {
                Ok(value.cloned().unwrap_or_default())
            }
        }
        _ if op.starts_with('-') => match value {
            Some(v) => Ok(v.clone()),
            None => arg(1, unset),
        },
        _ if op.starts_with(":+") => {
            if empty {
                Ok(String::new())
            } else {
                arg(2, unset)
            }
        }
        _ if op.starts_with('+') => {
            if value.is_some() {
                arg(1, unset)
            } else {
                Ok(String::new())
            }
        }
        _ if op.starts_with(":?") || op.starts_with('?') => {
            let colon = op.starts_with(':');
            let missing = if colon { empty } else { value.is_none() };
            if missing {
                let msg = arg(if colon { 2 } else { 1 }, unset)?;
                Err(format!("required variable {name} is missing a value: {msg}"))
            } else {
                Ok(value.cloned().unwrap_or_default())
            }
        }
        _ => Err(format!("invalid interpolation ${{{expr}}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn interp(text: &str, e: &BTreeMap<String, String>) -> Result<String, String> {
        interpolate(text, e, &mut BTreeSet::new())
    }

    #[test]
    fn configuration_file_paths_stay_in_the_stacks_directory() {
        for ok in ["nginx.conf", "conf.d/site.conf", "certs/tls@2.pem", "a/b/c/d.txt", ".htpasswd", "compose.yml.bak"] {
            check_file_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a b",
            "é",
            "compose.yml",
            "stack.env",
            ".tern-files",
            "a\0b",
        ] {
            assert!(check_file_path(bad).is_err(), "{bad:?} passed");
        }
        assert!(check_file_path(&"a".repeat(MAX_FILE_PATH + 1)).is_err());
        let files = |paths: &[&str]| paths.iter().map(|p| ((*p).to_owned(), b"x".to_vec())).collect::<BTreeMap<_, _>>();
        check_files(&files(&["conf", "conf-x", "conf.d/a"])).unwrap();
        let e = check_files(&files(&["conf", "conf-x", "conf/a"])).unwrap_err();
        assert!(e.contains("\"conf\" is a file too"), "{e}");
        let many: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(check_files(&files(&many)).unwrap_err().contains("at most 64"));
        let big = BTreeMap::from([
            ("a".to_owned(), vec![0u8; MAX_FILES_BYTES / 2 + 1]),
            ("b".to_owned(), vec![0u8; MAX_FILES_BYTES / 2]),
        ]);
        assert!(check_files(&big).unwrap_err().contains("at most 1048576"));
    }

    #[test]
    fn compose_beyond_the_built_in_subset_is_a_warning_for_the_server_and_refused_by_the_built_in() {
        let file = "services:\n  a:\n    image: i\n    ports: ['8000-8010:8000-8010', '80']\n    volumes:\n      - type: tmpfs\n        target: /run\n";
        let warnings = check_file(file, &BTreeMap::new()).expect("valid Compose: the host tool runs it");
        assert!(warnings.iter().any(|w| w.contains("8000-8010") && w.contains("host's compose tool")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("tmpfs")), "{warnings:?}");
        let p = Project::parse("x", file, &BTreeMap::new(), Path::new("/s")).unwrap();
        assert_eq!(p.services["a"].ports.len(), 1, "the range is left out, the rest kept");
        assert!(p.services["a"].volumes.is_empty());
        let e = Project::parse_builtin("x", file, &BTreeMap::new(), Path::new("/s")).unwrap_err();
        assert!(e.contains("port ranges"), "{e}");
        // Malformed values stay refused on both sides.
        assert!(check_file("services:\n  a:\n    image: i\n    ports: ['x:80']\n", &BTreeMap::new()).is_err());
    }

    #[test]
    fn variables_are_interpolated_as_compose_does() {
        let e = env(&[("TAG", "1.25"), ("EMPTY", ""), ("NAME", "web")]);
        for (text, want) in [
            ("nginx:${TAG}", "nginx:1.25"),
            ("nginx:$TAG", "nginx:1.25"),
            ("$NAME-$TAG", "web-1.25"),
            ("${MISSING:-fallback}", "fallback"),
            ("${EMPTY:-fallback}", "fallback"),
            ("${EMPTY-fallback}", ""),
            ("${MISSING-fallback}", "fallback"),
            ("${NAME:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("${MISSING+set}", ""),
            ("${MISSING:-${NAME}-x}", "web-x"),
            ("price $$5", "price $5"),
            ("$${NAME}", "${NAME}"),
            ("no variables", "no variables"),
            ("${NAME:?needed}", "web"),
            ("unicode é ${NAME} ü", "unicode é web ü"),
        ] {
            assert_eq!(interp(text, &e).as_deref(), Ok(want), "{text}");
        }
        let mut unset = BTreeSet::new();
        assert_eq!(interpolate("a${NOPE}b$ALSO_NOT", &e, &mut unset).unwrap(), "ab");
        assert_eq!(unset.into_iter().collect::<Vec<_>>(), ["ALSO_NOT", "NOPE"]);
        let err = interp("${MISSING:?set MISSING please}", &e).unwrap_err();
        assert!(err.contains("MISSING") && err.contains("set MISSING please"), "{err}");
        assert!(interp("${EMPTY:?x}", &e).is_err());
        assert_eq!(interp("${EMPTY?x}", &e).as_deref(), Ok(""));
        for bad in ["${", "${NAME", "cost $ 5", "${}", "${1X}", "${NAME!x}"] {
            assert!(interp(bad, &e).is_err(), "{bad}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // 40,000 levels in a 240 KB file aborted the agent.
        let text = format!("{}x{}", "${A:-".repeat(40_000), "}".repeat(40_000));
        assert_eq!(text.len(), 240_001, "the report's 240 KB file");
        let err = interp(&text, &BTreeMap::new()).unwrap_err();
        assert!(err.contains("nested more than 16 deep"), "{err}");
        // As deep as allowed, fine.
        let mut ok = String::from("x");
        for i in 0..MAX_NESTING {
            ok = format!("${{V{i}:-{ok}}}");
        }
        assert_eq!(interp(&ok, &BTreeMap::new()).as_deref(), Ok("x"));
    }

    #[test]
    fn names_that_would_change_the_tool_are_refused() {
        for bad in ["LD_PRELOAD", "ld_library_path", "PATH", "DOCKER_HOST", "COMPOSE_FILE", "PYTHONPATH", "HOME"] {
            let e = check_variable(bad).unwrap_err();
            assert!(e.contains("may not be set by a stack"), "{bad}: {e}");
        }
        for good in ["DB_PASSWORD", "TAG", "DOCKER_TAG", "MY_PATH", "_X", "LDAP_URL"] {
            assert!(check_variable(good).is_ok(), "{good}");
        }
        for bad in ["1X", "A-B", "", "A B"] {
            assert!(check_variable(bad).unwrap_err().contains("not a variable name"), "{bad}");
        }
        assert!(check_name("web-1_a").is_ok());
        assert!(check_name("Web").is_err() && check_name("").is_err() && check_name(&"a".repeat(64)).is_err());
    }
}
