//! Writes one of the test guests as an ELF kernel image:
//! `cargo run -p kiln-testguest --example write-guest -- hello|reset|spin|triple-fault|startup-probe OUT`.

use kiln_testguest::elf::{ElfImage, ElfNote};
use kiln_testguest::{guests, GUEST_BASE};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, out] = args.as_slice() else {
        eprintln!("usage: write-guest hello|reset|spin|triple-fault|startup-probe OUT");
        return ExitCode::from(2);
    };
    let code = match kind.as_str() {
        "hello" => guests::hello("Hello from a Kiln test guest\n"),
        "reset" => guests::reset_at_once(),
        "spin" => guests::spin(1_000_000),
        "triple-fault" => guests::triple_fault(),
        "startup-probe" => guests::startup_probe(),
        other => {
            eprintln!("write-guest: unknown guest {other:?}");
            return ExitCode::from(2);
        }
    };
    let written = code.map_err(|e| e.to_string()).and_then(|code| {
        let mut image = ElfImage::new(GUEST_BASE, code);
        image.notes.push(ElfNote::pvh_entry(GUEST_BASE as u32)); // so QEMU can boot it too
        image.write(out.as_ref()).map_err(|e| e.to_string())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
