//! The sandbox's CPU architecture and the gateway binary built for it.
//!
//! Deployment learns the architecture from `uname -m` in its first exec (the one that
//! also hashes the installed binary), so knowing it costs no exec of its own. The binary
//! chosen for it is checked by its ELF header before it is sent: a wrong one would only
//! fail later, as "exec format error" in the gateway's log.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::DeployError;

/// The gateway binary's file name, in a dist directory and in the sandbox.
pub const GATEWAY_FILE_NAME: &str = "paperclip-bridge-server";

/// A CPU architecture the gateway is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// 64-bit x86 (`uname -m`: `x86_64`, or `amd64` on the BSDs).
    X86_64,
    /// 64-bit ARM (`uname -m`: `aarch64`, or `arm64` on macOS and the BSDs).
    Aarch64,
}

impl Arch {
    /// Every architecture there is a build for.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture `uname -m` names, if the gateway is built for it.
    pub fn from_uname(machine: &str) -> Option<Arch> {
        match machine.trim() {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The architecture a 64-bit little-endian ELF file is for (`e_machine`), if it is
    /// one of ours; `None` for anything else (a script, another machine).
    pub fn of_elf(header: &[u8]) -> Option<Arch> {
        const EM_X86_64: u16 = 62;
        const EM_AARCH64: u16 = 183;
        let elf64_le = header.len() >= 20 && header.starts_with(b"\x7fELF\x02\x01");
        if !elf64_le {
            return None;
        }
        match u16::from_le_bytes([header[18], header[19]]) {
            EM_X86_64 => Some(Arch::X86_64),
            EM_AARCH64 => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// Its name as Linux's `uname -m` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The Rust target the static gateway is built for (`cargo xtask dist --target`).
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The gateway binaries on this machine: one per architecture, and optionally one for
/// any sandbox (a caller's single binary, or a script standing in for the gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayBinaries {
    by_arch: BTreeMap<Arch, PathBuf>,
    any: Option<PathBuf>,
}

impl GatewayBinaries {
    /// No binaries yet (add them with [`GatewayBinaries::with`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// One binary for every sandbox. If it is an ELF file for another architecture than
    /// the sandbox's, deployment refuses it ([`DeployError::WrongArch`]).
    pub fn single(path: impl Into<PathBuf>) -> Self {
        Self {
            by_arch: BTreeMap::new(),
            any: Some(path.into()),
        }
    }

    /// Adds (or replaces) the binary for `arch`; it wins over a [`single`](Self::single) one.
    pub fn with(mut self, arch: Arch, path: impl Into<PathBuf>) -> Self {
        self.by_arch.insert(arch, path.into());
        self
    }

    /// The binaries in a directory laid out as `cargo xtask dist` leaves `target/dist`:
    /// `<dir>/<musl target>/paperclip-bridge-server`, for each one that exists.
    pub fn from_dist_dir(dir: &Path) -> Self {
        Arch::ALL.into_iter().fold(Self::new(), |binaries, arch| {
            let path = dir.join(arch.musl_target()).join(GATEWAY_FILE_NAME);
            if path.is_file() {
                binaries.with(arch, path)
            } else {
                binaries
            }
        })
    }

    /// No binary at all.
    pub fn is_empty(&self) -> bool {
        self.by_arch.is_empty() && self.any.is_none()
    }

    /// The architectures with a binary of their own.
    pub fn arches(&self) -> Vec<Arch> {
        self.by_arch.keys().copied().collect()
    }

    /// The binary for a sandbox whose `uname -m` printed `machine`.
    pub fn select(&self, machine: &str) -> Result<&Path, DeployError> {
        let arch = Arch::from_uname(machine);
        if let Some(path) = arch.and_then(|a| self.by_arch.get(&a)) {
            return Ok(path);
        }
        match (&self.any, arch) {
            (Some(path), _) => Ok(path),
            (None, Some(arch)) => Err(DeployError::NoBinaryForArch {
                arch,
                have: self.arches(),
            }),
            (None, None) => Err(DeployError::UnsupportedArch {
                machine: machine.to_owned(),
            }),
        }
    }

    /// Every binary under the variable the one-exec start script picks its hash from by
    /// `uname -m`: `SHA_X86_64`, `SHA_AARCH64`, and `SHA_ANY` for the binary for any
    /// sandbox.
    fn named(&self) -> impl Iterator<Item = (String, &PathBuf)> {
        self.by_arch
            .iter()
            .map(|(arch, path)| (format!("SHA_{}", arch.name().to_ascii_uppercase()), path))
            .chain(self.any.iter().map(|path| ("SHA_ANY".to_owned(), path)))
    }

    /// Reads every binary once (the same file named twice, once), with its sha256: the
    /// one-exec start offers the hashes before it knows the machine and then sends the
    /// chosen one's bytes, on each attempt, without reading a file again (all are held
    /// while the start runs: a few megabytes each).
    pub(crate) fn read_all(&self) -> Result<ReadBinaries<'_>, DeployError> {
        let mut files: Vec<ReadBinary> = Vec::new();
        for path in self.by_arch.values().chain(self.any.iter()) {
            if files.iter().any(|file| &file.path == path) {
                continue;
            }
            let bytes = read_binary(path)?;
            files.push(ReadBinary {
                sha: super::sha256_hex(&bytes),
                path: path.clone(),
                bytes,
            });
        }
        Ok(ReadBinaries {
            binaries: self,
            files,
        })
    }

    /// Selects the binary for `machine`, reads it and checks that it can run there.
    pub(crate) fn load(&self, machine: &str) -> Result<(PathBuf, Vec<u8>), DeployError> {
        let path = self.select(machine)?.to_path_buf();
        let bytes = read_binary(&path)?;
        runs_on(&path, &bytes, machine)?;
        Ok((path, bytes))
    }
}

/// The binaries' bytes and hashes, read once ([`GatewayBinaries::read_all`]).
#[derive(Debug)]
pub(crate) struct ReadBinaries<'a> {
    binaries: &'a GatewayBinaries,
    files: Vec<ReadBinary>,
}

/// One gateway binary, read.
#[derive(Debug)]
pub(crate) struct ReadBinary {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    /// Its sha256, lower-case hex.
    pub(crate) sha: String,
}

impl ReadBinaries<'_> {
    /// The sha256 of every binary under its variable (see [`GatewayBinaries::named`]), so
    /// the sandbox can tell whether it has the right one without asking.
    pub(crate) fn shas(&self) -> Vec<(String, String)> {
        self.binaries
            .named()
            .filter_map(|(name, path)| Some((name, self.file(path)?.sha.clone())))
            .collect()
    }

    /// The binary for `machine`, checked as [`GatewayBinaries::load`] checks it.
    pub(crate) fn load(&self, machine: &str) -> Result<&ReadBinary, DeployError> {
        let path = self.binaries.select(machine)?;
        // Every path `select` returns was read; a miss would be this module's bug.
        let file = self.file(path).ok_or_else(|| DeployError::Binary {
            path: path.to_path_buf(),
            source: std::io::Error::other("it was not read with the others"),
        })?;
        runs_on(path, &file.bytes, machine)?;
        Ok(file)
    }

    fn file(&self, path: &Path) -> Option<&ReadBinary> {
        self.files.iter().find(|file| file.path == path)
    }
}

/// The binary at `path` (`bytes`) can run where `uname -m` printed `machine`: an ELF file
/// must be for that machine; anything else (a script) is the caller's choice.
fn runs_on(path: &Path, bytes: &[u8], machine: &str) -> Result<(), DeployError> {
    match (Arch::of_elf(bytes), Arch::from_uname(machine)) {
        (Some(binary), Some(sandbox)) if binary != sandbox => Err(DeployError::WrongArch {
            path: path.to_path_buf(),
            binary,
            machine: machine.to_owned(),
        }),
        (Some(_), None) => Err(DeployError::UnsupportedArch {
            machine: machine.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The bytes of the gateway binary at `path`.
fn read_binary(path: &Path) -> Result<Vec<u8>, DeployError> {
    std::fs::read(path).map_err(|source| DeployError::Binary {
        path: path.to_path_buf(),
        source,
    })
}

impl From<PathBuf> for GatewayBinaries {
    fn from(path: PathBuf) -> Self {
        Self::single(path)
    }
}

/// `x86_64, aarch64`, or `none`, for an error message.
pub(crate) fn list(arches: &[Arch]) -> String {
    if arches.is_empty() {
        return "none".into();
    }
    let names: Vec<&str> = arches.iter().map(|a| a.name()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests;
