//! What the agent keeps off the wire: the values of container environment
//! variables and command arguments that hold credentials. The server, its
//! database and every operator who can read a snapshot would see them
//! otherwise. No I/O.
//!
//! A value is replaced by [`REDACTED`] (or, in a URL, its credentials
//! only) when:
//!
//! 1. **its variable's name says it is a secret**: the name contains
//!    `PASSWORD`, `PASSWD`, `PASSPHRASE`, `SECRET`, `TOKEN`, `KEY`,
//!    `CREDENTIAL`, `PRIVATE` or `AUTH`, or ends with `PASS` or `PWD`
//!    (`requirepass`), or one of its words (split at
//!    `_`, `-`, `.` and lower-to-upper case) is `PASS`, `PWD`, `PW`,
//!    `CREDS`, `DSN`, `SALT`, `COOKIE`, `SESSION` or `WEBHOOK`; compared
//!    without regard to case (`DB_PASS`, `dbPwd`, `SENTRY_DSN`,
//!    `SLACK_WEBHOOK_URL`);
//! 2. **it holds a URL with credentials**: `scheme://user:password@host`
//!    keeps its user and host, `scheme://token@host` its host
//!    (`DATABASE_URL=postgres://shop:<redacted>@db:5432/shop`);
//! 3. **it looks like a credential whatever its name**: a word that starts
//!    like a well-known token (`ghp_`, `github_pat_`, `glpat-`, `xoxb-`,
//!    `sk_live_`, `sk-`, `AKIA`, `AIza`, ...), a PEM private key, or a word of 32 or more letters, digits and
//!    `+/=_-.~` with upper case, lower case and digits in it (a random
//!    token; checksums, which are lower-case hex, and paths, which have
//!    `:`, are not).
//!
//! Command arguments get rules 2 and 3, and `--name=value`, `--name value`
//! and a shell script's `NAME=value` words rule 1 on their names; labels
//! rule 1 on their key, then 2 and 3. `tern snapshot --show-secrets` shows
//! what would be redacted.

/// The text that replaces a redacted value.
pub const REDACTED: &str = "<redacted>";

/// Parts of a variable name that mark its value as a secret wherever they
/// are in it.
const NAME_MARKERS: &[&str] =
    &["PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE", "AUTH"];

/// Words of a variable name that mark its value as a secret (too short,
/// or too common inside other words, to look for anywhere).
const NAME_WORDS: &[&str] = &["PASS", "PWD", "PW", "CREDS", "DSN", "SALT", "COOKIE", "SESSION", "WEBHOOK"];

/// How well-known tokens start.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxr-",
    "xapp-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "pk_live_",
    "sk-",
    "AKIA",
    "ASIA",
    "AIza",
    "SG.",
    "npm_",
    "pypi-",
    "eyJ",
    "hvs.",
    "dop_v1_",
];

/// A random-looking word is a credential from this many characters.
const TOKEN_MIN: usize = 32;

/// Whether a variable (or `--option`) named `name` holds a secret (rule 1).
pub fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if NAME_MARKERS.iter().any(|m| upper.contains(m)) {
        return true;
    }
    // The whole name `PWD` is the shell's working directory.
    if upper == "PWD" {
        return false;
    }
    // `requirepass`, `masterpass`, `DBPWD`: run together.
    if upper.ends_with("PASS") || upper.ends_with("PWD") {
        return true;
    }
    words(name).any(|w| NAME_WORDS.iter().any(|n| w.eq_ignore_ascii_case(n)))
}

/// The words of a name: split at `_`, `-`, `.` and where lower case turns
/// upper (`dbPassword` is `db`, `Password`).
fn words(name: &str) -> impl Iterator<Item = &str> {
    name.split(['_', '-', '.']).flat_map(|part| {
        let mut cuts = vec![0];
        let b = part.as_bytes();
        for i in 1..b.len() {
            if b[i - 1].is_ascii_lowercase() && b[i].is_ascii_uppercase() {
                cuts.push(i);
            }
        }
        cuts.push(b.len());
        cuts.windows(2).map(|w| &part[w[0]..w[1]]).filter(|w| !w.is_empty()).collect::<Vec<_>>()
    })
}

