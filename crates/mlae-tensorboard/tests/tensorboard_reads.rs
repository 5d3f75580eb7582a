//! The event files, read by the real `tensorboard` package: `xtask/python/check_tensorboard.py`
//! must give back every scalar written, with its step and its value at f32 precision, for one
//! run's directory (EventAccumulator) and for a sweep's directory holding two runs
//! (EventMultiplexer, as `tensorboard --logdir` finds runs).
//!
//! Python: `$MLAE_PYTHON`, else `<workspace>/.venv/bin/python`. Without a Python that has (or
//! can install, through `pins.ensure`) the pinned tensorboard, the test says so and skips, unless
//! `MLAE_REQUIRE_PYTHON_CHECKS=1` (CI sets it through `cargo xtask test`), which makes that a
//! failure.

use mlae_tensorboard::EventWriter;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn scripts() -> PathBuf {
    workspace().join("xtask").join("python")
}

/// The Python to run, or why there is none.
fn python() -> Result<PathBuf, String> {
    let py = std::env::var_os("MLAE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv").join("bin").join("python"));
    let probe = Command::new(&py)
        .args([
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); from pins import ensure; ensure('tensorboard'); \
             from tensorboard.backend.event_processing import event_accumulator, event_multiplexer",
        ])
        .arg(scripts())
        .output();
    match probe {
        Ok(o) if o.status.success() => Ok(py),
        Ok(o) => Err(format!(
            "{} cannot import tensorboard: {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", py.display())),
    }
}

/// What `check_tensorboard.py` prints for `args`.
fn check(py: &Path, args: &[&str], dir: &Path) -> Value {
    let script = scripts().join("check_tensorboard.py");
    let out = Command::new(py).arg(&script).args(args).arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// One run's scalars: {tag: [(step, value), ...]}, values at the f32 precision TensorBoard
/// stores them in.
type Scalars = BTreeMap<String, Vec<(u64, f32)>>;

/// The script's JSON {tag: [[step, value], ...]} (values go through f32: serde_json's default
/// float parsing may miss an f64 by one ulp, never an f32).
fn scalars(json: &Value) -> Scalars {
    let points: BTreeMap<String, Vec<(u64, f64)>> = serde_json::from_value(json.clone()).unwrap();
    points.into_iter().map(|(tag, p)| (tag, p.into_iter().map(|(s, v)| (s, v as f32)).collect())).collect()
}

fn write(writer: &mut EventWriter, expected: &mut Scalars, tag: &str, value: f64, step: u64) {
    writer.add_scalar(tag, value, step).unwrap();
    expected.entry(tag.to_string()).or_default().push((step, value as f32));
}

#[test]
fn tensorboard_reads_the_runs_of_a_sweep() {
    let py = match python() {
        Ok(py) => py,
        Err(why) if std::env::var("MLAE_REQUIRE_PYTHON_CHECKS").as_deref() == Ok("1") => {
            panic!("MLAE_REQUIRE_PYTHON_CHECKS=1 but {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED tensorboard checks: {why} (set MLAE_PYTHON, or run `cargo xtask test`)");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let sweep = tmp.path().join("sweep");
    let (dir_a, dir_b) = (sweep.join("runA").join("tb"), sweep.join("runB").join("tb"));

    // run A: one writer; zero, negative, tiny and inexact values
    let mut a = Scalars::new();
    {
        let mut w = EventWriter::create(&dir_a).unwrap();
        for step in 0..20u64 {
            write(&mut w, &mut a, "train/loss", 2.0 / (step as f64 + 1.0), step);
            if step % 5 == 4 {
                write(&mut w, &mut a, "eval/acc", step as f64 / 19.0, step);
            }
        }
        write(&mut w, &mut a, "edge", 0.0, 20);
        write(&mut w, &mut a, "edge", -1.5e-7, 21);
        write(&mut w, &mut a, "edge", 1e30, 1_000_000_000_000);
    } // dropped: flushed

    // run B: resumed once, so two event files in its directory
    let mut b = Scalars::new();
    let mut first = EventWriter::create(&dir_b).unwrap();
    for step in 0..3u64 {
        write(&mut first, &mut b, "train/loss", 1.0 + step as f64 * 0.1, step);
    }
    first.flush().unwrap();
    drop(first);
    let mut resumed = EventWriter::create(&dir_b).unwrap();
    for step in 3..6u64 {
        write(&mut resumed, &mut b, "train/loss", 1.0 + step as f64 * 0.1, step);
    }
    write(&mut resumed, &mut b, "lr", 3e-4, 5);
    resumed.flush().unwrap();
    assert_eq!(std::fs::read_dir(&dir_b).unwrap().count(), 2);

    assert_eq!(scalars(&check(&py, &[], &dir_a)), a, "run A through EventAccumulator");
    assert_eq!(scalars(&check(&py, &[], &dir_b)), b, "run B (resumed) through EventAccumulator");
    let multi = check(&py, &["--multi"], &sweep);
    let runs: BTreeMap<String, Value> = serde_json::from_value(multi.clone()).unwrap();
    assert_eq!(runs.keys().collect::<Vec<_>>(), ["runA/tb", "runB/tb"], "{multi}");
    assert_eq!(scalars(&runs["runA/tb"]), a, "run A through EventMultiplexer");
    assert_eq!(scalars(&runs["runB/tb"]), b, "run B through EventMultiplexer");
}
