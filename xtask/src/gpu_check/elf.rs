//! What a packed binary needs from the machine it runs on, read from its ELF file: the shared
//! libraries it names (`DT_NEEDED`) and the newest glibc symbol version it asks for
//! (`.gnu.version_r`). Read here rather than through `readelf` so that packing needs no
//! binutils beyond `strip` and the answer does not depend on their output format.

use anyhow::{Context, Result, bail};
use std::path::Path;

const SHT_DYNAMIC: u32 = 6;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const DT_NEEDED: u64 = 1;

/// The needs of one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Shared libraries named in the dynamic section, in order.
    pub needed: Vec<String>,
    /// The newest `GLIBC_x.y[.z]` version required, as numbers (`[2, 34]`).
    pub glibc: Option<Vec<u32>>,
}

/// `[2, 34]` as `2.34`.
pub fn version_text(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

pub fn read(path: &Path) -> Result<Needs> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a readable ELF binary", path.display()))
}

/// Bounds-checked little-endian reads.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn slice(&self, at: u64, len: u64) -> Result<&[u8]> {
        let end = at.checked_add(len).filter(|e| *e <= self.0.len() as u64);
        match end {
            Some(end) => Ok(&self.0[at as usize..end as usize]),
            None => bail!("truncated: {len} bytes at {at} past the end ({} bytes)", self.0.len()),
        }
    }
    fn u16(&self, at: u64) -> Result<u16> {
        Ok(u16::from_le_bytes(self.slice(at, 2)?.try_into()?))
    }
    fn u32(&self, at: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(self.slice(at, 4)?.try_into()?))
    }
    fn u64(&self, at: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(self.slice(at, 8)?.try_into()?))
    }
    /// The NUL-terminated string at `at`.
    fn str(&self, at: u64) -> Result<String> {
        let rest = self.slice(at, (self.0.len() as u64).saturating_sub(at))?;
        let end = rest.iter().position(|b| *b == 0).context("unterminated string")?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

/// A section header's fields that matter here.
struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

pub fn parse(bytes: &[u8]) -> Result<Needs> {
    let b = Bytes(bytes);
    if b.slice(0, 4)? != b"\x7fELF" {
        bail!("no ELF magic");
    }
    if b.slice(4, 2)? != [2, 1] {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (shoff, shentsize, shnum) = (b.u64(0x28)?, b.u16(0x3a)? as u64, b.u16(0x3c)? as u64);
    let mut sections = Vec::new();
    for i in 0..shnum {
        let at = shoff + i * shentsize;
        sections.push(Section {
            kind: b.u32(at + 4)?,
            offset: b.u64(at + 24)?,
            size: b.u64(at + 32)?,
            link: b.u32(at + 40)?,
            info: b.u32(at + 44)?,
        });
    }
    let strings =
        |s: &Section| sections.get(s.link as usize).map(|t| t.offset).context("bad string table link");
    let mut needed = Vec::new();
    for s in sections.iter().filter(|s| s.kind == SHT_DYNAMIC) {
        let table = strings(s)?;
        for i in 0..s.size / 16 {
            let (tag, value) = (b.u64(s.offset + 16 * i)?, b.u64(s.offset + 16 * i + 8)?);
            match tag {
                0 => break,
                DT_NEEDED => needed.push(b.str(table + value)?),
                _ => {}
            }
        }
    }
    let mut glibc: Option<Vec<u32>> = None;
    for s in sections.iter().filter(|s| s.kind == SHT_GNU_VERNEED) {
        let table = strings(s)?;
        let mut at = s.offset;
        // sh_info entries, each with vn_cnt auxiliary entries naming a version.
        for _ in 0..s.info {
            let (count, aux, next) = (b.u16(at + 2)?, b.u32(at + 8)? as u64, b.u32(at + 12)? as u64);
            let mut a = at + aux;
            for _ in 0..count {
                let name = b.str(table + b.u32(a + 8)? as u64)?;
                if let Some(v) = name.strip_prefix("GLIBC_").and_then(parse_version) {
                    glibc = Some(glibc.map_or(v.clone(), |g| g.max(v)));
                }
                a += b.u32(a + 12)? as u64;
            }
            if next == 0 {
                break;
            }
            at += next;
        }
    }
    Ok(Needs { needed, glibc })
}

/// `2.34` or `2.2.5` as numbers; `PRIVATE` and other names are not versions.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_libraries_and_the_glibc_version_of_a_real_binary() {
        let exe = std::env::current_exe().unwrap();
        let needs = read(&exe).unwrap();
        assert!(needs.needed.iter().any(|n| n == "libc.so.6"), "{needs:?}");
        let glibc = needs.glibc.clone().expect("a Rust binary asks for a glibc version");
        assert!(glibc >= vec![2, 2, 5] && glibc[0] == 2, "{glibc:?}");
        // The same answer as binutils', where they are installed.
        if let Ok(out) = std::process::Command::new("readelf").arg("-V").arg("-d").arg(&exe).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            let newest = text
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("GLIBC_").and_then(parse_version))
                .max()
                .unwrap();
            assert_eq!(glibc, newest);
            for n in &needs.needed {
                assert!(text.contains(&format!("Shared library: [{n}]")), "{n}");
            }
        }
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error_not_a_panic() {
        assert!(parse(b"#!/bin/sh\necho hi\n").unwrap_err().to_string().contains("no ELF magic"));
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Cut inside the section headers (at the end of the file).
        assert!(parse(&exe[..exe.len() - 100]).is_err());
        assert!(parse(&exe[..10]).is_err());
        assert_eq!(version_text(&[2, 34]), "2.34");
        assert_eq!(parse_version("PRIVATE"), None);
    }
}
