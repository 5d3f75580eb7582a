// Shared by the build scripts of every package whose binaries or tests link libtorch
// (included with `#[path]`, so there is one copy of the logic and no extra crate).
//
// Why: torch-sys links libtorch but leaves finding it at run time to the user
// (LD_LIBRARY_PATH). We bake an rpath to the libtorch the build used, and keep
// libtorch_cuda in the NEEDED list (`--no-as-needed`) so that CUDA is detected on a GPU
// machine even though no Rust code references a libtorch_cuda symbol directly.

use std::path::PathBuf;

/// Which targets of the package get the link arguments.
#[allow(dead_code)]
pub enum Targets<'a> {
    /// Every target of the package (library crates: their tests, benches and examples).
    All,
    /// Only the named binaries plus the integration tests (used where one binary must stay
    /// free of libtorch; cargo rejects `-benches` for a package without bench targets).
    Bins(&'a [&'a str]),
}

pub fn emit(targets: Targets<'_>) {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; binaries will need LD_LIBRARY_PATH");
        return;
    };
    let dir = PathBuf::from(dir);
    let dir = dir.canonicalize().unwrap_or(dir);
    println!("cargo:rustc-env=MLAE_LIBTORCH_LIB={}", dir.display());

    let mut args = vec![format!("-Wl,-rpath,{}", dir.display()), "-Wl,--no-as-needed".to_string()];
    if dir.join("libtorch_cuda.so").exists() {
        args.push("-ltorch_cuda".to_string());
    }
    args.push("-ltorch".to_string());
    args.push("-Wl,--as-needed".to_string());

    if let Targets::Bins(_) = targets {
        // The rpath alone for every target, the library's unit tests included (cargo has no
        // link-arg key for them, and they link libtorch through tch): it adds no library, so
        // a binary that must stay free of libtorch still needs none.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    for arg in &args {
        match &targets {
            Targets::All => println!("cargo:rustc-link-arg={arg}"),
            Targets::Bins(bins) => {
                for bin in *bins {
                    println!("cargo:rustc-link-arg-bin={bin}={arg}");
                }
                println!("cargo:rustc-link-arg-tests={arg}");
            }
        }
    }
}
