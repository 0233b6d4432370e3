//! The agent's configuration, read the Portainer way from environment
//! variables so its users feel at home. Read once, validated once; secrets
//! live in types whose `Debug` masks them. The environment comes in as a
//! map, so tests feed one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::auth::{AuthError, JoinToken};

/// A secret string (AGENT_SECRET) whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(****)")
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Chatty.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn as_filter(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// From EDGE_KEY. With a fleet join token ([`Self::fleet`]) it holds
    /// only the token's server URL and certificate pin until the device is
    /// admitted (`agent::enrol`), which fills in the rest.
    pub token: JoinToken,
    /// EDGE_KEY when it is a fleet join token (`tern1f_…`): the device asks
    /// to join (`agent::enrol`), with EDGE_GROUP and EDGE_TAGS.
    pub fleet: Option<Fleet>,
    /// EDGE_ID; generated and persisted in the data path when absent.
    pub edge_id: Option<String>,
    /// EDGE_INSECURE_POLL=1: accept any server certificate (loudly).
    pub insecure_poll: bool,
    /// EDGE_TLS_PQ=1: offer the post-quantum hybrid key exchange
    /// (X25519MLKEM768, about 2.3 KB more per connection) before X25519.
    pub tls_pq: bool,
    /// AGENT_SECRET, which must match the server's when it has one.
    pub agent_secret: Option<SecretString>,
    /// DATA_PATH: where the agent keeps what must survive a restart.
    pub data_path: PathBuf,
    /// DOCKER_HOST, when set; otherwise the local default socket.
    pub docker_host: Option<String>,
    /// LOG_LEVEL.
    pub log_level: LogLevel,
    /// EDGE_COMPOSE: how stacks are deployed (`auto`: the host's compose
    /// tool when present, else the built-in one; `builtin`; `tool`).
    pub compose: super::compose::ComposeMode,
    /// EDGE_JOB_IMAGE, EDGE_JOB_PRIVILEGED, EDGE_JOB_CHROOT: how edge jobs
    /// run (see `agent::jobs`).
    pub jobs: super::jobs::JobConfig,
    /// EDGE_POLL_TIMEOUT: a poll (connection, request and reply) that takes
    /// longer failed, and the agent backs off and tries again on a new
    /// connection. It is how long a silently dead link (a blackhole, a
    /// carrier NAT that forgot the flow) can hold a poll.
    pub poll_timeout: std::time::Duration,
    /// EDGE_SESSION (`on` by default; `off` forces polling): hold a session with the server,
    /// which delivers commands as soon as they are queued and costs a
    /// keepalive per NAT timeout when idle, rather than poll.
    pub session: bool,
    /// EDGE_SESSION_KEEPALIVE: the first keepalive period the session
    /// tries, in seconds (default 90); it then learns the path's NAT.
    pub keepalive_start: std::time::Duration,
    /// EDGE_HOST_VARS: the host variables passed through to the agent
    /// (the wizard's list) that its stacks' `${VAR}` may use.
    pub host_vars: Vec<String>,
    /// HTTPS_PROXY (or HTTP_PROXY) unless NO_PROXY lists the server: the
    /// agent reaches its server through this proxy's tunnel.
    pub proxy: Option<crate::agent::proxy::Proxy>,
}

/// A fleet join token and what the device asks for with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The token.
    pub token: crate::enrol::FleetToken,
    /// EDGE_GROUP: the group the device asks to be admitted into.
    pub group: String,
    /// EDGE_TAGS: the tags it asks for (comma-separated).
    pub tags: Vec<String>,
}

/// EDGE_GROUP and EDGE_TAGS, checked as the server will.
fn fleet_asks(env: &BTreeMap<String, String>) -> Result<(String, Vec<String>), ConfigError> {
    use crate::enrol::{MAX_TAG, MAX_TAGS, MAX_TEXT};
    let group = env.get("EDGE_GROUP").map(|g| g.trim().to_owned()).unwrap_or_default();
    if group.len() > MAX_TEXT || group.chars().any(char::is_control) {
        return Err(ConfigError::BadValue {
            name: "EDGE_GROUP",
            value: group,
            why: "use a group name of at most 128 bytes",
        });
    }
    let mut tags: Vec<String> = Vec::new();
    if let Some(list) = env.get("EDGE_TAGS") {
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if t.len() > MAX_TAG || t.chars().any(char::is_control) {
                return Err(ConfigError::BadValue {
                    name: "EDGE_TAGS",
                    value: list.clone(),
                    why: "use comma-separated tags of at most 64 bytes each",
                });
            }
            if !tags.iter().any(|x| x == t) {
                tags.push(t.to_owned());
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(ConfigError::BadValue { name: "EDGE_TAGS", value: list.clone(), why: "use at most 16 tags" });
        }
    }
    Ok((group, tags))
}

