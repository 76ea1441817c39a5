//! What the pages show, worked out here so that the templates only print text: times,
//! labels, the stats bar of a batch and the geometry of its chart.

use time::macros::format_description;
use time::OffsetDateTime;

use crate::domain::{
    Batch, BatchStats, Coupon, CouponEvent, CouponStatus, DiscountType, EventKind,
};
use crate::storage::{ActivityEntry, ActivityKind, ActivityWindow, BucketCounts};

pub const DASH: &str = "—";

pub fn fmt_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_default()
}

pub fn fmt_opt_time(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| DASH.to_owned(), fmt_time)
}

pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or(DASH).to_owned()
}

/// A whole number with thin groups of three: 1 000 000.
pub fn fmt_count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// `10 %`, `10 % (at most 500 KRW)`, `500 KRW`.
pub fn discount_label(b: &Batch) -> String {
    let currency = b
        .currency
        .as_deref()
        .map(|c| format!(" {c}"))
        .unwrap_or_default();
    match b.discount_type {
        DiscountType::Percent => {
            let mut s = format!("{} %", b.percent.unwrap_or(0));
            if let Some(cap) = b.max_discount {
                s.push_str(&format!(" (at most {}{currency})", fmt_count(cap)));
            }
            s
        }
        DiscountType::Fixed => format!("{}{currency}", fmt_count(b.amount.unwrap_or(0))),
    }
}

/// What state a batch is in now: (label, CSS class).
pub fn batch_state(b: &Batch, now: OffsetDateTime) -> (&'static str, &'static str) {
    if !b.active {
        ("inactive", "st-inactive")
    } else if b.is_expired(now) {
        ("expired", "st-expired")
    } else if !b.has_started(now) {
        ("scheduled", "st-scheduled")
    } else {
        ("active", "st-active")
    }
}

/// One piece of a horizontal bar, in percent of the bar.
pub struct Seg {
    pub x: String,
    pub w: String,
    pub class: &'static str,
    pub label: String,
}

/// A batch's capacity as one bar: redeemed, issued and still unused, cancelled, and
/// what remains.
pub fn stat_bar(stats: BatchStats, total_limit: i64) -> Vec<Seg> {
    let total = total_limit.max(1) as f64;
    let unused = (stats.issued - stats.redeemed - stats.cancelled).max(0);
    let remaining = stats.remaining(total_limit);
    let mut x = 0.0;
    let mut segs = Vec::new();
    for (n, class, what) in [
        (stats.redeemed, "seg-redeemed", "redeemed"),
        (unused, "seg-issued", "issued, unused"),
        (stats.cancelled, "seg-cancelled", "cancelled"),
        (remaining, "seg-remaining", "remaining"),
    ] {
        if n <= 0 {
            continue;
        }
        let w = (n as f64 / total * 100.0).min(100.0 - x).max(0.0);
        segs.push(Seg {
            x: format!("{x:.3}"),
            w: format!("{w:.3}"),
            class,
            label: format!("{} {what}", fmt_count(n)),
        });
        x += w;
    }
    segs
}

/// A batch in a list.
pub struct BatchRow {
    pub id: i64,
    pub name: String,
    pub discount: String,
    pub state: &'static str,
    pub state_class: &'static str,
    pub issued: String,
    pub redeemed: String,
    pub cancelled: String,
    pub remaining: String,
    pub total_limit: String,
    pub expires: String,
    pub bar: Vec<Seg>,
}

impl BatchRow {
    pub fn new(b: &Batch, stats: BatchStats, now: OffsetDateTime) -> BatchRow {
        let (state, state_class) = batch_state(b, now);
        BatchRow {
            id: b.id,
            name: b.name.clone(),
            discount: discount_label(b),
            state,
            state_class,
            issued: fmt_count(stats.issued),
            redeemed: fmt_count(stats.redeemed),
            cancelled: fmt_count(stats.cancelled),
            remaining: fmt_count(stats.remaining(b.total_limit)),
            total_limit: fmt_count(b.total_limit),
            expires: fmt_time(b.expires_at),
            bar: stat_bar(stats, b.total_limit),
        }
    }
}

/// The sums over a list of batches.
pub struct Totals {
    pub issued: String,
    pub redeemed: String,
    pub cancelled: String,
    pub remaining: String,
}

