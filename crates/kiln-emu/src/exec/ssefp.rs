//! SSE/SSE2 floating point: arithmetic, square roots, min/max, compares (CMPxx, COMIS/UCOMIS),
//! conversions, and the float unpacks.
//!
//! The arithmetic unit is the host's: each operation runs as the same SSE instruction on the
//! host under the guest's MXCSR (rounding mode, DAZ, FTZ) with all exceptions masked, and the
//! exception flags it raises are merged into the guest's MXCSR. An exception the guest left
//! unmasked then raises #XM (or #UD without CR4.OSXMMEXCPT) before the destination is written.
//! This makes results bit-exact with an x86 FPU, including NaN propagation; it ties this module
//! to x86-64 hosts, which is where Kiln runs. RCPPS/RSQRTPS approximations are the host model's.

use super::vector::{self, Vreg};
use super::{Ctx, R};
use crate::cpu;
use crate::fault::{Exception, Vector};
use crate::mmu::Priv;
use core::arch::asm;
use core::arch::x86_64::__m128i;
use iced_x86::{Mnemonic, OpKind, Register};

fn to_m128(v: u128) -> __m128i {
    // SAFETY: __m128i is 16 bytes of plain data, as is u128; every bit pattern is valid.
    unsafe { core::mem::transmute::<u128, __m128i>(v) }
}

fn from_m128(v: __m128i) -> u128 {
    // SAFETY: as for `to_m128`.
    unsafe { core::mem::transmute::<__m128i, u128>(v) }
}

/// Runs one two-operand SSE instruction on the host: `insn dst, src` under `mxcsr`.
macro_rules! host2 {
    ($insn:literal, $a:expr, $b:expr, $mx:expr) => {{
        let mut a = to_m128($a);
        let b = to_m128($b);
        let mut mx: u32 = $mx;
        let mut saved: u32 = 0;
        // SAFETY: saves the host MXCSR, loads the guest's (all exceptions masked, so the host
        // instruction cannot trap), runs one SSE instruction on registers, stores the resulting
        // MXCSR and restores the host's. Only the two local u32s are accessed in memory.
        unsafe {
            asm!(
                "stmxcsr [{saved}]",
                "ldmxcsr [{mx}]",
                concat!($insn, " {a}, {b}"),
                "stmxcsr [{mx}]",
                "ldmxcsr [{saved}]",
                a = inout(xmm_reg) a,
                b = in(xmm_reg) b,
                mx = in(reg) &mut mx,
                saved = in(reg) &mut saved,
                options(nostack),
            );
        }
        (from_m128(a), mx)
    }};
}

/// Like `host2!` with an immediate operand (a constant expression).
macro_rules! host2i {
    ($insn:literal, $imm:expr, $a:expr, $b:expr, $mx:expr) => {{
        let mut a = to_m128($a);
        let b = to_m128($b);
        let mut mx: u32 = $mx;
        let mut saved: u32 = 0;
        // SAFETY: as in `host2!`.
        unsafe {
            asm!(
                "stmxcsr [{saved}]",
                "ldmxcsr [{mx}]",
                concat!($insn, " {a}, {b}, {imm}"),
                "stmxcsr [{mx}]",
                "ldmxcsr [{saved}]",
                a = inout(xmm_reg) a,
                b = in(xmm_reg) b,
                imm = const $imm,
                mx = in(reg) &mut mx,
                saved = in(reg) &mut saved,
                options(nostack),
            );
        }
        (from_m128(a), mx)
    }};
}

/// Runs `insn a, b, imm` on the host for a run-time `imm`: one arm per listed value, the last
/// value for every other.
macro_rules! host2_by_imm {
    ($insn:literal, $imm:expr, $a:expr, $b:expr, $mx:expr; $($n:literal)* ; $last:literal) => {
        match $imm {
            $($n => host2i!($insn, $n, $a, $b, $mx),)*
            _ => host2i!($insn, $last, $a, $b, $mx),
        }
    };
}

