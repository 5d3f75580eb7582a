//! Decoding a split once, in parallel, into one block of uint8 RGB pixels, and the on-disk
//! cache of that block.
//!
//! Why a cache: VTAB-1k trains 500 epochs on 1,000 images and evaluates on up to 74k; decoding
//! and resizing JPEGs dominates a CPU epoch. A split is decoded once into a compact file that
//! later runs memory-map.
//!
//! File layout (little-endian), `<cache>/<task>-<split>-<op>-<path hash>.mlaedec`:
//! ```text
//! 0   magic "MLAEDEC\0"          8   format version u32, reserved u32
//! 16  key: SHA-256 of the list (paths, labels), each image's size and mtime, the transform
//!     and the pixel code version
//! 48  count u64   56 data offset u64   64 data length u64
//! 72  CRC-32 of the pixel data u32     76 CRC-32 of bytes 0..76 and the record table u32
//! 80  count records of (label i64, height u32, width u32, offset u64)
//!     pixel data at the data offset (page-aligned): packed RGB, image after image
//! ```
//! A file whose key differs is stale (sources, list or transform changed); one that fails the
//! length or a checksum is corrupt; both are rebuilt with a log line saying why. Files are
//! written to a temporary name and renamed into place, so readers only ever see complete
//! files, and a file is never modified once renamed (which is what makes the mapping safe).

use crate::error::{DataError, Result};
use crate::split_file::SplitList;
use crate::transform::{DecodeOp, PIXEL_VERSION, decode_rgb};
use memmap2::Mmap;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MLAEDEC\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 80;
const RECORD_LEN: usize = 24;
const ALIGN: usize = 4096;
/// Block size of the parallel checksum.
const CRC_BLOCK: usize = 4 << 20;

/// What happened with the decoded cache when a split was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache directory was given: decoded in memory.
    Disabled,
    /// A valid cache file was memory-mapped; nothing was decoded.
    Hit { path: PathBuf },
    /// No cache file existed: decoded and written.
    Built { path: PathBuf },
    /// A cache file existed but was stale or corrupt (`reason`): decoded and rewritten.
    Rebuilt { path: PathBuf, reason: String },
    /// The cache directory could not be used (`reason`): decoded in memory.
    Unavailable { reason: String },
}

/// Where one image sits in the pixel block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub label: i64,
    pub height: u32,
    pub width: u32,
    pub offset: u64,
}

impl Record {
    fn byte_len(&self) -> usize {
        self.height as usize * self.width as usize * 3
    }
}

enum Bytes {
    Owned(Vec<u8>),
    Mapped { map: Mmap, start: usize, len: usize },
}

/// A decoded split: one block of pixels plus a record per image.
pub(crate) struct Decoded {
    bytes: Bytes,
    pub records: Vec<Record>,
    pub status: CacheStatus,
}

impl Decoded {
    pub(crate) fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }

    /// (height, width, pixels) of image `i`.
    pub(crate) fn image(&self, i: usize) -> (usize, usize, &[u8]) {
        let r = &self.records[i];
        let start = r.offset as usize;
        (r.height as usize, r.width as usize, &self.data()[start..start + r.byte_len()])
    }

    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped { .. })
    }
}

/// Decodes every image of `list` with `op`, through the cache in `cache` when given.
pub(crate) fn decode_split(list: &SplitList, op: DecodeOp, cache: Option<&Path>) -> Result<Decoded> {
    let Some(dir) = cache else {
        return decode_in_memory(list, op, CacheStatus::Disabled);
    };
    let key = fingerprint(list, op)?;
    let path = dir.join(cache_file_name(list, op));
    let previous = if path.exists() {
        match open_cached(&path, &key, list) {
            Ok(decoded) => {
                tracing::debug!("decoded cache hit: {}", path.display());
                return Ok(decoded);
            }
            Err(reason) => {
                tracing::warn!("decoded cache {} is {reason}; rebuilding it", path.display());
                Some(reason)
            }
        }
    } else {
        None
    };
    match write_cache(dir, &path, &key, list, op)? {
        Ok(records) => {
            let status = match previous {
                Some(reason) => CacheStatus::Rebuilt { path: path.clone(), reason },
                None => CacheStatus::Built { path: path.clone() },
            };
            let (bytes, _) = map_file(&path).map_err(|reason| {
                DataError::Invalid(format!(
                    "decoded cache {} was written but cannot be mapped: {reason}",
                    path.display()
                ))
            })?;
            tracing::info!(
                "decoded {} images of {} into {}",
                list.len(),
                list.source.display(),
                path.display()
            );
            Ok(Decoded { bytes, records, status })
        }
        Err(reason) => {
            tracing::warn!(
                "cannot write the decoded cache in {}: {reason}; decoding in memory",
                dir.display()
            );
            decode_in_memory(list, op, CacheStatus::Unavailable { reason })
        }
    }
}

