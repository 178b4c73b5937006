//! Benchmarks: `tandem bench boot` ([`boot`]), `tandem bench blk` ([`blk`]),
//! `tandem bench nbd` ([`nbd`]) and `tandem bench restart` ([`restart`]).
//!
//! This module holds what they share: [`Summary`] (median/min/max of repeats), [`Progress`]
//! (an indicatif bar on a terminal, one plain line per finished run otherwise), [`Table`]
//! (aligned text tables), [`BarChart`] (a hand-written horizontal bar-chart SVG with
//! optional min–max whiskers and a legend) and [`write_outputs`] (the `--json` and `--svg`
//! files). Timings taken under TCG compare only with other TCG timings from the same host.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

pub mod blk;
pub mod boot;
pub mod failover;
pub mod nbd;
pub mod nbd_tls;
pub mod restart;

pub use boot::bench_boot;

/// Median, minimum, maximum.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Summarise a sample (NaN for an empty one).
    pub fn of(values: &[f64]) -> Summary {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Progress of a bench's runs: a bar on stderr when stderr is a terminal, otherwise one
/// plain `tandem: [i/n] ...` line on stderr per finished run (logs and CI stay readable).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: u64,
}

impl Progress {
    /// Progress over `total` runs; a bar only when stderr is a terminal.
    pub fn new(total: u64) -> Progress {
        Progress::with_bar(total, std::io::stderr().is_terminal())
    }

    /// Progress over `total` runs, with or without a bar.
    pub fn with_bar(total: u64, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.enable_steady_tick(std::time::Duration::from_millis(200));
            pb
        });
        Progress {
            bar,
            total,
            done: 0,
        }
    }

    /// A run starts (shown on the bar only).
    pub fn start(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    /// A run finished with `result`.
    pub fn finish_one(&mut self, what: &str, result: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => eprintln!("tandem: [{}/{}] {what}: {result}", self.done, self.total),
        }
    }

    /// A message that must stay visible (printed above the bar).
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("tandem: {msg}")),
            None => eprintln!("tandem: {msg}"),
        }
    }

    /// Remove the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Column alignment in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text columns.
    Left,
    /// Numbers.
    Right,
}