impl Totals {
    pub fn of(batches: &[(Batch, BatchStats)]) -> Totals {
        let sum = |f: &dyn Fn(&(Batch, BatchStats)) -> i64| fmt_count(batches.iter().map(f).sum());
        Totals {
            issued: sum(&|(_, s)| s.issued),
            redeemed: sum(&|(_, s)| s.redeemed),
            cancelled: sum(&|(_, s)| s.cancelled),
            remaining: sum(&|(b, s)| s.remaining(b.total_limit)),
        }
    }
}

pub fn status_class(status: CouponStatus) -> &'static str {
    match status {
        CouponStatus::Issued => "st-active",
        CouponStatus::Redeemed => "st-redeemed",
        CouponStatus::Cancelled => "st-inactive",
        CouponStatus::Expired => "st-expired",
    }
}

/// A coupon in a list.
pub struct CouponRow {
    pub code: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub batch_id: i64,
    pub issued_to: String,
    pub issued_at: String,
    pub redeemed_by: String,
    pub order_id: String,
}

impl CouponRow {
    pub fn new(c: &Coupon, now: OffsetDateTime) -> CouponRow {
        let status = c.status_at(now);
        CouponRow {
            code: c.code.clone(),
            status: status.as_str(),
            status_class: status_class(status),
            batch_id: c.batch_id,
            issued_to: or_dash(c.issued_to.as_deref()),
            issued_at: fmt_opt_time(c.issued_at.or(Some(c.created_at))),
            redeemed_by: or_dash(c.redeemed_by.as_deref()),
            order_id: or_dash(c.order_id.as_deref()),
        }
    }
}

pub fn key_label(id: Option<i64>) -> String {
    id.map_or_else(|| DASH.to_owned(), |id| format!("key #{id}"))
}

/// A line of "recent activity".
pub struct ActivityRow {
    pub at: String,
    pub what: &'static str,
    pub class: &'static str,
    pub code: Option<String>,
    pub batch_id: i64,
    pub batch_name: String,
    pub detail: String,
    pub by: String,
}

fn event_label(kind: EventKind) -> (&'static str, &'static str) {
    match kind {
        EventKind::Issued => ("issued", "ev-issued"),
        EventKind::Generated => ("generated", "ev-issued"),
        EventKind::Redeemed => ("redeemed", "ev-redeemed"),
        EventKind::Unredeemed => ("unredeemed", "ev-unredeemed"),
        EventKind::Cancelled => ("cancelled", "ev-cancelled"),
        EventKind::Expired => ("expired", "ev-expired"),
    }
}

/// "to u1 · order o1 · reason: …"
fn event_detail(
    kind: EventKind,
    user: Option<&str>,
    order: Option<&str>,
    reason: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    if let Some(user) = user {
        parts.push(match kind {
            EventKind::Issued => format!("to {user}"),
            _ => format!("by user {user}"),
        });
    }
    if let Some(order) = order {
        parts.push(format!("order {order}"));
    }
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        parts.push(format!("reason: {reason}"));
    }
    parts.join(" · ")
}

impl From<&ActivityEntry> for ActivityRow {
    fn from(e: &ActivityEntry) -> ActivityRow {
        let (what, class) = match e.kind {
            ActivityKind::BatchCreated => ("batch created", "ev-batch"),
            ActivityKind::Coupon(kind) => event_label(kind),
        };
        let detail = match e.kind {
            ActivityKind::BatchCreated => String::new(),
            ActivityKind::Coupon(kind) => event_detail(
                kind,
                e.user_id.as_deref(),
                e.order_id.as_deref(),
                e.reason.as_deref(),
            ),
        };
        ActivityRow {
            at: fmt_time(e.at),
            what,
            class,
            code: e.code.clone(),
            batch_id: e.batch_id,
            batch_name: e.batch_name.clone(),
            detail,
            by: key_label(e.api_key_id),
        }
    }
}

/// A line of a coupon's history.
pub struct EventRow {
    pub at: String,
    pub what: &'static str,
    pub class: &'static str,
    pub detail: String,
    pub by: String,
}

impl From<&CouponEvent> for EventRow {
    fn from(e: &CouponEvent) -> EventRow {
        let (what, class) = event_label(e.kind);
        EventRow {
            at: fmt_time(e.at),
            what,
            class,
            detail: event_detail(
                e.kind,
                e.user_id.as_deref(),
                e.order_id.as_deref(),
                e.reason.as_deref(),
            ),
            by: if e.kind == EventKind::Expired {
                "the batch's expiry".to_owned()
            } else {
                key_label(e.api_key_id)
            },
        }
    }
}

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
/// The most buckets a chart has: 90 days, or 48 hours (with at least 12 shown).
const MAX_DAYS: i64 = 90;
const MIN_HOURS: i64 = 12;

