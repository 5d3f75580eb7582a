use std::process::Command;

#[test]
fn doctor_reports_the_libtorch_and_device() {
    let out = Command::new(env!("CARGO_BIN_EXE_mlae-cli")).arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("libtorch          : 2.11.0"), "{stdout}");
    assert!(stdout.contains("CUDA available"), "{stdout}");
    assert!(stdout.contains("libtorch CUDA     : "), "{stdout}");
    assert!(stdout.contains("NVIDIA driver     : "), "{stdout}");
    if stdout.contains("CUDA available    : no") {
        assert!(stdout.contains("why no CUDA       : "), "{stdout}");
    }
}

#[test]
fn doctor_json_is_valid_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_mlae-cli")).args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["libtorch_version"].as_str().unwrap().starts_with("2.11.0"));
    assert!(v["torch_threads"].as_i64().unwrap() >= 1);
    // The CUDA stack is reported whether or not libtorch sees a device.
    let libtorch_cuda = v["libtorch_cuda"].as_bool().unwrap();
    assert_eq!(v["cuda_built"].is_string(), libtorch_cuda, "{v:#}");
    if libtorch_cuda {
        let built = v["cuda_built"].as_str().unwrap();
        assert!(built.split('.').all(|p| p.parse::<u32>().is_ok()), "{built}");
    }
    assert!(v["driver"].is_string(), "{v:#}");
    // "No CUDA" always comes with its cause.
    if v["cuda"] == false {
        let why = v["cuda_problem"].as_str().unwrap();
        let causes =
            ["CPU-only libtorch", "no working NVIDIA driver", "NVIDIA driver too old", "no GPU visible"];
        assert!(
            causes.iter().any(|c| why.starts_with(c)) || why.starts_with("libtorch sees no CUDA"),
            "{why}"
        );
        if !libtorch_cuda {
            assert!(why.starts_with("CPU-only libtorch"), "{why}");
        }
    } else {
        assert!(v["cuda_problem"].is_null(), "{v:#}");
    }
}

#[test]
fn launcher_explains_a_missing_libtorch() {
    // An LD_LIBRARY_PATH entry without libtorch does not hide the rpath, so point the
    // launcher at a copy of itself whose engine cannot find libtorch: simulate by running it
    // from a directory where the engine is missing.
    let dir = tempfile::tempdir().unwrap();
    let launcher = dir.path().join("mlae-cli");
    std::fs::copy(env!("CARGO_BIN_EXE_mlae-cli"), &launcher).unwrap();
    let out = Command::new(&launcher).arg("doctor").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("engine binary"), "{stderr}");
}
