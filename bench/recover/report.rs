//! The results table (Markdown, so it can be pasted into `bench/README.md` as is)
//! and the verdicts against the targets.

use std::time::Duration;

use crate::runs::{Measurement, Method};

/// bullmq-warden's time applying should be at most this multiple of the time
/// Redis itself spends in the scripts: the rest is overhead the client adds.
pub const APPLY_VS_SCRIPT_TARGET: f64 = 1.2;

/// bullmq-warden's whole process — start-up, reading and planning the rows,
/// writing, the report — should take at most this multiple of Redis's own
/// script time.
pub const WALL_VS_SCRIPT_TARGET: f64 = 1.25;

/// Another client's 99th percentile latency while bullmq-warden writes.
pub const P99_TARGET: Duration = Duration::from_millis(2);

const HEADER: [&str; 16] = [
    "N",
    "method",
    "runs",
    "wall s",
    "apply s",
    "redis script s",
    "redis cpu s",
    "apply / script",
    "wall / script",
    "apply vs node",
    "wall vs node",
    "probes",
    "p50 ms",
    "p99 ms",
    "max ms",
    "targets",
];

/// One measured restore.
pub struct Row {
    pub n: usize,
    pub method: Method,
    /// Runs made; `measured` is the median one by apply time.
    pub runs: usize,
    pub measured: Measurement,
}

/// Prints every row, ratios against the Node baseline measured at the same N.
pub fn print_table(rows: &[Row]) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| cells(row, baseline(rows, row.n)))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|i| {
            table
                .iter()
                .map(|cells| cells[i].len())
                .chain([HEADER[i].len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    print_line(HEADER.iter().map(|h| h.to_string()), &widths);
    let rule = widths.iter().enumerate().map(|(i, &w)| {
        let dashes = "-".repeat(w.saturating_sub(1));
        if is_text_column(i) {
            format!("{dashes}-")
        } else {
            format!("{dashes}:")
        }
    });
    print_line(rule, &widths);
    for cells in table {
        print_line(cells.into_iter(), &widths);
    }
}

fn print_line(cells: impl Iterator<Item = String>, widths: &[usize]) {
    let padded: Vec<String> = cells
        .zip(widths)
        .enumerate()
        .map(|(i, (cell, &width))| {
            if is_text_column(i) {
                format!("{cell:<width$}")
            } else {
                format!("{cell:>width$}")
            }
        })
        .collect();
    println!("| {} |", padded.join(" | "));
}

/// Text columns (method, targets) align left, numbers right.
fn is_text_column(index: usize) -> bool {
    matches!(HEADER[index], "method" | "targets")
}

fn baseline(rows: &[Row], n: usize) -> Option<&Measurement> {
    rows.iter()
        .find(|row| row.n == n && row.method == Method::NodeSequential)
        .map(|row| &row.measured)
}

fn cells(row: &Row, baseline: Option<&Measurement>) -> Vec<String> {
    let m = &row.measured;
    let vs_node = |mine: Duration, theirs: fn(&Measurement) -> Duration| {
        baseline.map_or_else(|| "-".into(), |b| ratio(mine, theirs(b)))
    };
    let latency = |pick: fn(&crate::probe::Latency) -> Duration| {
        m.latency
            .as_ref()
            .map_or_else(|| "-".into(), |l| millis(pick(l)))
    };
    vec![
        row.n.to_string(),
        row.method.to_string(),
        row.runs.to_string(),
        seconds(m.wall),
        seconds(m.apply),
        seconds(m.redis.script),
        seconds(m.redis.cpu),
        ratio(m.apply, m.redis.script),
        ratio(m.wall, m.redis.script),
        vs_node(m.apply, |b| b.apply),
        vs_node(m.wall, |b| b.wall),
        m.latency.map_or(0, |l| l.probes).to_string(),
        latency(|l| l.p50),
        latency(|l| l.p99),
        latency(|l| l.max),
        if row.method.is_warden() {
            verdict(m)
        } else {
            "-".into()
        },
    ]
}

/// `met`, or which targets were missed.
fn verdict(m: &Measurement) -> String {
    let missed = missed_targets(m);
    if missed.is_empty() {
        "met".into()
    } else {
        format!("missed: {}", missed.join(", "))
    }
}

fn missed_targets(m: &Measurement) -> Vec<String> {
    let mut missed = Vec::new();
    // False for NaN too (no script time recorded), which counts as missed.
    let within =
        |time: Duration, target: f64| time.as_secs_f64() / m.redis.script.as_secs_f64() <= target;
    if !within(m.apply, APPLY_VS_SCRIPT_TARGET) {
        missed.push(format!("apply/script > {APPLY_VS_SCRIPT_TARGET}"));
    }
    if !within(m.wall, WALL_VS_SCRIPT_TARGET) {
        missed.push(format!("wall/script > {WALL_VS_SCRIPT_TARGET}"));
    }
    match m.latency {
        Some(l) if l.p99 <= P99_TARGET => {}
        Some(_) => missed.push(format!("p99 > {} ms", P99_TARGET.as_millis())),
        None => missed.push("no probe during writes".into()),
    }
    missed
}

/// Names the concurrency settings that met both targets at the sweep size.
pub fn print_sweep_summary(rows: &[Row], sweep_size: usize) {
    let warden: Vec<&Row> = rows
        .iter()
        .filter(|row| row.n == sweep_size && row.method.is_warden())
        .collect();
    if warden.len() < 2 {
        return;
    }
    let meeting: Vec<String> = warden
        .iter()
        .filter(|row| missed_targets(&row.measured).is_empty())
        .map(|row| row.method.to_string())
        .collect();
    println!();
    println!(
        "Targets (apply/script <= {APPLY_VS_SCRIPT_TARGET}, wall/script <= {WALL_VS_SCRIPT_TARGET}, other client's p99 <= {} ms) at N={sweep_size} met by: {}",
        P99_TARGET.as_millis(),
        if meeting.is_empty() {
            "none".to_owned()
        } else {
            meeting.join("; ")
        }
    );
}

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn ratio(numerator: Duration, denominator: Duration) -> String {
    if denominator.is_zero() {
        return "-".into();
    }
    format!(
        "{:.2}x",
        numerator.as_secs_f64() / denominator.as_secs_f64()
    )
}
