//! The search for the highest loss-free rate: double from a start rate
//! until a probe fails (or halve until one passes), then bisect between the
//! highest passing and the lowest failing rate until they are within a
//! relative precision. Bounded by a number of probes; the bench also bounds
//! it by time. Pure logic: the bench runs the probes and records verdicts.

/// State of one broker's search.
#[derive(Debug, Clone)]
pub struct RateSearch {
    start: f64,
    floor: f64,
    precision: f64,
    max_probes: usize,
    probes: usize,
    pass: Option<f64>,
    fail: Option<f64>,
}

impl RateSearch {
    /// A search from `start` msg/s that never probes below `floor`, stops
    /// bisecting when the failing rate is within `precision` (relative) of
    /// the passing one, and never runs more than `max_probes` probes.
    pub fn new(start: f64, floor: f64, precision: f64, max_probes: usize) -> Self {
        Self {
            start: start.max(1.0),
            floor: floor.max(1.0),
            precision: precision.max(0.001),
            max_probes,
            probes: 0,
            pass: None,
            fail: None,
        }
    }

    /// The next rate to probe (whole messages per second), or `None` when
    /// the search is over.
    pub fn next(&self) -> Option<f64> {
        if self.probes >= self.max_probes {
            return None;
        }
        let rate = match (self.pass, self.fail) {
            (None, None) => self.start,
            (Some(p), None) => p * 2.0,
            (None, Some(f)) => {
                let r = f / 2.0;
                if r < self.floor {
                    return None;
                }
                r
            }
            (Some(p), Some(f)) => {
                if f <= p || (f - p) / p <= self.precision {
                    return None;
                }
                (p + f) / 2.0
            }
        };
        let rate = rate.round();
        // Rounding must not probe a rate already decided.
        if Some(rate) == self.pass || Some(rate) == self.fail {
            return None;
        }
        Some(rate)
    }

    /// Record a probe's verdict.
    pub fn record(&mut self, rate: f64, loss_free: bool) {
        self.probes += 1;
        if loss_free {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest rate that passed.
    pub fn highest_pass(&self) -> Option<f64> {
        self.pass
    }

    /// The lowest rate that failed.
    pub fn lowest_fail(&self) -> Option<f64> {
        self.fail
    }

    /// Probes run so far.
    pub fn probes(&self) -> usize {
        self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a search against a broker that is loss-free up to `capacity`.
    fn against(capacity: f64, mut s: RateSearch) -> (RateSearch, Vec<f64>) {
        let mut probed = Vec::new();
        while let Some(rate) = s.next() {
            probed.push(rate);
            s.record(rate, rate <= capacity);
        }
        (s, probed)
    }

    #[test]
    fn doubles_then_bisects_to_the_precision() {
        let (s, probed) = against(5000.0, RateSearch::new(1000.0, 50.0, 0.05, 20));
        assert_eq!(&probed[..4], &[1000.0, 2000.0, 4000.0, 8000.0]);
        assert_eq!(&probed[4..6], &[6000.0, 5000.0]);
        let (Some(pass), Some(fail)) = (s.highest_pass(), s.lowest_fail()) else {
            panic!("a pass and a failure were expected: {probed:?}");
        };
        assert!(pass <= 5000.0 && fail > 5000.0, "{pass} {fail}");
        assert!((fail - pass) / pass <= 0.05);
        assert_eq!(s.probes(), probed.len());
    }

    #[test]
    fn halves_when_the_start_fails_and_gives_up_at_the_floor() {
        let (s, probed) = against(300.0, RateSearch::new(1000.0, 50.0, 0.05, 20));
        assert_eq!(&probed[..3], &[1000.0, 500.0, 250.0]);
        assert!(s.highest_pass().is_some_and(|p| p <= 300.0));
        let (s, probed) = against(10.0, RateSearch::new(1000.0, 100.0, 0.05, 20));
        assert_eq!(probed, vec![1000.0, 500.0, 250.0, 125.0]);
        assert_eq!(s.highest_pass(), None);
    }

    #[test]
    fn stops_at_the_probe_limit() {
        let (s, probed) = against(1e9, RateSearch::new(1000.0, 50.0, 0.05, 5));
        assert_eq!(probed.len(), 5);
        assert_eq!(s.highest_pass(), Some(16000.0));
        assert_eq!(s.lowest_fail(), None);
    }

    #[test]
    fn a_pass_above_a_failure_ends_the_search() {
        let mut s = RateSearch::new(1000.0, 50.0, 0.05, 20);
        s.record(1000.0, false);
        s.record(2000.0, true);
        assert_eq!(s.next(), None);
        assert_eq!(s.highest_pass(), Some(2000.0));
    }
}
