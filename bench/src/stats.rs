//! Summaries: latency percentiles from an HDR histogram, fairness of a distribution,
//! medians over runs, and the least-squares slope.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in microseconds, 1 µs .. 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// Medians, field by field, over runs.
    pub fn median_of(runs: &[Percentiles]) -> Percentiles {
        let m = |f: fn(&Percentiles) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Percentiles {
            p50: m(|p| p.p50),
            p90: m(|p| p.p90),
            p99: m(|p| p.p99),
            p999: m(|p| p.p999),
            max: m(|p| p.max),
            mean: m(|p| p.mean),
        }
    }
}

/// Median (mean of the middle two for an even count); 0 for none. NaN values are left
/// out, but infinities are kept: a run may record "never" as infinity (failover's
/// re-admission when the backend got no request again before the phase ended), and
/// dropping them turned a run that never re-admitted into a median of 0 ms.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How evenly a load is spread over backends.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Fairness {
    /// Coefficient of variation σ/μ (0 is perfectly even).
    #[serde(deserialize_with = "null_as_nan")]
    pub cv: f64,
    /// Jain's index (Σx)²/(n·Σx²): 1 even, 1/n all on one.
    #[serde(deserialize_with = "null_as_nan")]
    pub jain: f64,
    /// Largest share over the smallest (infinite when one backend got nothing).
    #[serde(deserialize_with = "null_as_infinity")]
    pub max_over_min: f64,
}

// JSON has no NaN or infinity: serde_json writes them as null, and these read it back.

/// A number that is NaN when undefined (no load at all).
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn null_as_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// Metrics by name, a ratio of nothing being NaN.
pub(crate) fn metrics_null_as_nan<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, f64>, D::Error> {
    let read = std::collections::BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(read
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

impl Fairness {
    pub fn of(counts: &[f64]) -> Fairness {
        let n = counts.len() as f64;
        let sum: f64 = counts.iter().sum();
        if counts.is_empty() || sum <= 0.0 {
            return Fairness::default();
        }
        let mean = sum / n;
        let var = counts.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let sq: f64 = counts.iter().map(|x| x * x).sum();
        let max = counts.iter().copied().fold(f64::MIN, f64::max);
        let min = counts.iter().copied().fold(f64::MAX, f64::min);
        Fairness {
            cv: var.sqrt() / mean,
            jain: sum * sum / (n * sq),
            max_over_min: if min > 0.0 { max / min } else { f64::INFINITY },
        }
    }
}

/// Least-squares slope of y over x; 0 with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn median_keeps_infinity_and_drops_nan() {
        // One run never re-admitted: the median of one run is that run.
        assert_eq!(median(&[f64::INFINITY]), f64::INFINITY);
        assert_eq!(
            median(&[200.0, f64::INFINITY, f64::INFINITY]),
            f64::INFINITY
        );
        assert_eq!(median(&[200.0, 100.0, f64::INFINITY]), 200.0);
        assert_eq!(median(&[f64::NAN, 3.0]), 3.0);
    }

    #[test]
    fn fairness_even_and_skewed() {
        let even = Fairness::of(&[10.0, 10.0, 10.0]);
        assert!((even.jain - 1.0).abs() < 1e-9 && even.cv < 1e-9);
        let skew = Fairness::of(&[30.0, 0.0, 0.0]);
        assert!((skew.jain - 1.0 / 3.0).abs() < 1e-9);
        assert!(skew.max_over_min.is_infinite());
    }

    #[test]
    fn slope_of_a_line() {
        let pts = [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)];
        assert!((slope(&pts) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_histogram() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            let _ = h.record(v * 1000);
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 500.0).abs() < 2.0, "{p:?}");
        assert!(p.p99 > p.p50 && p.max >= p.p999);
    }
}