/// The default of EDGE_POLL_TIMEOUT: a 12 KB first snapshot on a 50 kbit/s
/// link with 2 % loss takes a few seconds; two minutes leaves room for a
/// very bad link.
pub const DEFAULT_POLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A configuration error: one clear line, and the agent exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// EDGE_KEY is not set.
    #[error("EDGE_KEY is not set: pass the join token printed by `tern env add`")]
    MissingKey,
    /// EDGE_KEY is not a valid token.
    #[error("EDGE_KEY is invalid: {0}")]
    BadKey(AuthError),
    /// A variable has a value it cannot take.
    #[error("{name}={value:?} is invalid: {why}")]
    BadValue {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        why: &'static str,
    },
    /// An EDGE_* / AGENT_* variable tern does not know: most likely a typo.
    #[error("unknown setting {0}{1}")]
    Unknown(String, String),
    /// HTTPS_PROXY or HTTP_PROXY names no usable proxy.
    #[error("{0}")]
    Proxy(#[from] crate::agent::proxy::ProxyError),
}

use crate::edge_env::KNOWN;

/// The default data path: the volume the generated `docker run` mounts.
pub const DEFAULT_DATA_PATH: &str = "/data";

fn flag(env: &BTreeMap<String, String>, name: &'static str) -> Result<bool, ConfigError> {
    match env.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v.is_empty() || v == "0" || v == "false" || v == "no" => Ok(false),
        Some(v) if v == "1" || v == "true" || v == "yes" => Ok(true),
        Some(v) => Err(ConfigError::BadValue { name, value: v, why: "use 1 or 0" }),
    }
}

/// The known name within a few typos of `name`, as a hint.
fn closest(name: &str) -> String {
    KNOWN
        .iter()
        .map(|k| (strsim::levenshtein(k, name), k))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

/// EDGE_JOB_*: a flag left out keeps its default (on).
fn jobs_config(env: &BTreeMap<String, String>) -> Result<super::jobs::JobConfig, ConfigError> {
    let on = |name| Ok::<_, ConfigError>(env.get(name).is_none_or(|v| v.trim().is_empty()) || flag(env, name)?);
    let image = match env.get("EDGE_JOB_IMAGE").map(|v| v.trim()) {
        None | Some("") => super::jobs::DEFAULT_IMAGE.to_owned(),
        Some(v) if v.len() > 256 || v.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(ConfigError::BadValue {
                name: "EDGE_JOB_IMAGE",
                value: v.to_owned(),
                why: "use an image reference (with `sh` and `chroot`), e.g. busybox:latest",
            });
        }
        Some(v) => v.to_owned(),
    };
    Ok(super::jobs::JobConfig {
        image,
        privileged: on("EDGE_JOB_PRIVILEGED")?,
        chroot: on("EDGE_JOB_CHROOT")?,
        ..Default::default()
    })
}