/// Whether a word looks like a credential (rule 3).
fn token_like(word: &str) -> bool {
    if TOKEN_PREFIXES.iter().any(|p| word.starts_with(p) && word.len() > p.len() + 8) {
        return true;
    }
    word.len() >= TOKEN_MIN
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=_-.~".contains(&b))
        && word.bytes().any(|b| b.is_ascii_uppercase())
        && word.bytes().any(|b| b.is_ascii_lowercase())
        && word.bytes().any(|b| b.is_ascii_digit())
}

/// `text` with the credentials of every URL in it redacted (rule 2), or
/// `None` when it holds none.
fn redact_urls(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the path, the query, the fragment, or
        // where the URL does.
        let end = tail.find(|c: char| "/?#".contains(c) || c.is_whitespace() || c == ',' || c == ';');
        let authority = &tail[..end.unwrap_or(tail.len())];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => out.push_str(&format!("{}:{REDACTED}", &userinfo[..colon])),
                    None => out.push_str(REDACTED),
                }
                out.push_str(&authority[userinfo_end..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority.len()..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// A value with rules 2 and 3 applied: `None` when nothing in it is a
/// credential.
pub fn redact_value(value: &str) -> Option<String> {
    if value.contains("PRIVATE KEY-----") {
        return Some(REDACTED.to_owned());
    }
    if value.split(|c: char| c.is_whitespace() || c == ',' || c == ';').any(token_like) {
        return Some(REDACTED.to_owned());
    }
    redact_urls(value)
}

/// An environment entry `NAME=value`, redacted by all three rules.
pub fn env_entry(entry: &str) -> String {
    match entry.split_once('=') {
        Some((name, _)) if secret_name(name) => format!("{name}={REDACTED}"),
        Some((name, value)) => match redact_value(value) {
            Some(v) => format!("{name}={v}"),
            None => entry.to_owned(),
        },
        None => entry.to_owned(),
    }
}

/// A command argument: `--name=value` by rule 1 on its name, then rules 2
/// and 3.
pub fn argument(arg: &str) -> String {
    if let Some((name, _)) = arg.strip_prefix('-').and_then(|a| a.trim_start_matches('-').split_once('='))
        && secret_name(name)
    {
        let keep = arg.len() - arg.split_once('=').map_or(0, |(_, v)| v.len());
        return format!("{}{REDACTED}", &arg[..keep]);
    }
    redact_value(arg).unwrap_or_else(|| arg.to_owned())
}

/// A command's arguments: each by [`argument`], an argument after a
/// `--name` whose name says secret (`--requirepass hunter2`) whole, and in
/// a shell script argument (`sh -c "PASSWORD=x run"`) each `NAME=value`
/// word whose name says secret.
pub fn arguments<'a>(args: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut secret_next = false;
    for arg in args {
        if std::mem::take(&mut secret_next) && !arg.starts_with('-') {
            out.push(REDACTED.to_owned());
            continue;
        }
        if let Some(name) = arg.strip_prefix("--").filter(|n| !n.contains('=')) {
            secret_next = secret_name(name);
        }
        let mut a = argument(arg);
        if a == *arg && arg.contains(' ') {
            a = arg.split(' ').map(env_entry_word).collect::<Vec<_>>().join(" ");
        }
        out.push(a);
    }
    out
}

/// A word of a shell script: `NAME=value` with a secret name redacted.
fn env_entry_word(word: &str) -> String {
    let identifier = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match word.split_once('=') {
        Some((name, _)) if identifier(name) && secret_name(name) => format!("{name}={REDACTED}"),
        _ => word.to_owned(),
    }
}

/// A label, by the same rules as a variable: its key's name, then its value.
pub fn label(key: &str, value: &str) -> String {
    if secret_name(key) { REDACTED.to_owned() } else { redact_value(value).unwrap_or_else(|| value.to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_say_secret_are_redacted() {
        for name in [
            "POSTGRES_PASSWORD",
            "aws_secret_access_key",
            "API_TOKEN",
            "OTA_DEVICE_KEY",
            "DB_PASS",
            "dbPass",
            "MYSQL_PWD",
            "REDIS_PW",
            "SENTRY_DSN",
            "SLACK_WEBHOOK_URL",
            "SESSION_SECRET",
            "PASSPHRASE",
            "GF_AUTH_ANONYMOUS_ENABLED",
        ] {
            assert!(secret_name(name), "{name}");
            assert_eq!(env_entry(&format!("{name}=x")), format!("{name}=<redacted>"));
        }
        for name in ["PATH", "PWD", "PASSENGER_COUNT", "COMPASSION", "DB_HOST", "NODE_ENV", "LANG", "SALTSTACK_ID"] {
            assert!(!secret_name(name), "{name}");
        }
    }

    #[test]
    fn urls_keep_everything_but_their_credentials() {
        assert_eq!(
            env_entry("DATABASE_URL=postgres://shop:Xq3v9Lr2TmPz@postgres:5432/shop?sslmode=disable"),
            "DATABASE_URL=postgres://shop:<redacted>@postgres:5432/shop?sslmode=disable"
        );
        assert_eq!(
            env_entry("SMTP=smtp://mailer:Pa55@smtp.example.com:587"),
            "SMTP=smtp://mailer:<redacted>@smtp.example.com:587"
        );
        assert_eq!(env_entry("GIT=https://ghtoken@github.com/a/b.git"), "GIT=https://<redacted>@github.com/a/b.git");
        assert_eq!(
            env_entry("BROKERS=amqp://a:b@h1/v,amqp://c:d@h2/v"),
            "BROKERS=amqp://a:<redacted>@h1/v,amqp://c:<redacted>@h2/v"
        );
        for plain in ["REDIS_URL=redis://redis:6379/0", "INFLUX_URL=http://influxdb:8086", "X=mailto:a@b.c"] {
            assert_eq!(env_entry(plain), plain);
        }
    }

    #[test]
    fn values_that_look_like_credentials_are_redacted_whatever_their_name() {
        for value in [
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "glpat-xxxxxxxxxxxxxxxxxxxx",
            "AKIAIOSFODNN7EXAMPLE",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "Zm9vYmFyLXRva2VuLWZvci1maXh0dXJlcy1vbmx5LTEyMzQ1Njc4OTA=",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
        ] {
            assert_eq!(env_entry(&format!("CONFIG={value}")), "CONFIG=<redacted>", "{value}");
        }
        // Checksums, paths, versions, ids and lists are not.
        for value in [
            "d665fe7d0032881b1371a47f34169ee4edab67903b2cd2b4c083822823f4448a",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "16.1-1.pgdg120+1",
            "grafana-clock-panel,grafana-piechart-panel",
            "998d0bb4-4432-33c5-1873-059f70b19851",
            "Europe/Berlin",
        ] {
            assert_eq!(env_entry(&format!("X={value}")), format!("X={value}"), "{value}");
        }
    }

    #[test]
    fn arguments_are_redacted_by_option_name_and_value() {
        assert_eq!(argument("--password=hunter2"), "--password=<redacted>");
        assert_eq!(argument("--db.password=x"), "--db.password=<redacted>");
        assert_eq!(argument("--dsn=postgres://u:p@db/x"), "--dsn=<redacted>");
        assert_eq!(argument("postgres://u:p@db/x"), "postgres://u:<redacted>@db/x");
        assert_eq!(argument("--config.file=/etc/loki/local-config.yaml"), "--config.file=/etc/loki/local-config.yaml");
        assert_eq!(argument("--appendonly"), "--appendonly");
        assert_eq!(argument("ghp_16C7e42F292c6912E7710c838347Ae178B4a"), REDACTED);
        let args = |a: &[&str]| arguments(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            args(&["--requirepass", "hunter2", "--port", "6379"]),
            ["--requirepass", REDACTED, "--port", "6379"]
        );
        assert_eq!(args(&["--appendonly", "yes"]), ["--appendonly", "yes"]);
        assert_eq!(
            args(&["-c", "PGPASSWORD=s3cret psql -h db; echo done"]),
            ["-c", "PGPASSWORD=<redacted> psql -h db; echo done"]
        );
        assert_eq!(label("traefik.http.middlewares.a.basicauth.users", "u:$apr1$x"), REDACTED);
        assert_eq!(label("com.docker.compose.project", "shop"), "shop");
    }
}
