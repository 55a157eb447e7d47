//! Medians and the results table.

/// Median of the finite values, `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

/// (max − min) / median of the finite values, in percent: how far apart
/// the rounds were. `None` with fewer than two values or a zero median.
pub fn spread_percent(values: &[f64]) -> Option<f64> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 2 {
        return None;
    }
    let mid = median(&v)?;
    if mid == 0.0 {
        return None;
    }
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    Some((max - min) / mid.abs() * 100.0)
}

/// Format a figure with a precision that suits its size.
pub fn fmt(x: Option<f64>) -> String {
    match x {
        None => "–".to_string(),
        Some(x) if x.abs() >= 1000.0 => format!("{:.0}", x),
        Some(x) if x.abs() >= 10.0 => format!("{:.1}", x),
        Some(x) => format!("{:.2}", x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn spread_over_rounds() {
        assert_eq!(spread_percent(&[90.0, 110.0]), Some(20.0));
        assert_eq!(spread_percent(&[100.0, 90.0, 120.0]), Some(30.0));
        assert_eq!(spread_percent(&[100.0]), None);
        assert_eq!(spread_percent(&[0.0, 0.0]), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt(Some(12345.6)), "12346");
        assert_eq!(fmt(Some(12.34)), "12.3");
        assert_eq!(fmt(Some(1.234)), "1.23");
        assert_eq!(fmt(None), "–");
    }
}
