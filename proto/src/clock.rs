//! Wall-clock time as the protocol and the databases hold it: whole seconds
//! since the Unix epoch. One definition for the agent and the server.

/// Seconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
