//! Fuzz target: the shim's handling of the lines a hostile guest writes (console, agent log):
//! arbitrary bytes in arbitrary chunks at arbitrary times, through the line splitter, the
//! rate gate and the console ring, holding their bounds.
#![no_main]

use std::time::Duration;

use kata_shim::guest_output::lines::{LimitedLines, CUT_MARK};
use kata_shim::guest_output::ring::LineRing;
use kata_shim::guest_output::{CONSOLE_RING_BYTES, LINES_PER_SEC, LINE_BURST, MAX_LINE};
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

/// A line after lossy UTF-8 decoding: each invalid byte may become a 3-byte U+FFFD.
const MAX_DECODED_LINE: usize = 3 * MAX_LINE + CUT_MARK.len();

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut lines = LimitedLines::new(now);
    let mut ring = LineRing::new(CONSOLE_RING_BYTES);
    let mut logged = 0u64;
    let mut rest = data;
    // Each step: [time to advance in 50 ms units, repeats, chunk length, chunk...]: a guest
    // that writes the same bytes many times reaches lengths past the input's own size.
    while let [advance, repeats, len, tail @ ..] = rest {
        now += Duration::from_millis(u64::from(*advance) * 50);
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        let written = chunk.repeat(usize::from(*repeats).max(1));
        for line in lines.push(&written, now) {
            assert!(line.text.len() <= MAX_DECODED_LINE, "{} bytes", line.text.len());
            logged += u64::from(line.to_log);
            ring.push(&line.text);
            assert!(ring.bytes() <= CONSOLE_RING_BYTES);
        }
        let allowed = u64::from(LINE_BURST)
            + u64::from(LINES_PER_SEC) * (now - start).as_secs()
            + u64::from(LINES_PER_SEC);
        assert!(logged <= allowed, "{logged} lines logged, {allowed} allowed");
        rest = next;
    }
});
