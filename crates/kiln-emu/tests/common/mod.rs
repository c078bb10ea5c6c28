//! Helpers shared by the sandbox-based tests.
#![allow(dead_code)]

use iced_x86::code_asm::{CodeAssembler, IcedError};
use kiln_emu::sandbox::Sandbox;

pub const CODE: u64 = 0x10_0000;

pub fn assemble(ip: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    f(&mut a).expect("test code assembles");
    a.assemble(ip).expect("test code assembles")
}

pub fn load(sb: &mut Sandbox, ip: u64, code: &[u8]) {
    sb.poke(ip, code);
    sb.cpu.rip = ip;
}

/// The exception frame the CPU pushed at `top` (aligned), with or without an error code:
/// returns (error code, rip, cs, rflags, rsp, ss).
pub fn frame(sb: &Sandbox, top: u64, has_code: bool) -> (Option<u64>, u64, u64, u64, u64, u64) {
    let mut at = top;
    let code = if has_code {
        let c = sb.peek_u64(at);
        at += 8;
        Some(c)
    } else {
        None
    };
    (
        code,
        sb.peek_u64(at),
        sb.peek_u64(at + 8),
        sb.peek_u64(at + 16),
        sb.peek_u64(at + 24),
        sb.peek_u64(at + 32),
    )
}
