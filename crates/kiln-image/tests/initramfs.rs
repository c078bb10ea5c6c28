//! `kiln-image initramfs` as users run it.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-image-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// name -> (mode, data) of every entry of a newc archive.
fn entries(archive: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let mut out = BTreeMap::new();
    let mut at = 0;
    loop {
        let h = &archive[at..at + 110];
        assert_eq!(&h[..6], b"070701");
        let (mode, size, namesize) =
            (hex(&h[14..22]), hex(&h[54..62]) as usize, hex(&h[94..102]) as usize);
        let name = String::from_utf8(archive[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
        let data_at = (at + 110 + namesize).next_multiple_of(4);
        if name == "TRAILER!!!" {
            return out;
        }
        out.insert(name, (mode, archive[data_at..data_at + size].to_vec()));
        at = (data_at + size).next_multiple_of(4);
    }
}

#[test]
fn initramfs_holds_busybox_init_console_and_the_users_files() {
    let d = dir("ok");
    let script = d.join("my-init.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let tool = d.join("tool.bin");
    std::fs::write(&tool, b"payload").unwrap();
    let out = d.join("initramfs.cpio");
    let run = Command::new(env!("CARGO_BIN_EXE_kiln-image"))
        .arg("initramfs")
        .arg("--out")
        .arg(&out)
        .arg("--init")
        .arg(&script)
        .arg("--add")
        .arg(format!("{}:/opt/kiln/tool.bin", tool.display()))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout).lines().last(), Some(out.to_str().unwrap()));
    let e = entries(&std::fs::read(&out).unwrap());
    assert_eq!(e["dev/console"].0, 0o020600, "a character device node");
    assert!(e["bin/busybox"].1.starts_with(b"\x7fELF"));
    assert!(String::from_utf8_lossy(&e["init"].1).contains("KILN-GUEST-READY"));
    assert_eq!(e["init.user"], (0o100755, b"#!/bin/sh\necho hi\n".to_vec()));
    assert_eq!(e["opt/kiln/tool.bin"].1, b"payload");
    assert!(e.contains_key("opt") && e.contains_key("opt/kiln"), "parent directories are created");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_arguments_are_named_and_nothing_is_written() {
    let d = dir("bad");
    let out = d.join("initramfs.cpio");
    for (args, expect) in [
        (vec!["--add", "no-colon"], "must be SRC:DEST"),
        (vec!["--add", "/etc/hostname:relative/path"], "must be SRC:DEST"),
        (vec!["--init", "/nonexistent/init.sh"], "/nonexistent/init.sh is not a readable file"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_kiln-image"))
            .arg("initramfs")
            .arg("--out")
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left an archive behind");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
