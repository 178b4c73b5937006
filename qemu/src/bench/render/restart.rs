//! `tandem bench restart`'s tables and chart.

use std::fmt::Write as _;

use super::{Align, Bar, BarChart, BarGroup, Report, Table};
use crate::bench::restart::{RestartReport, ROWS, TARGET_SPEEDUP};

impl Report for RestartReport {
    fn table(&self) -> String {
        table(self)
    }

    fn svg(&self) -> String {
        chart(self).render()
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_x(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}x")
    } else {
        "-".into()
    }
}

/// The tables, one per disk count, with the phases of the last run.
pub fn table(r: &RestartReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Restart benchmark: injected {:?}, median of {} run(s); q35 {} -m {}; {} MiB blank raw \
         disks, {} MiB NVRAM, durability=nvlog",
        r.kind,
        r.runs,
        r.accel,
        r.mem,
        r.disk_bytes >> 20,
        r.nvram_bytes >> 20
    );
    let _ = writeln!(
        s,
        "host: QEMU spawn (boots) or the triggering request (restarts) -> first 4 KiB READ reply;\n\
         guest: boots since guest entry, restarts from the error (TANDEM RESTART at_us) -> first \
         request served; speed-up: boots vs the cold boot, restarts vs the cold restart"
    );
    for g in &r.groups {
        let _ = writeln!(s, "\n{} data disk(s):", g.disks);
        let mut t = Table::new(&[
            ("start", Align::Left),
            ("host ms", Align::Right),
            ("host min-max", Align::Right),
            ("guest ms", Align::Right),
            ("guest min-max", Align::Right),
            ("speed-up (host)", Align::Right),
            ("speed-up (guest)", Align::Right),
        ]);
        for row in &g.rows {
            t.row(vec![
                row.row.clone(),
                fmt_ms(row.host_ms.median),
                format!("{}-{}", fmt_ms(row.host_ms.min), fmt_ms(row.host_ms.max)),
                fmt_ms(row.guest_ms.median),
                format!("{}-{}", fmt_ms(row.guest_ms.min), fmt_ms(row.guest_ms.max)),
                fmt_x(row.speedup_host),
                fmt_x(row.speedup_guest),
            ]);
        }
        s.push_str(&t.render());
        if let Some(restart) = g.rows.iter().find(|r| r.row == ROWS[3]) {
            let _ = writeln!(
                s,
                "restart from the checkpoint vs cold discovery: {} faster (guest), {} (host); target >= {TARGET_SPEEDUP}x with 8 disks",
                fmt_x(restart.speedup_guest),
                fmt_x(restart.speedup_host)
            );
        }
        if let Some(last) = g.runs.last() {
            for (name, start) in [
                ("cold boot", &last.cold),
                ("checkpoint boot", &last.checkpoint),
                ("restart, cold", &last.restart_cold),
                ("restart, checkpoint", &last.restart),
            ] {
                for p in &start.phases {
                    let text = p.line.split_once("phases (us):").map_or("", |x| x.1);
                    let what = p.line.split_once("phases (us):").map_or("", |x| x.0);
                    let what = what.split_whitespace().last().unwrap_or("");
                    let what = if what == "storage" { " (storage)" } else { "" };
                    let _ = writeln!(s, "  {name}{what} phases (us):{text}");
                }
            }
        }
    }
    s
}

/// The chart: one group per disk count, one bar per start (median host ms, whiskers).
pub fn chart(r: &RestartReport) -> BarChart {
    BarChart {
        title: format!(
            "Time to serve NBD again, median of {} (ms, host; whiskers min-max)",
            r.runs
        ),
        series: ROWS.iter().map(|s| s.to_string()).collect(),
        groups: r
            .groups
            .iter()
            .map(|g| BarGroup {
                label: format!("{} disk(s)", g.disks),
                bars: g
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| Bar {
                        series: i,
                        value: row.host_ms.median,
                        range: (g.runs.len() > 1).then_some((row.host_ms.min, row.host_ms.max)),
                        label: format!(
                            "{} ms (guest {} ms)",
                            fmt_ms(row.host_ms.median),
                            fmt_ms(row.guest_ms.median)
                        ),
                    })
                    .collect(),
            })
            .collect(),
        footer: Some(format!(
            "q35 {} -m {}; injected {:?}; durability=nvlog",
            r.accel, r.mem, r.kind
        )),
    }
}