/// A text table: a header row and rows of cells, columns padded to their widest cell and
/// separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            columns: columns.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are blank, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_string();
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((_, align), width)) in self.columns.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let text = cell(row, i);
                let pad = " ".repeat(width - text.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(&text);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(&text);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One bar of a [`BarChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Index into [`BarChart::series`] (picks the colour and the legend entry).
    pub series: usize,
    /// The bar's length.
    pub value: f64,
    /// A min–max whisker, if any.
    pub range: Option<(f64, f64)>,
    /// Text written after the bar.
    pub label: String,
}

/// A group of bars sharing a label on the left.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    /// The label.
    pub label: String,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
}

/// A horizontal bar chart as a standalone SVG: a title, groups of bars (one colour per
/// series), optional whiskers, a legend when a group has more than one bar, and an optional
/// footer line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarChart {
    /// Title line.
    pub title: String,
    /// Series names, in colour order.
    pub series: Vec<String>,
    /// The groups, top to bottom.
    pub groups: Vec<BarGroup>,
    /// A line under the chart.
    pub footer: Option<String>,
}

/// Series colours (Tableau 10).
const COLORS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

impl BarChart {
    /// The SVG document.
    pub fn render(&self) -> String {
        const WIDTH: f64 = 760.0;
        const TOP: f64 = 40.0;
        const GAP: f64 = 14.0;
        let multi = self.groups.iter().any(|g| g.bars.len() > 1);
        let bar_h = if multi { 16.0 } else { 28.0 };
        let longest = self
            .groups
            .iter()
            .map(|g| g.label.chars().count())
            .max()
            .unwrap_or(0);
        let left = (longest as f64 * 7.2 + 20.0).max(90.0);
        let plot_w = (WIDTH - left - 130.0).max(100.0);
        let max = self
            .groups
            .iter()
            .flat_map(|g| &g.bars)
            .map(|b| b.range.map_or(b.value, |(_, hi)| hi.max(b.value)))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
        let scale = plot_w / if max > 0.0 { max } else { 1.0 };
        let legend_h = if multi { 24.0 } else { 0.0 };
        let body: f64 = self
            .groups
            .iter()
            .map(|g| g.bars.len().max(1) as f64 * bar_h + GAP)
            .sum();
        let height = TOP + legend_h + body + if self.footer.is_some() { 36.0 } else { 16.0 };

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15">{}</text>"#,
            escape(&self.title)
        );
        if multi {
            let mut x = 10.0;
            let y = TOP - 4.0;
            for (i, name) in self.series.iter().enumerate() {
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                    COLORS[i % COLORS.len()],
                    x + 16.0,
                    y + 11.0,
                    escape(name)
                );
                x += 16.0 + name.chars().count() as f64 * 7.5 + 18.0;
            }
        }
        let mut y = TOP + legend_h;
        for g in &self.groups {
            let group_h = g.bars.len().max(1) as f64 * bar_h;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
                left - 8.0,
                y + group_h / 2.0,
                escape(&g.label)
            );
            for (j, b) in g.bars.iter().enumerate() {
                let by = y + j as f64 * bar_h;
                let mid = by + bar_h / 2.0;
                let value = if b.value.is_finite() {
                    b.value.max(0.0)
                } else {
                    0.0
                };
                let w = value * scale;
                let _ = writeln!(
                    s,
                    r#"<rect x="{left:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"/>"#,
                    by + 1.0,
                    bar_h - 2.0,
                    COLORS[b.series % COLORS.len()]
                );
                let mut end = left + w;
                if let Some((lo, hi)) = b.range.filter(|(lo, hi)| lo.is_finite() && hi.is_finite())
                {
                    let (x0, x1) = (left + lo * scale, left + hi * scale);
                    let t = (bar_h / 2.0 - 3.0).min(6.0);
                    let _ = writeln!(
                        s,
                        r#"<line x1="{x0:.1}" y1="{mid:.1}" x2="{x1:.1}" y2="{mid:.1}" stroke="black"/><line x1="{x0:.1}" y1="{:.1}" x2="{x0:.1}" y2="{:.1}" stroke="black"/><line x1="{x1:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}" stroke="black"/>"#,
                        mid - t,
                        mid + t,
                        mid - t,
                        mid + t
                    );
                    end = end.max(x1);
                }
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{mid:.1}" dominant-baseline="middle">{}</text>"#,
                    end + 8.0,
                    escape(&b.label)
                );
            }
            y += group_h + GAP;
        }
        if let Some(footer) = &self.footer {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{:.1}">{}</text>"#,
                height - 12.0,
                escape(footer)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Milliseconds, at microsecond resolution (keeps the JSON readable).
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Write the `--json` report and the `--svg` chart, when asked for, and say so on stderr.
pub fn write_outputs(
    report: &impl Serialize,
    json: Option<&Path>,
    svg: Option<(&Path, &BarChart)>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)? + "\n";
        std::fs::write(path, text).with_context(|| path.display().to_string())?;
        eprintln!("tandem: wrote {}", path.display());
    }
    if let Some((path, chart)) = svg {
        std::fs::write(path, chart.render()).with_context(|| path.display().to_string())?;
        eprintln!("tandem: wrote {}", path.display());
    }
    Ok(())
}

/// Escape text for SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs a bench that polls a Ctrl-C flag; maps an interruption to exit status 130 after
/// saying what was stopped.
pub fn run_interruptible<R>(
    stopped: &str,
    bench: impl FnOnce(&std::sync::atomic::AtomicBool) -> anyhow::Result<R>,
) -> anyhow::Result<i32> {
    // A second handler in one process (a library caller that has its own) is not an error.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst));
    match bench(&INTERRUPTED) {
        Ok(_) => Ok(0),
        Err(e) if e.is::<blk::Interrupted>() => {
            eprintln!("tandem: interrupted; {stopped}");
            Ok(crate::exit::EXIT_INTERRUPTED)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_min_max() {
        assert_eq!(
            Summary::of(&[3.0, 1.0, 2.0]),
            Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(Summary::of(&[]).median.is_nan());
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[("name", Align::Left), ("value", Align::Right)]);
        t.row(vec!["a".into(), "1.0".into()]);
        t.row(vec!["longer".into(), "123.45".into()]);
        t.row(vec!["short".into()]);
        assert_eq!(
            t.render(),
            "name     value\na          1.0\nlonger  123.45\nshort\n"
        );
    }

    #[test]
    fn chart_with_legend_and_whiskers() {
        let chart = BarChart {
            title: "IOPS <4k>".into(),
            series: vec!["threads".into(), "native".into()],
            groups: vec![
                BarGroup {
                    label: "qd 1".into(),
                    bars: vec![
                        Bar {
                            series: 0,
                            value: 100.0,
                            range: Some((90.0, 110.0)),
                            label: "100".into(),
                        },
                        Bar {
                            series: 1,
                            value: 50.0,
                            range: None,
                            label: "50".into(),
                        },
                    ],
                },
                BarGroup {
                    label: "qd 8".into(),
                    bars: vec![Bar {
                        series: 1,
                        value: f64::NAN,
                        range: None,
                        label: "-".into(),
                    }],
                },
            ],
            footer: Some("footer & more".into()),
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("IOPS &lt;4k&gt;"));
        assert!(svg.contains("footer &amp; more"));
        // Two legend swatches and three bars.
        assert_eq!(svg.matches("<rect x=").count(), 5);
        assert_eq!(svg.matches("stroke=\"black\"").count(), 3);
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn plain_progress_counts() {
        let mut p = Progress::with_bar(2, false);
        p.start("a");
        p.finish_one("a", "ok");
        p.finish_one("b", "ok");
        assert_eq!(p.done, 2);
        p.finish();
    }
}