/// A float-to-integer conversion on the host: `insn gpr, xmm`.
macro_rules! host_to_int {
    ($insn:literal, $reg:literal, $b:expr, $mx:expr) => {{
        let mut out: u64 = 0;
        let b = to_m128($b);
        let mut mx: u32 = $mx;
        let mut saved: u32 = 0;
        // SAFETY: as in `host2!`, with a general register destination.
        unsafe {
            asm!(
                "stmxcsr [{saved}]",
                "ldmxcsr [{mx}]",
                concat!($insn, " {out", $reg, "}, {b}"),
                "stmxcsr [{mx}]",
                "ldmxcsr [{saved}]",
                out = inout(reg) out,
                b = in(xmm_reg) b,
                mx = in(reg) &mut mx,
                saved = in(reg) &mut saved,
                options(nostack),
            );
        }
        (out, mx)
    }};
}

/// An integer-to-float conversion on the host: `insn xmm, gpr`.
macro_rules! host_from_int {
    ($insn:literal, $reg:literal, $a:expr, $v:expr, $mx:expr) => {{
        let mut a = to_m128($a);
        let v: u64 = $v;
        let mut mx: u32 = $mx;
        let mut saved: u32 = 0;
        // SAFETY: as in `host2!`, with a general register source.
        unsafe {
            asm!(
                "stmxcsr [{saved}]",
                "ldmxcsr [{mx}]",
                concat!($insn, " {a}, {v", $reg, "}"),
                "stmxcsr [{mx}]",
                "ldmxcsr [{saved}]",
                a = inout(xmm_reg) a,
                v = in(reg) v,
                mx = in(reg) &mut mx,
                saved = in(reg) &mut saved,
                options(nostack),
            );
        }
        (from_m128(a), mx)
    }};
}

/// COMISS/COMISD/UCOMISS/UCOMISD on the host, returning RFLAGS.
macro_rules! host_compare {
    ($insn:literal, $a:expr, $b:expr, $mx:expr) => {{
        let a = to_m128($a);
        let b = to_m128($b);
        let mut mx: u32 = $mx;
        let mut saved: u32 = 0;
        let fl: u64;
        // SAFETY: as in `host2!`; PUSHFQ/POP read the flags the compare set (uses the stack).
        unsafe {
            asm!(
                "stmxcsr [{saved}]",
                "ldmxcsr [{mx}]",
                concat!($insn, " {a}, {b}"),
                "pushfq",
                "pop {fl}",
                "stmxcsr [{mx}]",
                "ldmxcsr [{saved}]",
                a = in(xmm_reg) a,
                b = in(xmm_reg) b,
                fl = out(reg) fl,
                mx = in(reg) &mut mx,
                saved = in(reg) &mut saved,
            );
        }
        (fl, mx)
    }};
}

fn is_xmm(r: Register) -> bool {
    (Register::XMM0 as u32..=Register::XMM15 as u32).contains(&(r as u32))
}

fn xmm_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

/// True for the mnemonics this module implements.
pub(super) fn handles(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Addss
            | M::Addsd
            | M::Addps
            | M::Addpd
            | M::Subss
            | M::Subsd
            | M::Subps
            | M::Subpd
            | M::Mulss
            | M::Mulsd
            | M::Mulps
            | M::Mulpd
            | M::Divss
            | M::Divsd
            | M::Divps
            | M::Divpd
            | M::Minss
            | M::Minsd
            | M::Minps
            | M::Minpd
            | M::Maxss
            | M::Maxsd
            | M::Maxps
            | M::Maxpd
            | M::Sqrtss
            | M::Sqrtsd
            | M::Sqrtps
            | M::Sqrtpd
            | M::Rcpps
            | M::Rcpss
            | M::Rsqrtps
            | M::Rsqrtss
            | M::Unpcklps
            | M::Unpckhps
            | M::Unpcklpd
            | M::Unpckhpd
            | M::Cvtss2sd
            | M::Cvtsd2ss
            | M::Cvtps2pd
            | M::Cvtpd2ps
            | M::Cvtdq2ps
            | M::Cvtps2dq
            | M::Cvttps2dq
            | M::Cvtdq2pd
            | M::Cvtpd2dq
            | M::Cvttpd2dq
            | M::Cmpps
            | M::Cmppd
            | M::Cmpss
            | M::Cmpsd
            | M::Comiss
            | M::Comisd
            | M::Ucomiss
            | M::Ucomisd
            | M::Cvtsi2ss
            | M::Cvtsi2sd
            | M::Cvtss2si
            | M::Cvtsd2si
            | M::Cvttss2si
            | M::Cvttsd2si
            | M::Cvtpi2ps
            | M::Cvtps2pi
            | M::Cvttps2pi
            | M::Cvtpi2pd
            | M::Cvtpd2pi
            | M::Cvttpd2pi
            | M::Addsubps
            | M::Addsubpd
            | M::Haddps
            | M::Haddpd
            | M::Hsubps
            | M::Hsubpd
            | M::Roundps
            | M::Roundpd
            | M::Roundss
            | M::Roundsd
            | M::Dpps
            | M::Dppd
    )
}

