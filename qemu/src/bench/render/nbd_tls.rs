//! `tandem bench nbd --tls`'s table and chart.

use std::fmt::Write as _;

use super::{ratio, si, Align, Bar, BarChart, BarGroup, Report, Table};
use crate::accel;
use crate::bench::nbd_tls::{TlsReport, Variant};

impl Report for TlsReport {
    fn table(&self) -> String {
        table(self)
    }

    fn svg(&self) -> String {
        chart(self).render()
    }
}

/// The table: one row per job, median IOPS (MB/s) per variant, TLS/plain per server.
pub fn table(r: &TlsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NBD over TLS vs plaintext (client: {}; median of {} run(s); each run timed from \
         start to exit, TLS handshake included)",
        r.client, r.repeats
    );
    let _ = writeln!(
        s,
        "guest: {} {} -m {}, nbd.tls=on (one boot serves both); qemu-nbd: cache=none \
         aio=native, --tls-creds for +tls; {} bytes per image; {}",
        r.machine, r.accel, r.mem, r.image_bytes, r.credentials
    );
    let variants: Vec<Variant> = r.variants.iter().map(|v| v.variant).collect();
    let mut cols: Vec<(String, Align)> = vec![("job".into(), Align::Left)];
    cols.push(("reqs".into(), Align::Right));
    for v in &variants {
        cols.push((format!("{} IOPS (MB/s)", v.name()), Align::Right));
    }
    cols.push(("guest tls/plain".into(), Align::Right));
    cols.push(("qemu-nbd tls/plain".into(), Align::Right));
    let cols: Vec<(&str, Align)> = cols.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let mut t = Table::new(&cols);
    for row in &r.rows {
        let mut cells = vec![row.job.clone(), row.requests.to_string()];
        for v in &variants {
            cells.push(match row.cells.iter().find(|c| c.variant == *v) {
                Some(c) => format!("{:.0} ({:.1})", c.iops.median, c.mbps.median),
                None => "-".into(),
            });
        }
        cells.push(ratio(row.guest_tls_over_plain));
        cells.push(ratio(row.qemu_nbd_tls_over_plain));
        t.row(cells);
    }
    s.push_str(&t.render());
    if r.accel == accel::Accel::Tcg {
        s.push_str("TCG: the guest's CPU (and its TLS) is emulated, qemu-nbd's is not\n");
    }
    s
}

/// The bar chart: one group per job, one bar per variant (median IOPS, min–max whiskers).
pub fn chart(r: &TlsReport) -> BarChart {
    let variants: Vec<Variant> = r.variants.iter().map(|v| v.variant).collect();
    let groups = r
        .rows
        .iter()
        .map(|row| BarGroup {
            label: row.job.clone(),
            bars: row
                .cells
                .iter()
                .map(|c| Bar {
                    series: variants.iter().position(|v| *v == c.variant).unwrap_or(0),
                    value: c.iops.median,
                    range: (c.runs.len() > 1).then_some((c.iops.min, c.iops.max)),
                    label: si(c.iops.median),
                })
                .collect(),
        })
        .collect();
    BarChart {
        title: format!(
            "NBD IOPS, plaintext vs TLS, guest and qemu-nbd ({}, median of {})",
            r.client, r.repeats
        ),
        series: variants.iter().map(|v| v.name().to_string()).collect(),
        groups,
        footer: Some(format!(
            "guest: {} {} -m {}; ratios TLS/plain in the table and JSON",
            r.machine, r.accel, r.mem
        )),
    }
}
