//! One side's figures over the rounds, their medians, and how they are printed: the progress
//! line of each process, the Markdown table, the fraction-of-peak and the ratio lines.

use crate::util::fmt;
use mlae_core::stats::median;
use serde_json::Value;

/// The figures that get a `<figure>: rust=<x> pytorch=<y> ratio=<rust/pytorch>` line.
const RATIO_FIGURES: [&str; 3] = ["train_img_per_s", "peak_mem_mb", "infer_img_per_s_bs16"];

/// One side's results, figure -> value per round.
#[derive(Debug, Default)]
pub(super) struct Side {
    figures: std::collections::BTreeMap<String, Vec<f64>>,
}

impl Side {
    pub(super) fn push(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.figures.entry(name.to_string()).or_default().push(v);
        }
    }

    pub(super) fn median(&self, name: &str) -> Option<f64> {
        self.figures.get(name).map(|v| median(v))
    }

    /// The figures of one process's JSON report (train or infer).
    pub(super) fn add_report(&mut self, v: &Value) {
        if let Some(t) = v.get("train") {
            self.push("train_img_per_s", t["train_img_per_s"].as_f64());
            self.push("peak_mem_mb", t["peak_mem_mb"].as_f64());
            self.push("setup_mem_mb", t["setup_mem_mb"].as_f64());
            self.push("train_delta_mem_mb", diff(t["peak_mem_mb"].as_f64(), t["setup_mem_mb"].as_f64()));
            self.push("compile_seconds", t["compile_seconds"].as_f64());
        }
        if let Some(Value::Object(variants)) = v.get("infer").and_then(|i| i.get("img_per_s")) {
            for (variant, by_batch) in variants {
                if let Value::Object(by_batch) = by_batch {
                    for (bs, ips) in by_batch {
                        self.push(&format!("infer_{variant}_img_per_s_bs{bs}"), ips.as_f64());
                    }
                }
            }
            self.push("infer_img_per_s_bs16", v["infer_img_per_s_bs16"].as_f64());
        }
    }
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// The training step's achieved FLOP/s (its matrix-product FLOPs per image, from
/// `mlae_core::flops`, times images/s) as a fraction of the measured fp32 matmul peak, per side.
pub(super) fn peak_lines(
    flops_per_image: f64,
    peak_gflops: f64,
    rust: &Side,
    sides: &[(&str, &Side)],
) -> String {
    let mut s = format!(
        "training step: {:.3} GFLOP per image in matrix products; fp32 matmul peak {:.1} GFLOP/s \
         (median of the rounds' `mlae-cli bench --mode peak`)\n",
        flops_per_image / 1e9,
        peak_gflops
    );
    let mut line = String::from("train_peak_fraction:");
    let all = std::iter::once(("rust", rust)).chain(sides.iter().copied());
    for (name, side) in all {
        if let Some(ips) = side.median("train_img_per_s") {
            let achieved = ips * flops_per_image / 1e9;
            let name = if name == "pytorch" { "eager" } else { name };
            s.push_str(&format!(
                "  {name}: {achieved:.1} GFLOP/s = {:.1} % of peak\n",
                100.0 * achieved / peak_gflops
            ));
            line.push_str(&format!(" {name}={:.4}", achieved / peak_gflops));
        }
    }
    s.push_str(&line);
    s.push('\n');
    s
}

pub(super) fn mem_note(device: &str) -> &'static str {
    if device == "cpu" {
        "peak resident set size (VmHWM / ru_maxrss) of a fresh process per side that only trains; \
         `set-up` is the resident set before the first step, `growth` the peak minus it"
    } else {
        "peak device memory in use (cuMemGetInfo: CUDA context + caching allocator), sampled after every \
         step in a fresh process per side"
    }
}

pub(super) fn report_line(side: &str, mode: &str, v: &Value) {
    match mode {
        "train" => eprintln!(
            "{side}: train {} img/s, peak memory {} MiB",
            v["train_img_per_s"].as_f64().map_or("?".into(), fmt),
            v["peak_mem_mb"].as_f64().map_or("?".into(), fmt)
        ),
        _ => eprintln!(
            "{side}: merged inference at batch 16 {} img/s",
            v["infer_img_per_s_bs16"].as_f64().map_or("-".into(), fmt)
        ),
    }
}

