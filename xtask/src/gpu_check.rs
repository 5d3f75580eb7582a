//! `cargo xtask gpu-check`: one command that tells whether the GPU path works and how fast it
//! is, within 8 minutes, and `--pack DIR`, the same check as a folder that runs on a machine
//! without network (`bash DIR/run.sh OUTDIR`).
//!
//! The steps, each a fresh child process (so each peak memory is its own), in order:
//! 1. `mlae-cli doctor --json` (through the launcher, as a user starts it): libtorch, CUDA;
//! 2. `mlae-cli bench --mode train --data patterns` in fp32 and in bf16: images/s, peak memory,
//!    and the loss of every step on learnable generated images (it must fall);
//! 3. `mlae-cli bench --mode infer`: merged adapter against the base model (speed, and the
//!    merged model computing the unmerged one's logits);
//! 4. `bench_pytorch.py --vit plain` (the same step in plain torch, no timm), eager and
//!    `torch.compile`d, fp32 and bf16, beside step 2;
//! 5. `mlae-cli bench --mode parity`: logits of a fixed batch on the GPU against the CPU.
//!
//! Without CUDA it says so, runs the CPU variant of the same steps on a small budget (step 5
//! does not apply) and exits 0 unless a step fails. The report is `gpu-check.md` (tables,
//! PASS / FAIL / SKIPPED with reasons, and `<figure>: rust=… pytorch=… ratio=…` lines), beside
//! `gpu-check.json` (every child's JSON) and `logs/` (every child's output).
//!
//! xtask never links libtorch: it drives the release `mlae-cli` and Python as subprocesses.

use crate::{bench, setup, util};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole check must end within this (the issue's 8 minutes); every child gets at most
/// what is left of it.
const TOTAL_LIMIT: Duration = Duration::from_secs(480);
/// The packed folder must stay under this.
pub const PACK_LIMIT_BYTES: u64 = 60_000_000;
/// Tolerances of step 5 (max |logit difference|, GPU against CPU) and of the merge in step 3.
const PARITY_FP32: f64 = 1e-4;
const PARITY_BF16: f64 = 2e-2;
const MERGE_TOL: f64 = 1e-4;
/// Step 2 passes when the mean loss of the last quarter of the steps is below this fraction
/// of the first quarter's.
const LOSS_FALL: f64 = 0.95;
const CLASSES: usize = 4;
const EXPERTS: usize = 8;
const DROPOUT: f64 = 0.5;
const TARGETS: &str = "qkv";

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Instead of running the check, write a folder with the release binaries (stripped), the
    /// PyTorch script and `run.sh` for a machine without network (`bash DIR/run.sh OUTDIR`).
    #[arg(long, value_name = "DIR")]
    pub pack: Option<PathBuf>,
    /// Where the report goes (`gpu-check.md`, `gpu-check.json`, `logs/`) [default: target/gpu-check].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The Python with torch for step 4 [default: $MLAE_PYTHON, else the project venv].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Take `mlae-cli`, `mlae-engine` (and, for `--pack`, nothing else) from this folder
    /// instead of a release build (the packed folder runs this way).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The PyTorch reference [default: xtask/python/bench_pytorch.py of this checkout].
    #[arg(long, value_name = "PATH")]
    pub script: Option<PathBuf>,
    /// `auto` (CUDA when `mlae-cli doctor` sees a device, else the CPU variant), `cpu` or `cuda`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Architecture preset [default: vit-b16].
    #[arg(long)]
    pub preset: Option<String>,
    /// Image size [default: 224 on CUDA, 32 on the CPU].
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Training batch [default: 32 on CUDA, 8 on the CPU].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed training steps (the loss check reads them) [default: 30 on CUDA, 12 on the CPU].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Skip the torch.compile runs of step 4 (compiling takes minutes on a small CPU); the
    /// default run has them.
    #[arg(long)]
    pub no_compile: bool,
}

