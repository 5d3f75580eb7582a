//! `mlae-cli bench` on a tiny model: every figure is reported and sane.

use crate::support::*;

const TINY: &[&str] = &[
    "bench",
    "--json",
    "--preset",
    "vit-ti16",
    "--image-size",
    "16",
    "--patch-size",
    "8",
    "--dim",
    "32",
    "--depth",
    "2",
    "--heads",
    "2",
    "--mlp-dim",
    "64",
    "--classes",
    "5",
    "--batch",
    "4",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--rounds",
    "1",
    "--infer-batches",
    "1,2",
    "--experts",
    "4",
    "--threads",
    "1",
];

fn bench(extra: &[&str]) -> serde_json::Value {
    let mut args = TINY.to_vec();
    args.extend_from_slice(extra);
    let stdout = run_ok(&args);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn bench_reports_training_memory_and_inference_figures() {
    let v = bench(&[]);
    assert_eq!(v["arch"]["dim"], 32);
    assert_eq!(v["threads"], 1);
    let t = &v["train"];
    assert_eq!(t["step_seconds"].as_array().unwrap().len(), 2);
    assert!(t["train_img_per_s"].as_f64().unwrap() > 0.0);
    let (peak, setup) = (t["peak_mem_mb"].as_f64().unwrap(), t["setup_mem_mb"].as_f64().unwrap());
    assert!(setup > 0.0 && peak >= setup, "{peak} {setup}");
    assert!(t["mem_measure"].as_str().unwrap().contains("resident"));
    // 2 blocks x 4 experts x (32 + 96 + 1) on qkv, head 32 x 5 + 5
    assert_eq!(t["trainable_params"], 2 * 4 * 129 + 165);
    assert!(t["last_loss"].as_f64().unwrap().is_finite());
    let infer = &v["infer"];
    for variant in ["base", "unmerged", "merged"] {
        for bs in ["1", "2"] {
            assert!(infer["img_per_s"][variant][bs].as_f64().unwrap() > 0.0, "{variant} {bs}");
        }
    }
    assert!(infer["merge_max_abs_diff"].as_f64().unwrap() < 1e-4);
    assert!(v.get("infer_img_per_s_bs16").is_none(), "no batch 16 was timed");
}

#[test]
fn bench_runs_lora_training_alone() {
    let v = bench(&["--adapter", "lora", "--mode", "train"]);
    assert_eq!(v["train"]["trainable_params"], 2 * 4 * 128 + 165);
    assert!(v.get("infer").is_none());
    let (code, _, stderr) = cli_run(&[TINY, &["--mode", "infer", "--adapter", "linear-probe"]].concat());
    assert_ne!(code, 0);
    assert!(stderr.contains("nothing to merge"), "{stderr}");
}
