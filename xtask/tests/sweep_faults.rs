//! Nothing is lost under faults: a sweep whose driver is killed with SIGKILL at random moments
//! (seeded) and restarted each time ends with every run finished exactly once, no finished run
//! started again, and the same report, byte for byte, as an uninterrupted sweep of the grid;
//! an export killed at random moments is whole or absent. The real mlae-cli on tiny generated
//! demo tasks with a tiny random ViT, as in sweep_e2e.rs.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Kills of the driver the sweep must survive.
const KILLS: usize = 6;
/// Epochs of each run: halving over 3 settings pauses them at epoch 2, the best goes to 6.
const EPOCHS: u64 = 6;

/// xorshift64*: the kill moments, the same on every run of the test.
struct Moments(u64);

impl Moments {
    /// A number in `[lo, hi)`.
    fn below(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (hi - lo)
    }

    /// A duration in `[lo, hi)` milliseconds.
    fn between(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.below(lo, hi))
    }
}

/// How far the sweep has trained: the epochs its runs' statuses say are done, summed.
fn progress(sweep: &Path, runs: &[String]) -> u64 {
    runs.iter().filter_map(|r| run_status(sweep, r)).filter_map(|s| s["epoch"].as_u64()).sum()
}

/// Waits up to `d` for `child` to end by itself; its status if it did.
fn wait_or_timeout(child: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + d;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) with a pid this test started (directly or through the sweep).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The pids the sweep recorded for its runs, live now.
fn live_runs(sweep: &Path, runs: &[String]) -> Vec<i32> {
    runs.iter()
        .filter_map(|r| std::fs::read_to_string(sweep.join("state").join(format!("{r}.json"))).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok()?["pid"].as_i64())
        .map(|p| p as i32)
        .filter(|&p| alive(p))
        .collect()
}

/// `xtask report --no-timings` of `sweep` into `out`: report.md, report.csv, domains.png.
fn report(cache: &Path, sweep: &Path, out: &Path) -> Vec<(String, Vec<u8>)> {
    run_ok(xtask_real(cache).args(["report", "--no-timings", "--sweep"]).arg(sweep).arg("--out").arg(out));
    ["report.md", "report.csv", "domains.png"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(out.join(f)).unwrap()))
        .collect()
}

