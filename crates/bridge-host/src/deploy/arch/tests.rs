//! Unit tests: `uname -m` and ELF headers to architectures, choosing a binary, and the
//! prepare step's output.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::super::steps::parse_found;
use super::*;

/// The first 20 bytes of a 64-bit little-endian ELF file for `machine` (`e_machine`).
fn elf_header(machine: u16) -> Vec<u8> {
    let mut header = b"\x7fELF\x02\x01\x01\x00".to_vec();
    header.resize(16, 0);
    header.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    header.extend_from_slice(&machine.to_le_bytes());
    header
}

#[test]
fn uname_names_map_to_builds() {
    for (machine, arch) in [
        ("x86_64", Some(Arch::X86_64)),
        ("amd64", Some(Arch::X86_64)),
        ("aarch64", Some(Arch::Aarch64)),
        ("arm64", Some(Arch::Aarch64)),
        ("aarch64\n", Some(Arch::Aarch64)),
        ("armv7l", None),
        ("i686", None),
        ("riscv64", None),
        ("", None),
    ] {
        assert_eq!(Arch::from_uname(machine), arch, "{machine:?}");
    }
    assert_eq!(Arch::Aarch64.musl_target(), "aarch64-unknown-linux-musl");
    assert_eq!(Arch::X86_64.to_string(), "x86_64");
}

#[test]
fn elf_headers_say_their_architecture() {
    assert_eq!(Arch::of_elf(&elf_header(62)), Some(Arch::X86_64));
    assert_eq!(Arch::of_elf(&elf_header(183)), Some(Arch::Aarch64));
    assert_eq!(Arch::of_elf(&elf_header(243)), None, "riscv");
    assert_eq!(Arch::of_elf(b"#!/bin/sh\necho hi\n"), None);
    assert_eq!(Arch::of_elf(&elf_header(62)[..19]), None, "truncated");
    let mut big_endian = elf_header(62);
    big_endian[5] = 2;
    assert_eq!(Arch::of_elf(&big_endian), None);
}

#[test]
fn the_sandbox_architecture_picks_its_binary() {
    let both = GatewayBinaries::new()
        .with(Arch::X86_64, "/d/x86")
        .with(Arch::Aarch64, "/d/arm");
    assert_eq!(both.select("x86_64").unwrap(), Path::new("/d/x86"));
    assert_eq!(both.select("aarch64").unwrap(), Path::new("/d/arm"));
    assert_eq!(both.select("arm64").unwrap(), Path::new("/d/arm"));
    // A binary of its own wins over the one for any sandbox.
    let mixed = GatewayBinaries::single("/any").with(Arch::Aarch64, "/d/arm");
    assert_eq!(mixed.select("aarch64").unwrap(), Path::new("/d/arm"));
    assert_eq!(mixed.select("x86_64").unwrap(), Path::new("/any"));
    assert_eq!(mixed.select("riscv64").unwrap(), Path::new("/any"));
}

#[test]
fn a_missing_build_is_named_with_the_command_that_makes_it() {
    let x86 = GatewayBinaries::new().with(Arch::X86_64, "/d/x86");
    let err = x86.select("aarch64").unwrap_err();
    assert!(
        matches!(&err, DeployError::NoBinaryForArch { arch: Arch::Aarch64, have } if have == &[Arch::X86_64]),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("the sandbox is aarch64"), "{text}");
    assert!(text.contains("have: x86_64"), "{text}");
    assert!(
        text.contains("cargo xtask dist --target aarch64-unknown-linux-musl"),
        "{text}"
    );
    let err = x86.select("riscv64").unwrap_err();
    assert!(matches!(&err, DeployError::UnsupportedArch { machine } if machine == "riscv64"));
    assert!(err.to_string().contains("x86_64, aarch64"), "{err}");
    let none = GatewayBinaries::new()
        .select("x86_64")
        .unwrap_err()
        .to_string();
    assert!(none.contains("have: none"), "{none}");
}

/// A dist directory with these files: `(musl target, content)`.
fn dist_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (target, content) in files {
        std::fs::create_dir_all(dir.path().join(target)).unwrap();
        std::fs::write(dir.path().join(target).join(GATEWAY_FILE_NAME), content).unwrap();
    }
    dir
}

#[test]
fn a_dist_directory_holds_a_binary_per_target() {
    let arm = elf_header(183);
    let dir = dist_dir(&[("aarch64-unknown-linux-musl", &arm), ("other-target", b"x")]);
    let found = GatewayBinaries::from_dist_dir(dir.path());
    assert_eq!(found.arches(), vec![Arch::Aarch64]);
    let (path, bytes) = found.load("aarch64").unwrap();
    assert_eq!(
        path,
        dir.path()
            .join("aarch64-unknown-linux-musl")
            .join(GATEWAY_FILE_NAME)
    );
    assert_eq!(bytes, arm);
    assert!(GatewayBinaries::from_dist_dir(&dir.path().join("nothing")).is_empty());
}

