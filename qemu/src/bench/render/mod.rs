//! Report rendering, shared by every bench: text tables ([`Table`]), a horizontal bar-chart
//! SVG ([`BarChart`], optional min–max whiskers and a legend), number formats ([`si`],
//! [`ratio`], [`ms`]) and the one way a finished report leaves the bench ([`publish`]): its
//! table on stdout, `--json` and `--svg` files, each said on stderr. Each bench's report
//! implements [`Report`]; what its table and chart show is in this module's submodules, one
//! per bench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

pub mod blk;
pub mod boot;
pub mod failover;
pub mod mirror;
pub mod nbd;
pub mod nbd_tls;
pub mod restart;

/// A bench's finished report: serialisable as the `--json` file, with a text table and an
/// SVG chart.
pub trait Report: Serialize {
    /// The text printed on stdout.
    fn table(&self) -> String;
    /// The `--svg` document.
    fn svg(&self) -> String;
}

/// Where a report goes besides stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// `--json`: the report as JSON.
    pub json: Option<PathBuf>,
    /// `--svg`: its chart.
    pub svg: Option<PathBuf>,
}

/// Print the report's table on stdout and write the `--json` and `--svg` files asked for.
pub fn publish(report: &impl Report, out: &Outputs) -> anyhow::Result<()> {
    print!("{}", report.table());
    write_json(report, out.json.as_deref())?;
    if let Some(path) = &out.svg {
        write_file(path, &report.svg())?;
    }
    Ok(())
}

/// Write `report` as pretty JSON to `path`, when given, and say so on stderr.
pub fn write_json(report: &impl Serialize, path: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        write_file(path, &(serde_json::to_string_pretty(report)? + "\n"))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| path.display().to_string())?;
    eprintln!("tandem: wrote {}", path.display());
    Ok(())
}

/// Milliseconds, at microsecond resolution (keeps the JSON readable).
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `12345` → `12.3k`, for chart labels.
pub fn si(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A ratio with two decimals, `-` when there is none.
pub fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
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

const WIDTH: f64 = 760.0;
const TOP: f64 = 40.0;
const GAP: f64 = 14.0;

/// Where things go in one chart.
struct Layout {
    multi: bool,
    bar_h: f64,
    left: f64,
    scale: f64,
    legend_h: f64,
    height: f64,
}

impl BarChart {
    fn layout(&self) -> Layout {
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
        let legend_h = if multi { 24.0 } else { 0.0 };
        let body: f64 = self
            .groups
            .iter()
            .map(|g| g.bars.len().max(1) as f64 * bar_h + GAP)
            .sum();
        Layout {
            multi,
            bar_h,
            left,
            scale: plot_w / if max > 0.0 { max } else { 1.0 },
            legend_h,
            height: TOP + legend_h + body + if self.footer.is_some() { 36.0 } else { 16.0 },
        }
    }

    /// The SVG document.
    pub fn render(&self) -> String {
        let l = self.layout();
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{}" font-family="sans-serif" font-size="13">"#,
            l.height
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15">{}</text>"#,
            escape(&self.title)
        );
        if l.multi {
            self.legend(&mut s);
        }
        let mut y = TOP + l.legend_h;
        for g in &self.groups {
            let group_h = g.bars.len().max(1) as f64 * l.bar_h;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
                l.left - 8.0,
                y + group_h / 2.0,
                escape(&g.label)
            );
            for (j, b) in g.bars.iter().enumerate() {
                bar(&mut s, &l, b, y + j as f64 * l.bar_h);
            }
            y += group_h + GAP;
        }
        if let Some(footer) = &self.footer {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{:.1}">{}</text>"#,
                l.height - 12.0,
                escape(footer)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// One swatch and name per series.
    fn legend(&self, s: &mut String) {
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
}

/// One bar at `by`: the rectangle, its whisker, its label.
fn bar(s: &mut String, l: &Layout, b: &Bar, by: f64) {
    let (left, bar_h) = (l.left, l.bar_h);
    let mid = by + bar_h / 2.0;
    let value = if b.value.is_finite() {
        b.value.max(0.0)
    } else {
        0.0
    };
    let w = value * l.scale;
    let _ = writeln!(
        s,
        r#"<rect x="{left:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"/>"#,
        by + 1.0,
        bar_h - 2.0,
        COLORS[b.series % COLORS.len()]
    );
    let mut end = left + w;
    if let Some((lo, hi)) = b.range.filter(|(lo, hi)| lo.is_finite() && hi.is_finite()) {
        let (x0, x1) = (left + lo * l.scale, left + hi * l.scale);
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

/// Escape text for SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn si_labels() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(si(f64::NAN), "-");
        assert_eq!(ratio(None), "-");
        assert_eq!(ratio(Some(0.5)), "0.50");
    }
}
