//! Durations clients send: Go-style strings (`10s`, `1m30s`, `250ms`), bare or JSON numbers of
//! seconds. Parsed here, once, with bounds: what comes out can go into timers and `Instant`
//! arithmetic without overflowing or panicking.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest duration accepted from a client: longer than any timer the API runs, far below
/// anything that could overflow (`0` stands for "forever" where a field allows it).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

const NANOS_PER_SEC: u128 = 1_000_000_000;

fn too_long(s: &str) -> String {
    format!(
        "invalid duration {s:?}: at most {} ({} days)",
        format_duration(MAX_DURATION),
        MAX_DURATION.as_secs() / 86_400
    )
}

/// Parses a Go-style duration (`10s`, `1m30s`, `1.5s`, `250ms`, `0`); a bare number is seconds.
/// Negative, NaN, infinite and values above [`MAX_DURATION`] are errors.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return from_secs_f64(secs).map_err(|e| format!("invalid duration {t:?}: {e}"));
    }
    if t.starts_with('-') {
        return Err(format!("invalid duration {t:?}: must not be negative"));
    }
    let max = MAX_DURATION.as_nanos();
    let mut total: u128 = 0;
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    if rest.is_empty() {
        return Err(format!("invalid duration {t:?}"));
    }
    while !rest.is_empty() {
        let (int, after) = split_digits(rest);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => split_digits(a),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(format!("invalid duration {t:?}"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "" => return Err(format!("invalid duration {t:?}: missing unit")),
            _ => return Err(format!("invalid duration {t:?}: unknown unit {unit:?}")),
        };
        // Digits beyond what can stay under the maximum make it too long either way.
        let whole = digits_value(int, 20).ok_or_else(|| too_long(t))?;
        // Eighteen fractional digits are finer than a nanosecond at every unit.
        let frac = &frac[..frac.len().min(18)];
        let frac_ns = digits_value(frac, 18).unwrap_or(0) * scale / 10u128.pow(frac.len() as u32);
        total = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_ns))
            .and_then(|n| n.checked_add(total))
            .filter(|n| *n <= max)
            .ok_or_else(|| too_long(t))?;
        rest = tail;
    }
    // `total <= max` keeps both parts in range.
    Ok(Duration::new(
        (total / NANOS_PER_SEC) as u64,
        (total % NANOS_PER_SEC) as u32,
    ))
}

fn split_digits(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// Value of a run of ASCII digits, `None` when longer than `max_len` digits.
fn digits_value(d: &str, max_len: usize) -> Option<u128> {
    if d.len() > max_len {
        return None;
    }
    Some(d.bytes().fold(0u128, |n, b| n * 10 + u128::from(b - b'0')))
}

/// Seconds as a number (a JSON `timeout`, say), bounded like [`parse_duration`].
pub fn from_secs_f64(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() || secs.is_infinite() {
        return Err("must be a finite number of seconds".into());
    }
    if secs < 0.0 {
        return Err("must not be negative".into());
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "at most {} ({} s)",
            format_duration(MAX_DURATION),
            MAX_DURATION.as_secs()
        )),
    }
}

/// A duration as JSON sends it: seconds as a number, or a duration string.
pub fn from_json(v: &serde_json::Value) -> Result<Duration, String> {
    match v {
        serde_json::Value::Number(n) => {
            let secs = n.as_f64().ok_or_else(|| format!("invalid duration {n}"))?;
            from_secs_f64(secs).map_err(|e| format!("invalid duration {n}: {e}"))
        }
        serde_json::Value::String(s) => parse_duration(s),
        _ => Err("a duration is seconds or a string such as \"30s\"".into()),
    }
}

/// Formats like Go's `time.Duration.String` (`1h0m0s`, `1.5s`, `250ms`, `0s`);
/// [`parse_duration`] reads it back exactly.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < NANOS_PER_SEC {
        let (unit, scale) = match ns {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", decimal(ns, scale));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let s = u128::from(secs % 60) * NANOS_PER_SEC + u128::from(d.subsec_nanos());
    let _ = write!(out, "{}s", decimal(s, NANOS_PER_SEC));
    out
}

/// `n / scale` in decimal, without trailing zeros; `scale` is a power of ten.
fn decimal(n: u128, scale: u128) -> String {
    let (int, rem) = (n / scale, n % scale);
    if rem == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// A client duration inside a typed JSON body: a number of seconds or a duration string,
/// bounded as [`parse_duration`]; written back as a Go-style string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireDuration(pub Duration);

impl<'de> Deserialize<'de> for WireDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        from_json(&v)
            .map(WireDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for WireDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5.0s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3µs").unwrap(), Duration::from_micros(3));
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        for bad in [
            "",
            "10x",
            "-1s",
            "-1",
            "s",
            ".s",
            "1..2s",
            "NaN",
            "inf",
            "-inf",
            "1e20",
            "720h1ns",
            "1e400",
            "99999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("1e20").unwrap_err().contains("at most"));
    }

    #[test]
    fn numbers() {
        assert_eq!(from_secs_f64(1.5).unwrap(), Duration::from_millis(1500));
        assert_eq!(from_secs_f64(-0.0).unwrap(), Duration::ZERO);
        for bad in [
            1e20,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
        ] {
            assert!(from_secs_f64(bad).is_err(), "{bad}");
        }
        let v: WireDuration = serde_json::from_str("5").unwrap();
        assert_eq!(v.0, Duration::from_secs(5));
        let v: WireDuration = serde_json::from_str("\"2m\"").unwrap();
        assert_eq!(v.0, Duration::from_secs(120));
        for bad in [
            "1e20",
            "-1",
            "\"NaN\"",
            "true",
            "null",
            "[]",
            "18446744073709551616",
        ] {
            assert!(serde_json::from_str::<WireDuration>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s).unwrap(), d);
        }
    }
}
