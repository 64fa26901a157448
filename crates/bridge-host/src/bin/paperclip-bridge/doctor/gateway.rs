//! The doctor's check of the gateway binary: found, statically linked, and matching the
//! `.sha256` that `cargo xtask dist` writes beside it.

use std::path::{Path, PathBuf};

use super::{DoctorArgs, Outcome};
use crate::args::SandboxKind;

const FIX: &str = "cargo xtask dist (builds target/dist/<target>/paperclip-bridge-server and \
                   its .sha256), or pass --gateway-bin PATH";

/// The check's outcome, and the binary when one was found (for the end-to-end check).
pub fn check(args: &DoctorArgs) -> (Outcome, Option<PathBuf>) {
    // The binary a sandbox on this machine gets (a remote one picks by its own uname -m).
    let chosen = crate::run::gateway_binaries(&args.gateway)
        .and_then(|binaries| Ok(binaries.select(std::env::consts::ARCH)?.to_path_buf()));
    let path = match chosen {
        Ok(path) => path,
        Err(e) => return (Outcome::fail(format!("{e:#}"), FIX), None),
    };
    let outcome = match std::fs::read(&path) {
        Ok(bytes) => judge(&path, &bytes, args.sandbox.sandbox),
        Err(e) => Outcome::fail(format!("reading {}: {e}", path.display()), FIX),
    };
    (outcome, Some(path))
}

fn judge(path: &Path, bytes: &[u8], kind: SandboxKind) -> Outcome {
    let shown = path.display();
    let linking = match interpreter(bytes) {
        Err(why) => return Outcome::fail(format!("{shown}: {why}"), FIX),
        Ok(false) => "statically linked",
        // This machine's /usr is the sandbox's: its libraries are there.
        Ok(true) if matches!(kind, SandboxKind::Bwrap | SandboxKind::Local) => {
            "dynamically linked (runs in a sandbox on this machine; a remote one needs the \
             static build of cargo xtask dist)"
        }
        Ok(true) => {
            return Outcome::fail(
                format!("{shown} is dynamically linked: a remote sandbox may lack its libraries"),
                FIX,
            )
        }
    };
    let sha = bridge_host::deploy::sha256_hex(bytes);
    let sum_file = sum_path(path);
    let sum = match std::fs::read_to_string(&sum_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no .sha256 beside it".to_owned(),
        Err(e) => return Outcome::fail(format!("reading {}: {e}", sum_file.display()), FIX),
        Ok(text) => match text.split_whitespace().next() {
            Some(recorded) if recorded == sha => "matches its .sha256".to_owned(),
            recorded => {
                return Outcome::fail(
                    format!(
                        "{shown} has sha256 {sha}, but {} says {} (the binary changed after it \
                         was built)",
                        sum_file.display(),
                        recorded.unwrap_or("nothing")
                    ),
                    FIX,
                )
            }
        },
    };
    Outcome::Ok(format!("{shown}, {linking}, {sum}"))
}

fn sum_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (`PT_INTERP`);
/// static-pie keeps `PT_DYNAMIC` but has none.
fn interpreter(bytes: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[0x20..0x28]);
    let phoff = usize::try_from(u64::from_le_bytes(offset)).map_err(|e| e.to_string())?;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    for i in 0..count {
        let at = phoff.saturating_add(i.saturating_mul(size));
        let Some(kind) = bytes.get(at..at.saturating_add(4)) else {
            return Err("truncated ELF program headers".into());
        };
        if u32::from_le_bytes([kind[0], kind[1], kind[2], kind[3]]) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}
