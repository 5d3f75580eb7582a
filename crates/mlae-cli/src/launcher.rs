//! `mlae-cli`: a small launcher that links no libtorch.
//!
//! Why a launcher: a binary linked against libtorch cannot print anything when libtorch is
//! missing (the dynamic loader fails before `main`). This program checks that libtorch can be
//! found, says clearly what to do when it cannot, and otherwise replaces itself with
//! `mlae-engine`, the real program, passing every argument through unchanged.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Exit status when libtorch cannot be found or loaded.
const EXIT_NO_LIBTORCH: u8 = 3;

/// The libtorch lib directory the engine was linked against (its rpath), set by build.rs.
const LINKED_DIR: Option<&str> = option_env!("MLAE_LIBTORCH_LIB");

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let engine = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("mlae-engine"),
        Err(e) => {
            eprintln!("mlae-cli: cannot locate this executable: {e}");
            return ExitCode::from(1);
        }
    };
    if !engine.is_file() {
        eprintln!(
            "mlae-cli: the engine binary {} is missing; build both with `cargo build --release -p mlae-cli`",
            engine.display()
        );
        return ExitCode::from(1);
    }
    let doctor = args.first().is_some_and(|a| a == "doctor");
    if let Err(msg) = check_libtorch(doctor) {
        eprintln!("mlae-cli: libtorch cannot be loaded: {msg}");
        eprintln!(
            "  fix: run `cargo xtask setup` in the project (it installs torch==2.11.0 into .venv) and rebuild,\n  \
             or set LD_LIBRARY_PATH to the `lib` directory of a libtorch 2.11.0."
        );
        return ExitCode::from(EXIT_NO_LIBTORCH);
    }
    let err = Command::new(&engine).args(&args).exec();
    eprintln!("mlae-cli: cannot start {}: {err}", engine.display());
    ExitCode::from(1)
}

/// Finds the libtorch the dynamic loader will use (LD_LIBRARY_PATH first, then the rpath).
/// For `doctor`, also loads it, so that a broken install (a missing CUDA runtime, say) is
/// reported here with the loader's own words.
fn check_libtorch(load: bool) -> Result<(), String> {
    let mut searched: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if let Some(dir) = LINKED_DIR {
        searched.push(PathBuf::from(dir));
    }
    let dir = find_libtorch(&searched)?;
    if load {
        load_check(dir)?;
    }
    Ok(())
}

/// The first directory holding `libtorch_cpu.so`, in the loader's search order.
fn find_libtorch(searched: &[PathBuf]) -> Result<&Path, String> {
    searched.iter().map(PathBuf::as_path).find(|d| d.join("libtorch_cpu.so").is_file()).ok_or_else(|| {
        if searched.is_empty() {
            "this build has no libtorch rpath and LD_LIBRARY_PATH is empty".to_string()
        } else {
            let list: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
            format!("libtorch_cpu.so is not in {}", list.join(", "))
        }
    })
}

fn load_check(dir: &Path) -> Result<(), String> {
    for name in ["libc10.so", "libtorch_cpu.so", "libtorch.so"] {
        let path = dir.join(name);
        // SAFETY: loading libtorch runs its static initialisers, which is what the engine
        // will do anyway; we only check that the load succeeds and then drop the handle.
        unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_libtorch_names_every_directory_searched() {
        let a = std::env::temp_dir().join("mlae-no-libtorch-a");
        let b = std::env::temp_dir().join("mlae-no-libtorch-b");
        let err = find_libtorch(&[a.clone(), b.clone()]).unwrap_err();
        assert!(err.contains(&a.display().to_string()) && err.contains(&b.display().to_string()), "{err}");
        assert!(find_libtorch(&[]).unwrap_err().contains("no libtorch rpath"));
    }

    #[test]
    fn finds_libtorch_in_search_order() {
        let root = std::env::temp_dir().join(format!("mlae-launcher-{}", std::process::id()));
        let (first, second) = (root.join("first"), root.join("second"));
        for d in [&first, &second] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("libtorch_cpu.so"), b"").unwrap();
        }
        let searched = [root.join("missing"), second.clone(), first.clone()];
        assert_eq!(find_libtorch(&searched).unwrap(), second.as_path());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
