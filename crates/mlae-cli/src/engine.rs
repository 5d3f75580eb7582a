//! The real `mlae-cli` program, started by the `mlae-cli` launcher once libtorch is known to
//! be loadable. Running it directly works too.

fn main() -> std::process::ExitCode {
    mlae_cli::main_entry()
}
