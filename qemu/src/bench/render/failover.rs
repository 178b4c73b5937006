//! `tandem bench failover`'s table and timeline.

use super::{escape, Align, Report, Table};
use crate::bench::failover::FailoverReport;

impl Report for FailoverReport {
    /// The table and the write tally, one line after the other.
    fn table(&self) -> String {
        table(self) + "\n"
    }

    fn svg(&self) -> String {
        timeline(self)
    }
}

/// The results table.
pub fn table(r: &FailoverReport) -> String {
    let mut t = Table::new(&[
        ("phase", Align::Left),
        ("median ms", Align::Right),
        ("p90 ms", Align::Right),
        ("max ms", Align::Right),
    ]);
    for p in &r.phases {
        t.row(vec![
            p.name.to_string(),
            format!("{:.1}", p.median_ms),
            format!("{:.1}", p.p90_ms),
            format!("{:.1}", p.max_ms),
        ]);
    }
    format!(
        "Failover benchmark: {} trial(s), SIGKILL of node A's QEMU under a write load; \
         pair.timeout_ms={}, fence timeout {} ms; host clock, from the kill\n{}\
         acknowledged writes: {}; lost: {} (target 0)",
        r.trials.len(),
        r.timeout_ms,
        r.fence_timeout_ms,
        t.render(),
        r.acked_writes,
        r.lost_writes
    )
}

/// A timeline chart (SVG): one row per trial, segments detect / fence / replay + address /
/// reconnect, from the kill.
pub fn timeline(r: &FailoverReport) -> String {
    const W: f64 = 760.0;
    const LEFT: f64 = 70.0;
    const ROW: f64 = 18.0;
    const TOP: f64 = 50.0;
    let colors = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b"];
    let names = ["detect", "fence", "replay + address", "reconnect"];
    let max = r.trials.iter().map(|t| t.first_ack_ms).fold(1.0, f64::max);
    let scale = (W - LEFT - 20.0) / max;
    let h = TOP + ROW * r.trials.len() as f64 + 50.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n",
        escape(&format!(
            "Failover timeline: kill of node A -> first request served on A's address ({} trials, {} lost writes)",
            r.trials.len(),
            r.lost_writes
        ))
    );
    for (i, name) in names.iter().enumerate() {
        let x = LEFT + i as f64 * 150.0;
        s += &format!(
            "<rect x=\"{x}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"37\">{name}</text>\n",
            colors[i],
            x + 14.0
        );
    }
    for (row, t) in r.trials.iter().enumerate() {
        let y = TOP + row as f64 * ROW;
        s += &format!(
            "<text x=\"10\" y=\"{}\">trial {}</text>\n",
            y + 12.0,
            t.trial
        );
        let bounds = [0.0, t.claim_ms, t.silenced_ms, t.serving_ms, t.first_ack_ms];
        for k in 0..4 {
            let (a, b) = (bounds[k], bounds[k + 1].max(bounds[k]));
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/>\n",
                LEFT + a * scale,
                (b - a) * scale,
                ROW - 4.0,
                colors[k]
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\">{:.0} ms</text>\n",
            LEFT + t.first_ack_ms * scale + 4.0,
            y + 12.0,
            t.first_ack_ms
        );
    }
    let axis_y = TOP + ROW * r.trials.len() as f64 + 14.0;
    s += &format!(
        "<text x=\"{LEFT}\" y=\"{axis_y}\">0 ms</text><text x=\"{}\" y=\"{axis_y}\" text-anchor=\"end\">{max:.0} ms</text>\n</svg>\n",
        W - 20.0
    );
    s
}