/// Reads and decodes item `i`; errors name the image and the list line.
fn decode_item(list: &SplitList, i: usize, op: DecodeOp) -> Result<(usize, usize, Vec<u8>)> {
    let item = &list.items[i];
    let fail = |message: String| DataError::Image { image: item.path.clone(), at: list.location(i), message };
    let bytes = std::fs::read(&item.path).map_err(|e| {
        fail(if e.kind() == std::io::ErrorKind::NotFound { "file not found".into() } else { e.to_string() })
    })?;
    let img = decode_rgb(&bytes).map_err(fail)?;
    op.apply(&img, || format!("{} (listed at {})", item.path.display(), list.location(i)))
}

/// Decodes the items in chunks (parallel within a chunk, in order across chunks) and hands
/// each image to `sink` in list order. The first failing item, in list order, is the error,
/// so the message does not depend on the thread count.
fn decode_chunks(
    list: &SplitList,
    op: DecodeOp,
    mut sink: impl FnMut(usize, usize, &[u8]) -> std::io::Result<()>,
) -> Result<std::io::Result<()>> {
    let chunk = (rayon::current_num_threads() * 8).max(32);
    let indices: Vec<usize> = (0..list.len()).collect();
    for part in indices.chunks(chunk) {
        let decoded: Vec<Result<(usize, usize, Vec<u8>)>> =
            part.par_iter().map(|&i| decode_item(list, i, op)).collect();
        for result in decoded {
            let (h, w, pixels) = result?;
            if let Err(e) = sink(h, w, &pixels) {
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(()))
}

fn decode_in_memory(list: &SplitList, op: DecodeOp, status: CacheStatus) -> Result<Decoded> {
    let bytes =
        op.fixed_size().map_or(0, |s| s.saturating_mul(s).saturating_mul(3).saturating_mul(list.len()));
    let mut data = crate::alloc::with_capacity(bytes, || {
        format!("the {} decoded images of {}", list.len(), list.source.display())
    })?;
    let mut records = Vec::with_capacity(list.len());
    let mut labels = list.items.iter().map(|i| i.label);
    decode_chunks(list, op, |h, w, pixels| {
        records.push(Record {
            label: labels.next().expect("one label per item"),
            height: h as u32,
            width: w as u32,
            offset: data.len() as u64,
        });
        data.extend_from_slice(pixels);
        Ok(())
    })?
    .expect("writing to memory cannot fail");
    Ok(Decoded { bytes: Bytes::Owned(data), records, status })
}

/// The cache key: everything the pixels depend on.
fn fingerprint(list: &SplitList, op: DecodeOp) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"mlae-decoded");
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(PIXEL_VERSION.to_le_bytes());
    h.update(op.tag().as_bytes());
    h.update((list.len() as u64).to_le_bytes());
    for (i, item) in list.items.iter().enumerate() {
        let meta = std::fs::metadata(&item.path).map_err(|e| DataError::Image {
            image: item.path.clone(),
            at: list.location(i),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "file not found".into()
            } else {
                e.to_string()
            },
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(item.path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(item.label.to_le_bytes());
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok(h.finalize().into())
}

/// `<task>-<split>-<op>-<hash of the list path>.mlaedec`: readable, and distinct for two
/// copies of the same task.
fn cache_file_name(list: &SplitList, op: DecodeOp) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
    };
    let task = list.source.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let source = list.source.canonicalize().unwrap_or_else(|_| list.source.clone());
    let digest = Sha256::digest(source.as_os_str().as_encoded_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{hash}.mlaedec", clean(&task.unwrap_or_default()), clean(&list.name), op.tag())
}

/// Temporary files and folders are created private (0600/0700); what is renamed into the
/// cache gets the usual 0644/0755 so other users and tools can read it.
pub(crate) fn make_world_readable(path: &Path, dir: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(if dir { 0o755 } else { 0o644 }))?;
    }
    #[cfg(not(unix))]
    let _ = (path, dir);
    Ok(())
}

