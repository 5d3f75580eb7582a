//! `cargo xtask sweep --executor slurm` against a real one-node Slurm on localhost.
//!
//! The test installs Debian's `slurm-wlm` and `munge` with apt-get when they are missing,
//! starts munged, slurmctld and slurmd with a slurm.conf written into a temp dir (all state
//! there too), submits a small sweep as a job array, cancels one array task mid-run with
//! scancel, resubmits, and checks that only the unfinished run ran again and that the report
//! reads the results. Every daemon it started is stopped by a guard, also when it fails.
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
    let cluster = Cluster::start();
    eprintln!("cluster up after {:?}", started.elapsed());

    let tmp = tempfile::tempdir().unwrap();
    // The per-run program. The stand-in for now; once training lands this becomes the real
    // mlae-cli on a tiny demo task (it ignores the FAKE_* variables).
    let cli = fake_cli(tmp.path());
    let grid = grid_file(
        tmp.path(),
        "slurm-test",
        "configs/demo/{task}.toml",
        "protocol = \"paper\"\n[axes]\n\"adapter.dropout\" = [0.1, 0.5]\n",
    );
    let sweep = tmp.path().join("sweep");
    let log = tmp.path().join("events.log");
    let target = "digits.mlae.dropout=0.5.s0";
    let submit = |block: bool| {
        let mut c = xtask();
        c.args([
            "sweep",
            "--executor",
            "slurm",
            "--benchmark",
            "demo",
            "--time",
            "00:10:00",
            "--array-limit",
            "4",
        ])
        .args(["--set", "train.epochs=3", "--grid"])
        .arg(&grid)
        .arg("--out")
        .arg(&sweep)
        .arg("--cli")
        .arg(&cli)
        .env("SLURM_CONF", &cluster.conf)
        .env("FAKE_LOG", &log)
        .env("FAKE_EPOCH_SECONDS", "0.1");
        if block {
            // The target run holds after its first epoch, until it is cancelled.
            c.env("FAKE_BLOCK", format!("^{}$", target.replace('.', r"\.")))
                .env("FAKE_UNBLOCK", tmp.path().join("never"));
        }
        stdout(&run_ok(&mut c))
    };

    let out = submit(true);
    assert!(out.contains("submitted Slurm job array") && out.contains(": 4 runs"), "{out}");
    let jobs = json(&sweep.join("slurm/jobs.json"));
    let job = jobs[0]["job_id"].as_str().unwrap().to_string();
    let index = jobs[0]["runs"].as_array().unwrap().iter().position(|r| r == target).unwrap();
    let script = std::fs::read_to_string(jobs[0]["script"].as_str().unwrap()).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-3%4") && script.contains("#SBATCH --time=00:10:00"),
        "{script}"
    );

    let others: Vec<String> =
        ["mnist5k.mlae.dropout=0.1.s0", "mnist5k.mlae.dropout=0.5.s0", "digits.mlae.dropout=0.1.s0"]
            .map(String::from)
            .to_vec();
    cluster.wait("three finished runs and the held one past its first epoch", || {
        others.iter().all(|r| run_state(&sweep, r).as_deref() == Some("finished"))
            && sweep.join("runs").join(target).join("checkpoints/last.safetensors").is_file()
    });
    let status =
        stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep).env("SLURM_CONF", &cluster.conf)));
    assert!(status.contains(&format!("running      {target}")), "{status}");
    assert!(status.contains(&format!("slurm {job}_{index} RUNNING")), "{status}");
    assert!(status.contains("done         digits.mlae.dropout=0.1.s0"), "{status}");

    // Cancel the held run mid-run; mlae-cli (here its stand-in) checkpoints on SIGTERM.
    run_ok(cluster.cmd("scancel").arg(format!("{job}_{index}")));
    cluster.wait("the cancelled task to leave the queue", || cluster.active(&job).is_empty());
    cluster.wait("the cancelled run to record its interruption", || {
        run_state(&sweep, target).as_deref() == Some("interrupted")
    });
    let status =
        stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep).env("SLURM_CONF", &cluster.conf)));
    assert!(status.contains(&format!("interrupted  {target}")) && status.contains("CANCELLED"), "{status}");

    // Resubmit the same sweep: only the unfinished run goes to Slurm, and it resumes.
    let out = submit(false);
    assert!(out.contains("submitted Slurm job array") && out.contains(": 1 runs"), "{out}");
    let jobs = json(&sweep.join("slurm/jobs.json"));
    let job2 = jobs[1]["job_id"].as_str().unwrap().to_string();
    assert_eq!(jobs[1]["runs"], serde_json::json!([target]));
    cluster.wait("the resubmitted run to finish", || {
        cluster.active(&job2).is_empty() && run_state(&sweep, target).as_deref() == Some("finished")
    });
    let starts = starts(&log);
    for r in &others {
        assert_eq!(starts[r], ["fresh"], "{r} finished in the first job and must not run again");
    }
    assert_eq!(starts[target], ["fresh", "resume"], "the cancelled run resumes from its checkpoint");
    let status =
        stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep).env("SLURM_CONF", &cluster.conf)));
    assert!(status.trim_end().ends_with("runs: 4 (done 4)"), "{status}");

    // A third submission has nothing to do.
    let out = submit(false);
    assert!(!out.contains("submitted"), "{out}");
    assert_eq!(json(&sweep.join("slurm/jobs.json")).as_array().unwrap().len(), 2);

    // The same report as for a local sweep.
    let md = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    for p in ["0.1", "0.5"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| mlae (dropout={p}) |")))
            .unwrap_or_else(|| panic!("{md}"));
        let acc = |t: &str| {
            100.0
                * json(&sweep.join(format!("runs/{t}.mlae.dropout={p}.s0/summary.json")))["test_acc"]
                    .as_f64()
                    .unwrap()
        };
        let (a, b) = (acc("mnist5k"), acc("digits"));
        assert!(row.ends_with(&format!("| {a:.2} | {b:.2} | {:.2} |", (a + b) / 2.0)), "{row}");
    }
    let slurm_log = std::fs::read_to_string(sweep.join(format!("logs/{target}.log"))).unwrap();
    assert_eq!(slurm_log.matches("=== slurm ").count(), 2, "both attempts logged: {slurm_log}");
    eprintln!("Slurm test done after {:?}", started.elapsed());
}
