//! `tandem bench mirror`'s table and chart: per write kind, each configuration's latency
//! percentiles and IOPS (medians over rounds) beside mirror off, the extra latency in µs,
//! and the link's own round trip, so the extra can be read against it.

use std::fmt::Write as _;

use super::{ratio, Align, Bar, BarChart, BarGroup, Report, Table};
use crate::bench::mirror::{MirrorMode, MirrorReport, MirrorRow, WriteKind};

impl Report for MirrorReport {
    fn table(&self) -> String {
        table(self)
    }

    fn svg(&self) -> String {
        chart(self).render()
    }
}

fn us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

fn signed_us(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:+.0}"),
        _ => "-".into(),
    }
}

/// The link line: what it was and its measured round trip.
fn link_line(r: &MirrorReport) -> String {
    let l = &r.link;
    format!(
        "link: {}; TCP round trip (48-byte ping-pong) p50 {} µs (rounds {}-{})",
        l.description,
        us(l.rtt_p50_us.median),
        us(l.rtt_p50_us.min),
        us(l.rtt_p50_us.max)
    )
}

/// The table, with the summary line per kind.
pub fn table(r: &MirrorReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Mirror write latency: {} KiB writes at QD1 through NBD, {} per run, medians of {} \
         round(s); q35 {} -m {}, durability=nvlog, mirror.policy=stop",
        r.write_bytes / 1024,
        r.writes,
        r.rounds,
        r.accel,
        r.mem
    );
    let _ = writeln!(s, "{}", link_line(r));
    let mut t = Table::new(&[
        ("write", Align::Left),
        ("mirror", Align::Left),
        ("p50 µs", Align::Right),
        ("p90 µs", Align::Right),
        ("p99 µs", Align::Right),
        ("IOPS", Align::Right),
        ("p50 vs off", Align::Right),
        ("extra p50 µs", Align::Right),
        ("extra p99 µs", Align::Right),
    ]);
    for row in &r.rows {
        t.row(vec![
            row.kind.label().into(),
            row.label.clone(),
            us(row.p50_us.median),
            us(row.p90_us.median),
            us(row.p99_us.median),
            format!("{:.0}", row.iops.median),
            ratio(row.p50_ratio),
            signed_us(row.extra_p50_us),
            signed_us(row.extra_p99_us),
        ]);
    }
    s.push('\n');
    s.push_str(&t.render());
    let rtt = r.link.rtt_p50_us.median;
    for row in r.rows.iter().filter(|x| x.mode == MirrorMode::Sync) {
        if let Some(extra) = row.extra_p50_us {
            let _ = writeln!(
                s,
                "extra latency of the mirror ({} writes, p50): {} µs = {:.1} x the link's round \
                 trip ({} µs)",
                row.kind.label(),
                signed_us(Some(extra)),
                extra / rtt,
                us(rtt)
            );
        }
    }
    s
}

/// A configuration's bar: its median p50, whiskers over rounds, and the difference to
/// mirror off (the chart leaves 130 px for labels: p99 and IOPS are in the table).
fn bar(i: usize, row: &MirrorRow, rounds: u32) -> Bar {
    let extra = row
        .extra_p50_us
        .filter(|_| row.mode != MirrorMode::Off)
        .map_or(String::new(), |e| format!(" ({})", signed_us(Some(e))));
    Bar {
        series: i,
        value: row.p50_us.median,
        range: (rounds > 1).then_some((row.p50_us.min, row.p50_us.max)),
        label: format!("{} µs{extra}", us(row.p50_us.median)),
    }
}

/// The chart: a group per write kind, a bar per configuration (median p50, whiskers over
/// rounds), and a group with the link's round trip.
pub fn chart(r: &MirrorReport) -> BarChart {
    let mut series: Vec<String> = Vec::new();
    let mut groups = Vec::new();
    for kind in [WriteKind::Fua, WriteKind::Plain] {
        let bars: Vec<Bar> = r
            .rows
            .iter()
            .filter(|row| row.kind == kind)
            .map(|row| {
                let i = series
                    .iter()
                    .position(|s| *s == row.label)
                    .unwrap_or_else(|| {
                        series.push(row.label.clone());
                        series.len() - 1
                    });
                bar(i, row, r.rounds)
            })
            .collect();
        if !bars.is_empty() {
            groups.push(BarGroup {
                label: format!("{} writes", kind.label()),
                bars,
            });
        }
    }
    series.push("link round trip".into());
    let rtt = &r.link.rtt_p50_us;
    groups.push(BarGroup {
        label: "TCP ping-pong".into(),
        bars: vec![Bar {
            series: series.len() - 1,
            value: rtt.median,
            range: (r.rounds > 1).then_some((rtt.min, rtt.max)),
            label: format!("{} µs", us(rtt.median)),
        }],
    });
    BarChart {
        title: "Mirror write latency, 4 KiB QD1 over NBD: median p50 (µs; vs mirror off)".into(),
        series,
        groups,
        footer: Some(format!(
            "q35 {} -m {}, {} round(s) x {} writes; link: {}, round trip p50 {} µs",
            r.accel,
            r.mem,
            r.rounds,
            r.writes,
            match r.link.delay_us {
                0 => "loopback".to_string(),
                d => format!("relay +{d} µs"),
            },
            us(r.link.rtt_p50_us.median)
        )),
    }
}
