//! Shared by the sweep tests: the xtask binary, the real mlae-cli and what it trains on (tiny
//! generated tasks, a tiny random ViT), the stand-in for mlae-cli's process protocol, and
//! readers for what a sweep leaves behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Table 10 of the paper: (task, dropout p, coefficient init), in its column order.
pub const TABLE_10: [(&str, f64, f64); 19] = [
    ("cifar", 0.7, 2.0),
    ("caltech101", 0.1, 0.5),
    ("dtd", 0.7, 0.25),
    ("oxford_flowers102", 0.7, 1.0),
    ("oxford_iiit_pet", 0.7, 2.0),
    ("svhn", 0.5, 4.0),
    ("sun397", 0.7, 4.0),
    ("patch_camelyon", 0.7, 1.0),
    ("eurosat", 0.5, 4.0),
    ("resisc45", 0.5, 2.0),
    ("diabetic_retinopathy", 0.7, 0.25),
    ("clevr_count", 0.0, 0.125),
    ("clevr_dist", 0.0, 0.125),
    ("dmlab", 0.5, 2.0),
    ("kitti", 0.5, 1.0),
    ("dsprites_loc", 0.5, 1.0),
    ("dsprites_ori", 0.7, 4.0),
    ("smallnorb_azi", 0.0, 1.0),
    ("smallnorb_ele", 0.0, 0.25),
];

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    // The stand-in's knobs must come from each test, never from the environment.
    for var in ["FAKE_LOG", "FAKE_EPOCH_SECONDS", "FAKE_BLOCK", "FAKE_UNBLOCK", "FAKE_FAIL", "FAKE_ACC_FILE"]
    {
        cmd.env_remove(var);
    }
    cmd
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("xtask starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes the stand-in for mlae-cli (a test double of its process protocol, see the script's
/// header) into `dir` and returns its path.
pub fn fake_cli(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-mlae-cli");
    std::fs::write(&path, include_str!("fake-mlae-cli.sh")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One line of the stand-in's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: f64,
    pub kind: String,
    pub run: String,
    pub rest: Vec<String>,
}

pub fn events(log: &Path) -> Vec<Event> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Event {
                time: w[0].parse().unwrap(),
                kind: w[1].into(),
                run: w[2].into(),
                rest: w[3..].iter().map(|s| s.to_string()).collect(),
            }
        })
        .collect()
}

/// How many times each run was started, and with which action (`fresh`/`resume`).
pub fn starts(log: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events(log).into_iter().filter(|e| e.kind == "start") {
        out.entry(e.run).or_default().push(e.rest[0].clone());
    }
    out
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn run_state(sweep: &Path, run: &str) -> Option<String> {
    let p = sweep.join("runs").join(run).join("status.json");
    std::fs::read_to_string(p).ok().map(|t| {
        serde_json::from_str::<serde_json::Value>(&t).unwrap()["state"].as_str().unwrap().to_string()
    })
}

/// Polls `cond` every 50 ms until it holds, failing after `timeout` with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A grid file for tests: `body` after the description and config lines.
pub fn grid_file(dir: &Path, name: &str, config: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("description = \"test grid\"\nconfig = \"{config}\"\n{body}")).unwrap();
    path
}

/// The real mlae-cli: `$MLAE_TEST_CLI` if set, else the one next to this test's xtask binary
/// (`cargo test --workspace` builds it before running tests), else built now with
/// `cargo build -p mlae-cli` (an xtask test cannot name another package's binary).
pub fn mlae_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        if let Some(p) = std::env::var_os("MLAE_TEST_CLI").filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "MLAE_TEST_CLI={}: no such file", p.display());
            return p;
        }
        let dir = Path::new(env!("CARGO_BIN_EXE_xtask")).parent().unwrap().to_path_buf();
        let cli = dir.join("mlae-cli");
        if cli.is_file() && dir.join("mlae-engine").is_file() {
            return cli;
        }
        let cargo = std::env::var_os("CARGO").or_else(|| option_env!("CARGO").map(Into::into));
        let mut cmd = Command::new(cargo.unwrap_or_else(|| "cargo".into()));
        cmd.args(["build", "-p", "mlae-cli"]).current_dir(root());
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        eprintln!("{} is missing; building it: {cmd:?}", cli.display());
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            status.success(),
            "{cmd:?} failed ({status}). The end-to-end sweep tests run the real mlae-cli, which links \
             libtorch: run `cargo xtask setup` first, or set MLAE_TEST_CLI to an mlae-cli binary"
        );
        assert!(
            cli.is_file(),
            "`cargo build -p mlae-cli` succeeded but {} is still missing (another target directory?); \
             set MLAE_TEST_CLI to the binary",
            cli.display()
        );
        cli
    })
    .clone()
}

