//! Job schedules, as the server checks them and the agent runs them: one
//! parser for both, so what the server takes the agent takes. No I/O.

/// Parses a cron expression: 5 fields (minute hour day month weekday), or
/// 6 with a leading seconds field; no year field; `@hourly` and friends.
///
/// An empty item in a list (`,`, `1,,2`) is refused: croner takes it as a
/// field that matches nothing, and then searches years of times for the
/// next occurrence (36 s of CPU, found by the `api_json` fuzz target with
/// `*/68 , * * * *`).
///
/// # Errors
/// What is wrong, in the parser's words.
pub fn parse(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    if !expr.trim_start().starts_with('@') && expr.split_whitespace().any(|field| field.split(',').any(str::is_empty)) {
        return Err("a field has an empty item (a stray comma)".into());
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// The first occurrence of `cron` strictly after `after` (Unix seconds,
/// UTC), if any.
pub fn next_after(cron: &croner::Cron, after: i64) -> Option<i64> {
    let t = chrono::DateTime::from_timestamp(after, 0)?;
    cron.find_next_occurrence(&t, false).ok().map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_item_is_refused_before_a_search_of_years() {
        for bad in ["*/68 , * * * *", ", * * * *", "1,,2 * * * *", "0 1, * * *"] {
            let started = std::time::Instant::now();
            assert!(parse(bad).unwrap_err().contains("empty item"), "{bad:?}");
            assert!(started.elapsed() < std::time::Duration::from_millis(100));
        }
        let every5 = parse("*/5 * * * *").unwrap();
        assert_eq!(next_after(&every5, 1_796_000_000), Some(1_796_000_100));
        assert!(parse("@hourly").is_ok() && parse("0 9 * * 1,3,5").is_ok());
    }
}
