//! The "fine-tune on your own images" walk-through (docs/own-images.md) on a generated image
//! folder: `data check` names a corrupt file, `finetune` trains on the tree with a held-out
//! split, `predict` names classes on a folder of new images, and the exports carry the labels.

use crate::support::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const CLASSES: [&str; 3] = ["cat", "dog", "golden retriever"];

/// A 20 x 16 photo of class `c`: a bright band whose place the class picks, noise from `i`.
fn photo(c: usize, i: usize) -> image::RgbImage {
    image::RgbImage::from_fn(20, 16, |x, y| {
        let band = (x as usize * 3 / 20) == c;
        let v = if band { 210 } else { 50 } + ((x * 7 + y * 3 + i as u32 * 11) % 23) as u8;
        image::Rgb([v, (v as usize / 2 + 40 * c) as u8, 255 - v])
    })
}

#[test]
fn a_folder_of_photos_trains_predicts_and_exports_with_its_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let train = photos.join("pets/train");
    for (c, name) in CLASSES.iter().enumerate() {
        for i in 0..12 {
            // images at any depth under the class folder, JPEG and PNG
            let path = if i % 4 == 0 {
                train.join(name).join("nested").join(format!("{i}.jpg"))
            } else {
                train.join(name).join(format!("{i}.png"))
            };
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            photo(c, i).save(&path).unwrap();
        }
    }
    let corrupt = train.join("dog/broken.jpg");
    std::fs::write(&corrupt, b"\xFF\xD8\xFF\xE0 cut short").unwrap();

    // 1. data check names the corrupt file and fails; removed, the tree passes.
    let (code, stdout, stderr) =
        cli_run(&["data", "check", "--benchmark", "folder", "--root", s(&photos), "--task", "pets"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("broken.jpg"), "the corrupt file is named:\n{stdout}");
    std::fs::remove_file(&corrupt).unwrap();
    run_ok(&["data", "check", "--benchmark", "folder", "--root", s(&photos), "--task", "pets"]);

    // 2. finetune: the tiny config, pointed at the folder, with val and test held out of train.
    let cfg = write_config(tmp.path(), "kind = \"lora\"\n[adapter.lora]\nrank = 2", 2);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("benchmark = \"vtab\"", "benchmark = \"folder\"")
        .replace("task = \"kitti\"", "task = \"pets\"")
        .replace(
            &format!("root = \"{}\"", tmp.path().join("data").display()),
            &format!("root = \"{}\"", photos.display()),
        )
        .replace("[train]", "split = { val = 0.25, test = 0.25, seed = 0 }\nprotocol = \"val\"\n\n[train]");
    std::fs::write(&cfg, text).unwrap();
    let stdout = run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    assert!(stdout.contains("test accuracy: "), "{stdout}");
    let run = tmp.path().join("runs/run");
    let classes = std::fs::read_to_string(run.join("data/classes.txt")).unwrap();
    assert_eq!(classes, "cat\ndog\ngolden retriever\n");
    // The held-out files are recorded: 3 of each class's 12 in val and in test, 6 in train.
    for (split, n) in [("train", 18), ("val", 9), ("test", 9)] {
        let list = std::fs::read_to_string(run.join(format!("data/{split}.txt"))).unwrap();
        assert_eq!(list.lines().count(), n, "{split}:\n{list}");
    }
    let per_class = std::fs::read_to_string(run.join("results/test/per_class.csv")).unwrap();
    assert!(per_class.contains("\ngolden retriever,3,"), "{per_class}");
    assert!(run.join("results/test/confusion.png").is_file());

    // 3. predict on a folder of new photos: class names and probabilities.
    let new = tmp.path().join("new-photos");
    std::fs::create_dir_all(new.join("more")).unwrap();
    photo(0, 100).save(new.join("a.png")).unwrap();
    photo(2, 101).save(new.join("more/b.jpg")).unwrap();
    let out = run_ok(&["predict", "--run", s(&run), "--top-k", "2", s(&new)]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, file) in lines.iter().zip(["a.png", "more/b.jpg"]) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[0], new.join(file).display().to_string());
        assert_eq!(fields.len(), 3, "{line}");
        for f in &fields[1..] {
            let (name, p) = f.rsplit_once(' ').unwrap();
            assert!(CLASSES.contains(&name), "{line}");
            assert!((0.0..=1.0).contains(&p.parse::<f64>().unwrap()), "{line}");
        }
    }

    // 4. exports say which labels the head predicts.
    let peft = tmp.path().join("pets-peft");
    run_ok(&["export", "--run", s(&run), "--format", "peft", "--out", s(&peft)]);
    let labels = json(&peft.join("labels.json"));
    assert_eq!(labels["id2label"]["2"], "golden retriever");
    assert_eq!(labels["label2id"]["dog"], 1);
    assert_eq!(labels["num_labels"], 3);
    let merged = tmp.path().join("pets.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "merged", "--out", s(&merged)]);
    let meta = safetensors_metadata(&merged);
    assert_eq!(meta["labels"], r#"["cat","dog","golden retriever"]"#);
    let merged_out = run_ok(&["predict", "--run", s(&run), "--merged", s(&merged), "--top-k", "2", s(&new)]);
    let top = |o: &str| {
        o.lines()
            .map(|l| l.split('\t').nth(1).unwrap().rsplit_once(' ').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(top(&merged_out), top(&out), "the merged model predicts the same classes");
}

/// The `__metadata__` of a safetensors file (its JSON header).
fn safetensors_metadata(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].as_object().unwrap().clone()
}