/// xtask set up to run the real mlae-cli: its decoded-image cache inside the test's temp dir
/// (`cache`), and log lines at info level (the tests read "resuming" from run logs).
pub fn xtask_real(cache: &Path) -> Command {
    let mut cmd = xtask();
    cmd.env("MLAE_CACHE_DIR", cache).env("MLAE_LOG", "info");
    cmd
}

/// `xtask sweep` of the real mlae-cli on generated data: `flags` first (benchmark, executor,
/// jobs, ...), then the grid, the sweep directory, the CLI, the data root and
/// [`quick_train_sets`] for `epochs`.
pub fn real_sweep(
    cache: &Path,
    flags: &[&str],
    grid: &Path,
    sweep: &Path,
    cli: &Path,
    data: &Path,
    epochs: u64,
) -> Command {
    let mut cmd = xtask_real(cache);
    cmd.arg("sweep")
        .args(flags)
        .arg("--grid")
        .arg(grid)
        .arg("--out")
        .arg(sweep)
        .arg("--cli")
        .arg(cli)
        .arg("--data-root")
        .arg(data)
        .args(quick_train_sets(epochs));
    cmd
}

/// A greyscale 12x12 image of class `label`: a bright 3x3 cell whose place depends on the
/// class, on a noisy background, so that a tiny ViT has something to learn.
fn class_image(label: usize, seed: u64) -> image::GrayImage {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let cell = label % 16;
    image::GrayImage::from_fn(12, 12, |x, y| {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        let noise = (z % 48) as u8;
        let inside = (x as usize / 3) + 4 * (y as usize / 3) == cell;
        image::Luma([if inside { 200 } else { 30 } + noise])
    })
}

/// Writes `<root>/<folder>/` laid out like a VTAB-1k task (NOAH/SPT): PNGs under
/// `images/<split>/` and the four list files, `per_class` = images per class in train800,
/// val200 and test (train800val200 is train800 then val200), for the first `labels` classes.
pub fn write_vtab_layout_task(root: &Path, folder: &str, labels: usize, per_class: [usize; 3]) {
    let task = root.join(folder);
    let seed0 = folder.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut lists = Vec::new();
    for (s, split) in ["train800", "val200", "test"].into_iter().enumerate() {
        let dir = task.join("images").join(split);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines = String::new();
        for i in 0..per_class[s] * labels {
            let label = i % labels;
            let name = format!("{i:05}.png");
            class_image(label, seed0 ^ ((s as u64) << 40) ^ i as u64).save(dir.join(&name)).unwrap();
            lines.push_str(&format!("images/{split}/{name} {label}\n"));
        }
        std::fs::write(task.join(format!("{split}.txt")), &lines).unwrap();
        lists.push(lines);
    }
    std::fs::write(task.join("train800val200.txt"), format!("{}{}", lists[0], lists[1])).unwrap();
}

/// The demo benchmark's tasks that a sweep runs by default (names, folders and class counts
/// from mlae-data's demo manifest; not the opt-in ones), tiny: `per_class` images per class and
/// split. Returns the task names in order.
pub fn write_demo_tasks(root: &Path, per_class: [usize; 3]) -> Vec<String> {
    let m = mlae_data::manifest::demo().unwrap();
    let tasks: Vec<_> = m.tasks.iter().filter(|t| !t.opt_in).collect();
    for t in &tasks {
        write_vtab_layout_task(root, &t.folder, t.classes, per_class);
    }
    tasks.iter().map(|t| t.name.clone()).collect()
}

