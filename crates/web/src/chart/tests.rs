use proptest::prelude::*;

use super::*;

const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z
const MIN: i64 = 60_000;

fn bucket(start: i64, min: f64, max: f64) -> Bucket {
    Bucket {
        start,
        min,
        max,
        avg: (min + max) / 2.0,
        count: 3,
        last: max,
    }
}

fn chart<'a>(buckets: &'a [Bucket], title: &'a str) -> Chart<'a> {
    Chart {
        id: "t",
        title,
        unit: "°C",
        from_ms: T0,
        to_ms: T0 + 60 * MIN,
        bucket_ms: MIN,
        buckets,
        width: 600,
        height: 240,
    }
}

/// The `d` attributes of the average lines.
fn avg_paths(svg: &str) -> Vec<&str> {
    svg.split(r#"<path class="chart-avg" d=""#)
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect()
}

/// The x coordinates of a path.
fn xs(path: &str) -> Vec<f64> {
    path.split(['M', 'L'])
        .filter_map(|p| p.trim().split(',').next())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect()
}

#[test]
fn a_gap_splits_the_line_instead_of_bridging_it() {
    let buckets: Vec<Bucket> = (0..10)
        .chain(20..30)
        .map(|i| bucket(T0 + i * MIN, 20.0, 22.0))
        .collect();
    let svg = render(&chart(&buckets, "greenhouse-1 temperature"));
    let paths = avg_paths(&svg);
    assert_eq!(paths.len(), 2, "{svg}");
    assert_eq!(xs(paths[0]).len(), 10);
    assert_eq!(svg.matches("<polygon").count(), 2);
    assert!(svg.contains("with 1 gap"), "{svg}");
}

#[test]
fn accessible_title_description_and_labels() {
    let buckets = [bucket(T0, 18.3, 19.0), bucket(T0 + MIN, 19.0, 24.9)];
    let svg = render(&chart(&buckets, "greenhouse-1 temperature"));
    assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"));
    assert!(svg.contains(r#"role="img" aria-labelledby="t-title t-desc""#));
    assert!(svg.contains(r#"<title id="t-title">greenhouse-1 temperature</title>"#));
    assert!(
        svg.contains("from 2025-11-24 16:00 UTC to 2025-11-24 17:00 UTC: lowest 18.3 °C, highest 24.9 °C, in 2 buckets."),
        "{svg}"
    );
    // Round value ticks covering the data, time ticks every 10 minutes.
    for label in ["18 °C", "20 °C", "26 °C", "16:00", "16:30", "17:00"] {
        assert!(
            svg.contains(&format!(">{label}</text>")),
            "{label} in {svg}"
        );
    }
}

#[test]
fn text_is_escaped() {
    let svg = render(&Chart {
        unit: "<b>&",
        ..chart(&[bucket(T0, 1.0, 2.0)], r#"x"/><script>alert(1)</script>"#)
    });
    assert!(!svg.contains("<script"), "{svg}");
    assert!(svg.contains("x&quot;/&gt;&lt;script&gt;"), "{svg}");
    assert!(svg.contains("&lt;b&gt;&amp;"), "{svg}");
    let svg = render(&Chart {
        id: r#""><x"#,
        ..chart(&[], "t")
    });
    assert!(svg.contains(r#"aria-labelledby="x-title x-desc""#), "{svg}");
}

#[test]
fn no_data_says_so() {
    let svg = render(&chart(&[], "empty"));
    assert!(svg.contains("No data in this range"));
    assert!(svg.contains("<desc id=\"t-desc\">No data from"));
    assert!(!svg.contains("<path"));
    // Buckets outside the range count as no data.
    let svg = render(&chart(&[bucket(T0 - 10 * MIN, 1.0, 2.0)], "old"));
    assert!(svg.contains("No data in this range"));
}

#[test]
fn a_lone_bucket_is_a_mark_not_a_line() {
    let svg = render(&chart(&[bucket(T0 + 5 * MIN, 1.0, 2.0)], "one"));
    assert!(svg.contains("<circle class=\"chart-avg\""));
    assert!(avg_paths(&svg).is_empty());
}

#[test]
fn thirty_days_of_hourly_buckets_are_labelled_by_date() {
    let hour = 3_600_000;
    let buckets: Vec<Bucket> = (0..720)
        .map(|i| {
            bucket(
                T0 + i * hour,
                15.0 + (i % 24) as f64 / 3.0,
                16.0 + (i % 24) as f64 / 2.0,
            )
        })
        .collect();
    let svg = render(&Chart {
        from_ms: T0,
        to_ms: T0 + 720 * hour,
        bucket_ms: hour,
        ..chart(&buckets, "month")
    });
    assert!(
        svg.contains(">Nov 27</text>") || svg.contains(">Dec 4</text>"),
        "{svg}"
    );
    assert_eq!(avg_paths(&svg).len(), 1);
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e6f64..1e6,
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(0.0),
        Just(f64::MAX),
        Just(f64::MIN),
    ]
}

proptest! {
    #[test]
    fn output_has_no_nan_or_infinity_and_x_increases(
        raw in proptest::collection::vec((0i64..200, finite(), finite(), finite()), 0..60),
        from in -1_000i64..1_000,
        len in 1i64..400,
        bucket_ms in 1i64..5,
        width in 0u32..2000,
        height in 0u32..1000,
    ) {
        let buckets: Vec<Bucket> = raw
            .iter()
            .map(|&(i, a, b, c)| Bucket { start: T0 + i * bucket_ms * MIN, min: a, max: b, avg: c, count: 1, last: c })
            .collect();
        let svg = render(&Chart {
            id: "p",
            title: "p",
            unit: "u",
            from_ms: T0 + from * MIN,
            to_ms: T0 + (from + len) * MIN,
            bucket_ms: bucket_ms * MIN,
            buckets: &buckets,
            width,
            height,
        });
        let lower = svg.to_ascii_lowercase();
        prop_assert!(!lower.contains("nan") && !lower.contains("inf"), "{}", svg);
        for path in avg_paths(&svg) {
            let xs = xs(path);
            prop_assert!(xs.windows(2).all(|w| w[0] < w[1]), "{}", path);
        }
    }

    #[test]
    fn value_ticks_stay_in_the_axis_and_cover_the_data(a in finite(), b in finite(), target in 2usize..10) {
        let axis = scale::value_axis(a, b, target);
        prop_assert!(axis.lo.is_finite() && axis.hi.is_finite() && axis.lo < axis.hi);
        prop_assert!(!axis.ticks.is_empty());
        prop_assert!(axis.ticks.iter().all(|t| *t >= axis.lo && *t <= axis.hi));
        prop_assert!(axis.ticks.windows(2).all(|w| w[0] < w[1]));
        let clamp = |v: f64| v.clamp(-scale::VALUE_LIMIT, scale::VALUE_LIMIT);
        prop_assert!(axis.lo <= clamp(a.min(b)) && axis.hi >= clamp(a.max(b)));
    }

    #[test]
    fn time_ticks_are_inside_the_range_and_ascending(from in -1_000_000_000_000i64..4_000_000_000_000, len in 1i64..100 * 86_400_000, max in 2usize..12) {
        let ticks = scale::time_ticks(from, from + len, max);
        prop_assert!(ticks.len() <= max.max(2) + 1);
        prop_assert!(ticks.iter().all(|(t, _)| *t >= from && *t <= from + len));
        prop_assert!(ticks.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