#[test]
fn a_binary_for_another_architecture_is_refused_before_it_is_sent() {
    let x86 = elf_header(62);
    let dir = dist_dir(&[("x86_64-unknown-linux-musl", &x86)]);
    let path: PathBuf = dir
        .path()
        .join("x86_64-unknown-linux-musl")
        .join(GATEWAY_FILE_NAME);
    let single = GatewayBinaries::single(path.clone());
    assert_eq!(single.load("x86_64").unwrap().1, x86);
    let err = single.load("aarch64").unwrap_err();
    assert!(
        matches!(&err, DeployError::WrongArch { binary: Arch::X86_64, machine, .. } if machine == "aarch64"),
        "{err:?}"
    );
    assert!(err.to_string().contains("built for x86_64"), "{err}");
    // Mislabelled in an explicit set: caught the same way.
    let mislabelled = GatewayBinaries::new().with(Arch::Aarch64, path.clone());
    assert!(matches!(
        mislabelled.load("aarch64"),
        Err(DeployError::WrongArch { .. })
    ));
    // An ELF binary on an architecture we do not know cannot be right.
    assert!(matches!(
        single.load("riscv64"),
        Err(DeployError::UnsupportedArch { .. })
    ));
    // A script runs anywhere.
    let script = dir.path().join("fake");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    assert!(GatewayBinaries::single(script).load("aarch64").is_ok());
    let gone = GatewayBinaries::single(dir.path().join("gone")).load("x86_64");
    assert!(matches!(gone, Err(DeployError::Binary { .. })));
}

/// The one-exec start reads each binary once: the hashes under their variables, then the
/// chosen one's bytes and hash, checked as `load` checks them, even after the file is gone.
#[test]
fn binaries_read_once_give_the_hashes_and_the_chosen_bytes() {
    let x86 = elf_header(62);
    let arm = elf_header(183);
    let dir = dist_dir(&[
        ("x86_64-unknown-linux-musl", &x86),
        ("aarch64-unknown-linux-musl", &arm),
    ]);
    let x86_path = dir
        .path()
        .join("x86_64-unknown-linux-musl")
        .join(GATEWAY_FILE_NAME);
    // The x86_64 build also serves any other sandbox: named twice, read once.
    let binaries = GatewayBinaries {
        any: Some(x86_path.clone()),
        ..GatewayBinaries::from_dist_dir(dir.path())
    };
    let read = binaries.read_all().unwrap();
    assert_eq!(read.files.len(), 2, "{read:?}");
    let sha = |bytes: &[u8]| super::super::sha256_hex(bytes);
    assert_eq!(
        read.shas(),
        vec![
            ("SHA_X86_64".to_owned(), sha(&x86)),
            ("SHA_AARCH64".to_owned(), sha(&arm)),
            ("SHA_ANY".to_owned(), sha(&x86)),
        ]
    );
    std::fs::remove_dir_all(dir.path().join("aarch64-unknown-linux-musl")).unwrap();
    let chosen = read.load("arm64").unwrap();
    assert_eq!(
        (chosen.bytes.as_slice(), chosen.sha.as_str()),
        (arm.as_slice(), sha(&arm).as_str())
    );
    // The binary for any sandbox is still checked against the sandbox's machine.
    assert!(matches!(
        read.load("riscv64"),
        Err(DeployError::UnsupportedArch { .. })
    ));
    let mislabelled = GatewayBinaries::new().with(Arch::Aarch64, x86_path.clone());
    assert!(matches!(
        mislabelled.read_all().unwrap().load("aarch64"),
        Err(DeployError::WrongArch { .. })
    ));
    let gone = GatewayBinaries::single(dir.path().join("gone"));
    assert!(matches!(gone.read_all(), Err(DeployError::Binary { .. })));
}

#[test]
fn the_prepare_output_carries_the_architecture_and_the_hash() {
    let sha = "ab".repeat(32);
    let found = parse_found(&format!("aarch64\n{sha}\n")).unwrap();
    assert_eq!(found.machine, "aarch64");
    assert_eq!(found.installed_sha, sha);
    assert_eq!(
        parse_found("x86_64\nmissing\n").unwrap().installed_sha,
        "missing"
    );
    for garbled in [
        "",
        "x86_64\n",
        "x86_64",
        &format!("x86_64\n{}", &sha[..20]),
        &format!("\n{sha}\n"),
        &format!("x86 64\n{sha}\n"),
        &format!("{}\n{sha}\n", "a".repeat(33)),
        &format!("x86_64\n{sha}\nmore\n"),
        &sha,
    ] {
        assert!(parse_found(garbled).is_err(), "{garbled:?}");
    }
}
