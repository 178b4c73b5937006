//! `tandem bench nbd`'s table and chart.

use std::fmt::Write as _;

use super::{ratio, si, Align, Bar, BarChart, BarGroup, Report, Table};
use crate::accel;
use crate::bench::nbd::{FioJob, NbdReport, NbdTarget};

impl Report for NbdReport {
    fn table(&self) -> String {
        table(self)
    }

    fn svg(&self) -> String {
        chart(self).render()
    }
}

/// The comparison table.
pub fn table(r: &NbdReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NBD targets (fio nbd engine, {} s per run{}, median of {} run(s); cache={})",
        r.params.time_s,
        if r.params.ramp_s > 0 {
            format!(" after {} s ramp", r.params.ramp_s)
        } else {
            String::new()
        },
        r.repeats,
        r.cache
    );
    let _ = writeln!(
        s,
        "image: {} bytes per target, {}",
        r.image_bytes, r.image_origin
    );
    for t in &r.targets {
        let _ = writeln!(s, "  {:<9} {}", t.target.name(), t.description);
    }
    if r.targets.iter().any(|t| t.target == NbdTarget::Guest) {
        let _ = writeln!(s, "  guest NVRAM: {}", r.guest_nvram);
    }
    let _ = writeln!(s, "durability:");
    for t in &r.targets {
        let _ = writeln!(s, "  {:<9} {}", t.target.name(), t.durability);
    }
    let _ = writeln!(s, "  => {}", r.durability_comparison);
    let mut t = Table::new(&[
        ("job", Align::Left),
        ("target", Align::Left),
        ("IOPS", Align::Right),
        ("MB/s", Align::Right),
        ("p50 us", Align::Right),
        ("p99 us", Align::Right),
        ("p99.9 us", Align::Right),
        ("guest/anchor", Align::Right),
        ("copies/req", Align::Right),
        ("write ack", Align::Left),
    ]);
    for row in &r.rows {
        t.row(vec![
            row.fio_job().label(),
            row.target.name().to_string(),
            format!("{:.0}", row.iops.median),
            format!("{:.1}", row.mbps.median),
            format!("{:.0}", row.clat_p50_us),
            format!("{:.0}", row.clat_p99_us),
            format!("{:.0}", row.clat_p999_us),
            if row.target == NbdTarget::Guest {
                ratio(row.ratio_guest_over_anchor)
            } else {
                String::new()
            },
            match (
                row.target,
                row.guest_copies.and_then(|c| c.copies_per_request),
            ) {
                (NbdTarget::QemuNbd, _) => "n/a (host)".into(),
                (_, Some(c)) => format!("{c:.2}"),
                (_, None) => "-".into(),
            },
            row.write_ack.clone(),
        ]);
    }
    s.push_str(&t.render());
    let _ = writeln!(
        s,
        "copies/req: bytes the guest's CPU copied on its NBD path (smoltcp frame<->socket \
         buffer, socket buffer<->NBD server) per payload byte served, NBD headers and fio's \
         ramp included\nlatency: fio completion latency (clat); guest {} ({}){}",
        r.accel,
        r.machine,
        if r.accel == accel::Accel::Tcg {
            ": the guest's CPU is emulated, the anchor's is not"
        } else {
            ""
        }
    );
    s
}

/// The bar chart: one group per job, one bar per target (median IOPS, min–max whiskers).
pub fn chart(r: &NbdReport) -> BarChart {
    let series: Vec<NbdTarget> = r.targets.iter().map(|t| t.target).collect();
    let mut groups: Vec<(FioJob, BarGroup)> = Vec::new();
    for row in &r.rows {
        let job = row.fio_job();
        let idx = match groups.iter().position(|(j, _)| *j == job) {
            Some(i) => i,
            None => {
                groups.push((
                    job,
                    BarGroup {
                        label: job.label(),
                        bars: Vec::new(),
                    },
                ));
                groups.len() - 1
            }
        };
        let mut label = si(row.iops.median);
        if let Some(x) = row.ratio_guest_over_anchor {
            label.push_str(&format!(" ({x:.2}x)"));
        }
        groups[idx].1.bars.push(Bar {
            series: series.iter().position(|t| *t == row.target).unwrap_or(0),
            value: row.iops.median,
            range: (row.runs.len() > 1).then_some((row.iops.min, row.iops.max)),
            label,
        });
    }
    BarChart {
        title: format!(
            "NBD IOPS, guest vs qemu-nbd (fio nbd engine, {} s, median of {}; whiskers min–max)",
            r.params.time_s, r.repeats
        ),
        series: series.iter().map(|t| t.name().to_string()).collect(),
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        footer: Some(format!(
            "guest: {} {} -m {}; both: cache=none aio=native, {} bytes",
            r.machine, r.accel, r.mem, r.image_bytes
        )),
    }
}