fn floor_to(t: OffsetDateTime, unit: i64) -> OffsetDateTime {
    let ts = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(ts - ts.rem_euclid(unit)).unwrap_or(t)
}

/// The buckets of a batch's chart: hours while its life so far is two days or less,
/// else days (its last 90 at most), ending with the bucket of now or of its expiry.
pub fn chart_window(b: &Batch, now: OffsetDateTime) -> ActivityWindow {
    let end = now.min(b.expires_at).max(b.created_at);
    if end - b.created_at <= time::Duration::hours(48) {
        let last = floor_to(end, HOUR);
        let first = floor_to(b.created_at, HOUR);
        let buckets = ((last - first).whole_hours() + 1).max(MIN_HOURS);
        ActivityWindow {
            from: last - time::Duration::hours(buckets - 1),
            bucket_secs: HOUR,
            buckets,
        }
    } else {
        let last = floor_to(end, DAY);
        let first = floor_to(b.created_at, DAY).max(last - time::Duration::days(MAX_DAYS - 1));
        ActivityWindow {
            from: first,
            bucket_secs: DAY,
            buckets: (last - first).whole_days() + 1,
        }
    }
}

pub struct ChartBar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub class: &'static str,
    pub title: String,
}

pub struct AxisLabel {
    pub x: String,
    pub y: String,
    pub text: String,
}

pub struct ChartRow {
    pub label: String,
    pub issued: i64,
    pub redeemed: i64,
}

/// Issues and redemptions per bucket as bars of an SVG drawing, and as a table.
pub struct Chart {
    pub width: u32,
    pub height: u32,
    pub unit: &'static str,
    pub bars: Vec<ChartBar>,
    pub grid: Vec<AxisLabel>,
    pub x_labels: Vec<AxisLabel>,
    pub rows: Vec<ChartRow>,
    pub total_issued: String,
    pub total_redeemed: String,
    pub plot_left: u32,
    pub plot_right: u32,
}

/// 1, 2 or 5 times a power of ten, at least `n`.
fn nice_ceiling(n: i64) -> i64 {
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            let candidate = step.saturating_mul(m);
            if candidate >= n {
                return candidate;
            }
        }
        step = step.saturating_mul(10);
    }
}

