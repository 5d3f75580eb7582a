//! Shared by the sweep tests: the xtask binary, the stand-in for mlae-cli, and readers for
//! what a sweep leaves behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

/// Run directories of a sweep (names), without the moved-aside ones.
pub fn run_names(sweep: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sweep.join("runs"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| !n.contains(".stale-"));
    v.sort();
    v
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
