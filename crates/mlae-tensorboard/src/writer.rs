//! [`EventWriter`]: one event file, scalars appended to it.

use crate::proto::{Event, SESSION_START, SessionLog, Summary, SummaryValue, What};
use crate::record::frame;
use crate::{Result, TensorboardError};
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What the first record of every file declares; TensorBoard reads files of this version.
const FILE_VERSION: &str = "brain.Event:2";

/// Counts the files this process created, for unique names (see [`EventWriter::create`]).
static FILES_CREATED: AtomicU64 = AtomicU64::new(0);

/// Writes scalars into a new TensorBoard event file in a log directory.
///
/// Records are buffered: TensorBoard sees them after [`flush`](Self::flush) (call it where a
/// live view should catch up, e.g. after each evaluation) or when the writer is dropped.
/// Values are stored as `f32`, the only precision TensorBoard's scalar records have.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` (and its parents) if needed and a new event file in it,
    /// `events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>`, `n` counting the files this
    /// process created: two writers never share a file, whether in one process or in several,
    /// and never reopen an old one (the file is created with `create_new`). The seconds and `n`
    /// are zero-padded so that names sort in creation order, the order TensorBoard reads a
    /// directory's files in.
    ///
    /// Resuming a run means creating a new writer on the same directory: TensorBoard merges all
    /// the event files of a directory into one run.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|source| TensorboardError::CreateDir { path: dir.to_path_buf(), source })?;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let host = hostname();
        let pid = std::process::id();
        loop {
            let n = FILES_CREATED.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n:04}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    tracing::debug!(path = %path.display(), "TensorBoard event file created");
                    let mut writer = EventWriter { path, out: BufWriter::new(file) };
                    writer.write_event(&Event {
                        wall_time: now(),
                        step: 0,
                        what: Some(What::FileVersion(FILE_VERSION.to_string())),
                    })?;
                    // the file is a valid (empty) log from the start
                    writer.flush()?;
                    return Ok(writer);
                }
                // another process with a recycled pid, in the same second: take the next name
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(TensorboardError::CreateFile { path, source }),
            }
        }
    }

    /// The event file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the scalar `tag` = `value` at `step`, stamped with the current time.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: u64) -> Result<()> {
        self.add_scalar_at(tag, value, step, now())
    }

    /// Appends the scalar `tag` = `value` at `step`, stamped `wall_time` (seconds since the Unix
    /// epoch): for values logged after the fact, e.g. replayed from a metrics file.
    ///
    /// Steps above `i64::MAX` (the format's type) are stored as `i64::MAX`.
    pub fn add_scalar_at(&mut self, tag: &str, value: f64, step: u64, wall_time: f64) -> Result<()> {
        self.write_event(&Event {
            wall_time,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue { tag: tag.to_string(), simple_value: Some(value as f32) }],
            })),
        })
    }

    /// Marks a restart at `step` (a `SessionLog` START event): TensorBoard then drops every
    /// point with a step at or after `step` that it read before this event. A run resumed from a
    /// checkpoint writes it at its first step, so the points the killed process logged past
    /// its last checkpoint, which the resumed run logs again, appear once.
    pub fn add_session_start(&mut self, step: u64) -> Result<()> {
        self.write_event(&Event {
            wall_time: now(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(What::SessionLog(SessionLog { status: SESSION_START })),
        })
    }

    /// Writes the buffered records to the file (no `fsync`: the OS writes them out on its own;
    /// what matters here is that TensorBoard, reading the file, sees them).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| TensorboardError::Write { path: self.path.clone(), source })
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        self.out
            .write_all(&frame(&event.encode_to_vec()))
            .map_err(|source| TensorboardError::Write { path: self.path.clone(), source })
    }
}

impl Drop for EventWriter {
    /// Flushes what is buffered; a failure can only be logged here.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("{e}");
        }
    }
}