impl Chart {
    pub fn new(window: ActivityWindow, counts: &BucketCounts) -> Chart {
        const W: f64 = 720.0;
        const H: f64 = 220.0;
        const LEFT: f64 = 52.0;
        const RIGHT: f64 = 8.0;
        const TOP: f64 = 10.0;
        const BOTTOM: f64 = 28.0;
        let n = usize::try_from(window.buckets.max(1)).unwrap_or(1);
        let plot_w = W - LEFT - RIGHT;
        let plot_h = H - TOP - BOTTOM;
        let get = |v: &[i64], i: usize| v.get(i).copied().unwrap_or(0);
        let peak = (0..n)
            .map(|i| get(&counts.issued, i).max(get(&counts.redeemed, i)))
            .max()
            .unwrap_or(0);
        let top = nice_ceiling(peak.max(1));
        let group = plot_w / n as f64;
        let hourly = window.bucket_secs < DAY;
        let label_of = |i: usize| {
            let start = window.from + time::Duration::seconds(window.bucket_secs * i as i64);
            let format = if hourly {
                format_description!("[month]-[day] [hour]:00")
            } else {
                format_description!("[year]-[month]-[day]")
            };
            start.format(format).unwrap_or_default()
        };
        let mut bars = Vec::new();
        let mut rows = Vec::new();
        for i in 0..n {
            let (issued, redeemed) = (get(&counts.issued, i), get(&counts.redeemed, i));
            if issued == 0 && redeemed == 0 {
                continue;
            }
            let label = label_of(i);
            for (v, offset, class, what) in [
                (issued, 0.12, "bar-issued", "issued"),
                (redeemed, 0.52, "bar-redeemed", "redeemed"),
            ] {
                if v == 0 {
                    continue;
                }
                let h = (v as f64 / top as f64 * plot_h).max(1.0);
                bars.push(ChartBar {
                    x: format!("{:.2}", LEFT + group * (i as f64 + offset)),
                    y: format!("{:.2}", TOP + plot_h - h),
                    w: format!("{:.2}", (group * 0.36).max(0.5)),
                    h: format!("{h:.2}"),
                    class,
                    title: format!("{label}: {} {what}", fmt_count(v)),
                });
            }
            rows.push(ChartRow {
                label,
                issued,
                redeemed,
            });
        }
        // Zero, the top, and the middle when it is a whole number.
        let mut ticks_y = vec![0, top];
        if top % 2 == 0 {
            ticks_y.insert(1, top / 2);
        }
        let grid = ticks_y
            .iter()
            .map(|&v| AxisLabel {
                x: format!("{:.0}", LEFT - 6.0),
                y: format!("{:.2}", TOP + plot_h - v as f64 / top as f64 * plot_h),
                text: fmt_count(v),
            })
            .collect();
        let mut ticks = vec![0, n / 2, n - 1];
        ticks.dedup();
        let x_labels = ticks
            .into_iter()
            .map(|i| AxisLabel {
                x: format!("{:.2}", LEFT + group * (i as f64 + 0.5)),
                y: format!("{:.0}", H - 8.0),
                text: label_of(i),
            })
            .collect();
        Chart {
            width: W as u32,
            height: H as u32,
            unit: if hourly { "hour" } else { "day" },
            bars,
            grid,
            x_labels,
            rows,
            total_issued: fmt_count(counts.issued.iter().sum()),
            total_redeemed: fmt_count(counts.redeemed.iter().sum()),
            plot_left: LEFT as u32,
            plot_right: (W - RIGHT) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::batch::parse_new_batch;
    use serde_json::json;

    fn batch(created: OffsetDateTime, expires: OffsetDateTime) -> Batch {
        let new = parse_new_batch(&json!({
            "name": "b", "discount_type": "percent", "percent": 10,
            "total_limit": 100, "expires_at": "2030-01-01T00:00:00Z"
        }))
        .expect("valid");
        let mut b = Batch::from_new(1, new, created);
        b.expires_at = expires;
        b
    }

    #[test]
    fn counts_and_bars() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(1_000_000), "1\u{202f}000\u{202f}000");
        assert_eq!(fmt_count(-1234), "-1\u{202f}234");
        let segs = stat_bar(
            BatchStats {
                issued: 50,
                redeemed: 20,
                cancelled: 5,
            },
            100,
        );
        let widths: Vec<&str> = segs.iter().map(|s| s.w.as_str()).collect();
        assert_eq!(widths, ["20.000", "25.000", "5.000", "50.000"]);
        assert_eq!(segs[3].x, "50.000");
    }

    #[test]
    fn windows_are_bounded() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
        let young = chart_window(
            &batch(t0, t0 + time::Duration::days(30)),
            t0 + time::Duration::hours(3),
        );
        assert_eq!(young.bucket_secs, HOUR);
        assert_eq!(young.buckets, MIN_HOURS);
        assert!(young.from <= t0 && young.end() > t0 + time::Duration::hours(3));
        let old = chart_window(
            &batch(t0, t0 + time::Duration::days(400)),
            t0 + time::Duration::days(365),
        );
        assert_eq!(old.bucket_secs, DAY);
        assert_eq!(old.buckets, MAX_DAYS);
        let expired = chart_window(
            &batch(t0, t0 + time::Duration::days(10)),
            t0 + time::Duration::days(100),
        );
        assert_eq!(expired.bucket_secs, DAY);
        assert!(expired.end() > t0 + time::Duration::days(10));
        assert!(expired.buckets <= 11);
    }

    #[test]
    fn charts_scale_to_their_peak() {
        let window = ActivityWindow {
            from: OffsetDateTime::UNIX_EPOCH,
            bucket_secs: HOUR,
            buckets: 3,
        };
        let chart = Chart::new(
            window,
            &BucketCounts {
                issued: vec![3, 0, 7],
                redeemed: vec![1, 0, 0],
            },
        );
        assert_eq!(chart.bars.len(), 3);
        assert_eq!(chart.rows.len(), 2);
        assert_eq!(chart.total_issued, "10");
        assert_eq!(chart.grid.last().map(|g| g.text.as_str()), Some("10"));
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(1), 1);
    }
}
