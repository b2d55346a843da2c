//! A token bucket per guest stream: [`LINE_BURST`] lines at once, then [`LINES_PER_SEC`]; what
//! goes over is dropped and counted. A flood episode (drops with no quiet gap of
//! [`FLOOD_QUIET`]) is reported once, with its count, when it ends, and every
//! [`FLOOD_REPORT_EVERY`] while it lasts: a flooding guest costs the shim's log one line per
//! episode instead of its whole output.

use std::time::Duration;

use tokio::time::Instant;

use super::{FLOOD_QUIET, FLOOD_REPORT_EVERY, LINES_PER_SEC, LINE_BURST};

/// What a flood episode cost: lines dropped since its start or its last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodReport {
    pub dropped: u64,
    /// From the first drop of the episode to its last one (or to now, while it lasts).
    pub lasted: Duration,
    /// The episode goes on (a periodic report).
    pub ongoing: bool,
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lines dropped ({} flooding for {:.1}s; the limit is {LINE_BURST} lines at once, then {LINES_PER_SEC} per second)",
            self.dropped,
            if self.ongoing { "still" } else { "stopped after" },
            self.lasted.as_secs_f64()
        )
    }
}

#[derive(Debug)]
struct Episode {
    started: Instant,
    last_drop: Instant,
    reported: Instant,
    /// Since the last report.
    dropped: u64,
}

/// Decides, line by line, whether a line goes to the log.
#[derive(Debug)]
pub struct RateGate {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    refilled: Instant,
    episode: Option<Episode>,
}

impl RateGate {
    /// A bucket of `burst` lines refilled at `per_sec` lines per second, full at `now`.
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        RateGate {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            refilled: now,
            episode: None,
        }
    }

    /// The gate every guest line stream gets.
    pub fn for_guest_lines(now: Instant) -> Self {
        Self::new(LINE_BURST, LINES_PER_SEC, now)
    }

    /// Whether one more line may go to the log at `now`; if not, it is counted as dropped.
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        let e = self.episode.get_or_insert(Episode {
            started: now,
            last_drop: now,
            reported: now,
            dropped: 0,
        });
        e.last_drop = now;
        e.dropped += 1;
        false
    }

    /// When [`RateGate::check`] may have a report: None while no line is being dropped.
    pub fn deadline(&self) -> Option<Instant> {
        self.episode
            .as_ref()
            .map(|e| (e.last_drop + FLOOD_QUIET).min(e.reported + FLOOD_REPORT_EVERY))
    }

    /// The report due at `now`, if any: the episode ended (quiet for [`FLOOD_QUIET`]), or it
    /// has gone on for another [`FLOOD_REPORT_EVERY`].
    pub fn check(&mut self, now: Instant) -> Option<FloodReport> {
        let e = self.episode.as_mut()?;
        if now >= e.last_drop + FLOOD_QUIET {
            return self.finish();
        }
        if now >= e.reported + FLOOD_REPORT_EVERY && e.dropped > 0 {
            let report = FloodReport {
                dropped: e.dropped,
                lasted: now.saturating_duration_since(e.started),
                ongoing: true,
            };
            e.reported = now;
            e.dropped = 0;
            return Some(report);
        }
        None
    }

    /// Ends the episode (the stream closed): its report, if lines were dropped since the last.
    pub fn finish(&mut self) -> Option<FloodReport> {
        let e = self.episode.take()?;
        (e.dropped > 0).then(|| FloodReport {
            dropped: e.dropped,
            lasted: e.last_drop.saturating_duration_since(e.started),
            ongoing: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut g = RateGate::new(10, 5, t0);
        assert_eq!((0..100).filter(|_| g.admit(t0)).count(), 10);
        // One second later, five more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| g.admit(t1)).count(), 5);
        // The bucket never holds more than the burst, however long the quiet.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| g.admit(t2)).count(), 10);
    }

    #[test]
    fn a_steady_stream_under_the_rate_is_never_dropped() {
        let t0 = Instant::now();
        let mut g = RateGate::for_guest_lines(t0);
        let step = Duration::from_secs(1) / (LINES_PER_SEC + 1);
        for n in 0..10_000u32 {
            assert!(g.admit(t0 + step * n), "line {n} dropped");
        }
        assert_eq!(g.deadline(), None);
        assert_eq!(g.finish(), None);
    }

    #[test]
    fn a_flood_gets_one_report_with_its_count_when_it_stops() {
        let t0 = Instant::now();
        let mut g = RateGate::for_guest_lines(t0);
        // 5 s of 10 lines per ms: 50_000 lines.
        let mut admitted = 0u64;
        let mut reports = Vec::new();
        for ms in 0..5000u32 {
            let now = t0 + MS * ms;
            for _ in 0..10 {
                admitted += u64::from(g.admit(now));
            }
            reports.extend(g.check(now));
        }
        assert!(reports.is_empty(), "no report while it floods: {reports:?}");
        let most = u64::from(LINE_BURST) + 5 * u64::from(LINES_PER_SEC) + 1;
        assert!(
            admitted <= most,
            "{admitted} lines admitted, at most {most}"
        );
        let last = t0 + MS * 4999;
        assert_eq!(g.deadline(), Some(last + FLOOD_QUIET));
        assert_eq!(g.check(last + FLOOD_QUIET - MS), None);
        let r = g.check(last + FLOOD_QUIET).expect("the episode ended");
        assert_eq!(r.dropped, 50_000 - admitted);
        assert!(!r.ongoing);
        // From the first drop (once the burst was spent, ~50 ms in) to the last.
        let whole = last - t0;
        assert!(r.lasted < whole && r.lasted > whole - MS * 100, "{r:?}");
        assert!(r
            .to_string()
            .starts_with(&format!("{} lines dropped", r.dropped)));
        // Over: no second report, and the next flood is a new episode.
        assert_eq!(g.check(last + FLOOD_QUIET * 10), None);
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn an_endless_flood_is_reported_periodically_and_at_the_end() {
        let t0 = Instant::now();
        let mut g = RateGate::new(1, 1, t0);
        let mut reports = Vec::new();
        let mut dropped = 0;
        for ms in (0..150_000u32).step_by(10) {
            let now = t0 + MS * ms;
            if !g.admit(now) {
                dropped += 1;
            }
            reports.extend(g.check(now));
        }
        reports.extend(g.finish());
        assert_eq!(reports.len(), 3, "{reports:?}");
        assert!(reports[0].ongoing && reports[1].ongoing && !reports[2].ongoing);
        assert_eq!(reports.iter().map(|r| r.dropped).sum::<u64>(), dropped);
    }
}