/// The `<figure>: rust=<x> pytorch=<y> ratio=<rust/pytorch>` lines: against eager under the
/// figure's name, against the compiled reference as `<figure>_compiled`.
pub(super) fn ratio_lines(rust: &Side, sides: &[(&str, &Side)]) -> String {
    let mut s = String::new();
    for (side, other) in sides {
        let suffix = if *side == "compiled" { "_compiled" } else { "" };
        for f in RATIO_FIGURES {
            if let (Some(r), Some(p)) = (rust.median(f), other.median(f)) {
                s.push_str(&format!("{f}{suffix}: rust={} pytorch={} ratio={:.3}\n", fmt(r), fmt(p), r / p));
            }
        }
    }
    s
}

/// The Markdown table: one row per figure, Rust, each reference side and Rust's ratio to it.
pub(super) fn table(rust: &Side, sides: &[(&str, &Side)]) -> String {
    let mut names: Vec<&String> = rust.figures.keys().filter(|n| *n != "compile_seconds").collect();
    let order = |n: &str| -> (usize, usize, String) {
        let group = match n {
            "train_img_per_s" => 0,
            "peak_mem_mb" => 1,
            "setup_mem_mb" => 2,
            "train_delta_mem_mb" => 3,
            _ if n.starts_with("infer_base") => 4,
            _ if n.starts_with("infer_unmerged") => 5,
            _ if n.starts_with("infer_merged") => 6,
            _ => 7,
        };
        let bs = n.rsplit("_bs").next().and_then(|b| b.parse().ok()).unwrap_or(0);
        (group, bs, n.to_string())
    };
    names.sort_by_key(|n| order(n));
    let head = |side: &str| if side == "compiled" { "pytorch compiled" } else { "pytorch eager" };
    let mut s = String::from("| figure | rust |");
    for (side, _) in sides {
        s.push_str(&format!(" {} |", head(side)));
    }
    for (side, _) in sides {
        s.push_str(&format!(" rust/{} |", head(side)));
    }
    s.push_str(&format!("\n|{}\n", "---|".repeat(2 + 2 * sides.len())));
    let cell = |v: Option<f64>| v.map_or("-".to_string(), fmt);
    for n in names {
        let r = rust.median(n);
        s.push_str(&format!("| {} | {} |", describe(n), cell(r)));
        for (_, side) in sides {
            s.push_str(&format!(" {} |", cell(side.median(n))));
        }
        for (_, side) in sides {
            let ratio = r.zip(side.median(n)).map_or("-".to_string(), |(r, p)| format!("{:.3}", r / p));
            s.push_str(&format!(" {ratio} |"));
        }
        s.push('\n');
    }
    s
}

