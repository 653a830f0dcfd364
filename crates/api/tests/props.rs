//! Property tests of every parser that reads bytes from a client or a sprite: none may panic on
//! any input, each encoder round-trips through its parser, and out-of-range values are refused.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use sprites_api::checkpoint::{is_version_id, StreamEvent};
use sprites_api::duration::{
    format_duration, from_json, from_secs_f64, parse_duration, WireDuration, MAX_DURATION,
};
use sprites_api::exec::{self, ControlMessage, ExecRequest, KillRequest, OutputFrame};
use sprites_api::names::{validate_sprite_name, MAX_NAME_LEN};
use sprites_api::signal::{parse_signal, signal_name};
use sprites_api::timefmt::{format_millis, parse_millis};

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        duration_like().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("type".to_string()),
        Just("signal".to_string()),
        Just("timeout".to_string()),
        Just("cols".to_string()),
        Just("rows".to_string()),
        ".{0,6}",
    ]
}

/// Strings that look like durations, so the parser gets past its first checks.
fn duration_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9]{0,25}(\\.[0-9]{0,25})?((ns|us|µs|ms|s|m|h|x|)[0-9]{0,5}){0,4}",
        "[-+]?([0-9]{1,4}e[-+]?[0-9]{1,4}|NaN|nan|inf|infinity)",
        any::<f64>().prop_map(|f| f.to_string()),
        ".{0,16}",
    ]
}

fn exec_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cmd",
            "cmd[]",
            "path",
            "env",
            "env[]",
            "dir",
            "tty",
            "stdin",
            "rows",
            "cols",
            "max_run_after_disconnect",
            "id",
            "session_id",
            "output_offset",
            "detachable",
            "cc",
            "signal",
            "timeout",
        ])
        .prop_map(String::from),
        ".{0,8}",
    ]
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        duration_like(),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        prop::sample::select(vec!["true", "false", "1", "0", "", "A=1", "=x", "SIGINT"])
            .prop_map(String::from),
        ".{0,16}",
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((exec_key(), query_value()), 0..8)
}

fn known_signal() -> impl Strategy<Value = i32> {
    (1..=31i32).prop_filter("named", |n| signal_name(*n).is_some())
}

