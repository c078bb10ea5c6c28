//! Vector operands shared by the SSE, MMX, SSSE3 and SSE4 families: the XMM and MMX register
//! files behind one index, operand reads with legacy SSE's alignment rule, and lane helpers.
//!
//! A vector value is a `u128`; MMX operands use its low 64 bits (a 64-bit `width`), and writing
//! an MMX register keeps only those.

use super::Ctx;
use crate::fault::Exception;
use crate::mmu::Priv;
use iced_x86::{Mnemonic, OpKind, Register};

/// A vector register: XMM0-15 or MM0-7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Vreg {
    Xmm(usize),
    Mm(usize),
}

impl Vreg {
    pub(super) fn of(r: Register) -> Option<Vreg> {
        let n = r as usize;
        if is_xmm(r) {
            Some(Vreg::Xmm(n - Register::XMM0 as usize))
        } else if is_mmx_reg(r) {
            Some(Vreg::Mm(n - Register::MM0 as usize))
        } else {
            None
        }
    }

    /// Bits of the register: 128 or 64.
    pub(super) fn width(self) -> u32 {
        match self {
            Vreg::Xmm(_) => 128,
            Vreg::Mm(_) => 64,
        }
    }
}

pub(super) fn is_xmm(r: Register) -> bool {
    (Register::XMM0 as u32..=Register::XMM15 as u32).contains(&(r as u32))
}

pub(super) fn is_mmx_reg(r: Register) -> bool {
    (Register::MM0 as u32..=Register::MM7 as u32).contains(&(r as u32))
}

/// True if an operand of the instruction is an MMX register (an MMX-form instruction).
pub(super) fn uses_mmx(c: &Ctx) -> bool {
    (0..c.i.op_count())
        .any(|n| c.i.op_kind(n) == OpKind::Register && is_mmx_reg(c.i.op_register(n)))
}

/// The value of a vector register.
pub(super) fn get(c: &Ctx, v: Vreg) -> u128 {
    match v {
        Vreg::Xmm(k) => c.cpu.xmm[k],
        Vreg::Mm(k) => u128::from(super::mmx::get(&c.cpu.fpu, k)),
    }
}

/// Sets a vector register (an MMX register takes the low 64 bits).
pub(super) fn set(c: &mut Ctx, v: Vreg, x: u128) {
    match v {
        Vreg::Xmm(k) => c.cpu.xmm[k] = x,
        Vreg::Mm(k) => super::mmx::set(&mut c.cpu.fpu, k, x as u64),
    }
}

/// The destination register (operand 0), which must be a vector register.
pub(super) fn dst(c: &Ctx) -> Result<Vreg, Exception> {
    if c.i.op0_kind() != OpKind::Register {
        return Err(Exception::ud());
    }
    Vreg::of(c.i.op_register(0)).ok_or_else(Exception::ud)
}

/// Legacy SSE requires 16-byte memory operands to be aligned, except for the explicitly
/// unaligned loads and the SSE4.2 string compares.
fn must_align(c: &Ctx) -> bool {
    use Mnemonic as M;
    c.i.memory_size().size() == 16
        && !matches!(
            c.i.mnemonic(),
            M::Movdqu
                | M::Movups
                | M::Movupd
                | M::Lddqu
                | M::Pcmpestri
                | M::Pcmpestri64
                | M::Pcmpestrm
                | M::Pcmpestrm64
                | M::Pcmpistri
                | M::Pcmpistrm
        )
}

/// Reads operand `n` as up to 128 bits: a vector or general register, memory of the
/// instruction's memory size (with legacy SSE's alignment check), or an immediate.
pub(super) fn read(c: &mut Ctx, n: u32) -> Result<u128, Exception> {
    match c.i.op_kind(n) {
        OpKind::Register => {
            let r = c.i.op_register(n);
            match Vreg::of(r) {
                Some(v) => Ok(get(c, v)),
                None => Ok(u128::from(c.cpu.reg(r))),
            }
        }
        OpKind::Memory => {
            let la = c.mem_lin()?;
            if must_align(c) && la % 16 != 0 {
                return Err(Exception::gp(0));
            }
            let size = c.i.memory_size().size().min(16);
            let mut b = [0u8; 16];
            c.cpu.read_lin(c.io, la, &mut b[..size], Priv::Current)?;
            Ok(u128::from_le_bytes(b))
        }
        _ => Ok(u128::from(c.i.immediate(n))),
    }
}