/// A readable name for a figure key.
fn describe(key: &str) -> String {
    match key {
        "train_img_per_s" => "train img/s (`train_img_per_s`)".into(),
        "peak_mem_mb" => "peak memory MiB (`peak_mem_mb`)".into(),
        "setup_mem_mb" => "set-up memory MiB".into(),
        "train_delta_mem_mb" => "training growth MiB (peak - set-up)".into(),
        "infer_img_per_s_bs16" => "merged inference img/s bs 16 (`infer_img_per_s_bs16`)".into(),
        k => match k.strip_prefix("infer_").and_then(|r| r.split_once("_img_per_s_bs")) {
            Some((variant, bs)) => format!("inference img/s, {variant}, bs {bs}"),
            None => k.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_of_peak_is_flops_times_throughput_over_the_peak() {
        let side = |ips: f64| {
            let mut s = Side::default();
            s.push("train_img_per_s", Some(ips));
            s
        };
        let (rust, eager) = (side(10.0), side(5.0));
        // 2 GFLOP per image at 10 img/s = 20 GFLOP/s of a 100 GFLOP/s peak
        let out = peak_lines(2e9, 100.0, &rust, &[("pytorch", &eager)]);
        assert!(out.contains("rust: 20.0 GFLOP/s = 20.0 % of peak"), "{out}");
        assert!(out.contains("eager: 10.0 GFLOP/s = 10.0 % of peak"), "{out}");
        assert!(out.ends_with("train_peak_fraction: rust=0.2000 eager=0.1000\n"), "{out}");
    }

    #[test]
    fn reports_become_medians_ratios_and_a_table() {
        let mut rust = Side::default();
        let mut torch = Side::default();
        for (ips, mem) in [(10.0, 500.0), (12.0, 520.0), (11.0, 510.0)] {
            rust.add_report(&serde_json::json!({
                "train": {"train_img_per_s": ips, "peak_mem_mb": mem, "setup_mem_mb": 300.0}
            }));
            torch.add_report(&serde_json::json!({
                "train": {"train_img_per_s": ips / 2.0, "peak_mem_mb": mem * 2.0, "setup_mem_mb": 600.0}
            }));
        }
        rust.add_report(&serde_json::json!({
            "infer": {"img_per_s": {"base": {"16": 40.0}, "merged": {"16": 39.0}}},
            "infer_img_per_s_bs16": 39.0
        }));
        torch.add_report(&serde_json::json!({
            "infer": {"img_per_s": {"base": {"16": 20.0}, "merged": {"16": 19.5}}},
            "infer_img_per_s_bs16": 19.5
        }));
        assert_eq!(rust.median("train_img_per_s"), Some(11.0));
        assert_eq!(rust.median("train_delta_mem_mb"), Some(210.0));
        assert_eq!(torch.median("peak_mem_mb"), Some(1020.0));
        let t = table(&rust, &[("pytorch", &torch)]);
        assert!(t.starts_with("| figure | rust | pytorch eager | rust/pytorch eager |\n"), "{t}");
        assert!(t.contains("| train img/s (`train_img_per_s`) | 11.00 | 5.50 | 2.000 |"), "{t}");
        assert!(t.contains("| inference img/s, merged, bs 16 | 39.00 | 19.50 | 2.000 |"), "{t}");
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert!(rows[0].starts_with("| train img/s"), "{t}");
        assert!(rows[1].starts_with("| peak memory"), "{t}");
        assert!(rows.last().unwrap().contains("infer_img_per_s_bs16"), "{t}");
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);

        // The compiled reference: its own columns, only the figures it measured (inference
        // compiled covers the merged model), its compile time kept out of the table.
        let mut compiled = Side::default();
        compiled.add_report(&serde_json::json!({
            "train": {"train_img_per_s": 22.0, "peak_mem_mb": 400.0, "setup_mem_mb": 300.0, "compile_seconds": 70.0}
        }));
        compiled.add_report(&serde_json::json!({
            "infer": {"img_per_s": {"merged": {"16": 78.0}}}, "infer_img_per_s_bs16": 78.0
        }));
        let sides = [("pytorch", &torch), ("compiled", &compiled)];
        let t = table(&rust, &sides);
        assert!(
            t.contains("| train img/s (`train_img_per_s`) | 11.00 | 5.50 | 22.00 | 2.000 | 0.500 |"),
            "{t}"
        );
        assert!(t.contains("| inference img/s, base, bs 16 | 40.00 | 20.00 | - | 2.000 | - |"), "{t}");
        assert!(!t.contains("compile_seconds"), "{t}");
        assert_eq!(compiled.median("compile_seconds"), Some(70.0));
        let lines = ratio_lines(&rust, &sides);
        assert!(lines.contains("train_img_per_s: rust=11.00 pytorch=5.50 ratio=2.000\n"), "{lines}");
        assert!(
            lines.contains("train_img_per_s_compiled: rust=11.00 pytorch=22.00 ratio=0.500\n"),
            "{lines}"
        );
        assert!(lines.contains("peak_mem_mb_compiled: rust=510.0 pytorch=400.0 ratio=1.275\n"), "{lines}");
    }
}
