#[path = "../../build-support/torch_link.rs"]
mod torch_link;

fn main() {
    // The launcher binary `mlae-cli` must not link libtorch, so only the engine and the tests
    // get the libtorch link arguments.
    torch_link::emit(torch_link::Targets::Bins(&["mlae-engine"]));

    // The tch version for `mlae-cli doctor`, from the lock file that pinned it.
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    if let Ok(text) = std::fs::read_to_string(&lock) {
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line == "name = \"tch\"" {
                if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                    println!("cargo:rustc-env=MLAE_TCH_VERSION={}", v.trim_end_matches('"'));
                }
                break;
            }
        }
    }
}
