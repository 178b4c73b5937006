//! `tandem bench boot`'s table and chart.

use std::fmt::Write as _;

use super::{Align, Bar, BarChart, BarGroup, Report, Table};
use crate::bench::boot::BenchReport;
use crate::bench::orchestrate::Summary;

impl Report for BenchReport {
    fn table(&self) -> String {
        table(self)
    }

    fn svg(&self) -> String {
        svg(self)
    }
}

/// The text table.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "boot to TANDEM READY ({}, {} runs each, -m {}, image {} bytes = {:.1} KiB)",
        r.accel,
        r.runs,
        r.mem,
        r.image_bytes,
        r.image_bytes as f64 / 1024.0
    );
    let mut t = Table::new(&[
        ("machine", Align::Left),
        ("ready median", Align::Right),
        ("min", Align::Right),
        ("max", Align::Right),
        ("exit median", Align::Right),
        ("guest boot_us", Align::Right),
    ]);
    for m in &r.machines {
        let guest = if m.guest_boot_us.is_empty() {
            "-".to_string()
        } else {
            let v: Vec<f64> = m.guest_boot_us.iter().map(|&u| u as f64).collect();
            format!("{:.0}", Summary::of(&v).median)
        };
        t.row(vec![
            m.machine.name().to_string(),
            format!("{:.1} ms", m.ready.median),
            format!("{:.1} ms", m.ready.min),
            format!("{:.1} ms", m.ready.max),
            format!("{:.1} ms", m.exit.median),
            guest,
        ]);
    }
    s.push_str(&t.render());
    if let Some(ratio) = r.ratio_microvm_over_q35 {
        let _ = writeln!(s, "microvm/q35 (median ready): {ratio:.2}");
    }
    s
}

/// A horizontal bar chart of median ready time with min–max whiskers.
pub fn chart(r: &BenchReport) -> BarChart {
    let series: Vec<String> = r.machines.iter().map(|m| m.machine.to_string()).collect();
    BarChart {
        title: format!(
            "Boot to TANDEM READY ({}, median of {} runs; whiskers min–max)",
            r.accel, r.runs
        ),
        groups: r
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| BarGroup {
                label: m.machine.to_string(),
                bars: vec![Bar {
                    series: i,
                    value: m.ready.median,
                    range: Some((m.ready.min, m.ready.max)),
                    label: format!("{:.1} ms", m.ready.median),
                }],
            })
            .collect(),
        series,
        footer: r
            .ratio_microvm_over_q35
            .map(|ratio| format!("microvm/q35 = {ratio:.2}")),
    }
}

/// The chart as an SVG document.
pub fn svg(r: &BenchReport) -> String {
    chart(r).render()
}
