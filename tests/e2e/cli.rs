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