/// The sizes a run uses: a GPU budget, and a much smaller one for the CPU variant.
#[derive(Debug, Clone)]
struct Budget {
    preset: String,
    image_size: u32,
    batch: usize,
    steps: usize,
    warmup: usize,
    infer_batch: usize,
    /// Timed forwards per variant and round of step 3, and its rounds.
    infer_steps: usize,
    infer_rounds: usize,
    parity_batch: usize,
}

impl Budget {
    fn new(cuda: bool, args: &GpuCheckArgs) -> Budget {
        let mut b = if cuda {
            Budget {
                preset: "vit-b16".into(),
                image_size: 224,
                batch: 32,
                steps: 30,
                warmup: 3,
                infer_batch: 32,
                infer_steps: 10,
                infer_rounds: 2,
                parity_batch: 8,
            }
        } else {
            Budget {
                preset: "vit-b16".into(),
                image_size: 32,
                batch: 8,
                steps: 12,
                warmup: 2,
                infer_batch: 8,
                infer_steps: 4,
                infer_rounds: 1,
                parity_batch: 8,
            }
        };
        if let Some(p) = &args.preset {
            b.preset = p.clone();
        }
        b.image_size = args.image_size.unwrap_or(b.image_size);
        b.batch = args.batch.unwrap_or(b.batch);
        b.steps = args.steps.unwrap_or(b.steps);
        b
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skipped,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIPPED",
        }
    }
}

/// One row of the summary.
#[derive(Debug, Clone)]
struct Outcome {
    step: String,
    status: Status,
    note: String,
}

/// What one child process gave: its JSON (last stdout line) or why there is none.
struct Child {
    json: Result<Value, String>,
    seconds: f64,
}

/// Runs the steps, each child under what is left of [`TOTAL_LIMIT`], output in `logs/`.
struct Runner {
    out: PathBuf,
    started: Instant,
    raw: serde_json::Map<String, Value>,
}

impl Runner {
    fn left(&self) -> Duration {
        TOTAL_LIMIT.saturating_sub(self.started.elapsed())
    }

    /// Runs `cmd` (stdout and stderr to `logs/<name>.out|.err`) for at most `limit` and what
    /// is left of the total, and parses the last stdout line as JSON.
    fn run(&mut self, name: &str, cmd: &mut Command, limit: Duration) -> Child {
        let limit = limit.min(self.left());
        let logs = self.out.join("logs");
        let start = Instant::now();
        let result = (|| -> Result<Value, String> {
            if limit < Duration::from_secs(5) {
                return Err(format!(
                    "not started: the {} s limit of the whole check is reached",
                    TOTAL_LIMIT.as_secs()
                ));
            }
            std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
            let (out_path, err_path) = (logs.join(format!("{name}.out")), logs.join(format!("{name}.err")));
            let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
            let line = util::describe(cmd);
            eprintln!("$ {line}");
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(file(&out_path)?)
                .stderr(file(&err_path)?)
                .spawn()
                .map_err(|e| format!("cannot start `{line}`: {e}"))?;
            let status = loop {
                if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                    break s;
                }
                if start.elapsed() > limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("timed out after {} s: `{line}`", limit.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            if !status.success() {
                return Err(format!("`{line}` failed ({status}): {}", tail(&stderr, 6)));
            }
            // `doctor --json` prints one pretty object; the others end with a one-line report.
            let last = stdout.trim().lines().last().unwrap_or_default();
            serde_json::from_str(stdout.trim())
                .or_else(|_| serde_json::from_str(last))
                .map_err(|_| format!("`{line}` printed no JSON report: {}", tail(&stdout, 4)))
        })();
        let seconds = start.elapsed().as_secs_f64();
        self.raw.insert(
            name.into(),
            match &result {
                Ok(v) => json!({"seconds": seconds, "report": v}),
                Err(e) => json!({"seconds": seconds, "error": e}),
            },
        );
        if let Err(e) = &result {
            eprintln!("{name}: {e}");
        }
        Child { json: result, seconds }
    }
}

/// The last `n` non-empty lines of `text`, on one line.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64)
}

