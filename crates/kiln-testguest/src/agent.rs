//! Finding the static guest agent that tests put into a guest's initramfs.

use std::path::{Path, PathBuf};

/// The static `kiln-agent`: `KILN_AGENT_STATIC`, else the `--target x86_64-unknown-linux-gnu`
/// build in the target directory that holds `bin_dir` (where scripts/test builds it with
/// `RUSTFLAGS="-C target-feature=+crt-static"`). The error says what is missing and how to
/// build it, for a skip message.
pub fn static_agent(bin_dir: &Path) -> Result<PathBuf, String> {
    let agent = match std::env::var_os("KILN_AGENT_STATIC") {
        Some(path) => PathBuf::from(path),
        None => {
            bin_dir.parent().unwrap_or(bin_dir).join("x86_64-unknown-linux-gnu/debug/kiln-agent")
        }
    };
    if is_static_elf(&agent) {
        return Ok(agent);
    }
    Err(format!(
        "no static kiln-agent at {} (build it with RUSTFLAGS=\"-C target-feature=+crt-static\" \
         cargo build -p kiln-agent --target x86_64-unknown-linux-gnu, or set KILN_AGENT_STATIC)",
        agent.display()
    ))
}

/// True if `path` is an ELF64 with no program interpreter (a static or static-pie binary).
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(elf) = std::fs::read(path) else { return false };
    let word = |at: usize, n: usize| -> Option<u64> {
        let bytes = elf.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (word(0x20, 8), word(0x36, 2), word(0x38, 2))
    else {
        return false;
    };
    const PT_INTERP: u64 = 3;
    elf.starts_with(b"\x7fELF\x02")
        && (0..phnum).all(|i| word((phoff + i * phentsize) as usize, 4) != Some(PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_is_not_static_and_a_missing_one_is_named() {
        assert!(!is_static_elf(Path::new("/proc/self/exe")), "this test binary is dynamic");
        assert!(!is_static_elf(Path::new("/nonexistent")));
        let err = static_agent(Path::new("/nonexistent/target/debug")).unwrap_err();
        assert!(err.contains("x86_64-unknown-linux-gnu/debug/kiln-agent"), "{err}");
    }
}
