//! Splits what the guest writes (its console, the agent's log stream) into lines for the log,
//! with a bound: a line longer than [`MAX_LINE`] is cut there and the rest of it dropped, so a
//! guest that never writes a newline cannot grow the shim's memory.

/// Longest line kept, in bytes; a longer one is cut and marked.
pub const MAX_LINE: usize = 4096;

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
                    out.extend(take_line(&mut self.pending, " [line cut]"));
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
        assert!(cut[0].ends_with(" [line cut]"));
        assert_eq!(cut[0].len(), MAX_LINE + " [line cut]".len());
        // The next line after the newline comes through whole.
        assert_eq!(s.push(b"aaa\nnext\n"), ["next"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }
}
