//! `cargo xtask gpu-check` on a machine without CUDA (the CPU variant of every step, with the
//! real mlae-cli and the PyTorch reference in the project venv; `--device cuda` failing with
//! its cause), and `--pack`: the folder, its size, its stripped binaries, the glibc it
//! states, the refusal of a CPU-only engine, and its `run.sh` running the check from the
//! folder alone.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// A Python that imports torch: `$MLAE_PYTHON` or the project venv's. `None` skips the tests
/// that need one, unless `MLAE_REQUIRE_PYTHON_CHECKS` is set (as `cargo xtask test` sets it).
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("MLAE_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let ok = Command::new(&candidate).args(["-c", "import torch"]).status().is_ok_and(|s| s.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("MLAE_REQUIRE_PYTHON_CHECKS").is_none(),
        "{} cannot import torch; set MLAE_PYTHON",
        candidate.display()
    );
    eprintln!("skipped: no Python with torch at {} (set MLAE_PYTHON)", candidate.display());
    None
}

fn bin_dir() -> PathBuf {
    mlae_cli().parent().unwrap().to_path_buf()
}

/// The summary row of `step`: (status, note).
fn row<'a>(md: &'a str, step: &str) -> (&'a str, &'a str) {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {step} |")))
        .unwrap_or_else(|| panic!("no row for `{step}` in:\n{md}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    (cells[2], cells[3])
}

/// The `<figure>: rust=<x> pytorch=<y> ratio=<z>` lines of the report, parsed.
fn figures(md: &str) -> Vec<(String, f64, f64, f64)> {
    let block = md.split("## Figures").nth(1).expect("a Figures section");
    let body = block.split("```").nth(1).expect("a fenced block of figures");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, rest) = l.split_once(": ").unwrap_or_else(|| panic!("`{l}`"));
            let v: Vec<f64> = rest
                .split(' ')
                .zip(["rust=", "pytorch=", "ratio="])
                .map(|(kv, key)| {
                    kv.strip_prefix(key).and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("`{l}`"))
                })
                .collect();
            assert_eq!(v.len(), 3, "`{l}`");
            (name.to_string(), v[0], v[1], v[2])
        })
        .collect()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// A step of `mlae-cli check`'s report, as gpu-check.json keeps it.
fn check_step<'a>(raw: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    raw["check"]["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap()
}