#[test]
fn a_halving_sweep_killed_at_random_moments_finishes_every_run_once_with_the_same_report() {
    let started = Instant::now();
    let cli = mlae_cli();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tasks = write_demo_tasks(&data, [2, 1, 1]);
    let template = tiny_configs(tmp.path(), "demo");
    // Per task: 3 settings searched by successive halving on val200 (all to epoch 2, the best
    // on to 6), then the selected one trained on train800val200: 3 x 4 = 12 runs.
    let grid = grid_file(
        tmp.path(),
        "halving-faults",
        &template,
        "protocol = \"val\"\nseeds = [0]\n[axes]\n\"adapter.mlae.expert_dropout\" = [0.1, 0.3, 0.5]\n\
         [select]\nmetric = \"best_val_acc\"\nfinal_protocol = \"paper\"\n",
    );
    let cache = tmp.path().join("cache");
    let sweep = tmp.path().join("sweep");
    let flags = ["--benchmark", "demo", "--jobs", "2", "--search", "halving"];
    let sweep_cmd = || real_sweep(&cache, &flags, &grid, &sweep, &cli, &data, EPOCHS);
    let mut runs: Vec<String> = Vec::new();
    for t in &tasks {
        runs.extend(["0.1", "0.3", "0.5"].map(|p| format!("search.{t}.mlae.expert_dropout={p}.s0")));
        runs.push(format!("final.{t}.mlae.s0"));
    }

    // The uninterrupted sweep, in the directory the killed one will use (the report names
    // it), its report kept, the directory then moved aside.
    let t0 = Instant::now();
    run_ok(&mut sweep_cmd());
    let straight_secs = t0.elapsed().as_secs_f64();
    let want = report(&cache, &sweep, &tmp.path().join("report-straight"));
    // how each run ends: the kept settings and the finals finish, the others pause at epoch 2
    let ends: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            let s = run_status(&sweep, r).unwrap();
            (s["state"].as_str().unwrap().to_string(), s["epoch"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(ends.iter().filter(|(s, _)| s == "finished").count(), 2 * tasks.len(), "{ends:?}");
    std::fs::rename(&sweep, tmp.path().join("sweep-straight")).unwrap();

    // The same sweep, its driver killed at random moments: once the runs have trained a random
    // number of epochs (at most 30 of the 48, so the finals are still ahead and the sweep
    // cannot end before the kill), and a random delay after that. Every other kill takes the
    // runs down with it (SIGKILL, as a machine that dies); the others leave them to the
    // parent-death signal (SIGINT: checkpoint and exit).
    let total: u64 = ends.iter().map(|e| e.1).sum();
    assert_eq!(total, 48);
    let mut moments = Moments(0x5eed_fa17);
    let mut targets: Vec<u64> = (0..KILLS).map(|_| moments.below(0, 31)).collect();
    targets.sort();
    let (mut kills, mut hard) = (0, 0);
    // run -> its launches when it was first seen finished
    let mut finished: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempt = 0;
    let mut moments_log = Vec::new();
    loop {
        attempt += 1;
        let log = tmp.path().join(format!("driver-{attempt}.log"));
        let mut child =
            sweep_cmd().stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        if kills == KILLS {
            let status = child.wait().unwrap();
            assert!(status.success(), "the last attempt failed:\n{}", std::fs::read_to_string(&log).unwrap());
            break;
        }
        let target = targets[kills];
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress(&sweep, &runs) < target && Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the sweep ended ({status}) before epoch {target}:\n{}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let delay = moments.between(0, 400);
        if let Some(status) = wait_or_timeout(&mut child, delay) {
            panic!("the sweep ended ({status}) before its kill:\n{}", std::fs::read_to_string(&log).unwrap());
        }
        moments_log.push(format!("{target}+{}ms", delay.as_millis()));
        let pids = live_runs(&sweep, &runs);
        child.kill().unwrap();
        child.wait().unwrap();
        if kills % 2 == 1 {
            pids.iter().for_each(|&p| sigkill(p));
            hard += 1;
        }
        kills += 1;
        let names: Vec<&str> = runs.iter().map(String::as_str).collect();
        wait_for_runs(
            &sweep,
            &names,
            "the runs of the killed sweep to exit",
            Duration::from_secs(60),
            || live_runs(&sweep, &runs).is_empty(),
        );
        for r in &runs {
            if run_state(&sweep, r).as_deref() == Some("finished") && !finished.contains_key(r) {
                finished.insert(r.clone(), launches(&sweep, r).len());
            }
        }
    }

    // Every run ended as in the uninterrupted sweep; each that finished did so exactly once (one
    // `test accuracy` line in its log), each pruned one paused at its rung with the same score.
    let mut total_launches = 0;
    for (r, end) in runs.iter().zip(&ends) {
        let s = run_status(&sweep, r).unwrap_or_else(|| panic!("{r}: no status\n{}", diagnose(&sweep, &[r])));
        assert_eq!(
            (s["state"].as_str().unwrap(), s["epoch"].as_u64().unwrap()),
            (end.0.as_str(), end.1),
            "{r}"
        );
        let log = std::fs::read_to_string(sweep.join("logs").join(format!("{r}.log"))).unwrap();
        let finishes = log.matches("\ntest accuracy: ").count();
        assert_eq!(finishes, usize::from(end.0 == "finished"), "{r} finished {finishes} times:\n{log}");
        let straight = tmp.path().join("sweep-straight");
        let rung = |dir: &Path| {
            lines(&dir.join("runs").join(r).join("rungs.jsonl")).last().map(|l| parse(l)["acc"].clone())
        };
        assert_eq!(rung(&sweep), rung(&straight), "{r}: rung score");
        // TensorBoard shows every step once, with the uninterrupted run's values
        let tb = |dir: &Path| mlae_tensorboard::read_scalars(&dir.join("runs").join(r).join("tb")).unwrap();
        let (a, b) = (tb(&sweep), tb(&straight));
        for tag in ["train/loss", "eval/test/acc"] {
            assert!(
                a.contains_key(tag) && a.get(tag) == b.get(tag),
                "{r} {tag}:\n{:?}\n{:?}",
                a.get(tag),
                b.get(tag)
            );
        }
        total_launches += launches(&sweep, r).len();
    }
    // A run seen finished after a kill was never started again.
    for (r, n) in &finished {
        assert_eq!(launches(&sweep, r).len(), *n, "{r} had finished and ran again");
    }
    // The report, byte for byte.
    let got = report(&cache, &sweep, &tmp.path().join("report-killed"));
    let mut bytes = 0;
    for ((name, a), (_, b)) in want.iter().zip(&got) {
        assert!(
            a == b,
            "{name} differs:\n{}\n---\n{}",
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b)
        );
        bytes += a.len();
    }
    eprintln!(
        "sweep under faults: {kills} kills survived (at epoch+delay {}; {hard} with their runs SIGKILLed too), {} runs \
         ({} finished, {} paused at their rung; {total_launches} launches; {} finished before a kill and not \
         started again), {bytes} report bytes compared (report.md, report.csv, domains.png); uninterrupted \
         sweep {straight_secs:.1} s, whole test {:.1} s",
        moments_log.join(", "),
        runs.len(),
        ends.iter().filter(|(s, _)| s == "finished").count(),
        ends.iter().filter(|(s, _)| s == "paused").count(),
        finished.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A file of an export as content: a safetensors file as its header (parsed: the metadata's
/// key order is a hash map's, different on every export) and its data bytes, a JSON file
/// parsed. A file cut short does not parse or has too few data bytes.
#[derive(Debug, PartialEq)]
enum Content {
    Safetensors(serde_json::Value, Vec<u8>),
    Json(serde_json::Value),
    Unreadable(usize),
}

fn content(bytes: &[u8]) -> Content {
    let safetensors = || {
        let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
        Some(Content::Safetensors(header, bytes[8 + n..].to_vec()))
    };
    safetensors()
        .or_else(|| serde_json::from_slice(bytes).ok().map(Content::Json))
        .unwrap_or(Content::Unreadable(bytes.len()))
}

/// The files of an export (a file, or a PEFT directory) as content; `None` when absent.
fn export_files(out: &Path) -> Option<BTreeMap<String, Content>> {
    if !out.exists() {
        return None;
    }
    if out.is_file() {
        return Some(BTreeMap::from([(String::new(), content(&std::fs::read(out).unwrap()))]));
    }
    Some(
        std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (p.file_name().unwrap().to_string_lossy().into_owned(), content(&std::fs::read(&p).unwrap()))
            })
            .collect(),
    )
}

/// Every file and folder under `dir`, with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

#[test]
fn an_export_killed_at_random_moments_is_whole_or_absent() {
    let cli = mlae_cli();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_demo_tasks(&data, [2, 1, 1]);
    let template = tiny_configs(tmp.path(), "demo");
    let config = PathBuf::from(template.replace("{benchmark}", "demo").replace("{task}", "mnist5k"));
    let runs = tmp.path().join("runs");
    let mut train = Command::new(&cli);
    train
        .env("MLAE_CACHE_DIR", tmp.path().join("cache"))
        .arg("finetune")
        .arg("--config")
        .arg(&config)
        .arg("--no-progress")
        .arg("--set")
        .arg(format!("data.root={}", data.display()))
        .arg("--set")
        .arg(format!("output.dir={}", runs.display()))
        .args(["--set", "output.name=run"])
        .args(quick_train_sets(2));
    run_ok(&mut train);
    let run = runs.join("run");
    let export = |format: &str, out: &Path| {
        let mut cmd = Command::new(&cli);
        cmd.env("MLAE_LOG", "warn")
            .arg("export")
            .arg("--run")
            .arg(&run)
            .args(["--format", format])
            .arg("--out")
            .arg(out);
        cmd
    };

    let mut moments = Moments(0xe8b0_57ed);
    let mut counts = Vec::new();
    for (format, name) in [("merged", "merged.safetensors"), ("peft", "peft")] {
        // the whole export, and how long it takes
        let reference = tmp.path().join(format!("reference-{name}"));
        let t0 = Instant::now();
        run_ok(&mut export(format, &reference));
        let took = t0.elapsed().as_millis() as u64;
        let whole = export_files(&reference).unwrap();
        let dir = tmp.path().join(format!("out-{format}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(name);
        let (mut killed, mut absent, mut complete) = (0, 0, 0);
        let mut attempt = 0;
        while killed < KILLS {
            attempt += 1;
            if attempt % 4 == 2 && out.is_dir() {
                std::fs::remove_dir_all(&out).unwrap();
            } else if attempt % 4 == 2 && out.exists() {
                std::fs::remove_file(&out).unwrap();
            }
            let before = snapshot(&dir);
            // a file appears or changes: the export has begun writing
            let writing = || snapshot(&dir) != before;
            let mut child = export(format, &out).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            // Every other attempt is killed as soon as it starts writing (plus a moment; one in
            // two of them to a fresh path, the others over the earlier export), the others at a
            // random moment of the export's life.
            let moment = if attempt % 2 == 0 {
                let deadline = Instant::now() + Duration::from_millis(5 * took + 1000);
                while !writing() && child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Duration::from_micros(moments.below(0, 2000))
            } else {
                moments.between(0, took + took / 4 + 1)
            };
            if wait_or_timeout(&mut child, moment).is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
            match export_files(&out) {
                None => absent += 1,
                Some(files) => {
                    assert!(files == whole, "{format}: a killed export left a partial {}", out.display());
                    complete += 1;
                }
            }
        }
        run_ok(&mut export(format, &out));
        assert_eq!(export_files(&out).as_ref(), Some(&whole), "{format}");
        counts.push(format!("{format}: {killed} kills, {absent} absent, {complete} whole"));
    }
    eprintln!("exports under faults: {}", counts.join("; "));
}
