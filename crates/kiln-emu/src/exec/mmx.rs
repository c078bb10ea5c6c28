//! MMX: the eight 64-bit MMX registers alias the mantissas of the x87 physical registers
//! R0-R7 (Intel SDM vol. 1, 9.5). The x87 state keeps its registers in stack order (ST(0) first,
//! as FXSAVE does), so MMi is ST((i - TOP) mod 8).
//!
//! Every MMX instruction first makes the transition to MMX: TOP becomes 0 (so MMi is ST(i)) and
//! every tag valid; EMMS then marks every register empty. Writing MMi sets the register's
//! exponent and sign to all ones. A pending unmasked x87 exception raises #MF first, CR0.EM
//! #UD, CR0.TS #NM. A fault in reaching an operand (#GP, #PF, #SS) leaves the x87 state as it
//! was; a SIMD floating-point exception (#XM of CVTPS2PI, say) comes after the transition, as the
//! differential test sees the hardware do.
//!
//! The packed-integer instructions themselves are the SSE ones at a 64-bit width (`sse.rs`,
//! `ssse3.rs`); this module has the register file, the transition and the MMX-only moves.

use super::vector::{self, Vreg};
use super::{Ctx, R};
use crate::cpu::{self, Fpu};
use crate::fault::{Exception, ExecError, Vector};
use crate::mmu::Priv;
use iced_x86::{Mnemonic, OpKind};

/// MMi after the transition (TOP = 0): the low 64 bits of ST(i).
pub(super) fn get(f: &Fpu, i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&f.st[i & 7][..8]);
    u64::from_le_bytes(b)
}

/// Sets MMi (after the transition): mantissa `v`, exponent and sign all ones.
pub(super) fn set(f: &mut Fpu, i: usize, v: u64) {
    let st = &mut f.st[i & 7];
    st[..8].copy_from_slice(&v.to_le_bytes());
    st[8] = 0xff;
    st[9] = 0xff;
}

/// The transition to MMX: TOP = 0 with the registers renamed to match, every tag valid.
fn enter(f: &mut Fpu) {
    let top = usize::from((f.fsw >> 11) & 7);
    if top != 0 {
        // ST(k) is physical R((TOP + k) mod 8); after the transition ST(i) must be Ri.
        let old = f.st;
        for (i, st) in f.st.iter_mut().enumerate() {
            *st = old[(i + 8 - top) % 8];
        }
    }
    f.fsw &= !(7 << 11);
    f.ftw = 0xff;
}

/// #UD with CR0.EM, #NM with CR0.TS, #MF with an unmasked x87 exception pending.
fn available(c: &Ctx) -> Result<(), Exception> {
    if c.cpu.cr0 & cpu::CR0_EM != 0 {
        return Err(Exception::ud());
    }
    if c.cpu.cr0 & cpu::CR0_TS != 0 {
        return Err(Exception::new(Vector::NM));
    }
    if c.cpu.fpu.fsw & 0x80 != 0 {
        return Err(Exception::new(Vector::MF));
    }
    Ok(())
}

/// Runs an MMX-form instruction: the checks, the transition, then `run`.
pub(super) fn exec(c: &mut Ctx, run: impl FnOnce(&mut Ctx) -> R) -> R {
    available(c)?;
    let saved = c.cpu.fpu;
    enter(&mut c.cpu.fpu);
    if c.i.mnemonic() == Mnemonic::Emms {
        c.cpu.fpu.ftw = 0;
        return Ok(());
    }
    let r = run(c);
    if let Err(ExecError::Fault(e)) = &r {
        if e.vector != Vector::XM {
            c.cpu.fpu = saved;
        }
    }
    r
}

/// EMMS, which has no MMX register operand.
pub(super) fn emms(c: &mut Ctx) -> R {
    exec(c, |_| Ok(()))
}

/// PSHUFW, MOVQ2DQ, MOVDQ2Q, MASKMOVQ, MASKMOVDQU and MOVNTQ; `None` for other mnemonics.
pub(super) fn moves(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    Some(match m {
        Mnemonic::Pshufw => pshufw(c),
        Mnemonic::Movq2dq | Mnemonic::Movdq2q => {
            let (d, s) = (vector::dst(c), vector::read(c, 1));
            d.and_then(|d| s.map(|s| vector::set(c, d, s & u128::from(u64::MAX))))
                .map_err(Into::into)
        }
        Mnemonic::Maskmovq | Mnemonic::Maskmovdqu => maskmov(c),
        Mnemonic::Movntq => {
            vector::read(c, 1).and_then(|v| vector::write_mem(c, v, 8, false)).map_err(Into::into)
        }
        _ => return None,
    })
}

fn pshufw(c: &mut Ctx) -> R {
    let d = vector::dst(c)?;
    let s = vector::read(c, 1)?;
    let imm = u32::from(c.i.immediate8());
    let r = vector::from_lanes(16, 4, |k| vector::lane(s, 16, (imm >> (2 * k)) & 3));
    vector::set(c, d, r);
    Ok(())
}

/// MASKMOVQ/MASKMOVDQU: stores the bytes of operand 1 whose mask byte (operand 2) has its top
/// bit set to [RDI] (DS, or the segment override), leaving the others untouched.
fn maskmov(c: &mut Ctx) -> R {
    let width = Vreg::of(c.i.op_register(1)).map_or(128, Vreg::width);
    let v = vector::read(c, 1)?;
    let mask = vector::read(c, 2)?;
    let rdi = match c.i.op0_kind() {
        OpKind::MemorySegEDI => c.cpu.gpr[7] & 0xffff_ffff,
        OpKind::MemorySegDI => c.cpu.gpr[7] & 0xffff,
        _ => c.cpu.gpr[7],
    };
    let la = c.lin(c.i.memory_segment(), rdi)?;
    let bytes = v.to_le_bytes();
    let mbytes = mask.to_le_bytes();
    let selected: Vec<usize> =
        (0..(width / 8) as usize).filter(|&k| mbytes[k] & 0x80 != 0).collect();
    // All selected bytes are checked before any is written.
    for &k in &selected {
        c.cpu.probe_write(la.wrapping_add(k as u64), 1, Priv::Current)?;
    }
    for &k in &selected {
        c.cpu.write_lin(c.io, la.wrapping_add(k as u64), &bytes[k..k + 1], Priv::Current)?;
    }
    Ok(())
}