impl AgentConfig {
    /// Reads the settings from an environment.
    ///
    /// # Errors
    /// The first problem found, as one line.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        for name in env.keys() {
            if !crate::edge_env::accepted(name) {
                return Err(ConfigError::Unknown(name.clone(), closest(name)));
            }
        }
        let key = env.get("EDGE_KEY").map(|k| k.trim()).filter(|k| !k.is_empty()).ok_or(ConfigError::MissingKey)?;
        let (token, fleet) = if crate::enrol::is_fleet_key(key) {
            let fleet = crate::enrol::FleetToken::parse(key).map_err(ConfigError::BadKey)?;
            if flag(env, "EDGE_INSECURE_POLL")? {
                return Err(ConfigError::BadValue {
                    name: "EDGE_INSECURE_POLL",
                    value: "1".into(),
                    why: "not with a fleet join token: a device sends its key once when it asks to join, and only \
                          the certificate the token pins keeps it private",
                });
            }
            let (group, tags) = fleet_asks(env)?;
            // Until admitted: where the server is, and its pin.
            let token = JoinToken {
                url: fleet.url.clone(),
                environment: 0,
                secret: crate::auth::Secret([0; 32]),
                cert_sha256: fleet.cert_sha256,
            };
            (token, Some(Fleet { token: fleet, group, tags }))
        } else {
            for name in ["EDGE_GROUP", "EDGE_TAGS"] {
                if let Some(v) = env.get(name).filter(|v| !v.trim().is_empty()) {
                    return Err(ConfigError::BadValue {
                        name,
                        value: v.clone(),
                        why: "only with a fleet join token (tern1f_…): an environment's own token has its group \
                              and tags on the server",
                    });
                }
            }
            (JoinToken::parse(key).map_err(ConfigError::BadKey)?, None)
        };
        let proxy = match crate::agent::proxy::server_of(&token.url) {
            Some((host, port)) => crate::agent::proxy::from_env(env, &host, port)?,
            None => None,
        };
        let edge_id = match env.get("EDGE_ID").map(|v| v.trim().to_owned()) {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) if v.len() > 128 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) => {
                return Err(ConfigError::BadValue {
                    name: "EDGE_ID",
                    value: v,
                    why: "use up to 128 letters, digits, '-', '_', '.' or ':'",
                });
            }
            Some(v) => Some(v),
        };
        let log_level = match env.get("LOG_LEVEL").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("info") => LogLevel::Info,
            Some("error") => LogLevel::Error,
            Some("warn") | Some("warning") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some("trace") => LogLevel::Trace,
            Some(v) => {
                return Err(ConfigError::BadValue {
                    name: "LOG_LEVEL",
                    value: v.to_owned(),
                    why: "use error, warn, info, debug or trace",
                });
            }
        };
        Ok(Self {
            token,
            fleet,
            edge_id,
            insecure_poll: flag(env, "EDGE_INSECURE_POLL")?,
            tls_pq: flag(env, "EDGE_TLS_PQ")?,
            agent_secret: env.get("AGENT_SECRET").filter(|s| !s.is_empty()).map(|s| SecretString(s.clone())),
            data_path: env.get("DATA_PATH").filter(|s| !s.is_empty()).map_or(DEFAULT_DATA_PATH.into(), PathBuf::from),
            docker_host: env.get("DOCKER_HOST").filter(|s| !s.is_empty()).cloned(),
            log_level,
            compose: match env.get("EDGE_COMPOSE") {
                None => super::compose::ComposeMode::Auto,
                Some(v) => super::compose::ComposeMode::parse(v).ok_or_else(|| ConfigError::BadValue {
                    name: "EDGE_COMPOSE",
                    value: v.clone(),
                    why: "use auto, builtin or tool",
                })?,
            },
            jobs: jobs_config(env)?,
            poll_timeout: poll_timeout(env)?,
            session: match env.get("EDGE_SESSION").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
                None | Some("" | "1" | "on" | "true" | "yes") => true,
                Some("0" | "off" | "false" | "no") => false,
                Some(v) => {
                    return Err(ConfigError::BadValue {
                        name: "EDGE_SESSION",
                        value: v.to_owned(),
                        why: "use on or off (default on)",
                    });
                }
            },
            keepalive_start: match env.get("EDGE_SESSION_KEEPALIVE").map(|v| v.trim()) {
                None | Some("") => crate::agent::keepalive::DEFAULT_START,
                Some(v) => match v.parse::<u64>() {
                    Ok(s) if (1..=7200).contains(&s) => std::time::Duration::from_secs(s),
                    _ => {
                        return Err(ConfigError::BadValue {
                            name: "EDGE_SESSION_KEEPALIVE",
                            value: v.to_owned(),
                            why: "use whole seconds from 1 to 7200 (default 90)",
                        });
                    }
                },
            },
            host_vars: host_vars(env)?,
            proxy,
        })
    }
}

/// EDGE_HOST_VARS: variable names, comma- or space-separated; none of the
/// agent's own (`EDGE*`, `AGENT_*`: its key and secret never reach a
/// stack).
fn host_vars(env: &BTreeMap<String, String>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = env.get("EDGE_HOST_VARS") else { return Ok(Vec::new()) };
    let mut out: Vec<String> = Vec::new();
    for v in list.split([',', ' ']).map(str::trim).filter(|v| !v.is_empty()) {
        let mut chars = v.chars();
        let name = v.len() <= 128
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name || crate::edge_env::is_agents(v) {
            return Err(ConfigError::BadValue {
                name: "EDGE_HOST_VARS",
                value: list.clone(),
                why: "list variable names (letters, digits, _), none of the agent's own EDGE*/AGENT_* settings",
            });
        }
        if !out.iter().any(|o| o == v) {
            out.push(v.to_owned());
        }
    }
    Ok(out)
}

