//! `gpu-check.md`: the summary rows (`mlae-cli check`'s verdicts, then the PyTorch side), a
//! table per step, and the `<figure>: rust=… pytorch=… ratio=…` lines.

use super::runner::TOTAL_LIMIT;
use crate::util::fmt;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIPPED",
        }
    }

    fn parse(word: &str) -> Status {
        match word {
            "PASS" => Status::Pass,
            "SKIPPED" => Status::Skipped,
            _ => Status::Fail,
        }
    }
}

/// One row of the summary.
#[derive(Debug, Clone)]
pub struct Row {
    pub step: String,
    pub status: Status,
    pub note: String,
}

/// The report's row name of a `mlae-cli check` step.
fn row_name(step: &str) -> String {
    match step {
        "doctor" => "1. doctor".into(),
        "train-fp32" => "2. training fp32".into(),
        "train-bf16" => "2. training bf16".into(),
        "merge" => "3. merged inference".into(),
        "parity" => "4. parity".into(),
        other => format!("check {other}"),
    }
}

/// The steps of `mlae-cli check --json`, as rows.
pub fn check_rows(check: &Value) -> Vec<Row> {
    steps(check)
        .map(|s| Row {
            step: row_name(s["step"].as_str().unwrap_or("?")),
            status: Status::parse(s["verdict"].as_str().unwrap_or("FAIL")),
            note: s["reason"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

fn steps(check: &Value) -> impl Iterator<Item = &Value> {
    check["steps"].as_array().into_iter().flatten()
}

fn step<'a>(check: &'a Value, name: &str) -> Option<&'a Value> {
    steps(check).find(|s| s["step"] == name)
}

/// The check's training step in `precision` (`fp32`, `bf16`).
pub fn train_step<'a>(check: &'a Value, precision: &str) -> Option<&'a Value> {
    step(check, &format!("train-{precision}"))
}