/// Reads the source operand `n` (register or memory of the instruction's memory size, with the
/// alignment check of 16-byte legacy-SSE operands).
fn source(c: &mut Ctx, n: u32) -> Result<u128, Exception> {
    match c.i.op_kind(n) {
        OpKind::Register => {
            let r = c.i.op_register(n);
            match Vreg::of(r) {
                Some(v) => Ok(vector::get(c, v)),
                None => Ok(u128::from(c.cpu.reg(r))),
            }
        }
        OpKind::Memory => {
            let la = c.mem_lin()?;
            let size = c.i.memory_size().size().min(16);
            if size == 16 && la % 16 != 0 {
                return Err(Exception::gp(0));
            }
            let mut b = [0u8; 16];
            c.cpu.read_lin(c.io, la, &mut b[..size], Priv::Current)?;
            Ok(u128::from_le_bytes(b))
        }
        _ => Err(Exception::ud()),
    }
}

/// Merges the flags an operation raised into MXCSR and raises #XM/#UD for unmasked ones. An
/// unmasked pre-computation exception (invalid, denormal, divide by zero) stops the
/// instruction before the post-computation flags (overflow, underflow, precision) arise.
///
/// Known gaps, with OM or UM unmasked only: hardware reports underflow for tiny exact results,
/// and sets PE from the bias-adjusted result, neither of which the masked host run shows.
fn settle(c: &mut Ctx, after: u32) -> Result<(), Exception> {
    let raised = after & 0x3f;
    let guest = c.cpu.mxcsr;
    let masks = (guest >> 7) & 0x3f;
    let pre = raised & 0x07;
    let recorded = if pre & !masks != 0 { pre } else { raised };
    c.cpu.mxcsr = guest | recorded;
    if recorded & !masks != 0 {
        return Err(if c.cpu.cr4 & cpu::CR4_OSXMMEXCPT != 0 {
            Exception::new(Vector::XM)
        } else {
            Exception::ud()
        });
    }
    Ok(())
}

/// Records the flags of `steps` (each the flags one step of a multi-step instruction raised) up
/// to and including the first that raises an unmasked exception, that one as `settle` would,
/// and returns the exception.
fn settle_steps(c: &mut Ctx, steps: &[u32]) -> Exception {
    let masks = (c.cpu.mxcsr >> 7) & 0x3f;
    for &f in steps {
        let raised = f & 0x3f;
        if raised & !masks != 0 {
            let pre = raised & 0x07;
            c.cpu.mxcsr |= if pre & !masks != 0 { pre } else { raised };
            break;
        }
        c.cpu.mxcsr |= raised;
    }
    if c.cpu.cr4 & cpu::CR4_OSXMMEXCPT != 0 {
        Exception::new(Vector::XM)
    } else {
        Exception::ud()
    }
}

/// The MXCSR to run a host operation under: the guest's controls, flags clear, all masked.
fn host_mxcsr(c: &Ctx) -> u32 {
    (c.cpu.mxcsr & 0xffc0) | 0x1f80
}

