//! `tandem bench blk`'s table and chart.

use std::fmt::Write as _;

use super::{ratio, si, Align, Bar, BarChart, BarGroup, Report, Table};
use crate::bench::blk::{Backend, BlkReport, Case, PathChoice};

impl Report for BlkReport {
    fn table(&self) -> String {
        table(self)
    }

    fn svg(&self) -> String {
        chart(self).render()
    }
}

/// The comparison table.
pub fn table(r: &BlkReport) -> String {
    let mut s = String::new();
    let amount = r.job.amount.to_string();
    let _ = writeln!(
        s,
        "virtio block backends ({}, {}, -m {}, {} per run, median of {} run(s); cache={})",
        r.machine,
        r.accel,
        r.mem,
        amount,
        r.job.repeats,
        r.cache.split(' ').next().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "image {} ({} bytes, {})",
        r.image.path, r.image.bytes, r.image.origin
    );
    for b in &r.backends {
        match &b.skipped {
            None => {
                let _ = writeln!(s, "  {:<10} {}", b.backend.name(), b.description);
            }
            Some(why) => {
                let _ = writeln!(s, "  {:<10} skipped: {why}", b.backend.name());
            }
        }
    }
    let show_path = r.job.path != PathChoice::Hpdi;
    let both = r.job.path == PathChoice::Both;
    let first = r
        .backends
        .iter()
        .find(|b| b.skipped.is_none())
        .map_or("first", |b| b.backend.name());
    let vs = format!("vs {first}");
    let mut cols: Vec<(&str, Align)> = vec![
        ("backend", Align::Left),
        ("rw", Align::Left),
        ("bs", Align::Right),
        ("qd", Align::Right),
    ];
    if show_path {
        cols.push(("path", Align::Left));
    }
    cols.extend([
        ("IOPS", Align::Right),
        ("MB/s", Align::Right),
        ("p50 us", Align::Right),
        ("p99 us", Align::Right),
        ("p99.9 us", Align::Right),
        ("inflight", Align::Right),
        (vs.as_str(), Align::Right),
    ]);
    if both {
        cols.push(("hpdi/direct", Align::Right));
    }
    let mut t = Table::new(&cols);
    for row in &r.rows {
        let mut cells = vec![
            row.backend.name().to_string(),
            row.rw.to_string(),
            row.bs.to_string(),
            row.qd.to_string(),
        ];
        if show_path {
            cells.push(row.path.name().to_string());
        }
        cells.extend([
            format!("{:.0}", row.iops.median),
            format!("{:.1}", row.mbps.median),
            format!("{:.0}", row.lat_p50_us),
            format!("{:.0}", row.lat_p99_us),
            format!("{:.0}", row.lat_p999_us),
            row.max_in_flight.to_string(),
            ratio(row.ratio_vs_first),
        ]);
        if both {
            cells.push(ratio(row.ratio_hpdi_over_direct));
        }
        t.row(cells);
    }
    s.push_str(&t.render());
    s
}

/// The bar chart: one group per case, one bar per backend (median IOPS, min–max whiskers).
pub fn chart(r: &BlkReport) -> BarChart {
    let series: Vec<Backend> = r
        .backends
        .iter()
        .filter(|b| b.skipped.is_none())
        .map(|b| b.backend)
        .collect();
    let show_path = r.job.path != PathChoice::Hpdi;
    let mut groups: Vec<(Case, BarGroup)> = Vec::new();
    for row in &r.rows {
        let case = row.case();
        let idx = match groups.iter().position(|(c, _)| *c == case) {
            Some(i) => i,
            None => {
                let mut label = format!("{} {} qd {}", row.rw, row.bs, row.qd);
                if show_path {
                    label.push_str(&format!(" {}", row.path.name()));
                }
                groups.push((
                    case,
                    BarGroup {
                        label,
                        bars: Vec::new(),
                    },
                ));
                groups.len() - 1
            }
        };
        groups[idx].1.bars.push(Bar {
            series: series.iter().position(|b| *b == row.backend).unwrap_or(0),
            value: row.iops.median,
            range: (row.runs.len() > 1).then_some((row.iops.min, row.iops.max)),
            label: si(row.iops.median),
        });
    }
    BarChart {
        title: format!(
            "IOPS per backend ({}, {}, median of {}; whiskers min–max)",
            r.machine, r.accel, r.job.repeats
        ),
        series: series.iter().map(|b| b.name().to_string()).collect(),
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        footer: Some(format!(
            "cache.direct=on on every backend; image {} bytes ({})",
            r.image.bytes, r.image.origin
        )),
    }
}