fn crc_parallel(data: &[u8]) -> u32 {
    let parts: Vec<crc32fast::Hasher> = data
        .par_chunks(CRC_BLOCK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .collect();
    let mut total = crc32fast::Hasher::new();
    for p in &parts {
        total.combine(p);
    }
    total.finalize()
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Header and record table, with the metadata checksum filled in.
fn encode_meta(
    key: &[u8; 32],
    records: &[Record],
    data_offset: usize,
    data_len: u64,
    data_crc: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() * RECORD_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data_offset as u64).to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&data_crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // meta CRC, filled in below
    for r in records {
        out.extend_from_slice(&r.label.to_le_bytes());
        out.extend_from_slice(&r.height.to_le_bytes());
        out.extend_from_slice(&r.width.to_le_bytes());
        out.extend_from_slice(&r.offset.to_le_bytes());
    }
    let crc = meta_crc(&out);
    out[76..80].copy_from_slice(&crc.to_le_bytes());
    out
}

fn meta_crc(meta: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&meta[..76]);
    h.update(&meta[HEADER_LEN..]);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the split into a temporary file next to `path` and renames it into place. Outer
/// error: a data problem (a bad image). Inner error: the cache could not be written.
fn write_cache(
    dir: &Path,
    path: &Path,
    key: &[u8; 32],
    list: &SplitList,
    op: DecodeOp,
) -> Result<Result<Vec<Record>, String>> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Ok(Err(e.to_string()));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = match tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)
    {
        Ok(t) => t,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let data_offset = align_up(HEADER_LEN + list.len() * RECORD_LEN, ALIGN);
    let mut records = Vec::with_capacity(list.len());
    let mut crc = crc32fast::Hasher::new();
    let mut written = 0u64;
    {
        let file = tmp.as_file_mut();
        if let Err(e) = file.seek(SeekFrom::Start(data_offset as u64)) {
            return Ok(Err(e.to_string()));
        }
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut labels = list.items.iter().map(|i| i.label);
        let sunk = decode_chunks(list, op, |h, wd, pixels| {
            records.push(Record {
                label: labels.next().expect("one label per item"),
                height: h as u32,
                width: wd as u32,
                offset: written,
            });
            crc.update(pixels);
            written += pixels.len() as u64;
            w.write_all(pixels)
        })?;
        if let Err(e) = sunk.and_then(|_| w.flush()) {
            return Ok(Err(e.to_string()));
        }
    }
    if let Err(e) = make_world_readable(tmp.path(), false) {
        return Ok(Err(e.to_string()));
    }
    let meta = encode_meta(key, &records, data_offset, written, crc.finalize());
    let finish = (|| -> std::io::Result<()> {
        let file = tmp.as_file_mut();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&meta)?;
        file.sync_data()
    })();
    if let Err(e) = finish {
        return Ok(Err(e.to_string()));
    }
    match tmp.persist(path) {
        Ok(_) => Ok(Ok(records)),
        Err(e) => Ok(Err(e.error.to_string())),
    }
}