/// Seconds since the Unix epoch, as event files stamp them.
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The host's name for the file name (`$HOSTNAME`, else `/etc/hostname`, else `localhost`),
/// reduced to characters safe in a file name.
fn hostname() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().filter(|h| !h.trim().is_empty()))
        .unwrap_or_else(|| "localhost".to_string());
    name.trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::masked_crc32c;

    /// Reads an event file back: checks the length and data CRCs of every record and decodes
    /// the events.
    fn read_events(path: &Path) -> Vec<Event> {
        let bytes = std::fs::read(path).unwrap();
        let mut rest = &bytes[..];
        let mut events = Vec::new();
        while !rest.is_empty() {
            assert!(rest.len() >= 12, "truncated header");
            let (len_bytes, crc) = (&rest[..8], u32::from_le_bytes(rest[8..12].try_into().unwrap()));
            assert_eq!(crc, masked_crc32c(len_bytes), "length CRC");
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert!(rest.len() >= 12 + len + 4, "truncated record");
            let data = &rest[12..12 + len];
            let crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data), "data CRC");
            events.push(Event::decode(data).unwrap());
            rest = &rest[16 + len..];
        }
        events
    }

    fn scalar(e: &Event) -> (&str, f32, i64) {
        match &e.what {
            Some(What::Summary(s)) => {
                assert_eq!(s.value.len(), 1);
                (&s.value[0].tag, s.value[0].simple_value.expect("simple_value set"), e.step)
            }
            other => panic!("not a summary: {other:?}"),
        }
    }

    #[test]
    fn written_file_parses_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run").join("tb");
        let before = now();
        let path = {
            let mut w = EventWriter::create(&dir).unwrap();
            w.add_scalar("train/loss", 2.5, 0).unwrap();
            w.add_scalar("train/loss", 0.0, 1).unwrap();
            w.add_scalar("eval/acc", 0.1, 1).unwrap();
            w.add_scalar_at("lr", 1e-3, 7, 1_700_000_000.25).unwrap();
            w.add_scalar("huge_step", -1.0, u64::MAX).unwrap();
            w.path().to_path_buf()
        }; // dropped: flushed
        assert_eq!(path.parent().unwrap(), dir);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");

        let events = read_events(&path);
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())));
        let got: Vec<_> = events[1..].iter().map(scalar).collect();
        assert_eq!(
            got,
            [
                ("train/loss", 2.5, 0),
                ("train/loss", 0.0, 1),
                ("eval/acc", 0.1f64 as f32, 1),
                ("lr", 1e-3f64 as f32, 7),
                ("huge_step", -1.0, i64::MAX),
            ]
        );
        assert_eq!(events[4].wall_time, 1_700_000_000.25);
        for e in [&events[0], &events[1], &events[5]] {
            assert!(e.wall_time >= before && e.wall_time <= now(), "{}", e.wall_time);
        }
    }

    #[test]
    fn a_session_start_encodes_as_tensorboards_own_message() {
        // tensorboard's event_pb2: Event(wall_time=1.5, step=4,
        //   session_log=SessionLog(status=START)).SerializeToString()
        let want = [0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0x10, 0x04, 0x3a, 0x02, 0x08, 0x01];
        let event = Event {
            wall_time: 1.5,
            step: 4,
            what: Some(What::SessionLog(SessionLog { status: SESSION_START })),
        };
        assert_eq!(event.encode_to_vec(), want);
    }

    #[test]
    fn flush_makes_records_visible_and_the_version_is_there_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(tmp.path()).unwrap();
        assert_eq!(read_events(w.path()).len(), 1);
        w.add_scalar("x", 1.0, 3).unwrap();
        w.flush().unwrap();
        let events = read_events(w.path());
        assert_eq!(scalar(&events[1]), ("x", 1.0, 3));
    }

    #[test]
    fn writers_in_one_directory_get_their_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = EventWriter::create(tmp.path()).unwrap();
        let mut b = EventWriter::create(tmp.path()).unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path() < b.path(), "names sort in creation order");
        a.add_scalar("a", 1.0, 1).unwrap();
        b.add_scalar("b", 2.0, 1).unwrap();
        a.flush().unwrap();
        b.flush().unwrap();
        assert_eq!(scalar(&read_events(a.path())[1]), ("a", 1.0, 1));
        assert_eq!(scalar(&read_events(b.path())[1]), ("b", 2.0, 1));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = EventWriter::create(&file.join("tb")).unwrap_err();
        assert!(matches!(e, TensorboardError::CreateDir { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&file.join("tb").display().to_string()), "{msg}");
    }

    #[test]
    fn hostname_is_safe_in_a_file_name() {
        let h = hostname();
        assert!(!h.is_empty());
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{h}");
    }
}