/// Executes an SSE floating-point instruction (availability checked by the caller).
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    let mx = host_mxcsr(c);
    match m {
        M::Comiss | M::Comisd | M::Ucomiss | M::Ucomisd => {
            let a = source(c, 0)?;
            let b = source(c, 1)?;
            let (fl, after) = match m {
                M::Comiss => host_compare!("comiss", a, b, mx),
                M::Comisd => host_compare!("comisd", a, b, mx),
                M::Ucomiss => host_compare!("ucomiss", a, b, mx),
                _ => host_compare!("ucomisd", a, b, mx),
            };
            settle(c, after)?;
            c.cpu.set_arith(fl & (crate::flags::ZF | crate::flags::PF | crate::flags::CF));
            return Ok(());
        }
        M::Cvtss2si | M::Cvtsd2si | M::Cvttss2si | M::Cvttsd2si => {
            let b = source(c, 1)?;
            let wide = c.i.op_register(0).size() == 8;
            let (v, after) = match (m, wide) {
                (M::Cvtss2si, true) => host_to_int!("cvtss2si", "", b, mx),
                (M::Cvtss2si, false) => host_to_int!("cvtss2si", ":e", b, mx),
                (M::Cvtsd2si, true) => host_to_int!("cvtsd2si", "", b, mx),
                (M::Cvtsd2si, false) => host_to_int!("cvtsd2si", ":e", b, mx),
                (M::Cvttss2si, true) => host_to_int!("cvttss2si", "", b, mx),
                (M::Cvttss2si, false) => host_to_int!("cvttss2si", ":e", b, mx),
                (_, true) => host_to_int!("cvttsd2si", "", b, mx),
                (_, false) => host_to_int!("cvttsd2si", ":e", b, mx),
            };
            settle(c, after)?;
            c.write(0, v)?;
            return Ok(());
        }
        M::Cvtps2pi | M::Cvttps2pi | M::Cvtpd2pi | M::Cvttpd2pi => {
            // To an MMX register: two 32-bit integers.
            let d = vector::dst(c)?;
            let lo = u128::from(u64::MAX);
            let b = source(c, 1)?;
            let (r, after) = match m {
                M::Cvtps2pi => host2!("cvtps2dq", 0, b & lo, mx),
                M::Cvttps2pi => host2!("cvttps2dq", 0, b & lo, mx),
                M::Cvtpd2pi => host2!("cvtpd2dq", 0, b, mx),
                _ => host2!("cvttpd2dq", 0, b, mx),
            };
            settle(c, after)?;
            vector::set(c, d, r & lo);
            return Ok(());
        }
        _ => {}
    }
    let d = match c.i.op0_kind() {
        OpKind::Register if is_xmm(c.i.op_register(0)) => xmm_index(c.i.op_register(0)),
        _ => return Err(Exception::ud().into()),
    };
    let a = c.cpu.xmm[d];
    let (r, after) = match m {
        M::Cvtsi2ss | M::Cvtsi2sd => {
            let v = source(c, 1)? as u64;
            let wide = c.op_size(1) == 8;
            match (m, wide) {
                (M::Cvtsi2ss, true) => host_from_int!("cvtsi2ss", "", a, v, mx),
                (M::Cvtsi2ss, false) => host_from_int!("cvtsi2ss", ":e", a, v, mx),
                (_, true) => host_from_int!("cvtsi2sd", "", a, v, mx),
                (_, false) => host_from_int!("cvtsi2sd", ":e", a, v, mx),
            }
        }
        M::Cmpps | M::Cmppd | M::Cmpss | M::Cmpsd => {
            let b = source(c, 1)?;
            compare(m, c.i.immediate8() & 7, a, b, mx)
        }
        M::Cvtpi2ps => {
            // From two 32-bit integers into the low half; the high half is kept.
            let lo = u128::from(u64::MAX);
            let b = source(c, 1)? & lo;
            let (r, after) = host2!("cvtdq2ps", 0, b, mx);
            ((a & !lo) | (r & lo), after)
        }
        M::Cvtpi2pd => {
            let b = source(c, 1)? & u128::from(u64::MAX);
            host2!("cvtdq2pd", 0, b, mx)
        }
        M::Roundps | M::Roundpd | M::Roundss | M::Roundsd => {
            let b = source(c, 1)?;
            round(m, c.i.immediate8() & 0xf, a, b, mx)
        }
        M::Dpps | M::Dppd => {
            let b = source(c, 1)?;
            let (single, imm) = (m == M::Dpps, c.i.immediate8());
            let (r, after) = dot(single, imm, a, b, mx);
            let masks = (c.cpu.mxcsr >> 7) & 0x3f;
            if after & 0x3f & !masks != 0 {
                // An unmasked exception stops it at the step that raises it; the flags of the
                // steps before are recorded.
                return Err(settle_steps(c, &dot_steps(single, imm, a, b, mx)).into());
            }
            (r, after)
        }
        _ => {
            let b = source(c, 1)?;
            arith(m, a, b, mx).ok_or(Exception::ud())?
        }
    };
    settle(c, after)?;
    c.cpu.xmm[d] = r;
    Ok(())
}