/// Memory-maps a cache file and returns its pixel block and raw metadata bytes.
fn map_file(path: &Path) -> std::result::Result<(Bytes, Vec<u8>), String> {
    let mut file = File::open(path).map_err(|e| format!("unreadable ({e})"))?;
    let mut head = [0u8; HEADER_LEN];
    file.read_exact(&mut head).map_err(|_| "truncated (shorter than its header)".to_string())?;
    if &head[..8] != MAGIC {
        return Err("not a decoded-image cache file (bad magic)".into());
    }
    let version = u32_at(&head, 8);
    if version != FORMAT_VERSION {
        return Err(format!("in format version {version}, this build reads {FORMAT_VERSION}"));
    }
    let count = u64_at(&head, 48) as usize;
    let data_offset = u64_at(&head, 56) as usize;
    let data_len = u64_at(&head, 64) as usize;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    let table_end = count.checked_mul(RECORD_LEN).and_then(|t| t.checked_add(HEADER_LEN));
    if table_end.is_none_or(|t| t > data_offset) || data_offset.checked_add(data_len) != Some(file_len) {
        return Err(format!(
            "truncated or padded: {file_len} bytes, the header says {}",
            data_offset.saturating_add(data_len)
        ));
    }
    let mut meta = head.to_vec();
    meta.resize(HEADER_LEN + count * RECORD_LEN, 0);
    file.read_exact(&mut meta[HEADER_LEN..]).map_err(|e| e.to_string())?;
    // SAFETY: cache files are written under a temporary name and renamed into place; a file is
    // never modified after the rename (a rebuild renames a new file over the name, leaving
    // this inode intact), so the mapped bytes cannot change under us.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot be mapped ({e})"))?;
    Ok((Bytes::Mapped { map, start: data_offset, len: data_len }, meta))
}

/// Opens and fully validates a cache file; `Err` says why it must be rebuilt.
fn open_cached(path: &Path, key: &[u8; 32], list: &SplitList) -> std::result::Result<Decoded, String> {
    let (bytes, meta) = map_file(path)?;
    if meta[16..48] != key[..] {
        return Err("stale (the list, the images' sizes or mtimes, or the transform changed)".into());
    }
    if u32_at(&meta, 76) != meta_crc(&meta) {
        return Err("corrupt (header checksum mismatch)".into());
    }
    let count = u64_at(&meta, 48) as usize;
    let records: Vec<Record> = meta[HEADER_LEN..]
        .chunks_exact(RECORD_LEN)
        .map(|r| Record {
            label: i64::from_le_bytes(r[0..8].try_into().expect("8 bytes")),
            height: u32_at(r, 8),
            width: u32_at(r, 12),
            offset: u64_at(r, 16),
        })
        .collect();
    let Bytes::Mapped { len, .. } = &bytes else { unreachable!("map_file maps") };
    let mut expected_offset = 0u64;
    for (r, item) in records.iter().zip(&list.items) {
        if r.offset != expected_offset || r.label != item.label {
            return Err("corrupt (record table inconsistent)".into());
        }
        expected_offset += r.byte_len() as u64;
    }
    if count != list.len() || expected_offset != *len as u64 {
        return Err("corrupt (record table does not cover the pixel data)".into());
    }
    let decoded = Decoded { bytes, records, status: CacheStatus::Hit { path: path.to_path_buf() } };
    if crc_parallel(decoded.data()) != u32_at(&meta, 72) {
        return Err("corrupt (pixel data checksum mismatch)".into());
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_crc_equals_the_sequential_one() {
        let data: Vec<u8> = (0..(CRC_BLOCK * 2 + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(crc_parallel(&data), crc32fast::hash(&data));
        assert_eq!(crc_parallel(&[]), crc32fast::hash(&[]));
    }

    #[test]
    fn metadata_round_trips_and_its_checksum_covers_the_table() {
        let records = vec![
            Record { label: 3, height: 2, width: 5, offset: 0 },
            Record { label: -1, height: 4, width: 4, offset: 30 },
        ];
        let meta = encode_meta(&[7; 32], &records, 4096, 78, 0xdead_beef);
        assert_eq!(meta.len(), HEADER_LEN + 2 * RECORD_LEN);
        assert_eq!(u32_at(&meta, 76), meta_crc(&meta));
        assert_eq!((u64_at(&meta, 48), u64_at(&meta, 56), u64_at(&meta, 64)), (2, 4096, 78));
        let mut flipped = meta.clone();
        flipped[HEADER_LEN + 24] ^= 1;
        assert_ne!(u32_at(&flipped, 76), meta_crc(&flipped));
    }
}
