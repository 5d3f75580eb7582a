//! `mlae-cli analyze similarity` and `analyze experts` on tiny trained runs.

use crate::support::*;
use ndarray::{Array1, Array2};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MLAE: &str = "kind = \"mlae\"\n[adapter.mlae]\nexperts = 4\nexpert_dropout = 0.5\ncoeff_init = 1.0";
const LORA: &str = "kind = \"lora\"\n[adapter.lora]\nrank = 4";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Trains a tiny run with `adapter` for two epochs; returns (temp dir, run directory).
fn trained(adapter: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, cfg) = setup(adapter, 2);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    (tmp, run)
}

/// The last checkpoint's model tensors as ndarrays, keyed without the `model.` prefix.
fn checkpoint(run: &Path) -> HashMap<String, Array2<f32>> {
    tch::Tensor::read_safetensors(run.join("checkpoints/last.safetensors"))
        .unwrap()
        .into_iter()
        .filter_map(|(k, t)| {
            let k = k.strip_prefix("model.")?.to_string();
            let t = if t.dim() == 1 { t.unsqueeze(0) } else { t };
            let (r, c) = t.size2().unwrap();
            let v = Vec::<f32>::try_from(t.contiguous().view(-1)).unwrap();
            Some((k, Array2::from_shape_vec((r as usize, c as usize), v).unwrap()))
        })
        .collect()
}

/// Width and height from a PNG, decoded.
fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

#[test]
fn similarity_of_mlae_and_lora_runs_matches_mlae_core() {
    let (_t1, mlae) = trained(MLAE);
    let (_t2, lora) = trained(LORA);
    let out = tempfile::tempdir().unwrap();
    let stdout =
        run_ok(&["analyze", "similarity", "--run", s(&mlae), "--run", s(&lora), "--out", s(out.path())]);
    assert!(stdout.contains("| mlae |") && stdout.contains("| lora |"), "{stdout}");
    let report = json(&out.path().join("similarity.json"));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);

    // MLAE: expert i is lambda_i b_i a_i; mlae-core's cosine with coefficients.
    let ck = checkpoint(&mlae);
    let mut means = Vec::new();
    for (block, layer) in runs[0]["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(layer["name"], format!("blocks.{block}.attn.qkv"));
        let p = |n: &str| &ck[&format!("blocks.{block}.attn.qkv.{n}")];
        let lambda: Array1<f32> = p("mlae_lambda").row(0).to_owned();
        let want = mlae_core::expert_similarity_with_coefficients(
            p("mlae_A").view(),
            p("mlae_B").view(),
            lambda.view(),
            1,
        );
        let got = matrix(&layer["matrix"]);
        assert_eq!(got.len(), 4);
        for i in 0..4 {
            for j in 0..4 {
                assert!(
                    (got[i][j] - want[[i, j]]).abs() < 1e-6,
                    "block {block} ({i},{j}): {} vs {}",
                    got[i][j],
                    want[[i, j]]
                );
            }
        }
        let mean = mlae_core::mean_pairwise(&want);
        assert!((layer["mean"].as_f64().unwrap() - mean).abs() < 1e-6);
        means.push(mean);
    }
    assert!((runs[0]["mean"].as_f64().unwrap() - (means[0] + means[1]) / 2.0).abs() < 1e-6);
    // Training moved B away from zero: the experts are not all orthogonal or zero.
    assert!(means.iter().any(|m| m.abs() > 1e-4), "{means:?}");

    // LoRA: the experts are column_i(B) row_i(A), PEFT layout B (out, r).
    let ck = checkpoint(&lora);
    for (block, layer) in runs[1]["layers"].as_array().unwrap().iter().enumerate() {
        let p = |n: &str| &ck[&format!("blocks.{block}.attn.qkv.{n}")];
        let want = mlae_core::expert_similarity(p("lora_A").view(), p("lora_B").t(), 1);
        let got = matrix(&layer["matrix"]);
        for i in 0..4 {
            for j in 0..4 {
                assert!((got[i][j] - want[[i, j]]).abs() < 1e-6, "lora block {block} ({i},{j})");
            }
        }
    }

    // Heatmaps: 2 layers + their mean = 3 panels of 220 px in one row, a 50 px colour bar.
    for r in runs {
        let png = out.path().join(r["heatmap"].as_str().unwrap());
        assert_eq!(png_size(&png), (3 * 220, 220 + 50), "{}", png.display());
    }
    let (w, h) = png_size(&out.path().join("similarity_means.png"));
    assert!(w >= 640 && h == 480, "{w}x{h}");

    // One run: the default output is <run>/analysis; several runs need --out.
    run_ok(&["analyze", "similarity", "--run", s(&mlae)]);
    assert!(mlae.join("analysis/similarity.json").is_file());
    let (code, _, stderr) = cli_run(&["analyze", "similarity", "--run", s(&mlae), "--run", s(&lora)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--out"), "{stderr}");
}

#[test]
fn expert_feature_maps_form_a_grid_of_images_by_experts() {
    let (tmp, run) = trained(MLAE);
    let images: Vec<PathBuf> =
        (0..3).map(|i| tmp.path().join(format!("data/kitti/images/test/{i:06}.png"))).collect();
    let out = tmp.path().join("maps");
    let mut args =
        vec!["analyze", "experts", "--run", s(&run), "--block", "1", "--cell", "40", "--out", s(&out)];
    args.push("--images");
    args.extend(images.iter().map(|p| s(p)));
    let stdout = run_ok(&args);
    assert!(stdout.contains("4 experts of rank 1, 3 images, 2x2 patch grid"), "{stdout}");
    // Rows: 3 images; columns: the image + 4 experts; 40 px cells under a 24 px label row.
    assert_eq!(png_size(&out.join("experts_block1_qkv.png")), (5 * 40, 24 + 3 * 40));
    let report = json(&out.join("experts_block1_qkv.json"));
    let sizes = report["maps"]["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 3);
    for img in sizes {
        let experts = img.as_array().unwrap();
        assert_eq!(experts.len(), 4);
        for e in experts {
            let v: Vec<f64> = e.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(v.len(), 4, "16 px images, 8 px patches: 2x2 tokens, CLS excluded");
            assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{v:?}");
        }
    }
    assert!(report["definition"].as_str().unwrap().contains("class token is excluded"));

    // Another scale and cell size give another grid; a block out of range is a clear error.
    run_ok(&[
        "analyze",
        "experts",
        "--run",
        s(&run),
        "--block",
        "0",
        "--cell",
        "16",
        "--scale",
        "expert",
        "--out",
        s(&out),
        "--images",
        s(&images[0]),
    ]);
    assert_eq!(png_size(&out.join("experts_block0_qkv.png")), (5 * 16, 24 + 16));
    let (code, _, stderr) =
        cli_run(&["analyze", "experts", "--run", s(&run), "--block", "2", "--images", s(&images[0])]);
    assert_ne!(code, 0);
    assert!(stderr.contains("block 2 does not exist"), "{stderr}");
    let (code, _, stderr) = cli_run(&[
        "analyze",
        "experts",
        "--run",
        s(&run),
        "--block",
        "0",
        "--target",
        "fc1",
        "--images",
        s(&images[0]),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no adapter on fc1"), "{stderr}");
}
