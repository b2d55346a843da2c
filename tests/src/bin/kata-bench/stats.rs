//! Samples of one figure: median and spread, and their JSON form.

use serde_json::{json, Value};

/// The values measured for one figure, in one unit.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median [min-max]`, rounded to `unit`'s usual precision.
    pub fn show(&self, unit: &str) -> String {
        format!(
            "{} {unit} [{}-{}]",
            round(self.median()),
            round(self.min()),
            round(self.max())
        )
    }

    pub fn json(&self, unit: &str) -> Value {
        json!({
            "unit": unit,
            "median": round(self.median()),
            "min": round(self.min()),
            "max": round(self.max()),
            "samples": self.0.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        })
    }
}

/// One decimal: enough for ms and MiB.
pub fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `a / b` to two decimals.
pub fn ratio(a: f64, b: f64) -> f64 {
    ((a / b) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Samples(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Samples(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert!(Samples::default().median().is_nan());
    }
}