/// A copy of the project's configs for `benchmark` under `dir/configs`: every task config of
/// `configs/<benchmark>/` as it is, and `configs/base/<benchmark>.toml` with its `[model]`
/// replaced by a tiny ViT (2 blocks of width 32, 8x8 patches of 16x16 images) without
/// `checkpoint`, i.e. randomly initialised: the tests use no pretrained weights. Returns the
/// grid `config` template for the copies.
pub fn tiny_configs(dir: &Path, benchmark: &str) -> String {
    let src = root().join("configs");
    let dst = dir.join("configs");
    std::fs::create_dir_all(dst.join("base")).unwrap();
    std::fs::create_dir_all(dst.join(benchmark)).unwrap();
    for entry in std::fs::read_dir(src.join(benchmark)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dst.join(benchmark).join(path.file_name().unwrap())).unwrap();
    }
    let base = format!("base/{benchmark}.toml");
    let mut table: toml::Table = std::fs::read_to_string(src.join(&base)).unwrap().parse().unwrap();
    let model: toml::Table = "preset = \"vit-ti16\"\nimage_size = 16\n\
        [arch]\npatch_size = 8\ndim = 32\ndepth = 2\nheads = 2\nmlp_dim = 64\n"
        .parse()
        .unwrap();
    table.insert("model".into(), toml::Value::Table(model));
    let text = format!(
        "# configs/{base} with a tiny random ViT in place of the pretrained one (sweep tests).\n{}",
        toml::to_string(&table).unwrap()
    );
    std::fs::write(dst.join(&base), text).unwrap();
    format!("{}/{{benchmark}}/{{task}}.toml", dst.display())
}

/// `--set` arguments that make every run a few CPU seconds at most: `epochs` epochs of
/// batches of 8, one thread, evaluation every epoch.
pub fn quick_train_sets(epochs: u64) -> Vec<String> {
    let sets = [
        format!("train.epochs={epochs}"),
        "train.batch_size=8".into(),
        "train.eval_batch_size=64".into(),
        "train.lr=5e-3".into(),
        "train.warmup_epochs=1".into(),
        "train.eval_every=1".into(),
        "train.device=cpu".into(),
        "train.threads=1".into(),
    ];
    sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect()
}

/// `status.json` of a run, if readable.
pub fn run_status(sweep: &Path, run: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(sweep.join("runs").join(run).join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// `state/<run>.json`, the sweep's record of a run.
pub fn run_record(sweep: &Path, run: &str) -> serde_json::Value {
    json(&sweep.join("state").join(format!("{run}.json")))
}

/// The launch lines (`=== ...`) of a run's log, one per attempt.
pub fn launches(sweep: &Path, run: &str) -> Vec<String> {
    std::fs::read_to_string(sweep.join("logs").join(format!("{run}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("=== "))
        .map(String::from)
        .collect()
}

/// The epochs of a run's `metrics.jsonl`, in file order.
pub fn metric_epochs(run_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
        .collect()
}

/// Whether a process exists (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// (mean, min, max) of the values.
pub fn mean_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (
        mean,
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

pub fn summary(sweep: &Path, run: &str) -> serde_json::Value {
    json(&sweep.join("runs").join(run).join("summary.json"))
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

pub fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// The same metrics record: equal keys and values, numbers to 1e-12 relative. mlae-train
/// rewrites `metrics.jsonl` on resume through serde_json, whose default float parsing may
/// move the last bit; a record written again by a new attempt would differ in its timings.
pub fn same_record(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_record(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_record(v, w))
        }
        _ => a == b,
    }
}

/// Optimizer steps per epoch of a split with batches of 8 (quick_train_sets).
pub fn steps_per_epoch(data: &Path, task: &str, split: &str) -> u64 {
    (lines(&data.join(task).join(format!("{split}.txt"))).len() as u64).div_ceil(8)
}

/// What a test prints when runs do not reach the state it waits for: each run's status and
/// the end of its log.
pub fn diagnose(sweep: &Path, runs: &[&str]) -> String {
    let mut out = String::new();
    for r in runs {
        let log = std::fs::read_to_string(sweep.join("logs").join(format!("{r}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        out.push_str(&format!("--- {r}: status {:?}\n{}\n", run_status(sweep, r), tail.join("\n")));
    }
    out
}

/// Polls `cond` every 20 ms until it holds; after `timeout` fails with `what` and the state
/// of `runs`.
pub fn wait_for_runs(
    sweep: &Path,
    runs: &[&str],
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diagnose(sweep, runs));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (mean, sample standard deviation) of the values, as the report prints them.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (mean, var.sqrt())
}
