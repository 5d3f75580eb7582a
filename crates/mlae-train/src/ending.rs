//! However a run ends, its `status.json` says how. The loop writes `finished`, `interrupted`
//! or `paused` itself; anything else that stops it (a failed write such as a full disk, an
//! error while resuming, a panic inside libtorch's bindings) would leave the `running` it
//! wrote at the start, and a stopped run would look alive. [`settle`] runs the body of a run
//! and, when it ends in an error or a panic while the status still says `running`, rewrites
//! it as `failed` with the message. (A process killed outright cannot write anything; its
//! lock dies with it, and the sweep reports such a run as interrupted.)

use crate::error::{Result, TrainError};
use crate::rundir::{RunLayout, RunState, Status};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `body` (the part of a run done under the run directory's lock) and records a failure
/// it ends with. A panic becomes [`TrainError::Panicked`], so the caller reports it like any
/// other error (the panic hook has already printed where it happened).
pub fn settle<T>(layout: &RunLayout, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(TrainError::Panicked(panic_text(payload.as_ref()))),
    };
    if let Err(e) = &result {
        mark_failed(layout, &e.to_string());
    }
    result
}

/// Rewrites a `running` status as `failed` with `message`, keeping its step and epoch. Other
/// states were written on purpose by the loop and stay. The lock is held by this process, so
/// a `running` status here is this process's own.
pub fn mark_failed(layout: &RunLayout, message: &str) {
    rewrite_running(layout, RunState::Failed, message);
}

/// Rewrites a `running` status as `interrupted` with `message`: for a process about to exit
/// on a second Ctrl-C / SIGTERM without a checkpoint (a resume goes on from the last one).
pub fn mark_stopped(layout: &RunLayout, message: &str) {
    rewrite_running(layout, RunState::Interrupted, message);
}

fn rewrite_running(layout: &RunLayout, state: RunState, message: &str) {
    let Ok(Some(status)) = layout.read_status() else { return };
    if status.state != RunState::Running {
        return;
    }
    let ended = Status { state, message: Some(message.to_string()), ..status };
    let text = serde_json::to_string_pretty(&ended).expect("a status serialises");
    if let Err(e) = crate::rundir::write_file(&layout.status(), text.as_bytes()) {
        tracing::error!("could not record the failure in {}: {e}", layout.status().display());
    }
}

/// The message a panic was raised with.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_with(state: RunState) -> (tempfile::TempDir, RunLayout) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = RunLayout::new(tmp.path());
        let status = Status { state, step: 7, epoch: 1, message: None };
        std::fs::write(layout.status(), serde_json::to_string_pretty(&status).unwrap()).unwrap();
        (tmp, layout)
    }

    #[test]
    fn an_error_or_a_panic_turns_running_into_failed_with_the_message() {
        let (_tmp, layout) = layout_with(RunState::Running);
        let err = settle::<()>(&layout, || Err(TrainError::Invalid("the disk is full".into()))).unwrap_err();
        assert_eq!(err.to_string(), "config: the disk is full");
        let s = layout.read_status().unwrap().unwrap();
        assert_eq!((s.state, s.step, s.epoch), (RunState::Failed, 7, 1));
        assert_eq!(s.message.as_deref(), Some("config: the disk is full"));

        let (_tmp, layout) = layout_with(RunState::Running);
        let err = settle::<()>(&layout, || panic!("index {} out of range", 3)).unwrap_err();
        assert!(matches!(err, TrainError::Panicked(_)), "{err}");
        let s = layout.read_status().unwrap().unwrap();
        assert_eq!(s.state, RunState::Failed);
        assert!(s.message.unwrap().contains("index 3 out of range"));
    }

    #[test]
    fn states_the_loop_wrote_on_purpose_stay() {
        for state in [RunState::Interrupted, RunState::Paused, RunState::Failed, RunState::Finished] {
            let (_tmp, layout) = layout_with(state);
            let _ = settle::<()>(&layout, || Err(TrainError::Invalid("x".into())));
            let s = layout.read_status().unwrap().unwrap();
            assert_eq!((s.state, s.message), (state, None));
        }
        // success leaves the status alone, and so does a directory without one
        let (_tmp, layout) = layout_with(RunState::Running);
        settle(&layout, || Ok(())).unwrap();
        assert_eq!(layout.read_status().unwrap().unwrap().state, RunState::Running);
        let tmp = tempfile::tempdir().unwrap();
        let _ = settle::<()>(&RunLayout::new(tmp.path()), || Err(TrainError::Invalid("x".into())));
        assert!(!RunLayout::new(tmp.path()).status().exists());
    }
}
