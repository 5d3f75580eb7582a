//! The command line itself: help text and how errors are printed.

use crate::support::*;

#[test]
fn help_names_the_command_users_type() {
    for args in [&["--help"][..], &["finetune", "--help"][..]] {
        let stdout = run_ok(args);
        assert!(stdout.contains("Usage: mlae-cli"), "mlae-cli {args:?}:\n{stdout}");
        assert!(!stdout.contains("mlae-engine"), "mlae-cli {args:?}:\n{stdout}");
    }
    let (code, _, stderr) = cli_run(&["no-such-command"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage: mlae-cli") && !stderr.contains("mlae-engine"), "{stderr}");
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-config.toml");
    let words = std::io::Error::from_raw_os_error(2).to_string();
    let (code, _, stderr) = cli_run(&["finetune", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("{}: {words}", missing.display())), "{stderr}");
    assert_eq!(stderr.matches(&words).count(), 1, "the OS's words are repeated: {stderr}");
    // The same through mlae-train's error (a run directory without its config).
    let (code, _, stderr) = cli_run(&["eval", "--run", tmp.path().join("no-such-run").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(stderr.matches(&words).count(), 1, "the OS's words are repeated: {stderr}");
}
