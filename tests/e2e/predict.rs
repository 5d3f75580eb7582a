//! `mlae-cli predict` on a trained tiny run: names and probabilities, merged or not, and
//! unreadable files named while the others are classified.

use crate::support::*;
use std::path::Path;

const LORA: &str = "kind = \"lora\"\n[adapter.lora]\nrank = 2";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (path, [(class, probability)]) from `--json` output.
fn parse(stdout: &str) -> Vec<(String, Vec<(String, f64)>)> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let preds = v["predictions"]
                .as_array()
                .unwrap_or_else(|| panic!("no predictions in {l}"))
                .iter()
                .map(|p| (p["class"].as_str().unwrap().to_string(), p["probability"].as_f64().unwrap()))
                .collect();
            (v["path"].as_str().unwrap().to_string(), preds)
        })
        .collect()
}

#[test]
fn predictions_name_classes_agree_merged_and_survive_a_bad_file() {
    let (tmp, cfg) = setup(LORA, 2);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    let images = tmp.path().join("data/kitti/images/test");

    let out = run_ok(&["predict", "--run", s(&run), "--top-k", "3", "--json", s(&images)]);
    let preds = parse(&out);
    assert_eq!(preds.len(), 24, "every test image, recursively found");
    for (path, ranked) in &preds {
        assert_eq!(ranked.len(), 3, "{path}");
        assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1), "most probable first: {ranked:?}");
        assert!(
            ranked.iter().all(|(c, p)| ["0", "1", "2", "3"].contains(&c.as_str()) && (0.0..=1.0).contains(p))
        );
    }

    // The predictions' accuracy on the test images is eval's (same preprocessing, same weights).
    let labels: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(tmp.path().join("data/kitti/test.txt"))
            .unwrap()
            .lines()
            .map(|l| {
                let (p, y) = l.rsplit_once(' ').unwrap();
                (tmp.path().join("data/kitti").join(p).display().to_string(), y.to_string())
            })
            .collect();
    let correct = preds.iter().filter(|(p, r)| labels[p] == r[0].0).count();
    let acc = json(&run.join("summary.json"))["test_acc"].as_f64().unwrap();
    assert!((correct as f64 / 24.0 - acc).abs() < 1e-9, "{correct}/24 against {acc}");

    // A merged export predicts the same classes with the same probabilities (fp32 rounding).
    let merged = tmp.path().join("merged.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "merged", "--out", s(&merged)]);
    let out =
        run_ok(&["predict", "--run", s(&run), "--merged", s(&merged), "--top-k", "3", "--json", s(&images)]);
    for ((p1, r1), (p2, r2)) in preds.iter().zip(parse(&out)) {
        assert_eq!(*p1, p2);
        assert_eq!(r1[0].0, r2[0].0, "{p1}: merged predicts another class");
        for ((_, a), (_, b)) in r1.iter().zip(&r2) {
            assert!((a - b).abs() < 1e-4, "{p1}: {r1:?} against {r2:?}");
        }
    }

    // A corrupt file and a text file are named; the good image is still classified; exit 1.
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let good = images.join("000000.png");
    let (code, stdout, stderr) = cli_run(&["predict", "--run", s(&run), s(&bad), s(&good)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("error: {}", bad.display())), "{stderr}");
    assert!(stderr.contains("1 images classified, 1 could not be read"), "{stderr}");
    assert!(stdout.starts_with(&format!("{}\t", good.display())), "{stdout}");
    let (code, stdout, _) = cli_run(&["predict", "--run", s(&run), "--csv", s(&bad), s(&good)]);
    assert_eq!(code, 1);
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows[0], "path,rank,class,index,probability,error");
    assert!(rows[1].starts_with(&format!("{},,,,,", bad.display())), "{stdout}");
    assert!(rows[2].starts_with(&format!("{},1,", good.display())), "{stdout}");

    // A path that does not exist stops the command before any work.
    let (code, _, stderr) = cli_run(&["predict", "--run", s(&run), s(&tmp.path().join("nope"))]);
    assert_ne!(code, 0);
    assert!(stderr.contains("nope"), "{stderr}");
}

/// Every other adapter kind: the run and its merged export predict the same classes with the
/// same probabilities (one epoch each; LoRA is the test above).
#[test]
fn every_kind_predicts_the_same_merged_or_not() {
    let kinds = [
        "kind = \"mlae\"\n[adapter.mlae]\nexperts = 4\nexpert_dropout = 0.5\ncoeff_init = 1.0",
        "kind = \"lora-dropout\"\n[adapter.lora]\nrank = 2\nupdate_dropout = 0.3",
        "kind = \"dora\"\n[adapter.lora]\nrank = 2",
        "kind = \"dmlora\"\n[adapter.dmlora]\nbranches = 2\nbranch_rank = 2",
        "kind = \"full\"",
        "kind = \"linear-probe\"",
    ];
    for adapter in kinds {
        let (tmp, cfg) = setup(adapter, 1);
        run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
        let run = tmp.path().join("runs/run");
        let images = tmp.path().join("data/kitti/images/test");
        let merged = tmp.path().join("merged.safetensors");
        run_ok(&["export", "--run", s(&run), "--format", "merged", "--out", s(&merged)]);
        let plain = parse(&run_ok(&["predict", "--run", s(&run), "--top-k", "4", "--json", s(&images)]));
        let out = run_ok(&[
            "predict",
            "--run",
            s(&run),
            "--merged",
            s(&merged),
            "--top-k",
            "4",
            "--json",
            s(&images),
        ]);
        let merged = parse(&out);
        assert_eq!(plain.len(), 24, "{adapter}");
        for ((p, a), (_, b)) in plain.iter().zip(&merged) {
            let prob = |r: &Vec<(String, f64)>, c: &str| r.iter().find(|x| x.0 == c).unwrap().1;
            for (class, pa) in a {
                assert!((pa - prob(b, class)).abs() < 1e-4, "{adapter}: {p}: {a:?} against {b:?}");
            }
        }
    }
}
