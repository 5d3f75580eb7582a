//! `mlae-cli check`: the verdicts of every step on the CPU, and a device that cannot be used.

use crate::support::*;

const SMALL: &[&str] = &["--preset", "vit-ti16", "--image-size", "32"];

fn check(extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["check", "--json"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = cli_run(&args);
    let last = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, v, stderr)
}

fn step<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no {name}: {v:#}"))
}

#[test]
fn on_the_cpu_every_step_passes_and_parity_says_why_it_is_skipped() {
    let (code, v, stderr) = check(&["--device", "cpu"]);
    assert_eq!(code, 0, "{v:#}\n{stderr}");
    let names: Vec<&str> =
        v["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, ["doctor", "train-fp32", "train-bf16", "merge", "parity"]);
    assert_eq!((v["device"].as_str(), v["cuda"].as_bool()), (Some("cpu"), Some(false)));
    assert_eq!(v["config"]["vit"]["preset"], "vit-ti16");
    for name in ["doctor", "train-fp32", "train-bf16", "merge"] {
        assert_eq!(step(&v, name)["verdict"], "PASS", "{name}: {:#}", step(&v, name));
    }
    for (name, precision) in [("train-fp32", "fp32"), ("train-bf16", "bf16")] {
        let s = step(&v, name);
        assert!(s["reason"].as_str().unwrap().starts_with("loss "), "{s:#}");
        let fig = &s["figures"]["train"];
        assert_eq!(fig["precision"], precision);
        // 12 timed + 2 warm-up steps: the CPU budget.
        assert_eq!(fig["bench"]["losses"].as_array().unwrap().len(), 14);
        assert!(fig["bench"]["peak_mem_mb"].as_f64().unwrap() > 0.0);
    }
    let merge = step(&v, "merge");
    assert!(merge["figures"]["merge"]["bench"]["merge_max_abs_diff"].as_f64().unwrap() <= 1e-4, "{merge:#}");
    let parity = step(&v, "parity");
    assert_eq!(parity["verdict"], "SKIPPED");
    assert!(parity["reason"].as_str().unwrap().starts_with("not applicable: no CUDA device"), "{parity:#}");
    // The doctor's figures say what the CUDA stack is.
    let doctor = &step(&v, "doctor")["figures"]["doctor"];
    assert!(doctor["libtorch_version"].as_str().unwrap().starts_with("2.11.0"));
    assert!(doctor["driver"].is_string());
}

#[test]
fn the_text_report_has_a_row_per_step() {
    let mut args = vec!["check", "--device", "cpu", "--steps", "4", "--batch", "4"];
    args.extend_from_slice(SMALL);
    let (code, stdout, stderr) = cli_run(&args);
    // Four steps may be too few for the loss to fall: the verdict is the rule's either way.
    assert!(code == 0 || code == 1, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("MLAE check on cpu (") && stdout.contains(", --device cpu, "), "{stdout}");
    for row in
        ["| doctor | PASS |", "| training fp32 | ", "| training bf16 | ", "| merged inference | PASS |"]
    {
        assert!(stdout.contains(row), "{row}: {stdout}");
    }
    assert!(stdout.contains("| parity | SKIPPED |"), "{stdout}");
    let result = stdout.lines().last().unwrap();
    assert_eq!(result.starts_with("result: PASS"), code == 0, "{stdout}");
}

#[test]
fn a_device_that_cannot_be_used_fails_the_check_and_says_why() {
    if tch::Cuda::device_count() > 7 {
        return;
    }
    let (code, v, _) = check(&["--device", "cuda:7"]);
    assert_eq!(code, 1, "{v:#}");
    assert!(v["device"].is_null());
    let doctor = step(&v, "doctor");
    assert_eq!(doctor["verdict"], "FAIL");
    let reason = doctor["reason"].as_str().unwrap();
    assert!(reason.starts_with("--device = cuda:7: "), "{reason}");
    for name in ["train-fp32", "train-bf16", "merge", "parity"] {
        assert_eq!(step(&v, name)["verdict"], "SKIPPED", "{name}");
    }
    let (code, _, stderr) = cli_run(&["check", "--device", "tpu"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--device: `tpu` is not one of auto, cpu, cuda, cuda:N"), "{stderr}");
}
