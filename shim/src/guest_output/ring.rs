//! The newest lines of a guest stream, bounded in bytes: what error messages quote.

use std::collections::VecDeque;

/// Lines kept oldest first, never more than `cap` bytes of text in all.
#[derive(Debug)]
pub struct LineRing {
    lines: VecDeque<String>,
    bytes: usize,
    cap: usize,
}

impl LineRing {
    pub fn new(cap: usize) -> Self {
        LineRing {
            lines: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    /// Adds a line, dropping the oldest ones to stay within the cap (a line longer than the
    /// whole cap keeps only its end).
    pub fn push(&mut self, line: &str) {
        let line = if line.len() > self.cap {
            let mut start = line.len() - self.cap;
            while !line.is_char_boundary(start) {
                start += 1;
            }
            &line[start..]
        } else {
            line
        };
        while self.bytes + line.len() > self.cap {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
        self.bytes += line.len();
        self.lines.push_back(line.to_string());
    }

    /// The last `n` lines, joined with newlines.
    pub fn tail(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Bytes of text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_within_its_cap() {
        let mut r = LineRing::new(100);
        for n in 0..10_000 {
            r.push(&format!("line {n}"));
            assert!(r.bytes() <= 100);
        }
        assert_eq!(r.tail(2), "line 9998\nline 9999");
        // Byte count matches what is held.
        assert_eq!(r.bytes(), r.lines.iter().map(String::len).sum::<usize>());
        assert_eq!(r.tail(1000).lines().count(), r.lines.len());
    }

    #[test]
    fn a_line_longer_than_the_cap_keeps_its_end() {
        let mut r = LineRing::new(8);
        r.push("first");
        r.push("0123456789é");
        assert_eq!(r.tail(5), "456789é", "8 bytes: é takes two");
        assert!(r.bytes() <= 8);
        // A cut never splits a character.
        let mut r = LineRing::new(1);
        r.push("é");
        assert_eq!(r.tail(1), "");
    }
}
