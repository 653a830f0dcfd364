//! Timestamps on the wire: UTC RFC 3339 with exactly three fractional digits and a `Z`.
//!
//! Python < 3.11 rejects nine digits and Go rejects `""`, so every timestamp goes through here.

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Formats Unix milliseconds as `2026-01-05T10:30:00.123Z`.
pub fn format_millis(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Parses any RFC 3339 timestamp into Unix milliseconds.
pub fn parse_millis(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = format_millis(1_767_609_000_123);
        assert_eq!(s, "2026-01-05T10:30:00.123Z");
        assert_eq!(parse_millis(&s), Some(1_767_609_000_123));
    }
}