/// A training step's benchmark figures (`mlae_train::bench::TrainBench`), if it ran.
pub fn train_bench(step: &Value) -> Option<&Value> {
    let bench = &step["figures"]["train"]["bench"];
    bench.as_object().map(|_| bench)
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> f64 {
    a.zip(b).map_or(f64::NAN, |(a, b)| a / b)
}

pub fn figure_line(name: &str, rust: f64, pytorch: f64) -> String {
    format!("{name}: rust={} pytorch={} ratio={:.3}", fmt(rust), fmt(pytorch), rust / pytorch)
}

/// The summary note of a PyTorch run beside the Rust training step.
pub fn pytorch_note(rust: &Value, p: &Value) -> String {
    let r = train_bench(rust).unwrap_or(&Value::Null);
    let (rp, pp) = (f(r, &["train_img_per_s"]), f(p, &["train_img_per_s"]));
    let compile = f(p, &["train", "compile_seconds"]);
    format!(
        "torch {}: {} img/s, rust/pytorch {:.3}{}",
        p["torch"].as_str().unwrap_or("?"),
        fmt(pp.unwrap_or(f64::NAN)),
        ratio(rp, pp),
        compile.map_or(String::new(), |c| format!(", compile {c:.1} s"))
    )
}

/// What ran where, in one sentence, from the doctor's figures.
fn machine(check: &Value) -> String {
    let doctor = step(check, "doctor").unwrap_or(&Value::Null);
    let reason = doctor["reason"].as_str().unwrap_or("no report from mlae-cli check");
    let label = check["device_label"].as_str().unwrap_or("?");
    let requested = check["requested"].as_str().unwrap_or("?");
    match check["device"].as_str() {
        None => {
            format!("**The requested device `{requested}` cannot be used**: {reason}. No step ran on it.")
        }
        Some(d) if d.starts_with("cuda") => {
            format!("CUDA device found ({label}; {reason}): the GPU steps ran on `{d}`.")
        }
        Some(_) if requested == "cpu" => format!("`--device cpu` asked for the CPU variant ({reason})."),
        Some(_) => format!(
            "**No CUDA device on this machine** ({}): the CPU variant of the same steps ran instead, on a \
             small budget; step 4 (GPU against CPU) does not apply.",
            doctor["figures"]["doctor"]["cuda_problem"].as_str().unwrap_or(reason)
        ),
    }
}

/// The whole report.
pub fn markdown(
    check: &Value,
    rows: &[Row],
    pytorch: &[(&str, &str, Option<Value>)],
    python: &Path,
    total: f64,
) -> String {
    let failed = rows.iter().filter(|o| o.status == Status::Fail).count();
    let mut md = String::new();
    let _ = writeln!(md, "# MLAE GPU check\n\n{}\n", machine(check));
    let d = step(check, "doctor").map_or(&Value::Null, |s| &s["figures"]["doctor"]);
    if d.is_object() {
        let _ = writeln!(
            md,
            "libtorch {} ({}); NVIDIA driver: {}{}.\n",
            d["libtorch_version"].as_str().unwrap_or("unknown"),
            match d["cuda_built"].as_str() {
                Some(c) =>
                    format!("CUDA build: CUDA {c}, cuDNN {}", d["cudnn_built"].as_str().unwrap_or("none")),
                None => "CPU-only build".into(),
            },
            d["driver"].as_str().unwrap_or("?"),
            d["gpus"].as_array().filter(|g| !g.is_empty()).map_or(String::new(), |g| {
                format!(" ({})", g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            })
        );
    }
    let _ = writeln!(
        md,
        "- device: `{}`; total {total:.0} s (limit {} s)\n- result: {}\n\n| step | status | notes |\n|---|---|---|",
        check["device_label"].as_str().unwrap_or("none"),
        TOTAL_LIMIT.as_secs(),
        if failed == 0 {
            "every step passed or was skipped for the reason given".to_string()
        } else {
            format!("{failed} step(s) FAILED")
        }
    );
    for o in rows {
        let _ = writeln!(md, "| {} | {} | {} |", o.step, o.status.word(), o.note.replace('|', "/"));
    }
    let cfg = &check["config"];
    let v = &cfg["vit"];
    let _ = writeln!(
        md,
        "\nSteps 1-4 are `mlae-cli check --json` (its rules give the verdicts; each step after the doctor runs \
         in a process of its own). Step 5 is the PyTorch reference, after them.\n\n\
         ## 2. Training (Rust, `mlae-cli check`)\n\n\
         {} at {} px, batch {}, {} timed steps after {} warm-up, MLAE {} experts (rank 1) on qkv, expert dropout \
         {}, {} classes of generated images (a bright quadrant and a tint per class, noise on top), AdamW. The \
         loss must fall: the mean of the last quarter of the steps below 0.95 x the first quarter's.\n\n\
         | precision | status | img/s | peak memory MiB | loss first -> last quarter | seconds |\n|---|---|---|---|---|---|",
        v["preset"].as_str().unwrap_or("custom"),
        v["image_size"],
        cfg["batch"],
        cfg["steps"],
        cfg["warmup"],
        cfg["adapter"]["mlae"]["experts"],
        cfg["adapter"]["mlae"]["expert_dropout"],
        v["num_classes"]
    );
    for precision in ["fp32", "bf16"] {
        let Some(s) = train_step(check, precision) else { continue };
        let b = train_bench(s).unwrap_or(&Value::Null);
        let num = |k: &str| fmt(f(b, &[k]).unwrap_or(f64::NAN));
        let fig = &s["figures"]["train"];
        let ends = match (f(fig, &["loss_first_quarter"]), f(fig, &["loss_last_quarter"])) {
            (Some(a), Some(z)) => format!("{a:.4} -> {z:.4}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {precision} | {} | {} | {} | {ends} | {:.1} |",
            s["verdict"].as_str().unwrap_or("?"),
            num("train_img_per_s"),
            num("peak_mem_mb"),
            s["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if check["device"] == "cpu" {
        let _ = writeln!(
            md,
            "\nbf16 on the CPU: run (libtorch computes bf16 on the CPU, slowly); its speed says nothing about a GPU's."
        );
    }
    merge_section(&mut md, check);
    parity_section(&mut md, check);
    pytorch_section(&mut md, check, rows, pytorch, python);
    md
}

fn merge_section(md: &mut String, check: &Value) {
    let s = step(check, "merge").unwrap_or(&Value::Null);
    let cfg = &check["config"];
    let _ = writeln!(
        md,
        "\n## 3. Merged inference (Rust, `mlae-cli check`, fp32)\n\n\
         The adapters get random values and are merged into the weights; the merged model must give the \
         unmerged model's logits at the base model's speed. Batch {}, median of {} forwards x {} rounds after a \
         warm-up one, the three interleaved.\n",
        cfg["infer_batch"], cfg["infer_steps"], cfg["infer_rounds"]
    );
    let fig = &s["figures"]["merge"];
    if fig.is_object() {
        let batch = fig["batch"].to_string();
        let ips = |variant: &str| f(fig, &["bench", "img_per_s", variant, &batch]).unwrap_or(f64::NAN);
        let (base, unmerged, merged) = (ips("base"), ips("unmerged"), ips("merged"));
        let _ = writeln!(
            md,
            "| base img/s | unmerged img/s | merged img/s | merged / base | merged vs unmerged max |diff| | tolerance | status |\n\
             |---|---|---|---|---|---|---|\n| {} | {} | {} | {:.3} | {:.2e} | {:e} | {} |",
            fmt(base),
            fmt(unmerged),
            fmt(merged),
            merged / base,
            f(fig, &["bench", "merge_max_abs_diff"]).unwrap_or(f64::NAN),
            f(fig, &["tolerance"]).unwrap_or(f64::NAN),
            s["verdict"].as_str().unwrap_or("?")
        );
    } else {
        let _ = writeln!(
            md,
            "{}: {}",
            s["verdict"].as_str().unwrap_or("FAIL"),
            s["reason"].as_str().unwrap_or("no report")
        );
    }
}

fn parity_section(md: &mut String, check: &Value) {
    let s = step(check, "parity").unwrap_or(&Value::Null);
    let _ = writeln!(
        md,
        "\n## 4. Logit parity, GPU against CPU (`mlae-cli check`)\n\n\
         One fixed batch of {} generated images, the same model (seeded, device-independent initialisation, \
         random adapter values copied from the CPU), inference mode. It runs before any torch.compile. The fp32 \
         verdict reads the figure with cuDNN off on the GPU: libtorch lets cuDNN convolutions use TF32 by default \
         and tch has no switch for TF32 alone; without cuDNN the patch embedding runs as a cuBLAS product, where \
         libtorch keeps TF32 off. The cuDNN (TF32) figure is shown, not judged.\n",
        check["config"]["parity_batch"]
    );
    let fig = &s["figures"]["parity"];
    if fig.is_object() {
        let r = &fig["report"];
        let d = |k: &str| f(r, &[k]).unwrap_or(f64::NAN);
        let (t32, t16) = (
            f(fig, &["fp32_tolerance"]).unwrap_or(f64::NAN),
            f(fig, &["bf16_tolerance"]).unwrap_or(f64::NAN),
        );
        let ok = |v: f64, t: f64| if v <= t { "PASS" } else { "FAIL" };
        let _ = writeln!(
            md,
            "| precision | max abs diff | tolerance | status |\n|---|---|---|---|\n\
             | fp32, TF32 off (cuDNN off) | {:.3e} | {t32:e} | {} |\n\
             | fp32, cuDNN with TF32 | {:.3e} | not judged | - |\n\
             | bf16 | {:.3e} | {t16:e} | {} |\n\nLargest |logit| on the CPU: {:.3}.",
            d("fp32_no_cudnn_max_abs_diff"),
            ok(d("fp32_no_cudnn_max_abs_diff"), t32),
            d("fp32_max_abs_diff"),
            d("bf16_max_abs_diff"),
            ok(d("bf16_max_abs_diff"), t16),
            d("cpu_logit_max_abs")
        );
    } else {
        let _ = writeln!(
            md,
            "{}: {}.",
            s["verdict"].as_str().unwrap_or("FAIL"),
            s["reason"].as_str().unwrap_or("no report")
        );
    }
}

fn pytorch_section(
    md: &mut String,
    check: &Value,
    rows: &[Row],
    pytorch: &[(&str, &str, Option<Value>)],
    python: &Path,
) {
    let _ = writeln!(
        md,
        "\n## 5. The same training step in PyTorch (`bench_pytorch.py --vit plain`)\n\n\
         The ViT in plain torch (timm's network and module names, no timm needed), the same MLAE layer, \
         AdamW and step on random images of the same shapes; bf16 is torch.autocast. Python: `{}`. \
         `compiled` is torch.compile (inductor); its first step (the compilation) is not timed and is \
         shown apart. Ratio = rust / pytorch (images/s: above 1 is Rust faster; memory: below 1 is Rust \
         smaller). Each side is one process measured in turn, not interleaved (`cargo xtask bench` does \
         that): on a busy machine the ratios are noisy.\n\n\
         | precision | variant | status | pytorch img/s | rust img/s | ratio | pytorch peak MiB | rust peak MiB | ratio | compile s |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        python.display()
    );
    let mut figures = Vec::new();
    for (precision, variant, p) in pytorch {
        let Some(p) = p else {
            let name = format!("5. pytorch {variant} {precision}");
            let status = rows.iter().find(|r| r.step == name).map_or("FAIL", |r| r.status.word());
            let _ = writeln!(md, "| {precision} | {variant} | {status} | | | | | | | |");
            continue;
        };
        let rust = train_step(check, precision).and_then(train_bench).unwrap_or(&Value::Null);
        let (rp, pp) = (f(rust, &["train_img_per_s"]), f(p, &["train_img_per_s"]));
        let (rm, pm) = (f(rust, &["peak_mem_mb"]), f(p, &["peak_mem_mb"]));
        let compile = f(p, &["train", "compile_seconds"]);
        let _ = writeln!(
            md,
            "| {precision} | {variant} | PASS | {} | {} | {:.3} | {} | {} | {:.3} | {} |",
            fmt(pp.unwrap_or(f64::NAN)),
            fmt(rp.unwrap_or(f64::NAN)),
            ratio(rp, pp),
            fmt(pm.unwrap_or(f64::NAN)),
            fmt(rm.unwrap_or(f64::NAN)),
            ratio(rm, pm),
            compile.map_or(String::new(), |c| format!("{c:.1}"))
        );
        for (name, r, p) in [("train_img_per_s", rp, pp), ("peak_mem_mb", rm, pm)] {
            if let (Some(r), Some(p)) = (r, p) {
                figures.push(figure_line(&format!("{name}_{precision}_{variant}"), r, p));
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## Figures\n\nOne line per figure compared, `<figure>: rust=<x> pytorch=<y> ratio=<rust/pytorch>`:\n\n```"
    );
    for l in &figures {
        let _ = writeln!(md, "{l}");
    }
    let _ = writeln!(md, "```");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn figure_lines_follow_the_issue_pattern() {
        assert_eq!(
            figure_line("train_img_per_s_fp32_eager", 120.0, 100.0),
            "train_img_per_s_fp32_eager: rust=120.0 pytorch=100.0 ratio=1.200"
        );
    }

    #[test]
    fn the_check_steps_become_rows_and_the_missing_device_is_said_first() {
        let check = json!({
        "requested": "cuda", "device": null, "device_label": "none", "cuda": false,
        "steps": [
            {"step": "doctor", "verdict": "FAIL", "reason": "--device = cuda: libtorch sees no CUDA device: CPU-only libtorch: ...", "seconds": 0.1},
            {"step": "train-fp32", "verdict": "SKIPPED", "reason": "not run", "seconds": 0.0},
            {"step": "parity", "verdict": "SKIPPED", "reason": "not run", "seconds": 0.0}
        ]});
        let rows = check_rows(&check);
        let names: Vec<&str> = rows.iter().map(|r| r.step.as_str()).collect();
        assert_eq!(names, ["1. doctor", "2. training fp32", "4. parity"]);
        assert_eq!(rows[0].status, Status::Fail);
        let md = markdown(&check, &rows, &[], Path::new("python"), 1.0);
        assert!(md.contains("**The requested device `cuda` cannot be used**: --device = cuda: libtorch sees no CUDA device: CPU-only libtorch"), "{md}");
        assert!(md.contains("- result: 1 step(s) FAILED"), "{md}");
    }
}