fn arith(m: Mnemonic, a: u128, b: u128, mx: u32) -> Option<(u128, u32)> {
    use Mnemonic as M;
    Some(match m {
        M::Addss => host2!("addss", a, b, mx),
        M::Addsd => host2!("addsd", a, b, mx),
        M::Addps => host2!("addps", a, b, mx),
        M::Addpd => host2!("addpd", a, b, mx),
        M::Subss => host2!("subss", a, b, mx),
        M::Subsd => host2!("subsd", a, b, mx),
        M::Subps => host2!("subps", a, b, mx),
        M::Subpd => host2!("subpd", a, b, mx),
        M::Mulss => host2!("mulss", a, b, mx),
        M::Mulsd => host2!("mulsd", a, b, mx),
        M::Mulps => host2!("mulps", a, b, mx),
        M::Mulpd => host2!("mulpd", a, b, mx),
        M::Divss => host2!("divss", a, b, mx),
        M::Divsd => host2!("divsd", a, b, mx),
        M::Divps => host2!("divps", a, b, mx),
        M::Divpd => host2!("divpd", a, b, mx),
        M::Minss => host2!("minss", a, b, mx),
        M::Minsd => host2!("minsd", a, b, mx),
        M::Minps => host2!("minps", a, b, mx),
        M::Minpd => host2!("minpd", a, b, mx),
        M::Maxss => host2!("maxss", a, b, mx),
        M::Maxsd => host2!("maxsd", a, b, mx),
        M::Maxps => host2!("maxps", a, b, mx),
        M::Maxpd => host2!("maxpd", a, b, mx),
        M::Sqrtss => host2!("sqrtss", a, b, mx),
        M::Sqrtsd => host2!("sqrtsd", a, b, mx),
        M::Sqrtps => host2!("sqrtps", a, b, mx),
        M::Sqrtpd => host2!("sqrtpd", a, b, mx),
        M::Rcpps => host2!("rcpps", a, b, mx),
        M::Rcpss => host2!("rcpss", a, b, mx),
        M::Rsqrtps => host2!("rsqrtps", a, b, mx),
        M::Rsqrtss => host2!("rsqrtss", a, b, mx),
        M::Unpcklps => host2!("unpcklps", a, b, mx),
        M::Unpckhps => host2!("unpckhps", a, b, mx),
        M::Unpcklpd => host2!("unpcklpd", a, b, mx),
        M::Unpckhpd => host2!("unpckhpd", a, b, mx),
        M::Cvtss2sd => host2!("cvtss2sd", a, b, mx),
        M::Cvtsd2ss => host2!("cvtsd2ss", a, b, mx),
        M::Cvtps2pd => host2!("cvtps2pd", a, b, mx),
        M::Cvtpd2ps => host2!("cvtpd2ps", a, b, mx),
        M::Cvtdq2ps => host2!("cvtdq2ps", a, b, mx),
        M::Cvtps2dq => host2!("cvtps2dq", a, b, mx),
        M::Cvttps2dq => host2!("cvttps2dq", a, b, mx),
        M::Cvtdq2pd => host2!("cvtdq2pd", a, b, mx),
        M::Cvtpd2dq => host2!("cvtpd2dq", a, b, mx),
        M::Cvttpd2dq => host2!("cvttpd2dq", a, b, mx),
        M::Addsubps => host2!("addsubps", a, b, mx),
        M::Addsubpd => host2!("addsubpd", a, b, mx),
        M::Haddps => host2!("haddps", a, b, mx),
        M::Haddpd => host2!("haddpd", a, b, mx),
        M::Hsubps => host2!("hsubps", a, b, mx),
        M::Hsubpd => host2!("hsubpd", a, b, mx),
        _ => return None,
    })
}

