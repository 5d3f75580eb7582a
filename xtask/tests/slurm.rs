//! `cargo xtask sweep --executor slurm` against a real one-node Slurm on localhost, running
//! the real mlae-cli on tiny generated demo tasks with a tiny random ViT.
//!
//! The test installs Debian's `slurm-wlm` and `munge` with apt-get when they are missing,
//! starts munged, slurmctld and slurmd with a slurm.conf written into a temp dir (all state
//! there too), submits a small sweep as a job array, cancels one array task mid-run with
//! scancel (mlae-cli checkpoints on its SIGTERM), resubmits, and checks that only the
//! unfinished run ran again, that it resumed from its checkpoint, and that the report reads
//! the results. Every daemon it started is stopped by a guard, also when it fails.
//!
//! It is skipped, saying why, where the machine cannot run it: not root, no apt-get, or the
//! packages cannot be installed. Set MLAE_REQUIRE_SLURM_TEST=1 to turn a skip into a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::*;

const BINARIES: [&str; 7] = [
    "/usr/sbin/munged",
    "/usr/sbin/slurmctld",
    "/usr/sbin/slurmd",
    "/usr/bin/sbatch",
    "/usr/bin/squeue",
    "/usr/bin/scancel",
    "/usr/bin/sinfo",
];

fn skip(why: &str) {
    if std::env::var_os("MLAE_REQUIRE_SLURM_TEST").is_some_and(|v| v == "1") {
        panic!("the Slurm test cannot run here: {why}");
    }
    eprintln!("SKIPPED: the Slurm executor test cannot run on this machine: {why}");
}

/// Installs slurm-wlm and munge when their binaries are missing. Err: why it cannot.
fn ensure_slurm_installed() -> Result<(), String> {
    if BINARIES.iter().all(|b| Path::new(b).is_file()) {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").is_file() {
        return Err("Slurm is not installed and there is no apt-get to install it".into());
    }
    // Keep the packages' maintainer scripts from starting system-wide daemons: we start our own.
    let _no_services = PolicyRcGuard::install();
    let install = || {
        Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=300",
                "install",
                "-y",
                "--no-install-recommends",
                "slurm-wlm",
                "munge",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    let mut out = install()?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let update = Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=300", "update"]).output();
        if update.is_ok_and(|u| u.status.success()) {
            out = install()?;
        }
    }
    if !out.status.success() {
        return Err(format!(
            "apt-get install slurm-wlm munge failed:\n{}",
            String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join("\n")
        ));
    }
    match BINARIES.iter().find(|b| !Path::new(b).is_file()) {
        Some(b) => Err(format!("{b} is still missing after installing slurm-wlm and munge")),
        None => Ok(()),
    }
}

/// A `policy-rc.d` that denies service starts while apt runs, removed afterwards; only when
/// the machine has none of its own.
struct PolicyRcGuard(Option<PathBuf>);

impl PolicyRcGuard {
    fn install() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Self(None);
        }
        if std::fs::write(&path, "#!/bin/sh\nexit 101\n").is_err() {
            return Self(None);
        }
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        Self(Some(path))
    }
}

