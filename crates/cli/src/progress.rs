//! Progress of long operations: a live line on a terminal, nothing in a pipe (scripts read
//! only results). No colour anywhere, so `NO_COLOR` and dumb terminals see plain text.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is shown: stderr is a terminal that can redraw a line.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// A spinner with a message that later events replace; `None` in a pipe.
pub fn spinner(msg: &str) -> Option<ProgressBar> {
    if !enabled() {
        return None;
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    Some(pb)
}

/// A byte counter with the rate (and the share done, when the size is known).
pub fn bytes(total: Option<u64>, msg: &str) -> Option<ProgressBar> {
    if !enabled() {
        return None;
    }
    let (pb, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "{msg} {bytes}/{total_bytes} {binary_bytes_per_sec} {percent}%",
        ),
        None => (
            ProgressBar::no_length(),
            "{msg} {bytes} {binary_bytes_per_sec}",
        ),
    };
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}