/// ROUNDPS/ROUNDPD/ROUNDSS/ROUNDSD with control `p` (imm8[3:0]: precision-exception
/// suppression, MXCSR or immediate rounding mode).
fn round(m: Mnemonic, p: u8, a: u128, b: u128, mx: u32) -> (u128, u32) {
    use Mnemonic as M;
    match m {
        M::Roundps => host2_by_imm!("roundps", p, a, b, mx; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14; 15),
        M::Roundpd => host2_by_imm!("roundpd", p, a, b, mx; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14; 15),
        M::Roundss => host2_by_imm!("roundss", p, a, b, mx; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14; 15),
        _ => host2_by_imm!("roundsd", p, a, b, mx; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14; 15),
    }
}

/// The flags each step of DPPS/DPPD raises, in order: the selected products, the pairwise sums,
/// and (DPPS) the final sum, each as scalar operations on the host.
fn dot_steps(single: bool, imm: u8, a: u128, b: u128, mx: u32) -> Vec<u32> {
    let (bits, n) = if single { (32, 4) } else { (64, 2) };
    let op = |mul: bool, x: u64, y: u64| -> (u64, u32) {
        let (x, y) = (u128::from(x), u128::from(y));
        let (r, after) = match (single, mul) {
            (true, true) => host2!("mulss", x, y, mx),
            (true, false) => host2!("addss", x, y, mx),
            (false, true) => host2!("mulsd", x, y, mx),
            (false, false) => host2!("addsd", x, y, mx),
        };
        (vector::lane(r, bits, 0), after & 0x3f)
    };
    let mut t = [0u64; 4];
    let mut products = 0;
    for (k, slot) in t.iter_mut().enumerate().take(n) {
        if imm >> (4 + k) & 1 != 0 {
            let (p, f) = op(true, vector::lane(a, bits, k as u32), vector::lane(b, bits, k as u32));
            *slot = p;
            products |= f;
        }
    }
    if !single {
        return vec![products, op(false, t[0], t[1]).1];
    }
    let (low, f1) = op(false, t[0], t[1]);
    let (high, f2) = op(false, t[2], t[3]);
    vec![products, f1 | f2, op(false, low, high).1]
}

/// DPPS (`single`) / DPPD with control `imm`, on the host's unit (the products, sums and
/// flags are the hardware's, including for the lanes imm8[7:4] leaves out).
fn dot(single: bool, imm: u8, a: u128, b: u128, mx: u32) -> (u128, u32) {
    if single {
        host2_by_imm!("dpps", imm, a, b, mx; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 151 152 153 154 155 156 157 158 159 160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191 192 193 194 195 196 197 198 199 200 201 202 203 204 205 206 207 208 209 210 211 212 213 214 215 216 217 218 219 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254; 255)
    } else {
        host2_by_imm!("dppd", imm, a, b, mx; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 151 152 153 154 155 156 157 158 159 160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191 192 193 194 195 196 197 198 199 200 201 202 203 204 205 206 207 208 209 210 211 212 213 214 215 216 217 218 219 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254; 255)
    }
}

/// CMPPS/CMPPD/CMPSS/CMPSD with predicate `p` (0..8).
fn compare(m: Mnemonic, p: u8, a: u128, b: u128, mx: u32) -> (u128, u32) {
    use Mnemonic as M;
    match m {
        M::Cmpps => host2_by_imm!("cmpps", p, a, b, mx; 0 1 2 3 4 5 6; 7),
        M::Cmppd => host2_by_imm!("cmppd", p, a, b, mx; 0 1 2 3 4 5 6; 7),
        M::Cmpss => host2_by_imm!("cmpss", p, a, b, mx; 0 1 2 3 4 5 6; 7),
        _ => host2_by_imm!("cmpsd", p, a, b, mx; 0 1 2 3 4 5 6; 7),
    }
}