fn bounded_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0..=MAX_DURATION.as_nanos() as u64).prop_map(Duration::from_nanos),
        (0..=MAX_DURATION.as_secs()).prop_map(Duration::from_secs),
        (0..=MAX_DURATION.as_millis() as u64).prop_map(Duration::from_millis),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn durations_never_panic_and_stay_bounded(s in duration_like()) {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= MAX_DURATION, "{s:?} gave {d:?}");
        }
    }

    #[test]
    fn durations_round_trip(d in bounded_duration()) {
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        let w: WireDuration = serde_json::from_value(serde_json::to_value(WireDuration(d)).unwrap()).unwrap();
        prop_assert_eq!(w.0, d);
    }

    #[test]
    fn durations_above_the_maximum_are_refused(extra in 1u64..u64::MAX / 2, unit in prop::sample::select(vec![("ns", 1u128), ("ms", 1_000_000), ("s", 1_000_000_000), ("h", 3_600_000_000_000)])) {
        let (name, scale) = unit;
        // A count of `unit` just past the maximum, and far past it.
        let base = MAX_DURATION.as_nanos() / scale + 1;
        let n = base + u128::from(extra % 1000);
        for s in [
            format!("{n}{name}"),
            format!("{}{name}", u128::from(extra) * base),
            format!("-{extra}{name}"),
        ] {
            prop_assert!(parse_duration(&s).is_err(), "{}", s);
        }
    }

    #[test]
    fn seconds_as_numbers(f in any::<f64>()) {
        match from_secs_f64(f) {
            Ok(d) => prop_assert!(f >= 0.0 && f.is_finite() && d <= MAX_DURATION, "{f}"),
            Err(_) => prop_assert!(!(0.0..=MAX_DURATION.as_secs_f64()).contains(&f) || f.is_nan(), "{f}"),
        }
        let _ = from_json(&json!(f));
    }

    #[test]
    fn json_durations_never_panic(v in json_value()) {
        if let Ok(d) = from_json(&v) {
            prop_assert!(d <= MAX_DURATION);
        }
        let _ = serde_json::from_value::<WireDuration>(v);
    }

    #[test]
    fn exec_queries_never_panic(q in pairs()) {
        if let Ok(r) = ExecRequest::from_pairs(q.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            prop_assert!(r.max_run_after_disconnect.is_none_or(|d| d <= MAX_DURATION));
            prop_assert!(!r.argv().is_empty());
        }
    }

    #[test]
    fn output_frames(bytes in prop::collection::vec(any::<u8>(), 0..64), code in any::<u8>()) {
        let _ = exec::decode_output(&bytes);
        for (stream, frame) in [
            (exec::STREAM_STDOUT, OutputFrame::Stdout(&bytes)),
            (exec::STREAM_STDERR, OutputFrame::Stderr(&bytes)),
        ] {
            let encoded = exec::encode(stream, &bytes);
            prop_assert_eq!(exec::decode_output(&encoded), Some(frame));
        }
        let exit = exec::encode(exec::STREAM_EXIT, &[code]);
        prop_assert_eq!(exec::decode_output(&exit), Some(OutputFrame::Exit(code)));
    }

    #[test]
    fn exit_bytes_never_panic(code in any::<Option<i32>>(), sig in any::<Option<i32>>()) {
        let _ = exec::exit_byte(code, sig);
    }

    #[test]
    fn control_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), v in json_value()) {
        let _ = ControlMessage::parse(&bytes);
        let _ = ControlMessage::parse(v.to_string().as_bytes());
    }

    #[test]
    fn control_messages_round_trip(cols in any::<u16>(), rows in any::<u16>(), sig in known_signal()) {
        for m in [ControlMessage::Resize { cols, rows }, ControlMessage::Signal(sig), ControlMessage::StdinEof] {
            prop_assert_eq!(ControlMessage::parse(m.to_json().to_string().as_bytes()), Some(m));
        }
    }

    #[test]
    fn control_sizes_out_of_range_are_refused(big in 65_536u64.., small in any::<u16>()) {
        let m = json!({"type": "resize", "cols": big, "rows": small}).to_string();
        prop_assert_eq!(ControlMessage::parse(m.as_bytes()), None);
    }

    #[test]
    fn kill_requests_never_panic(q in pairs(), body in json_value(), raw in prop::collection::vec(any::<u8>(), 0..32)) {
        let q = || q.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for b in [body.to_string().into_bytes(), raw.clone()] {
            if let Ok(k) = KillRequest::parse(q(), &b) {
                prop_assert!(k.timeout <= MAX_DURATION);
                prop_assert!(signal_name(k.signal).is_some());
            }
        }
    }

    #[test]
    fn kill_requests_round_trip(signal in known_signal(), timeout in bounded_duration()) {
        let k = KillRequest { signal, timeout };
        let q = k.to_query();
        prop_assert_eq!(KillRequest::parse(q.iter().map(|(k, v)| (*k, v.as_str())), b""), Ok(k));
    }

    #[test]
    fn kill_timeouts_out_of_range_are_refused(secs in prop_oneof![
        (MAX_DURATION.as_secs_f64() + 1.0)..f64::MAX,
        f64::MIN..-f64::MIN_POSITIVE,
    ]) {
        let body = json!({"timeout": secs}).to_string();
        prop_assert!(KillRequest::parse([], body.as_bytes()).is_err(), "{body}");
        let q = [("timeout", secs.to_string())];
        prop_assert!(KillRequest::parse(q.iter().map(|(k, v)| (*k, v.as_str())), b"").is_err());
    }

    #[test]
    fn names(s in ".{0,70}", good in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
        if validate_sprite_name(&s).is_ok() {
            prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
            prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            prop_assert!(!s.starts_with('-') && !s.ends_with('-'));
        }
        prop_assert!(validate_sprite_name(&good).is_ok(), "{good}");
    }

    #[test]
    fn signals(s in ".{0,12}", n in any::<i32>(), sig in known_signal()) {
        let _ = parse_signal(&s);
        if let Some(parsed) = parse_signal(&n.to_string()) {
            prop_assert_eq!(parsed, n);
            prop_assert!(signal_name(n).is_some());
        }
        let name = signal_name(sig).unwrap();
        prop_assert_eq!(parse_signal(&name), Some(sig));
        prop_assert_eq!(parse_signal(&name.to_lowercase()), Some(sig));
        prop_assert_eq!(parse_signal(&name[3..]), Some(sig));
    }

    #[test]
    fn timestamps(s in ".{0,40}", ms in any::<i64>(), sane in -62_135_596_800_000i64..253_402_300_799_999) {
        let _ = parse_millis(&s);
        let _ = format_millis(ms);
        prop_assert_eq!(parse_millis(&format_millis(sane)), Some(sane));
    }

    #[test]
    fn checkpoint_lines(s in ".{0,40}", v in json_value(), kind in "[a-z]{1,8}", data in any::<Option<String>>()) {
        let _ = is_version_id(&s);
        let _ = serde_json::from_str::<StreamEvent>(&s);
        let _ = serde_json::from_value::<StreamEvent>(v);
        let e = StreamEvent { kind, data, error: None, time: Some("t".into()) };
        let line = serde_json::to_string(&e).unwrap();
        prop_assert_eq!(serde_json::from_str::<StreamEvent>(&line).unwrap(), e);
    }
}
