//! Splits what the guest writes (its console, the agent's log stream) into lines for the log,
//! with a bound: a line longer than [`MAX_LINE`] is cut there and the rest of it dropped, so a
//! guest that never writes a newline cannot grow the shim's memory.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::rate::RateGate;
use super::MAX_LINE;

/// Bytes read from a guest stream at a time.
pub const CHUNK: usize = 16 * 1024;

/// Marks a line that was cut at [`MAX_LINE`].
pub const CUT_MARK: &str = " [line cut]";

/// Accumulates bytes and hands out complete lines, never holding more than [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// Dropping the rest of a line that was cut, until its newline.
    skipping: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; returns the lines completed (or cut) by them, without their newline,
    /// empty ones left out.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ends_line) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            if !self.skipping {
                let room = MAX_LINE - self.pending.len();
                self.pending
                    .extend_from_slice(&body[..body.len().min(room)]);
                if body.len() > room {
                    out.extend(take_line(&mut self.pending, CUT_MARK));
                    self.skipping = true;
                }
            }
            if ends_line {
                if !self.skipping {
                    out.extend(take_line(&mut self.pending, ""));
                }
                self.skipping = false;
            }
        }
        out
    }
}

/// One line of a guest stream and whether it may go to the shim's log (the rate allows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub to_log: bool,
}

/// A guest line stream, split with bounded lines and rate-limited for the log.
#[derive(Debug)]
pub struct LimitedLines {
    split: LineSplitter,
    pub gate: RateGate,
}

impl LimitedLines {
    pub fn new(now: Instant) -> Self {
        LimitedLines {
            split: LineSplitter::default(),
            gate: RateGate::for_guest_lines(now),
        }
    }

    /// The lines `bytes` completed, each marked with whether the log gets it.
    pub fn push(&mut self, bytes: &[u8], now: Instant) -> Vec<Line> {
        self.split
            .push(bytes)
            .into_iter()
            .map(|text| Line {
                to_log: self.gate.admit(now),
                text,
            })
            .collect()
    }
}

/// What a guest stream did next.
#[derive(Debug)]
pub enum Next {
    /// This many bytes were read into the buffer.
    Bytes(usize),
    /// The flood deadline passed: time to [`RateGate::check`].
    Tick,
    /// The stream ended (EOF, or the error).
    Closed(Option<std::io::Error>),
}

/// Reads the next chunk of `stream` into `buf`, or wakes at `deadline` (the gate's): one loop
/// per stream then both forwards lines and reports a flood when it stops, with no timer task.
pub async fn next_chunk<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Next {
    let tick = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = stream.read(buf) => match r {
            Ok(0) => Next::Closed(None),
            Ok(n) => Next::Bytes(n),
            Err(e) => Next::Closed(Some(e)),
        },
        () = tick => Next::Tick,
    }
}

fn take_line(pending: &mut Vec<u8>, suffix: &str) -> Option<String> {
    let text = String::from_utf8_lossy(pending).trim_end().to_string();
    pending.clear();
    (!text.is_empty()).then(|| text + suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"hel").is_empty());
        assert_eq!(s.push(b"lo\r\n\nworld\nx"), ["hello", "world"]);
        assert_eq!(s.push(b"y\n"), ["xy"]);
    }

    #[test]
    fn a_line_without_end_is_cut_and_memory_stays_bounded() {
        let mut s = LineSplitter::default();
        let mut cut = Vec::new();
        for _ in 0..1000 {
            cut.extend(s.push(&[b'a'; 1000]));
            assert!(s.pending.len() <= MAX_LINE);
        }
        assert_eq!(cut.len(), 1, "one cut line, the rest dropped");
        assert!(cut[0].ends_with(CUT_MARK));
        assert_eq!(cut[0].len(), MAX_LINE + CUT_MARK.len());
        // The next line after the newline comes through whole.
        assert_eq!(s.push(b"aaa\nnext\n"), ["next"]);
    }

    #[test]
    fn a_flood_of_lines_reaches_the_log_at_the_rate_only() {
        use crate::guest_output::{LINES_PER_SEC, LINE_BURST};
        let t0 = Instant::now();
        let mut l = LimitedLines::new(t0);
        let flood = b"<0>flood\n".repeat(10_000);
        let mut logged = 0;
        for s in 0..3u32 {
            let lines = l.push(&flood, t0 + std::time::Duration::from_secs(s.into()));
            assert_eq!(
                lines.len(),
                10_000,
                "every line still comes out (ring, file)"
            );
            logged += lines.iter().filter(|l| l.to_log).count();
        }
        assert_eq!(logged as u32, LINE_BURST + 2 * LINES_PER_SEC);
    }

    #[tokio::test]
    async fn next_chunk_wakes_at_the_deadline_without_data() {
        let (mut quiet, _writer) = tokio::io::duplex(64);
        let mut buf = [0u8; 8];
        let d = Instant::now() + std::time::Duration::from_millis(20);
        assert!(matches!(
            next_chunk(&mut quiet, &mut buf, Some(d)).await,
            Next::Tick
        ));
        assert!(Instant::now() >= d);
        drop(_writer);
        assert!(matches!(
            next_chunk(&mut quiet, &mut buf, None).await,
            Next::Closed(None)
        ));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }
}
