//! The Lambda zip, checked before it is uploaded: its `bootstrap` must be an executable for the
//! architecture the function declares, linked against no newer glibc than the `provided.al2023`
//! runtime has (2.34). A native build on a newer distribution, or on an arm64 laptop, would upload
//! fine and fail only when the function first runs — in the middle of a regional failure.

use std::fmt;

/// The instruction set of a Lambda function (`Architectures` in the template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    X86_64,
    Arm64,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The newest glibc of Amazon Linux 2023, the `provided.al2023` runtime.
pub const RUNTIME_GLIBC: (u32, u32) = (2, 34);

/// What deploy uploads and passes to the stacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The S3 key: the zip's content hash, so that a new build is a new key (which is what makes
    /// CloudFormation update the function's code).
    pub key: String,
    pub architecture: Architecture,
    /// The highest `GLIBC_x.y` symbol version the executable needs; `None` for a static build.
    pub glibc: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("the Lambda zip is not a zip archive ({0})")]
    NotZip(&'static str),
    #[error("the Lambda zip has no `bootstrap` at its top level (build it with `make lambda`)")]
    NoBootstrap,
    #[error(
        "the Lambda zip's bootstrap is stored with compression method {0}; use stored or deflate"
    )]
    Compression(u16),
    #[error("the Lambda zip's bootstrap is not a 64-bit little-endian ELF executable")]
    NotElf,
    #[error(
        "the Lambda zip's bootstrap is for ELF machine {0:#x}; Lambda runs x86_64 (0x3e) or arm64 (0xb7)"
    )]
    Machine(u16),
    #[error(
        "the Lambda zip's bootstrap needs GLIBC_{}.{}, newer than the provided.al2023 runtime's {}.{}: build it with `make lambda` (cargo-zigbuild, glibc {}.{} target)",
        .0.0, .0.1, RUNTIME_GLIBC.0, RUNTIME_GLIBC.1, RUNTIME_GLIBC.0, RUNTIME_GLIBC.1
    )]
    GlibcTooNew((u32, u32)),
}

/// Checks the zip and names it.
pub fn inspect(zip: &[u8]) -> Result<Artifact, ArtifactError> {
    let bootstrap = entry(zip, "bootstrap")?;
    let architecture = elf_architecture(&bootstrap)?;
    let glibc = highest_glibc(&bootstrap);
    if let Some(version) = glibc.filter(|v| *v > RUNTIME_GLIBC) {
        return Err(ArtifactError::GlibcTooNew(version));
    }
    Ok(Artifact {
        key: super::artifact_key(zip),
        architecture,
        glibc,
    })
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The contents of the entry called `name`, found through the central directory (local headers
/// may leave the sizes to a trailing descriptor).
pub fn entry(zip: &[u8], name: &str) -> Result<Vec<u8>, ArtifactError> {
    const END: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;
    let end = (0..zip.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(zip, i) == Some(END))
        .ok_or(ArtifactError::NotZip("no end of central directory"))?;
    let count = u16_at(zip, end + 10).ok_or(ArtifactError::NotZip("truncated"))?;
    let mut at = u32_at(zip, end + 16).ok_or(ArtifactError::NotZip("truncated"))? as usize;
    for _ in 0..count {
        let truncated = ArtifactError::NotZip("truncated central directory");
        if u32_at(zip, at) != Some(CENTRAL) {
            return Err(ArtifactError::NotZip("bad central directory"));
        }
        let method = u16_at(zip, at + 10).ok_or(truncated.clone())?;
        let compressed = u32_at(zip, at + 20).ok_or(truncated.clone())? as usize;
        let name_len = u16_at(zip, at + 28).ok_or(truncated.clone())? as usize;
        let extra_len = u16_at(zip, at + 30).ok_or(truncated.clone())? as usize;
        let comment_len = u16_at(zip, at + 32).ok_or(truncated.clone())? as usize;
        let local = u32_at(zip, at + 42).ok_or(truncated.clone())? as usize;
        let entry_name = zip
            .get(at + 46..at + 46 + name_len)
            .ok_or(truncated.clone())?;
        if entry_name == name.as_bytes() {
            let bad_local = ArtifactError::NotZip("bad local header");
            if u32_at(zip, local) != Some(LOCAL) {
                return Err(bad_local);
            }
            let local_name = u16_at(zip, local + 26).ok_or(bad_local.clone())? as usize;
            let local_extra = u16_at(zip, local + 28).ok_or(bad_local.clone())? as usize;
            let start = local + 30 + local_name + local_extra;
            let data = zip
                .get(start..start + compressed)
                .ok_or(ArtifactError::NotZip("entry runs past the end"))?;
            return match method {
                0 => Ok(data.to_vec()),
                8 => miniz_oxide::inflate::decompress_to_vec(data)
                    .map_err(|_| ArtifactError::NotZip("corrupt deflate data")),
                other => Err(ArtifactError::Compression(other)),
            };
        }
        at += 46 + name_len + extra_len + comment_len;
    }
    Err(ArtifactError::NoBootstrap)
}

/// x86_64 or arm64 from a 64-bit little-endian ELF header.
pub fn elf_architecture(elf: &[u8]) -> Result<Architecture, ArtifactError> {
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return Err(ArtifactError::NotElf);
    }
    match u16_at(elf, 18).ok_or(ArtifactError::NotElf)? {
        0x3e => Ok(Architecture::X86_64),
        0xb7 => Ok(Architecture::Arm64),
        other => Err(ArtifactError::Machine(other)),
    }
}

/// The highest `GLIBC_x.y` version string in the executable (the versions its dynamic symbols
/// need are stored as such strings in `.dynstr`).
pub fn highest_glibc(elf: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut highest = None;
    let mut at = 0;
    while let Some(found) = elf[at..].windows(TAG.len()).position(|w| w == TAG) {
        let start = at + found + TAG.len();
        let digits: Vec<u8> = elf[start..]
            .iter()
            .take_while(|c| c.is_ascii_digit() || **c == b'.')
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.').map(|p| p.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            highest = highest.max(Some((major, minor)));
        }
        at = start;
    }
    highest
}