/// Mean of the first and of the last quarter of `losses` (at least one value each).
fn loss_ends(losses: &[f64]) -> Option<(f64, f64)> {
    if losses.len() < 2 {
        return None;
    }
    let k = (losses.len() / 4).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    Some((mean(&losses[..k]), mean(&losses[losses.len() - k..])))
}

/// The loss check of step 2: every loss finite and the last quarter below [`LOSS_FALL`] of
/// the first.
fn loss_verdict(losses: &[f64]) -> (Status, String) {
    if let Some(bad) = losses.iter().position(|l| !l.is_finite()) {
        return (Status::Fail, format!("loss {} at step {bad}", losses[bad]));
    }
    match loss_ends(losses) {
        None => (Status::Fail, format!("only {} losses recorded", losses.len())),
        Some((first, last)) if last < LOSS_FALL * first => (
            Status::Pass,
            format!("loss {first:.4} -> {last:.4} (first -> last quarter of {} steps)", losses.len()),
        ),
        Some((first, last)) => (
            Status::Fail,
            format!(
                "loss did not fall: {first:.4} -> {last:.4} (first -> last quarter of {} steps; must end below {LOSS_FALL} x)",
                losses.len()
            ),
        ),
    }
}

fn precisions() -> [&'static str; 2] {
    ["fp32", "bf16"]
}

/// Where the binaries come from: `--bin-dir`, or a release build.
fn binaries(args: &GpuCheckArgs) -> Result<PathBuf> {
    match &args.bin_dir {
        Some(dir) => {
            let dir = util::absolute(dir);
            for b in ["mlae-cli", "mlae-engine"] {
                if !dir.join(b).is_file() {
                    bail!("--bin-dir {}: no `{b}` there", dir.display());
                }
            }
            Ok(dir)
        }
        None => {
            setup::ensure()?;
            let engine = bench::build_release()?;
            Ok(engine.parent().expect("the engine lives in a folder").to_path_buf())
        }
    }
}