/// EDGE_POLL_TIMEOUT: whole seconds, 5 to 3600.
fn poll_timeout(env: &BTreeMap<String, String>) -> Result<std::time::Duration, ConfigError> {
    match env.get("EDGE_POLL_TIMEOUT").map(|v| v.trim()) {
        None | Some("") => Ok(DEFAULT_POLL_TIMEOUT),
        Some(v) => match v.parse::<u64>() {
            Ok(s) if (5..=3600).contains(&s) => Ok(std::time::Duration::from_secs(s)),
            _ => Err(ConfigError::BadValue {
                name: "EDGE_POLL_TIMEOUT",
                value: v.to_owned(),
                why: "use whole seconds from 5 to 3600 (default 120)",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn key() -> String {
        JoinToken { url: "https://ops:9443".into(), environment: 3, secret: Secret([5; 32]), cert_sha256: [6; 32] }
            .encode()
    }

    #[test]
    fn a_portainer_style_command_line_is_understood() {
        let k = key();
        let c = AgentConfig::from_env(&env(&[
            ("EDGE", "1"),
            ("EDGE_ASYNC", "1"),
            ("EDGE_KEY", &k),
            ("EDGE_ID", "site-17"),
            ("EDGE_INSECURE_POLL", "1"),
            ("AGENT_SECRET", "s3cret"),
            ("PATH", "/usr/bin"),
        ]))
        .unwrap();
        assert_eq!(c.token.environment, 3);
        assert_eq!(c.edge_id.as_deref(), Some("site-17"));
        assert!(c.insecure_poll);
        assert!(!c.tls_pq, "X25519 unless asked");
        assert_eq!(c.data_path, PathBuf::from("/data"));
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(!format!("{c:?}").contains("s3cret"), "secrets stay out of Debug");
    }

    #[test]
    fn edge_compose_chooses_how_stacks_are_deployed() {
        use crate::agent::compose::ComposeMode;
        let k = key();
        assert_eq!(AgentConfig::from_env(&env(&[("EDGE_KEY", &k)])).unwrap().compose, ComposeMode::Auto);
        for (value, mode) in
            [("builtin", ComposeMode::Builtin), ("tool", ComposeMode::Tool), ("auto", ComposeMode::Auto)]
        {
            let c = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_COMPOSE", value)])).unwrap();
            assert_eq!(c.compose, mode, "EDGE_COMPOSE={value}");
        }
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_COMPOSE", "podman")])).unwrap_err();
        assert_eq!(e.to_string(), "EDGE_COMPOSE=\"podman\" is invalid: use auto, builtin or tool");
    }

    #[test]
    fn edge_job_settings_choose_the_helper_and_how_it_runs() {
        use crate::agent::jobs::JobConfig;
        let k = key();
        assert_eq!(AgentConfig::from_env(&env(&[("EDGE_KEY", &k)])).unwrap().jobs, JobConfig::default());
        let c = AgentConfig::from_env(&env(&[
            ("EDGE_KEY", &k),
            ("EDGE_JOB_IMAGE", "alpine:3.20"),
            ("EDGE_JOB_PRIVILEGED", "0"),
            ("EDGE_JOB_CHROOT", "no"),
        ]))
        .unwrap();
        assert_eq!((c.jobs.image.as_str(), c.jobs.privileged, c.jobs.chroot), ("alpine:3.20", false, false));
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_JOB_PRIVILEGED", "maybe")])).unwrap_err();
        assert_eq!(e.to_string(), "EDGE_JOB_PRIVILEGED=\"maybe\" is invalid: use 1 or 0");
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_JOB_IMAGE", "a b")])).unwrap_err();
        assert!(e.to_string().starts_with("EDGE_JOB_IMAGE=\"a b\" is invalid"));
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_JOB_IMAGES", "x")])).unwrap_err();
        assert_eq!(e.to_string(), "unknown setting EDGE_JOB_IMAGES (did you mean EDGE_JOB_IMAGE?)");
    }

    #[test]
    fn edge_tls_pq_turns_on_the_post_quantum_key_exchange() {
        let k = key();
        for (value, on) in [("1", true), ("true", true), ("yes", true), ("0", false), ("", false), ("no", false)] {
            let c = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_TLS_PQ", value)])).unwrap();
            assert_eq!(c.tls_pq, on, "EDGE_TLS_PQ={value:?}");
        }
        assert!(!AgentConfig::from_env(&env(&[("EDGE_KEY", &k)])).unwrap().tls_pq);
    }

    #[test]
    fn typos_get_the_nearest_name() {
        assert_eq!(closest("EDGE_KY"), " (did you mean EDGE_KEY?)");
        assert_eq!(closest("EDGE_INSECURE_POL"), " (did you mean EDGE_INSECURE_POLL?)");
        assert_eq!(closest("AGENT_SECRETS"), " (did you mean AGENT_SECRET?)");
        assert_eq!(closest("EDGE_TLS_P"), " (did you mean EDGE_TLS_PQ?)");
        assert_eq!(closest("EDGE_SOMETHING_ELSE"), "");
    }

    #[test]
    fn bad_configuration_gets_one_clear_line() {
        let k = key();
        assert_eq!(AgentConfig::from_env(&env(&[])), Err(ConfigError::MissingKey));
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", "portainer-style-key")])).unwrap_err();
        assert_eq!(e.to_string(), "EDGE_KEY is invalid: not a tern join token (it should start with tern1_)");
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_INSECURE_POL", "1")])).unwrap_err();
        assert_eq!(e.to_string(), "unknown setting EDGE_INSECURE_POL (did you mean EDGE_INSECURE_POLL?)");
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_INSECURE_POLL", "maybe")])).unwrap_err();
        assert_eq!(e.to_string(), "EDGE_INSECURE_POLL=\"maybe\" is invalid: use 1 or 0");
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_TLS_PQ", "on")])).unwrap_err();
        assert_eq!(e.to_string(), "EDGE_TLS_PQ=\"on\" is invalid: use 1 or 0");
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_TLS_PQC", "1")])).unwrap_err();
        assert_eq!(e.to_string(), "unknown setting EDGE_TLS_PQC (did you mean EDGE_TLS_PQ?)");
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("LOG_LEVEL", "loud")])).unwrap_err();
        assert!(e.to_string().starts_with("LOG_LEVEL=\"loud\" is invalid"));
        let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_ID", "a b")])).unwrap_err();
        assert!(e.to_string().starts_with("EDGE_ID=\"a b\" is invalid"));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn edge_session_turns_the_held_session_on_and_its_keepalive_is_bounded() {
        let k = key();
        let c = AgentConfig::from_env(&env(&[("EDGE_KEY", &k)])).unwrap();
        assert!(c.session, "on by default");
        assert_eq!(c.keepalive_start, crate::agent::keepalive::DEFAULT_START);
        for on in ["on", "1", "ON", "true"] {
            assert!(AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_SESSION", on)])).unwrap().session);
        }
        for off in ["off", "0", "OFF", "false"] {
            assert!(!AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_SESSION", off)])).unwrap().session);
        }
        assert!(AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_SESSION", "sometimes")])).is_err());
        let c = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_SESSION_KEEPALIVE", "600")])).unwrap();
        assert_eq!(c.keepalive_start, std::time::Duration::from_secs(600));
        for bad in ["0", "7201", "1m"] {
            assert!(AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_SESSION_KEEPALIVE", bad)])).is_err());
        }
    }

    #[test]
    fn edge_poll_timeout_bounds_a_poll() {
        let k = key();
        let c = AgentConfig::from_env(&env(&[("EDGE_KEY", &k)])).unwrap();
        assert_eq!(c.poll_timeout, DEFAULT_POLL_TIMEOUT);
        let c = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_POLL_TIMEOUT", "20")])).unwrap();
        assert_eq!(c.poll_timeout, std::time::Duration::from_secs(20));
        for bad in ["0", "4", "3601", "1m", "-5"] {
            let e = AgentConfig::from_env(&env(&[("EDGE_KEY", &k), ("EDGE_POLL_TIMEOUT", bad)])).unwrap_err();
            assert!(e.to_string().starts_with("EDGE_POLL_TIMEOUT="), "{bad}: {e}");
        }
    }
}