/// A zip holding one file, stored uncompressed (as Python's `zipfile -c` writes it); for tests
/// and tools that need an artifact without a build.
pub fn stored_zip(name: &str, body: &[u8]) -> Vec<u8> {
    let mut zip = Vec::new();
    let crc = 0u32; // not checked by `entry`
    zip.extend(0x0403_4b50u32.to_le_bytes());
    zip.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend(crc.to_le_bytes());
    zip.extend((body.len() as u32).to_le_bytes());
    zip.extend((body.len() as u32).to_le_bytes());
    zip.extend((name.len() as u16).to_le_bytes());
    zip.extend(0u16.to_le_bytes());
    zip.extend(name.as_bytes());
    zip.extend(body);
    let central = zip.len();
    zip.extend(0x0201_4b50u32.to_le_bytes());
    zip.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend(crc.to_le_bytes());
    zip.extend((body.len() as u32).to_le_bytes());
    zip.extend((body.len() as u32).to_le_bytes());
    zip.extend((name.len() as u16).to_le_bytes());
    zip.extend([0u8; 8]); // extra, comment, disk, internal attributes
    zip.extend(0u32.to_le_bytes()); // external attributes
    zip.extend(0u32.to_le_bytes()); // local header offset
    zip.extend(name.as_bytes());
    let size = zip.len() - central;
    zip.extend(0x0605_4b50u32.to_le_bytes());
    zip.extend([0, 0, 0, 0, 1, 0, 1, 0]);
    zip.extend((size as u32).to_le_bytes());
    zip.extend((central as u32).to_le_bytes());
    zip.extend(0u16.to_le_bytes());
    zip
}
#[cfg(test)]
mod tests {

    use super::*;

    fn elf(machine: u16, strings: &[u8]) -> Vec<u8> {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(18, 0);
        elf.extend(machine.to_le_bytes());
        elf.resize(64, 0);
        elf.extend(strings);
        elf
    }

    #[test]
    fn the_architecture_and_glibc_come_from_the_executable() {
        let arm = elf(0xb7, b"\0GLIBC_2.17\0GLIBC_2.34\0GLIBC_2.28\0");
        let artifact = inspect(&stored_zip("bootstrap", &arm)).unwrap();
        assert_eq!(artifact.architecture, Architecture::Arm64);
        assert_eq!(artifact.glibc, Some((2, 34)));
        assert!(artifact.key.starts_with("valkey-dr-lambda-"));
        let static_x86 = elf(0x3e, b"no versions");
        let artifact = inspect(&stored_zip("bootstrap", &static_x86)).unwrap();
        assert_eq!(
            (artifact.architecture, artifact.glibc),
            (Architecture::X86_64, None)
        );
    }

    #[test]
    fn artifacts_the_runtime_cannot_run_are_refused() {
        let cases: [(Vec<u8>, ArtifactError); 5] = [
            (
                stored_zip("bootstrap", &elf(0x3e, b"GLIBC_2.36\0GLIBC_2.9\0")),
                ArtifactError::GlibcTooNew((2, 36)),
            ),
            (
                stored_zip("bootstrap", &elf(0x28, b"")),
                ArtifactError::Machine(0x28),
            ),
            (
                stored_zip("bootstrap", b"#!/bin/sh\n"),
                ArtifactError::NotElf,
            ),
            (
                stored_zip("handler", &elf(0x3e, b"")),
                ArtifactError::NoBootstrap,
            ),
            (
                b"PK not really".to_vec(),
                ArtifactError::NotZip("no end of central directory"),
            ),
        ];
        for (zip, expected) in cases {
            assert_eq!(inspect(&zip), Err(expected.clone()), "{expected}");
        }
        let message = ArtifactError::GlibcTooNew((2, 36)).to_string();
        assert!(
            message.contains("GLIBC_2.36") && message.contains("2.34"),
            "{message}"
        );
    }

    #[test]
    fn this_machines_own_executables_read_as_what_they_are() {
        // A real ELF built here: the test binary itself.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let expected = if cfg!(target_arch = "x86_64") {
            Architecture::X86_64
        } else {
            Architecture::Arm64
        };
        assert_eq!(elf_architecture(&me), Ok(expected));
        assert!(highest_glibc(&me).is_some_and(|v| v >= (2, 2)));
    }

    #[test]
    fn truncated_zips_are_errors_not_panics() {
        let zip = stored_zip("bootstrap", &elf(0x3e, b""));
        for cut in 0..zip.len() {
            let _ = inspect(&zip[..cut]);
            let mut damaged = zip.clone();
            damaged[cut] ^= 0xff;
            let _ = inspect(&damaged);
        }
    }
}