/// `--python`, `$MLAE_PYTHON`, or the project venv's (which may not exist: step 4 says so).
fn python(args: &GpuCheckArgs) -> PathBuf {
    args.python
        .clone()
        .or_else(|| std::env::var_os("MLAE_PYTHON").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(setup::venv_python)
}

pub fn run(args: &GpuCheckArgs) -> Result<()> {
    if let Some(dir) = &args.pack {
        return pack(dir, args).map(|_| ());
    }
    if !["auto", "cpu", "cuda"].contains(&args.device.as_str()) {
        bail!("--device must be auto, cpu or cuda, not `{}`", args.device);
    }
    let out = util::absolute(&args.out.clone().unwrap_or_else(|| util::root().join("target/gpu-check")));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // A previous run's logs would read as this run's.
    let _ = std::fs::remove_dir_all(out.join("logs"));
    let bins = binaries(args)?;
    let script = util::absolute(
        &args.script.clone().unwrap_or_else(|| util::root().join("xtask/python/bench_pytorch.py")),
    );
    let python = python(args);
    let mut runner = Runner { out: out.clone(), started: Instant::now(), raw: Default::default() };
    let cli = || {
        let mut c = Command::new(bins.join("mlae-cli"));
        c.env("MLAE_LOG", "warn");
        c
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut md = String::new();
    let mut figures: Vec<String> = Vec::new();

    // 1. doctor
    util::step("1. mlae-cli doctor");
    let doctor = runner.run("1-doctor", cli().args(["doctor", "--json"]), Duration::from_secs(60));
    let (cuda, doctor_note) = match &doctor.json {
        Ok(d) => {
            let cuda = d["cuda"].as_bool().unwrap_or(false);
            let gpus: Vec<&str> = d["gpus"]
                .as_array()
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let note = format!(
                "libtorch {}, CUDA {}{}, {} CPU cores",
                d["libtorch_version"].as_str().unwrap_or("?"),
                if cuda { "yes" } else { "no" },
                if gpus.is_empty() { String::new() } else { format!(" ({})", gpus.join(", ")) },
                d["cores"]
            );
            outcomes.push(Outcome { step: "1. doctor".into(), status: Status::Pass, note: note.clone() });
            (cuda, note)
        }
        Err(e) => {
            outcomes.push(Outcome { step: "1. doctor".into(), status: Status::Fail, note: e.clone() });
            (false, e.clone())
        }
    };
    let device = match args.device.as_str() {
        "cuda" if !cuda => {
            outcomes.push(Outcome {
                step: "1. doctor".into(),
                status: Status::Fail,
                note: "--device cuda, but mlae-cli doctor sees no CUDA device".into(),
            });
            "cuda"
        }
        "cpu" => "cpu",
        _ if cuda => "cuda",
        _ => "cpu",
    };
    let budget = Budget::new(device == "cuda", args);
    let machine = if device == "cuda" {
        format!("CUDA device found ({doctor_note}): the GPU steps ran on `cuda`.")
    } else if cuda {
        format!("CUDA is available ({doctor_note}) but `--device cpu` asked for the CPU variant.")
    } else {
        format!(
            "**No CUDA device on this machine** ({doctor_note}): the CPU variant of the same steps ran \
             instead, on a small budget; step 5 (GPU against CPU) does not apply."
        )
    };

    let bench = |mode: &str| {
        let mut c = cli();
        c.args(["bench", "--json", "--mode", mode, "--preset", &budget.preset])
            .args(["--image-size", &budget.image_size.to_string(), "--classes", &CLASSES.to_string()])
            .args(["--adapter", "mlae", "--experts", &EXPERTS.to_string(), "--expert-rank", "1"])
            .args(["--dropout", &DROPOUT.to_string(), "--targets", TARGETS, "--device", device]);
        c
    };

    // 2. training, fp32 and bf16
    let mut rust_train: Vec<(&str, Option<Value>)> = Vec::new();
    let _ = writeln!(
        md,
        "## 2. Training (Rust, `mlae-cli bench --mode train --data patterns`)\n\n\
         {} at {} px, batch {}, {} timed steps after {} warm-up, MLAE {EXPERTS} experts (rank 1) on {TARGETS}, \
         expert dropout {DROPOUT}, {CLASSES} classes of generated images (a bright quadrant and a tint per \
         class, noise on top), AdamW. The loss must fall: the mean of the last quarter of the steps below \
         {LOSS_FALL} x the first quarter's.\n\n\
         | precision | status | img/s | peak memory MiB | loss first -> last quarter | seconds |\n|---|---|---|---|---|---|",
        budget.preset, budget.image_size, budget.batch, budget.steps, budget.warmup
    );
    for precision in precisions() {
        util::step(&format!("2. training, {precision}"));
        let child = runner.run(
            &format!("2-train-{precision}"),
            bench("train")
                .args(["--batch", &budget.batch.to_string(), "--steps", &budget.steps.to_string()])
                .args([
                    "--warmup",
                    &budget.warmup.to_string(),
                    "--data",
                    "patterns",
                    "--precision",
                    precision,
                ]),
            Duration::from_secs(180),
        );
        let step = format!("2. training {precision}");
        match &child.json {
            Ok(v) => {
                let losses: Vec<f64> = v["train"]["losses"]
                    .as_array()
                    .map(|a| a.iter().map(|l| l.as_f64().unwrap_or(f64::NAN)).collect())
                    .unwrap_or_default();
                let (status, note) = loss_verdict(&losses);
                let ends = loss_ends(&losses).map_or("-".into(), |(a, b)| format!("{a:.4} -> {b:.4}"));
                let _ = writeln!(
                    md,
                    "| {precision} | {} | {} | {} | {ends} | {:.1} |",
                    status.word(),
                    fmt(f(v, &["train_img_per_s"]).unwrap_or(f64::NAN)),
                    fmt(f(v, &["peak_mem_mb"]).unwrap_or(f64::NAN)),
                    child.seconds
                );
                let ips = fmt(f(v, &["train_img_per_s"]).unwrap_or(f64::NAN));
                outcomes.push(Outcome { step, status, note: format!("{note}; {ips} img/s") });
                rust_train.push((precision, Some(v.clone())));
            }
            Err(e) => {
                let _ = writeln!(md, "| {precision} | FAIL | - | - | - | {:.1} |", child.seconds);
                outcomes.push(Outcome { step, status: Status::Fail, note: e.clone() });
                rust_train.push((precision, None));
            }
        }
    }
    if device == "cpu" {
        let _ = writeln!(
            md,
            "\nbf16 on the CPU: run (libtorch computes bf16 on the CPU, slowly); its speed says nothing about a GPU's."
        );
    }

    // 3. merged inference
    util::step("3. merged inference against the base model");
    let ib = budget.infer_batch.to_string();
    let child = runner.run(
        "3-infer",
        bench("infer")
            .args(["--infer-batches", &ib, "--steps", &budget.infer_steps.to_string(), "--warmup", "1"])
            .args(["--rounds", &budget.infer_rounds.to_string()]),
        Duration::from_secs(120),
    );
    let _ = writeln!(
        md,
        "\n## 3. Merged inference (Rust, `mlae-cli bench --mode infer`, fp32)\n\n\
         The adapters get random values and are merged into the weights; the merged model must give the \
         unmerged model's logits (max |diff| <= {MERGE_TOL:e}) at the base model's speed. Batch {ib}, \
         median of {} forwards x {} rounds after a warm-up one, the three interleaved.\n",
        budget.infer_steps, budget.infer_rounds
    );
    match &child.json {
        Ok(v) => {
            let ips = |variant: &str| f(v, &["infer", "img_per_s", variant, &ib]).unwrap_or(f64::NAN);
            let (base, unmerged, merged) = (ips("base"), ips("unmerged"), ips("merged"));
            let diff = f(v, &["infer", "merge_max_abs_diff"]).unwrap_or(f64::NAN);
            let status = if diff <= MERGE_TOL { Status::Pass } else { Status::Fail };
            let _ = writeln!(
                md,
                "| base img/s | unmerged img/s | merged img/s | merged / base | merged vs unmerged max |diff| | status |\n\
                 |---|---|---|---|---|---|\n| {} | {} | {} | {:.3} | {diff:.2e} | {} |",
                fmt(base),
                fmt(unmerged),
                fmt(merged),
                merged / base,
                status.word()
            );
            outcomes.push(Outcome {
                step: "3. merged inference".into(),
                status,
                note: format!(
                    "merged {} img/s = {:.3} x base; merged vs unmerged logits max |diff| {diff:.2e}",
                    fmt(merged),
                    merged / base
                ),
            });
        }
        Err(e) => {
            let _ = writeln!(md, "FAIL: {e}");
            outcomes.push(Outcome {
                step: "3. merged inference".into(),
                status: Status::Fail,
                note: e.clone(),
            });
        }
    }

    // 4. PyTorch, eager and compiled, beside step 2
    let _ = writeln!(
        md,
        "\n## 4. The same training step in PyTorch (`bench_pytorch.py --vit plain`)\n\n\
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
    for (precision, rust) in &rust_train {
        for compiled in [false, true] {
            let variant = if compiled { "compiled" } else { "eager" };
            let step = format!("4. pytorch {variant} {precision}");
            if compiled && args.no_compile {
                let _ = writeln!(md, "| {precision} | {variant} | SKIPPED | | | | | | | |");
                outcomes.push(Outcome {
                    step,
                    status: Status::Skipped,
                    note: "skipped by --no-compile".into(),
                });
                continue;
            }
            let Some(rust) = rust else {
                let _ = writeln!(md, "| {precision} | {variant} | SKIPPED | | | | | | | |");
                outcomes.push(Outcome {
                    step,
                    status: Status::Skipped,
                    note: format!("no Rust {precision} result to compare with (step 2 failed)"),
                });
                continue;
            };
            util::step(&format!("4. pytorch {variant}, {precision}"));
            let child = runner.run(
                &format!("4-pytorch-{variant}-{precision}"),
                &mut pytorch_cmd(&python, &script, rust, &budget, device, precision, compiled),
                Duration::from_secs(if compiled { 150 } else { 120 }),
            );
            match &child.json {
                Ok(p) => {
                    let (rp, pp) = (f(rust, &["train_img_per_s"]), f(p, &["train_img_per_s"]));
                    let (rm, pm) = (f(rust, &["peak_mem_mb"]), f(p, &["peak_mem_mb"]));
                    let compile = f(p, &["train", "compile_seconds"]);
                    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(f64::NAN, |(a, b)| a / b);
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
                    outcomes.push(Outcome {
                        step,
                        status: Status::Pass,
                        note: format!(
                            "torch {}: {} img/s, rust/pytorch {:.3}{}",
                            p["torch"].as_str().unwrap_or("?"),
                            fmt(pp.unwrap_or(f64::NAN)),
                            ratio(rp, pp),
                            compile.map_or(String::new(), |c| format!(", compile {c:.1} s"))
                        ),
                    });
                }
                Err(e) => {
                    let _ = writeln!(md, "| {precision} | {variant} | FAIL | | | | | | | |");
                    outcomes.push(Outcome { step, status: Status::Fail, note: e.clone() });
                }
            }
        }
    }

    // 5. parity
    let _ = writeln!(
        md,
        "\n## 5. Logit parity, GPU against CPU (`mlae-cli bench --mode parity`)\n\n\
         One fixed batch of {} generated images, the same model (seeded, device-independent initialisation, \
         random adapter values copied from the CPU), inference mode; max |logit difference| must be <= \
         {PARITY_FP32:e} in fp32 and <= {PARITY_BF16:e} in bf16 (both sides bf16).\n",
        budget.parity_batch
    );
    if device == "cuda" {
        util::step("5. parity of logits, GPU against CPU");
        let child = runner.run(
            "5-parity",
            bench("parity").args(["--batch", &budget.parity_batch.to_string()]),
            Duration::from_secs(180),
        );
        match &child.json {
            Ok(v) => {
                let get = |k: &str| f(v, &["parity", k]).unwrap_or(f64::NAN);
                let _ = writeln!(md, "| precision | max abs diff | tolerance | status |\n|---|---|---|---|");
                for (precision, key, tol) in
                    [("fp32", "fp32_max_abs_diff", PARITY_FP32), ("bf16", "bf16_max_abs_diff", PARITY_BF16)]
                {
                    let d = get(key);
                    let status = if d <= tol { Status::Pass } else { Status::Fail };
                    let _ = writeln!(md, "| {precision} | {d:.3e} | {tol:e} | {} |", status.word());
                    outcomes.push(Outcome {
                        step: format!("5. parity {precision}"),
                        status,
                        note: format!("max |diff| {d:.3e} (tolerance {tol:e})"),
                    });
                }
                let _ = writeln!(
                    md,
                    "\nLargest |logit| on the CPU: {:.3}. fp32 with cuDNN off on the GPU (no TF32 in the patch \
                     embedding's convolution): max |diff| {:.3e}.",
                    get("cpu_logit_max_abs"),
                    get("fp32_no_cudnn_max_abs_diff")
                );
            }
            Err(e) => {
                let _ = writeln!(md, "FAIL: {e}");
                for p in precisions() {
                    outcomes.push(Outcome {
                        step: format!("5. parity {p}"),
                        status: Status::Fail,
                        note: e.clone(),
                    });
                }
            }
        }
    } else {
        let why = "not applicable: no CUDA device (comparing the CPU with itself would prove nothing)";
        let _ = writeln!(md, "SKIPPED: {why}.");
        for p in precisions() {
            outcomes.push(Outcome {
                step: format!("5. parity {p}"),
                status: Status::Skipped,
                note: why.into(),
            });
        }
    }

    // The report.
    let total = runner.started.elapsed().as_secs_f64();
    let failed = outcomes.iter().filter(|o| o.status == Status::Fail).count();
    let mut report = String::new();
    let _ = writeln!(report, "# MLAE GPU check\n\n{machine}\n");
    let _ = writeln!(
        report,
        "- device: `{device}`; total {total:.0} s (limit {} s)\n- result: {}\n\n\
         | step | status | notes |\n|---|---|---|",
        TOTAL_LIMIT.as_secs(),
        if failed == 0 {
            "every step passed or was skipped for the reason given".to_string()
        } else {
            format!("{failed} step(s) FAILED")
        }
    );
    for o in &outcomes {
        let _ = writeln!(report, "| {} | {} | {} |", o.step, o.status.word(), o.note.replace('|', "/"));
    }
    let _ = writeln!(report, "\n{md}");
    let _ = writeln!(
        report,
        "## Figures\n\nOne line per figure compared, `<figure>: rust=<x> pytorch=<y> ratio=<rust/pytorch>`:\n\n```"
    );
    for l in &figures {
        let _ = writeln!(report, "{l}");
    }
    let _ = writeln!(report, "```");
    let md_path = out.join("gpu-check.md");
    std::fs::write(&md_path, &report).with_context(|| format!("cannot write {}", md_path.display()))?;
    let raw = json!({
        "device": device, "cuda": cuda, "total_seconds": total,
        "budget": {"preset": budget.preset, "image_size": budget.image_size, "batch": budget.batch,
                   "steps": budget.steps, "warmup": budget.warmup},
        "steps": outcomes.iter().map(|o| json!({"step": o.step, "status": o.status.word(), "note": o.note})).collect::<Vec<_>>(),
        "children": runner.raw,
    });
    std::fs::write(out.join("gpu-check.json"), serde_json::to_string_pretty(&raw)?)?;
    println!("{report}");
    eprintln!("report: {}", md_path.display());
    if failed > 0 {
        bail!("{failed} step(s) of the GPU check failed; see {}", md_path.display());
    }
    Ok(())
}

fn figure_line(name: &str, rust: f64, pytorch: f64) -> String {
    format!("{name}: rust={} pytorch={} ratio={:.3}", fmt(rust), fmt(pytorch), rust / pytorch)
}

/// `bench_pytorch.py --mode train --vit plain` on the architecture the Rust side reported.
fn pytorch_cmd(
    python: &Path,
    script: &Path,
    rust: &Value,
    budget: &Budget,
    device: &str,
    precision: &str,
    compiled: bool,
) -> Command {
    let arch = &rust["arch"];
    let int = |k: &str| arch[k].as_i64().map_or("0".into(), |v| v.to_string());
    let flag = |k: &str| if arch[k].as_bool().unwrap_or(false) { "1" } else { "0" };
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--mode", "train", "--vit", "plain", "--precision", precision])
        .args(["--image-size", &int("image_size"), "--patch-size", &int("patch_size")])
        .args(["--dim", &int("dim"), "--depth", &int("depth"), "--heads", &int("heads")])
        .args(["--mlp-dim", &int("mlp_dim"), "--classes", &int("num_classes")])
        .args(["--qkv-bias", flag("qkv_bias"), "--layer-scale", flag("layer_scale")])
        .args(["--layer-scale-init", &arch["layer_scale_init"].as_f64().unwrap_or(1e-5).to_string()])
        .args(["--batch", &budget.batch.to_string(), "--adapter", "mlae", "--targets", TARGETS])
        .args(["--experts", &EXPERTS.to_string(), "--expert-rank", "1", "--dropout", &DROPOUT.to_string()])
        .args(["--steps", &budget.steps.to_string(), "--warmup", &budget.warmup.to_string()])
        .args(["--rounds", "1", "--device", device]);
    if compiled {
        cmd.arg("--compile");
    }
    cmd
}

/// The files of a packed folder.
const RUN_SH: &str = include_str!("../gpu-pack/run.sh");
const PACK_README: &str = include_str!("../gpu-pack/README.txt");
/// Marks a folder as written by `--pack`, so that a later `--pack` may replace it.
const PACK_MARKER: &str = ".mlae-gpu-pack";

/// Writes the packed folder and returns its size in bytes.
pub fn pack(dir: &Path, args: &GpuCheckArgs) -> Result<u64> {
    let dir = util::absolute(dir);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)?.next().is_none();
        if !empty && !dir.join(PACK_MARKER).is_file() {
            bail!("{} exists and is not a folder written by --pack; choose another", dir.display());
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    let bins = binaries(args)?;
    util::step(&format!("packing the GPU check into {}", dir.display()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(dir.join("python"))?;
    std::fs::write(dir.join(PACK_MARKER), "written by `cargo xtask gpu-check --pack`\n")?;
    let xtask = std::env::current_exe().context("cannot locate the running xtask")?;
    for (src, name) in
        [(bins.join("mlae-cli"), "mlae-cli"), (bins.join("mlae-engine"), "mlae-engine"), (xtask, "xtask")]
    {
        let dst = bin.join(name);
        std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        // Debug information is most of a binary's size; the check does not need it.
        util::run(Command::new("strip").arg(&dst))
            .with_context(|| format!("cannot strip {} (binutils' `strip` is needed)", dst.display()))?;
    }
    let script = args.script.clone().unwrap_or_else(|| util::root().join("xtask/python/bench_pytorch.py"));
    std::fs::copy(&script, dir.join("python/bench_pytorch.py"))
        .with_context(|| format!("cannot copy {}", script.display()))?;
    std::fs::write(dir.join("run.sh"), RUN_SH)?;
    std::fs::write(dir.join("README.txt"), PACK_README)?;
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [dir.join("run.sh"), bin.join("mlae-cli"), bin.join("mlae-engine"), bin.join("xtask")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let size = dir_size(&dir)?;
    if size >= PACK_LIMIT_BYTES {
        bail!(
            "{} is {:.1} MB, over the {:.0} MB limit of the packed check",
            dir.display(),
            size as f64 / 1e6,
            PACK_LIMIT_BYTES as f64 / 1e6
        );
    }
    println!(
        "packed {} ({:.1} MB, limit {:.0} MB)",
        dir.display(),
        size as f64 / 1e6,
        PACK_LIMIT_BYTES as f64 / 1e6
    );
    println!("on the GPU machine (no network needed): bash {}/run.sh OUTDIR", dir.display());
    Ok(size)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_check_needs_a_falling_finite_loss() {
        let falling = [1.4, 1.3, 1.2, 1.0, 0.9, 0.8, 0.6, 0.5];
        let (s, note) = loss_verdict(&falling);
        assert_eq!(s, Status::Pass, "{note}");
        assert!(note.contains("1.3500 -> 0.5500"), "{note}");
        assert_eq!(loss_verdict(&[1.4, 1.4, 1.39, 1.38]).0, Status::Fail);
        let (s, note) = loss_verdict(&[1.4, f64::NAN, 0.1, 0.1]);
        assert_eq!(s, Status::Fail);
        assert!(note.contains("step 1"), "{note}");
        assert_eq!(loss_verdict(&[1.0]).0, Status::Fail);
    }

    #[test]
    fn figure_lines_follow_the_issue_pattern() {
        assert_eq!(
            figure_line("train_img_per_s_fp32_eager", 120.0, 100.0),
            "train_img_per_s_fp32_eager: rust=120.0 pytorch=100.0 ratio=1.200"
        );
    }
}