impl Drop for PolicyRcGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A one-node Slurm (munged + slurmctld + slurmd) in a temp dir. Dropping it cancels its jobs
/// and stops the three daemons it started, by their pids.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn start() -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("mlae-slurm-").tempdir().unwrap();
        let d = dir.path();
        // munged insists that everyone can traverse to its socket, and that only it can read the key.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["run", "state", "spool", "log", "munge"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::set_permissions(d.join("munge"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut key = vec![0u8; 1024];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut key).unwrap();
        }
        std::fs::write(d.join("munge/munge.key"), key).unwrap();
        std::fs::set_permissions(d.join("munge/munge.key"), std::fs::Permissions::from_mode(0o400)).unwrap();

        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
        // The node line as slurmd sees this machine, so the node is never drained for a mismatch.
        let node = Command::new("/usr/sbin/slurmd").arg("-C").output().unwrap();
        let node = String::from_utf8_lossy(&node.stdout);
        // Its hardware fields (CPUs, sockets, cores, threads), without the name and memory.
        let hardware: Vec<&str> = node
            .lines()
            .find(|l| l.starts_with("NodeName="))
            .expect("slurmd -C prints the node")
            .split_whitespace()
            .filter(|w| !w.starts_with("NodeName=") && !w.starts_with("RealMemory="))
            .collect();
        let node_line = format!("NodeName={host} {}", hardware.join(" "));
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        let p = |s: &str| d.join(s).display().to_string();
        let conf = d.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=mlaetest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
                 AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
                 SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
                 SlurmctldPidFile={run}/slurmctld.pid\nSlurmdPidFile={run}/slurmd.pid\n\
                 SlurmctldLogFile={log}/slurmctld.log\nSlurmdLogFile={log}/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_CPU\nSchedulerType=sched/backfill\nAccountingStorageType=accounting_storage/none\n\
                 JobAcctGatherType=jobacct_gather/none\nJobCompType=jobcomp/none\nMpiDefault=none\nMailProg=/bin/true\n\
                 ReturnToService=2\nKillWait=5\nMinJobAge=600\nSlurmctldTimeout=30\nSlurmdTimeout=30\n\
                 {node_line} NodeAddr=127.0.0.1 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                socket = p("run/munge.socket"),
                state = p("state"),
                spool = p("spool"),
                run = p("run"),
                log = p("log"),
            ),
        )
        .unwrap();
        let mut cluster = Cluster { conf: conf.clone(), daemons: Vec::new(), dir };
        let d = cluster.dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(d.join("log").join(name)).unwrap();
        let munged = Command::new("/usr/sbin/munged")
            .arg("-F")
            .arg(format!("--key-file={}", d.join("munge/munge.key").display()))
            .arg(format!("--socket={}", d.join("run/munge.socket").display()))
            .arg(format!("--pid-file={}", d.join("run/munged.pid").display()))
            .arg(format!("--seed-file={}", d.join("munge/seed").display()))
            .arg(format!("--log-file={}", d.join("log/munged.log").display()))
            .stdout(log("munged.out"))
            .stderr(log("munged.err"))
            .spawn()
            .unwrap();
        cluster.daemons.push(("munged", munged));
        cluster.wait("munged's socket", || d.join("run/munge.socket").exists());
        let slurmctld = Command::new("/usr/sbin/slurmctld")
            .args(["-D", "-i", "-f"])
            .arg(&conf)
            .env("SLURM_CONF", &conf)
            .stdout(log("slurmctld.out"))
            .stderr(log("slurmctld.err"))
            .spawn()
            .unwrap();
        cluster.daemons.push(("slurmctld", slurmctld));
        let slurmd = Command::new("/usr/sbin/slurmd")
            .args(["-D", "-f"])
            .arg(&conf)
            .args(["-N", &host])
            .env("SLURM_CONF", &conf)
            .stdout(log("slurmd.out"))
            .stderr(log("slurmd.err"))
            .spawn()
            .unwrap();
        cluster.daemons.push(("slurmd", slurmd));
        cluster.wait("the node to be idle", || {
            cluster
                .cmd("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    /// A Slurm client command talking to this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > Duration::from_secs(60) {
                panic!("Slurm test cluster: timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["slurmctld.log", "slurmd.log", "munged.log", "slurmctld.err", "slurmd.err", "munged.err"] {
            let text = std::fs::read_to_string(self.dir.path().join("log").join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s.push_str(&format!(
                "--- {f} (last lines)\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }

    /// Array task ids (`JOB_INDEX`) of `job` that Slurm still has queued or running.
    fn active(&self, job: &str) -> Vec<String> {
        let out = self.cmd("squeue").args(["-h", "-r", "-j", job, "-o", "%i"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // Jobs first, so that no run outlives the cluster.
        let _ = self.cmd("scancel").args(["--user", "root"]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let out = self.cmd("squeue").args(["-h", "-o", "%i"]).output();
            if out.map_or(true, |o| o.stdout.iter().all(|b| b.is_ascii_whitespace())) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for (name, child) in self.daemons.iter_mut().rev() {
            // SAFETY: kill(2) on a daemon this test spawned and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    eprintln!("{name} ignored SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Epochs of each run: long enough (a few seconds) to cancel the target run mid-way.
const EPOCHS: u64 = 100;

#[test]
fn a_sweep_runs_as_a_slurm_job_array_and_a_cancelled_task_resumes_on_resubmission() {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("it must run as root to install packages and start slurmctld, slurmd and munged");
    }
    if let Err(why) = ensure_slurm_installed() {
        return skip(&why);
    }
    eprintln!("slurm installed after {:?}", started.elapsed());
    let cli = mlae_cli();
    let cluster = Cluster::start();
    eprintln!("cluster up after {:?}", started.elapsed());

    // The real mlae-cli on the demo tasks, generated tiny, with a tiny random ViT.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tasks = write_demo_tasks(&data, [2, 1, 1]);
    let template = tiny_configs(tmp.path(), "demo");
    let grid = grid_file(
        tmp.path(),
        "slurm-test",
        &template,
        "protocol = \"paper\"\n[axes]\n\"adapter.mlae.expert_dropout\" = [0.1, 0.5]\n",
    );
    let sweep = tmp.path().join("sweep");
    let cache = tmp.path().join("cache");
    let runs: Vec<String> = tasks
        .iter()
        .flat_map(|t| ["0.1", "0.5"].map(|p| format!("{t}.mlae.expert_dropout={p}.s0")))
        .collect();
    let names: Vec<&str> = runs.iter().map(String::as_str).collect();
    // The target: the last run of the last demo task.
    let target_task = tasks.last().unwrap().as_str();
    let target_run = format!("{target_task}.mlae.expert_dropout=0.5.s0");
    let target = target_run.as_str();
    assert_eq!(names.last(), Some(&target));
    let others: Vec<&str> = names.iter().copied().filter(|r| *r != target).collect();
    let submit = || {
        let flags =
            ["--executor", "slurm", "--benchmark", "demo", "--time", "00:10:00", "--array-limit", "4"];
        let mut c = real_sweep(&cache, &flags, &grid, &sweep, &cli, &data, EPOCHS);
        c.env("SLURM_CONF", &cluster.conf);
        stdout(&run_ok(&mut c))
    };
    let status_of =
        || stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep).env("SLURM_CONF", &cluster.conf)));
    let state = |r: &str| run_status(&sweep, r).and_then(|s| s["state"].as_str().map(String::from));
    let timeout = Duration::from_secs(180);

    let out = submit();
    assert!(
        out.contains("submitted Slurm job array") && out.contains(&format!(": {} runs", runs.len())),
        "{out}"
    );
    let jobs = json(&sweep.join("slurm/jobs.json"));
    let job = jobs[0]["job_id"].as_str().unwrap().to_string();
    let index = jobs[0]["runs"].as_array().unwrap().iter().position(|r| r == target).unwrap();
    let script = std::fs::read_to_string(jobs[0]["script"].as_str().unwrap()).unwrap();
    assert!(
        script.contains(&format!("#SBATCH --array=0-{}%4", runs.len() - 1))
            && script.contains("#SBATCH --time=00:10:00"),
        "{script}"
    );

    // Cancel the target's array task once it is well into training and far from its end.
    wait_for_runs(&sweep, &names, "the target run to be a few epochs in", timeout, || {
        let s = run_status(&sweep, target);
        let epoch = s.as_ref().and_then(|s| s["epoch"].as_u64()).unwrap_or(0);
        assert!(
            epoch <= EPOCHS / 2,
            "the target run got too far to be cancelled mid-way:\n{}",
            diagnose(&sweep, &names)
        );
        s.is_some_and(|s| s["state"] == "running") && epoch >= 1
    });
    let status = status_of();
    assert!(status.contains(&format!("running      {target}")), "{status}");
    assert!(status.contains(&format!("slurm {job}_{index} RUNNING")), "{status}");
    let run_dir = sweep.join("runs").join(target);
    let checkpoint = run_dir.join("checkpoints/last.safetensors");
    let before = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    run_ok(cluster.cmd("scancel").arg(format!("{job}_{index}")));
    // scancel's SIGTERM makes mlae-cli finish its step, write a checkpoint and stop.
    wait_for_runs(&sweep, &names, "the cancelled run to checkpoint and stop", timeout, || {
        state(target).as_deref() == Some("interrupted")
    });
    let log = std::fs::read_to_string(sweep.join("logs").join(format!("{target}.log"))).unwrap();
    assert!(log.contains("interrupt: finishing the step and writing a checkpoint"), "{log}");
    assert!(std::fs::metadata(&checkpoint).unwrap().modified().unwrap() > before, "a checkpoint on SIGTERM");
    let epoch = run_status(&sweep, target).unwrap()["epoch"].as_u64().unwrap();
    assert!((1..EPOCHS).contains(&epoch), "stopped mid-run at epoch {epoch}");
    assert_eq!(metric_epochs(&run_dir), (1..=epoch).collect::<Vec<_>>());
    let metrics_before = lines(&run_dir.join("metrics.jsonl"));
    wait_for_runs(&sweep, &names, "the other runs to finish", timeout, || {
        cluster.active(&job).is_empty() && others.iter().all(|r| state(r).as_deref() == Some("finished"))
    });
    let status = status_of();
    assert!(status.contains(&format!("interrupted  {target}")) && status.contains("CANCELLED"), "{status}");
    for r in &others {
        assert!(status.contains(&format!("done         {r}")), "{status}");
    }
    let file = |r: &str, f: &str| std::fs::read(sweep.join("runs").join(r).join(f)).unwrap();
    let finished: Vec<Vec<u8>> = others.iter().map(|r| file(r, "summary.json")).collect();

    // Resubmit the same sweep: only the unfinished run goes to Slurm, and it resumes.
    let out = submit();
    assert!(out.contains("submitted Slurm job array") && out.contains(": 1 runs"), "{out}");
    let jobs = json(&sweep.join("slurm/jobs.json"));
    let job2 = jobs[1]["job_id"].as_str().unwrap().to_string();
    assert_eq!(jobs[1]["runs"], serde_json::json!([target]));
    wait_for_runs(&sweep, &names, "the resubmitted run to finish", timeout, || {
        cluster.active(&job2).is_empty() && state(target).as_deref() == Some("finished")
    });
    for (r, s) in others.iter().zip(&finished) {
        assert_eq!(launches(&sweep, r).len(), 1, "{r} finished in the first job and must not run again");
        assert!(file(r, "summary.json") == *s, "{r} was rewritten");
    }
    let l = launches(&sweep, target);
    assert!(l.len() == 2 && l.iter().all(|l| l.starts_with("=== slurm ")), "{l:?}");
    assert!(l[1].contains(" finetune --resume "), "the second attempt resumes: {l:?}");
    let log = std::fs::read_to_string(sweep.join("logs").join(format!("{target}.log"))).unwrap();
    assert!(log.contains(&format!("(epoch {epoch})")) && log.contains("resuming"), "{log}");
    // The epochs before the cancel are kept as written; the rest follow once.
    assert_eq!(metric_epochs(&run_dir), (1..=EPOCHS).collect::<Vec<_>>());
    for (a, b) in lines(&run_dir.join("metrics.jsonl")).iter().zip(&metrics_before) {
        assert!(same_record(&parse(a), &parse(b)), "an epoch before the cancel changed:\n{b}\n{a}");
    }
    let s = summary(&sweep, target);
    assert_eq!(s["epochs"], EPOCHS);
    assert_eq!(s["steps"], EPOCHS * steps_per_epoch(&data, target_task, "train800val200"));
    let status = status_of();
    let n = runs.len();
    assert!(status.trim_end().ends_with(&format!("runs: {n} (done {n})")), "{status}");

    // A third submission has nothing to do.
    let out = submit();
    assert!(!out.contains("submitted"), "{out}");
    assert_eq!(json(&sweep.join("slurm/jobs.json")).as_array().unwrap().len(), 2);

    // The same report as for a local sweep, from the runs' summaries.
    let md = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    for p in ["0.1", "0.5"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| mlae (expert_dropout={p}) |")))
            .unwrap_or_else(|| panic!("{md}"));
        let acc: Vec<f64> = tasks
            .iter()
            .map(|t| {
                100.0
                    * summary(&sweep, &format!("{t}.mlae.expert_dropout={p}.s0"))["test_acc"]
                        .as_f64()
                        .unwrap()
            })
            .collect();
        let cells: Vec<String> = acc.iter().map(|a| format!("{a:.2}")).collect();
        let mean = acc.iter().sum::<f64>() / acc.len() as f64;
        assert!(row.ends_with(&format!("| {} | {mean:.2} |", cells.join(" | "))), "{row}");
    }

    // Successive halving under Slurm: each call submits the rungs now due, and the next call
    // (once those finished) decides and submits what follows.
    let grid = grid_file(
        tmp.path(),
        "slurm-halving",
        &template,
        "protocol = \"val\"\nseeds = [0]\n[axes]\n\"adapter.mlae.expert_dropout\" = [0.1, 0.3, 0.5]\n\
         [select]\nmetric = \"best_val_acc\"\nfinal_protocol = \"paper\"\n",
    );
    let sweep = tmp.path().join("halving");
    let task = tasks[0].as_str();
    let search: Vec<String> =
        ["0.1", "0.3", "0.5"].map(|p| format!("search.{task}.mlae.expert_dropout={p}.s0")).to_vec();
    let final_run = format!("final.{task}.mlae.s0");
    let mut all: Vec<&str> = search.iter().map(String::as_str).collect();
    all.push(&final_run);
    let submit = || {
        let flags = ["--executor", "slurm", "--benchmark", "demo", "--tasks", task, "--search", "halving"];
        let mut c = real_sweep(&cache, &flags, &grid, &sweep, &cli, &data, 6);
        c.env("SLURM_CONF", &cluster.conf);
        stdout(&run_ok(&mut c))
    };
    let last_job = || {
        let jobs = json(&sweep.join("slurm/jobs.json"));
        let last = jobs.as_array().unwrap().last().unwrap().clone();
        (last["job_id"].as_str().unwrap().to_string(), last["runs"].clone())
    };
    let state = |r: &str| run_status(&sweep, r).and_then(|s| s["state"].as_str().map(String::from));
    let out = submit();
    assert!(out.contains(": 3 runs") && out.contains("rungs at epochs [2, 6]"), "{out}");
    assert!(out.contains("final runs wait for their next halving rung"), "{out}");
    let (job, runs) = last_job();
    assert_eq!(runs, serde_json::json!(search));
    wait_for_runs(&sweep, &all, "the first rung", timeout, || {
        cluster.active(&job).is_empty() && search.iter().all(|r| state(r).as_deref() == Some("paused"))
    });
    let out = submit();
    assert!(out.contains(": 1 runs"), "{out}");
    let (job, runs) = last_job();
    let kept = runs[0].as_str().unwrap().to_string();
    let scripts: Vec<String> = json(&sweep.join("slurm/jobs.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|j| std::fs::read_to_string(j["script"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(scripts[0].matches("--stop-after-epoch 2").count(), 3, "{}", scripts[0]);
    assert!(
        !scripts[1].contains("--stop-after-epoch") && scripts[1].contains(" --resume "),
        "{}",
        scripts[1]
    );
    wait_for_runs(&sweep, &all, "the survivor", timeout, || {
        cluster.active(&job).is_empty() && state(&kept).as_deref() == Some("finished")
    });
    let out = submit();
    assert!(out.contains(": 1 runs"), "{out}");
    let (job, runs) = last_job();
    assert_eq!(runs, serde_json::json!([final_run]));
    wait_for_runs(&sweep, &all, "the final run", timeout, || {
        cluster.active(&job).is_empty() && state(&final_run).as_deref() == Some("finished")
    });
    assert_eq!(json(&sweep.join("selection.json"))[&final_run]["selected"], kept.as_str());
    let rung: Vec<f64> = search
        .iter()
        .map(|r| parse(&lines(&sweep.join("runs").join(r).join("rungs.jsonl"))[0])["acc"].as_f64().unwrap())
        .collect();
    let best = (0..3).fold(0, |b, i| if rung[i] > rung[b] { i } else { b });
    assert_eq!(kept, search[best], "the best val200 score at epoch 2 goes on: {rung:?}");
    assert!(!submit().contains("submitted"), "nothing left to do");
    eprintln!("Slurm test done after {:?}", started.elapsed());
}
