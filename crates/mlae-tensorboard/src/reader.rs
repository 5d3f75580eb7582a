//! Reading a log directory's scalars back as TensorBoard shows them, for tests and tools that
//! check what a run logged without Python: every event file in name order (TensorBoard's
//! order), every record's checksums verified, and TensorBoard's restart rule applied: a
//! `SessionLog` START at step `s` drops the points already read with a step `>= s` (the
//! orphans of a process that died past its last checkpoint).

use crate::proto::{Event, SESSION_START, What};
use crate::record::masked_crc32c;
use crate::{Result, TensorboardError};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// Each scalar tag's points, `(step, value)`, in the order TensorBoard keeps them.
pub type Scalars = BTreeMap<String, Vec<(i64, f32)>>;

/// The scalars of the log directory `dir` (its `*tfevents*` files), after restarts' purges.
pub fn read_scalars(dir: &Path) -> Result<Scalars> {
    let read_err =
        |path: &Path, message: String| TensorboardError::Read { path: path.to_path_buf(), message };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("tfevents")))
        .collect();
    files.sort();
    let mut out = Scalars::new();
    for path in &files {
        let bytes = std::fs::read(path).map_err(|e| read_err(path, e.to_string()))?;
        for event in events(&bytes).map_err(|m| read_err(path, m))? {
            match event.what {
                Some(What::SessionLog(log)) if log.status == SESSION_START => {
                    for points in out.values_mut() {
                        points.retain(|&(step, _)| step < event.step);
                    }
                }
                Some(What::Summary(summary)) => {
                    for v in summary.value {
                        if let Some(x) = v.simple_value {
                            out.entry(v.tag).or_default().push((event.step, x));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The events of one file's bytes; a record cut short at the end (a writer killed mid-write)
/// ends the file, as TensorBoard reads it, and a checksum that does not match is an error.
pub(crate) fn events(bytes: &[u8]) -> std::result::Result<Vec<Event>, String> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while rest.len() >= 12 {
        let (len_bytes, crc) = (&rest[..8], u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")));
        if crc != masked_crc32c(len_bytes) {
            return Err(format!("record {}: the length's checksum does not match", out.len()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        if rest.len() < 16 + len {
            break;
        }
        let data = &rest[12..12 + len];
        let crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        if crc != masked_crc32c(data) {
            return Err(format!("record {}: the data's checksum does not match", out.len()));
        }
        out.push(Event::decode(data).map_err(|e| format!("record {}: {e}", out.len()))?);
        rest = &rest[16 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventWriter;

    #[test]
    fn a_session_start_drops_the_points_at_and_after_its_step() {
        let tmp = tempfile::tempdir().unwrap();
        {
            // the killed process: steps 1..=5 logged, its last checkpoint was at step 3
            let mut w = EventWriter::create(tmp.path()).unwrap();
            for step in 1..=5 {
                w.add_scalar("loss", step as f64, step).unwrap();
            }
            w.add_scalar("epoch/acc", 0.5, 3).unwrap();
            w.add_scalar("epoch/acc", 0.7, 5).unwrap();
        }
        {
            // the resumed one starts again after step 3
            let mut w = EventWriter::create(tmp.path()).unwrap();
            w.add_session_start(4).unwrap();
            for step in 4..=6 {
                w.add_scalar("loss", 10.0 + step as f64, step).unwrap();
            }
            w.add_scalar("epoch/acc", 0.8, 6).unwrap();
        }
        let s = read_scalars(tmp.path()).unwrap();
        assert_eq!(s["loss"], [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0)]);
        assert_eq!(s["epoch/acc"], [(3, 0.5), (6, 0.8)]);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file_and_a_cut_one_ends_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = {
            let mut w = EventWriter::create(tmp.path()).unwrap();
            w.add_scalar("x", 1.0, 1).unwrap();
            w.add_scalar("x", 2.0, 2).unwrap();
            w.path().to_path_buf()
        };
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(read_scalars(tmp.path()).unwrap()["x"], [(1, 1.0)]);
        let mut bad = bytes.clone();
        let last = bad.len() - 8;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = read_scalars(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("checksum"), "{err}");
    }
}