/// Writes `bytes` bytes of `v` to the memory operand.
pub(super) fn write_mem(
    c: &mut Ctx,
    v: u128,
    bytes: usize,
    aligned: bool,
) -> Result<(), Exception> {
    let la = c.mem_lin()?;
    if aligned && la % 16 != 0 {
        return Err(Exception::gp(0));
    }
    c.cpu.write_lin(c.io, la, &v.to_le_bytes()[..bytes], Priv::Current)
}

/// Writes a general register destination (operand 0) with its full 64-bit register.
pub(super) fn set_gpr64(c: &mut Ctx, v: u64) {
    let r = c.i.op_register(0);
    let idx = (r.full_register() as usize).wrapping_sub(Register::RAX as usize);
    c.cpu.set_gpr_sized(idx & 15, 8, v);
}

/// The mask of a vector `width` (64 or 128 bits).
pub(super) fn width_mask(width: u32) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// Lane `k` of `bits` bits of `v`.
pub(super) fn lane(v: u128, bits: u32, k: u32) -> u64 {
    ((v >> (k * bits)) & width_mask(bits)) as u64
}

/// Applies `f` lane by lane on lanes of `bits` bits.
pub(super) fn lanes(a: u128, b: u128, bits: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    let n = 128 / bits;
    let m = width_mask(bits);
    let mut out = 0u128;
    for k in 0..n {
        let x = ((a >> (k * bits)) & m) as u64;
        let y = ((b >> (k * bits)) & m) as u64;
        out |= (u128::from(f(x, y)) & m) << (k * bits);
    }
    out
}

/// Builds a vector from `n` lanes of `bits` bits.
pub(super) fn from_lanes(bits: u32, n: u32, f: impl Fn(u32) -> u64) -> u128 {
    (0..n).fold(0u128, |acc, k| acc | ((u128::from(f(k)) & width_mask(bits)) << (k * bits)))
}

pub(super) fn sx(v: u64, bits: u32) -> i64 {
    let s = 64 - bits;
    ((v << s) as i64) >> s
}

pub(super) fn sat_s(v: i64, bits: u32) -> u64 {
    let max = (1i64 << (bits - 1)) - 1;
    let min = -(1i64 << (bits - 1));
    v.clamp(min, max) as u64
}

pub(super) fn sat_u(v: i64, bits: u32) -> u64 {
    v.clamp(0, (1i64 << bits) - 1) as u64
}

/// PUNPCKL*/PUNPCKH*: interleaves the low (or high) halves of `a` and `b` of a `width`-bit
/// vector.
pub(super) fn unpack(a: u128, b: u128, bits: u32, high: bool, width: u32) -> u128 {
    let n = width / 2 / bits;
    let m = width_mask(bits);
    let base = if high { width / 2 } else { 0 };
    let mut out = 0u128;
    for k in 0..n {
        let x = (a >> (base + k * bits)) & m;
        let y = (b >> (base + k * bits)) & m;
        out |= x << (2 * k * bits);
        out |= y << ((2 * k + 1) * bits);
    }
    out
}

/// Signed or unsigned saturating packs of `a` then `b` from `src_bits` to `dst_bits` lanes.
pub(super) fn pack(
    a: u128,
    b: u128,
    src_bits: u32,
    dst_bits: u32,
    signed: bool,
    width: u32,
) -> u128 {
    let n = width / src_bits;
    let mut out = 0u128;
    for (half, v) in [a, b].iter().enumerate() {
        for k in 0..n {
            let x = sx(lane(*v, src_bits, k), src_bits);
            let s = if signed { sat_s(x, dst_bits) } else { sat_u(x, dst_bits) };
            out |= u128::from(s & ((1u64 << dst_bits) - 1)) << ((half as u32 * n + k) * dst_bits);
        }
    }
    out
}