/// Whether `mlae-cli doctor` sees CUDA here (the CPU-path tests then have nothing to show).
fn has_cuda() -> bool {
    let out = run_ok(Command::new(mlae_cli()).args(["doctor", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["cuda"] == true
}

/// The causes `mlae-cli check` names when CUDA cannot be used.
const CAUSES: [&str; 5] = [
    "CPU-only libtorch",
    "no working NVIDIA driver",
    "NVIDIA driver too old",
    "no GPU visible",
    "libtorch sees no CUDA device although",
];

#[test]
fn without_cuda_the_cpu_variant_runs_every_step_and_reports_it() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let started = Instant::now();
    // torch.compile takes minutes on a small CPU: skipped here (the default run has it).
    let run = run_ok(
        xtask()
            .args(["gpu-check", "--no-compile", "--out"])
            .arg(&out)
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--python")
            .arg(&python),
    );
    let seconds = started.elapsed();
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gpu-check.json")).unwrap()).unwrap();
    if raw["cuda"] == true {
        eprintln!("skipped: this machine has CUDA; the test is about the CPU path");
        return;
    }
    let md = std::fs::read_to_string(out.join("gpu-check.md")).unwrap();
    assert_eq!(stdout(&run).trim(), md.trim(), "the report is also printed");
    assert!(md.contains("**No CUDA device on this machine**"), "{md}");
    assert!(md.contains("the CPU variant of the same steps ran"), "{md}");
    // The cause, from the doctor, is in the sentence.
    assert!(CAUSES.iter().any(|c| md.contains(&format!("**No CUDA device on this machine** ({c}"))), "{md}");
    assert!(!md.contains("| FAIL |"), "{md}");
    for step in ["1. doctor", "2. training fp32", "2. training bf16", "3. merged inference"] {
        assert_eq!(row(&md, step).0, "PASS", "{step}:\n{md}");
    }
    assert!(row(&md, "2. training fp32").1.starts_with("loss "), "{md}");
    let (status, note) = row(&md, "4. parity");
    assert_eq!(status, "SKIPPED");
    assert!(note.starts_with("not applicable: no CUDA device"), "{note}");
    for precision in ["fp32", "bf16"] {
        assert_eq!(row(&md, &format!("5. pytorch eager {precision}")).0, "PASS", "{md}");
        assert_eq!(
            row(&md, &format!("5. pytorch compiled {precision}")),
            ("SKIPPED", "skipped by --no-compile"),
            "{md}"
        );
    }
    // Every loss recorded, finite, and falling (the check's rule, read back from the JSON).
    for precision in ["fp32", "bf16"] {
        let step = check_step(&raw, &format!("train-{precision}"));
        let losses: Vec<f64> = step["figures"]["train"]["bench"]["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_f64().unwrap())
            .collect();
        assert_eq!(losses.len(), 14, "12 timed + 2 warm-up steps");
        assert!(losses[11..].iter().sum::<f64>() < losses[..3].iter().sum::<f64>(), "{losses:?}");
        assert_eq!(step["figures"]["train"]["precision"], precision);
    }
    // The verdicts (parity among them) came from one `mlae-cli check`, done before PyTorch ran.
    let modified = |f: &str| out.join("logs").join(f).metadata().unwrap().modified().unwrap();
    assert!(modified("check.out") <= modified("pytorch-eager-fp32.out"));
    let figures = figures(&md);
    let names: Vec<&str> = figures.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "train_img_per_s_fp32_eager",
            "peak_mem_mb_fp32_eager",
            "train_img_per_s_bf16_eager",
            "peak_mem_mb_bf16_eager"
        ]
    );
    for (name, rust, pytorch, ratio) in &figures {
        assert!(*rust > 0.0 && *pytorch > 0.0, "{name}");
        assert!(
            (ratio - rust / pytorch).abs() <= 0.01 * ratio + 2e-3,
            "{name}: {rust} / {pytorch} != {ratio}"
        );
    }
    assert!(seconds < Duration::from_secs(480), "{seconds:?}");
    eprintln!("the CPU variant took {:.0} s", seconds.as_secs_f64());
}

/// `--device cuda` on a machine where CUDA cannot be used: the check fails at once, naming
/// the cause, and runs nothing else (not the CPU variant).
#[test]
fn asking_for_cuda_without_one_fails_and_names_the_cause() {
    if has_cuda() {
        eprintln!("skipped: this machine has CUDA");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let run = xtask()
        .args(["gpu-check", "--device", "cuda", "--no-compile", "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--python")
        .arg("/nonexistent/python")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let md = std::fs::read_to_string(out.join("gpu-check.md")).unwrap();
    let (status, note) = row(&md, "1. doctor");
    assert_eq!(status, "FAIL", "{md}");
    assert!(note.starts_with("--device = cuda: libtorch sees no CUDA device: "), "{note}");
    let cause = CAUSES.iter().find(|c| note.contains(*c)).unwrap_or_else(|| panic!("no cause in `{note}`"));
    assert!(md.contains("**The requested device `cuda` cannot be used**"), "{md}");
    for step in ["2. training fp32", "2. training bf16", "3. merged inference", "4. parity"] {
        assert_eq!(row(&md, step).0, "SKIPPED", "{step}:\n{md}");
    }
    assert_eq!(row(&md, "5. pytorch eager fp32"), ("SKIPPED", "no device to run on (see 1. doctor)"));
    // The terminal says it too.
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("step(s) of the GPU check failed") && stderr.contains(cause), "{stderr}");
}

#[test]
fn pack_writes_a_folder_under_60_mb_whose_run_sh_runs_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpu-pack");
    run_ok(xtask().args(["gpu-check", "--pack"]).arg(&dir).arg("--bin-dir").arg(bin_dir()));
    let files =
        ["run.sh", "README.txt", "bin/mlae-cli", "bin/mlae-engine", "bin/xtask", "python/bench_pytorch.py"];
    let mut size = 0;
    for f in files {
        let p = dir.join(f);
        assert!(p.is_file(), "{} is missing", p.display());
        size += p.metadata().unwrap().len();
    }
    for f in ["run.sh", "bin/mlae-cli", "bin/mlae-engine", "bin/xtask"] {
        assert!(is_executable(&dir.join(f)), "{f}");
    }
    assert!(size < 60_000_000, "{size} bytes");
    assert!(Command::new("bash").arg("-n").arg(dir.join("run.sh")).status().unwrap().success());
    // Stripped: no debug sections left in the engine.
    let sections = Command::new("readelf").arg("-S").arg(dir.join("bin/mlae-engine")).output();
    if let Ok(s) = sections {
        assert!(!String::from_utf8_lossy(&s.stdout).contains(".debug_info"), "mlae-engine is not stripped");
    }
    // The packed launcher and engine run.
    let doctor = run_ok(Command::new(dir.join("bin/mlae-cli")).args(["doctor", "--json"]));
    let doctor: serde_json::Value = serde_json::from_str(&stdout(&doctor)).unwrap();
    assert_eq!(doctor["libtorch_version"].as_str().unwrap().split('+').next(), Some("2.11.0"));
    // Packing again replaces the folder; a folder that is not a pack is never overwritten.
    run_ok(xtask().args(["gpu-check", "--pack"]).arg(&dir).arg("--bin-dir").arg(bin_dir()));
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let refused =
        xtask().args(["gpu-check", "--pack"]).arg(&other).arg("--bin-dir").arg(bin_dir()).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a folder written by --pack"));
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "mine");

    // The glibc the binaries need is stated, and is the newest GLIBC_ version they ask for.
    let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
    let run_sh = std::fs::read_to_string(dir.join("run.sh")).unwrap();
    assert!(!readme.contains("@GLIBC@") && !run_sh.contains("@GLIBC@"));
    let stated = readme.split("need glibc ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    assert!(run_sh.contains(&format!("need_glibc=\"{stated}\"")), "{run_sh}");
    if let Ok(out) = Command::new("readelf")
        .arg("-V")
        .args(["bin/mlae-cli", "bin/mlae-engine", "bin/xtask"])
        .current_dir(&dir)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        let newest = text
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("GLIBC_"))
            .filter_map(|v| v.split('.').map(|p| p.parse::<u32>().ok()).collect::<Option<Vec<u32>>>())
            .max()
            .unwrap();
        let newest: Vec<String> = newest.iter().map(u32::to_string).collect();
        assert_eq!(stated, newest.join("."));
    }

    // An engine built against a CPU-only libtorch is refused, and the pack there is kept.
    let cpu_only = tmp.path().join("cpu-only-bin");
    std::fs::create_dir_all(&cpu_only).unwrap();
    std::fs::copy(bin_dir().join("mlae-cli"), cpu_only.join("mlae-cli")).unwrap();
    // The launcher links no libtorch at all: as CPU-only as an engine can be.
    std::fs::copy(bin_dir().join("mlae-cli"), cpu_only.join("mlae-engine")).unwrap();
    let refused =
        xtask().args(["gpu-check", "--pack"]).arg(&dir).arg("--bin-dir").arg(&cpu_only).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is a CPU-only engine: it does not link libtorch_cuda.so"), "{stderr}");
    assert!(dir.join("bin/mlae-engine").is_file(), "the earlier pack was removed");

    // On a machine without a usable GPU, run.sh (which asks for `--device cuda`) fails and
    // says why instead of running the CPU variant.
    let Some(python) = python() else { return };
    if !has_cuda() {
        let run = Command::new("bash")
            .arg(dir.join("run.sh"))
            .arg(tmp.path().join("no-gpu"))
            .arg("--no-compile")
            .env("MLAE_PYTHON", &python)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("1. doctor: --device = cuda: libtorch sees no CUDA device: "), "{stderr}");
        assert!(CAUSES.iter().any(|c| stderr.contains(c)), "{stderr}");
    }

    // The folder alone runs the check (a tiny budget here): run.sh finds the Python, points
    // LD_LIBRARY_PATH at its torch, and the PyTorch side needs no timm.
    let out = tmp.path().join("report");
    let run = Command::new("bash")
        .arg(dir.join("run.sh"))
        .arg(&out)
        .args([
            "--device",
            "cpu",
            "--no-compile",
            "--preset",
            "vit-ti16",
            "--image-size",
            "32",
            "--steps",
            "12",
        ])
        .env("MLAE_PYTHON", &python)
        // A timm that cannot be imported: the reference must not need it.
        .env("PYTHONPATH", no_timm(tmp.path()))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let md = std::fs::read_to_string(out.join("gpu-check.md")).unwrap_or_default();
    assert!(run.status.success(), "run.sh failed:\n{md}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(md.contains("vit-ti16 at 32 px"), "{md}");
    assert_eq!(row(&md, "5. pytorch eager fp32").0, "PASS", "{md}");
    assert_eq!(figures(&md).len(), 4, "{md}");
}

/// A folder holding a `timm` package that fails on import, for PYTHONPATH.
fn no_timm(tmp: &Path) -> PathBuf {
    let dir = tmp.join("no-timm");
    std::fs::create_dir_all(dir.join("timm")).unwrap();
    std::fs::write(dir.join("timm/__init__.py"), "raise ImportError('timm is not on the GPU machine')\n")
        .unwrap();
    dir
}
