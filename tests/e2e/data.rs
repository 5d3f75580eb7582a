use std::path::Path;
use std::process::Command;

/// A 2x2 grey PNG (made by Pillow), so the test needs no image encoder.
const PNG_2X2: [u8; 71] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 2, 0, 0, 0, 2, 8, 0, 0, 0, 0, 87,
    221, 82, 248, 0, 0, 0, 14, 73, 68, 65, 84, 120, 218, 99, 108, 96, 96, 98, 96, 0, 0, 2, 146, 0, 132, 234,
    20, 237, 46, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

fn data_check(args: &[&str], root: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlae-cli"))
        .args(["data", "check"])
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn data_check_passes_a_clean_tree_and_fails_a_broken_one() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("mine");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("a.png"), PNG_2X2).unwrap();
    std::fs::write(task.join("b.png"), &PNG_2X2[..40]).unwrap();
    std::fs::write(task.join("train.txt"), "a.png 0\na.png 1\n").unwrap();
    let (ok, text) = data_check(&["--benchmark", "list", "--task", "mine"], tmp.path());
    assert!(ok, "{text}");
    assert!(text.contains("all 1 task(s) ok"), "{text}");

    std::fs::write(task.join("val.txt"), "b.png 0\nc.png 1\nd.png\n").unwrap();
    let (ok, text) = data_check(&["--benchmark", "list"], tmp.path());
    assert!(!ok, "{text}");
    for needle in ["val.txt:1: unreadable image", "val.txt:2: missing image", "val.txt:3:", "no label"] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }

    let (ok, text) = data_check(&["--benchmark", "vtab", "--task", "dtd"], tmp.path());
    assert!(!ok && text.contains("missing task folder"), "{text}");
}
