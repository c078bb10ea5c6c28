//! SSE/SSE2 moves, logic and packed-integer operations on XMM registers, MXCSR,
//! FXSAVE/FXRSTOR and FWAIT, and the routing of the x87 and SSE floating-point instructions.
//!
//! x87 arithmetic lives in `x87.rs`, SSE/SSE2 floating point in `ssefp.rs`. Not implemented
//! (raise #UD): MMX forms of the packed-integer instructions, SSE3 and later.

use super::{Ctx, R};
use crate::cpu::{self, MXCSR_MASK};
use crate::fault::{Exception, Vector};
use crate::mmu::Priv;
use iced_x86::{Mnemonic, OpKind, Register};

/// Executes `m` if it is in the implemented SSE/x87-control subset.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    let r = match m {
        M::Wait => fwait(c),
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => fxsave(c, m),
        M::Ldmxcsr | M::Stmxcsr => mxcsr(c, m),
        M::Movnti => movnti(c),
        _ if is_x87(m) => super::x87::exec(c),
        _ if super::ssefp::handles(m) => {
            if uses_mmx(c) {
                return Some(Err(Exception::ud().into()));
            }
            sse_available(c).map_err(Into::into).and_then(|()| super::ssefp::exec(c, m))
        }
        _ => {
            if !is_sse(m) {
                return None;
            }
            if uses_mmx(c) {
                return Some(Err(Exception::ud().into()));
            }
            sse_available(c).map_err(Into::into).and_then(|()| sse(c, m))
        }
    };
    Some(r)
}

/// x87 instructions other than the control ones handled here.
fn is_x87(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::F2xm1
            | M::Fabs
            | M::Fadd
            | M::Faddp
            | M::Fbld
            | M::Fbstp
            | M::Fchs
            | M::Fcmovb
            | M::Fcmovbe
            | M::Fcmove
            | M::Fcmovnb
            | M::Fcmovnbe
            | M::Fcmovne
            | M::Fcmovnu
            | M::Fcmovu
            | M::Fcom
            | M::Fcomi
            | M::Fcomip
            | M::Fcomp
            | M::Fcompp
            | M::Fcos
            | M::Fdecstp
            | M::Fdiv
            | M::Fdivp
            | M::Fdivr
            | M::Fdivrp
            | M::Ffree
            | M::Fiadd
            | M::Ficom
            | M::Ficomp
            | M::Fidiv
            | M::Fidivr
            | M::Fild
            | M::Fimul
            | M::Fincstp
            | M::Fist
            | M::Fistp
            | M::Fisttp
            | M::Fisub
            | M::Fisubr
            | M::Fld
            | M::Fld1
            | M::Fldenv
            | M::Fldl2e
            | M::Fldl2t
            | M::Fldlg2
            | M::Fldln2
            | M::Fldpi
            | M::Fldz
            | M::Fmul
            | M::Fmulp
            | M::Fnop
            | M::Fnsave
            | M::Fnstenv
            | M::Fpatan
            | M::Fprem
            | M::Fprem1
            | M::Fptan
            | M::Frndint
            | M::Frstor
            | M::Fscale
            | M::Fsin
            | M::Fsincos
            | M::Fsqrt
            | M::Fst
            | M::Fstp
            | M::Fsub
            | M::Fsubp
            | M::Fsubr
            | M::Fsubrp
            | M::Ftst
            | M::Fucom
            | M::Fucomi
            | M::Fucomip
            | M::Fucomp
            | M::Fucompp
            | M::Fxam
            | M::Fxch
            | M::Fxtract
            | M::Fyl2x
            | M::Fyl2xp1
            | M::Fninit
            | M::Fnclex
            | M::Fnstsw
            | M::Fnstcw
            | M::Fldcw
    )
}

fn is_sse(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movdqa
            | M::Movdqu
            | M::Movaps
            | M::Movups
            | M::Movapd
            | M::Movupd
            | M::Movntdq
            | M::Movntps
            | M::Movntpd
            | M::Movd
            | M::Movq
            | M::Movss
            | M::Movsd
            | M::Movlps
            | M::Movhps
            | M::Movlpd
            | M::Movhpd
            | M::Movhlps
            | M::Movlhps
            | M::Pxor
            | M::Por
            | M::Pand
            | M::Pandn
            | M::Xorps
            | M::Xorpd
            | M::Orps
            | M::Orpd
            | M::Andps
            | M::Andpd
            | M::Andnps
            | M::Andnpd
            | M::Paddb
            | M::Paddw
            | M::Paddd
            | M::Paddq
            | M::Psubb
            | M::Psubw
            | M::Psubd
            | M::Psubq
            | M::Pcmpeqb
            | M::Pcmpeqw
            | M::Pcmpeqd
            | M::Pcmpgtb
            | M::Pcmpgtw
            | M::Pcmpgtd
            | M::Pminub
            | M::Pmaxub
            | M::Pminsw
            | M::Pmaxsw
            | M::Paddusb
            | M::Paddusw
            | M::Psubusb
            | M::Psubusw
            | M::Paddsb
            | M::Paddsw
            | M::Psubsb
            | M::Psubsw
            | M::Pavgb
            | M::Pavgw
            | M::Pmullw
            | M::Pmulhw
            | M::Pmulhuw
            | M::Pmuludq
            | M::Pmovmskb
            | M::Pinsrw
            | M::Pextrw
            | M::Pmaddwd
            | M::Psadbw
            | M::Movmskps
            | M::Movmskpd
            | M::Punpcklbw
            | M::Punpcklwd
            | M::Punpckldq
            | M::Punpcklqdq
            | M::Punpckhbw
            | M::Punpckhwd
            | M::Punpckhdq
            | M::Punpckhqdq
            | M::Pshufd
            | M::Pshuflw
            | M::Pshufhw
            | M::Shufps
            | M::Shufpd
            | M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psraw
            | M::Psrad
            | M::Pslldq
            | M::Psrldq
            | M::Packsswb
            | M::Packuswb
            | M::Packssdw
    )
}

fn is_mmx_reg(r: Register) -> bool {
    (Register::MM0 as u32..=Register::MM7 as u32).contains(&(r as u32))
}

fn uses_mmx(c: &Ctx) -> bool {
    (0..c.i.op_count())
        .any(|n| c.i.op_kind(n) == OpKind::Register && is_mmx_reg(c.i.op_register(n)))
}

/// #UD unless SSE is enabled (CR0.EM clear, CR4.OSFXSR set); #NM if CR0.TS is set.
fn sse_available(c: &Ctx) -> Result<(), Exception> {
    if c.cpu.cr0 & cpu::CR0_EM != 0 || c.cpu.cr4 & cpu::CR4_OSFXSR == 0 {
        return Err(Exception::ud());
    }
    if c.cpu.cr0 & cpu::CR0_TS != 0 {
        return Err(Exception::new(Vector::NM));
    }
    Ok(())
}

/// #NM if x87 instructions must trap (CR0.EM or CR0.TS).
fn x87_available(c: &Ctx, wait: bool) -> Result<(), Exception> {
    let cr0 = c.cpu.cr0;
    let trap = if wait {
        cr0 & cpu::CR0_TS != 0 && cr0 & cpu::CR0_MP != 0
    } else {
        cr0 & (cpu::CR0_EM | cpu::CR0_TS) != 0
    };
    if trap {
        return Err(Exception::new(Vector::NM));
    }
    Ok(())
}

fn xmm_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

fn is_xmm(r: Register) -> bool {
    (Register::XMM0 as u32..=Register::XMM15 as u32).contains(&(r as u32))
}

/// Legacy SSE requires 16-byte memory operands to be aligned, except for the explicitly
/// unaligned moves.
fn must_align(c: &Ctx) -> bool {
    c.i.memory_size().size() == 16
        && !matches!(c.i.mnemonic(), Mnemonic::Movdqu | Mnemonic::Movups | Mnemonic::Movupd)
}

/// Reads operand `n` as up to 128 bits (memory: the instruction's memory size, with the
/// alignment check of legacy SSE).
fn read_x(c: &mut Ctx, n: u32) -> Result<u128, Exception> {
    match c.i.op_kind(n) {
        OpKind::Register => {
            let r = c.i.op_register(n);
            if is_xmm(r) {
                Ok(c.cpu.xmm[xmm_index(r)])
            } else {
                Ok(u128::from(c.cpu.reg(r)))
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

/// Writes `bytes` bytes of `v` to memory operand `n`.
fn write_mem_x(c: &mut Ctx, v: u128, bytes: usize, aligned: bool) -> Result<(), Exception> {
    let la = c.mem_lin()?;
    if aligned && la % 16 != 0 {
        return Err(Exception::gp(0));
    }
    c.cpu.write_lin(c.io, la, &v.to_le_bytes()[..bytes], Priv::Current)
}

fn dst_xmm(c: &Ctx) -> Result<usize, Exception> {
    let r = c.i.op_register(0);
    if c.i.op0_kind() == OpKind::Register && is_xmm(r) {
        Ok(xmm_index(r))
    } else {
        Err(Exception::ud())
    }
}

/// Applies `f` lane by lane on lanes of `bits` bits.
fn lanes(a: u128, b: u128, bits: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    let n = 128 / bits;
    let m: u128 = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    let mut out = 0u128;
    for k in 0..n {
        let x = ((a >> (k * bits)) & m) as u64;
        let y = ((b >> (k * bits)) & m) as u64;
        out |= (u128::from(f(x, y)) & m) << (k * bits);
    }
    out
}

fn sx(v: u64, bits: u32) -> i64 {
    let s = 64 - bits;
    ((v << s) as i64) >> s
}

fn sat_s(v: i64, bits: u32) -> u64 {
    let max = (1i64 << (bits - 1)) - 1;
    let min = -(1i64 << (bits - 1));
    v.clamp(min, max) as u64
}

fn sat_u(v: i64, bits: u32) -> u64 {
    v.clamp(0, (1i64 << bits) - 1) as u64
}

fn unpack(a: u128, b: u128, bits: u32, high: bool) -> u128 {
    let n = 64 / bits;
    let m = (1u128 << bits) - 1;
    let base = if high { 64 } else { 0 };
    let mut out = 0u128;
    for k in 0..n {
        let x = (a >> (base + k * bits)) & m;
        let y = (b >> (base + k * bits)) & m;
        out |= x << (2 * k * bits);
        out |= y << ((2 * k + 1) * bits);
    }
    out
}

fn shift_count(c: &mut Ctx) -> Result<u64, Exception> {
    Ok(match c.i.op_kind(1) {
        OpKind::Immediate8 => u64::from(c.i.immediate8()),
        _ => read_x(c, 1)? as u64,
    })
}

fn sse(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    let op0_mem = c.i.op0_kind() == OpKind::Memory;
    match m {
        M::Movdqa | M::Movaps | M::Movapd | M::Movdqu | M::Movups | M::Movupd => {
            let aligned = matches!(m, M::Movdqa | M::Movaps | M::Movapd);
            if op0_mem {
                let v = read_x(c, 1)?;
                write_mem_x(c, v, 16, aligned)?;
            } else {
                // read_x checks alignment for the aligned forms.
                let d = dst_xmm(c)?;
                c.cpu.xmm[d] = read_x(c, 1)?;
            }
        }
        M::Movntdq | M::Movntps | M::Movntpd => {
            let v = read_x(c, 1)?;
            write_mem_x(c, v, 16, true)?;
        }
        M::Movd | M::Movq => {
            let bytes = if m == M::Movd { 4 } else { 8 };
            let mask = if bytes == 4 { 0xffff_ffffu128 } else { u128::from(u64::MAX) };
            let v = read_x(c, 1)? & mask;
            match c.i.op0_kind() {
                OpKind::Memory => write_mem_x(c, v, bytes, false)?,
                OpKind::Register if is_xmm(c.i.op_register(0)) => {
                    let d = dst_xmm(c)?;
                    c.cpu.xmm[d] = v;
                }
                _ => c.write(0, v as u64)?,
            }
        }
        M::Movss | M::Movsd => {
            let bytes = if m == M::Movss { 4 } else { 8 };
            let mask = (1u128 << (bytes * 8)) - 1;
            if op0_mem {
                let v = read_x(c, 1)?;
                write_mem_x(c, v, bytes, false)?;
            } else {
                let d = dst_xmm(c)?;
                let v = read_x(c, 1)? & mask;
                c.cpu.xmm[d] =
                    if c.i.op1_kind() == OpKind::Memory { v } else { (c.cpu.xmm[d] & !mask) | v };
            }
        }
        M::Movlps | M::Movlpd | M::Movhps | M::Movhpd => {
            let high = matches!(m, M::Movhps | M::Movhpd);
            if op0_mem {
                let v = read_x(c, 1)?;
                let v = if high { v >> 64 } else { v };
                write_mem_x(c, v, 8, false)?;
            } else {
                let d = dst_xmm(c)?;
                let v = read_x(c, 1)? & u128::from(u64::MAX);
                let old = c.cpu.xmm[d];
                c.cpu.xmm[d] = if high {
                    (old & u128::from(u64::MAX)) | (v << 64)
                } else {
                    (old & !u128::from(u64::MAX)) | v
                };
            }
        }
        M::Movhlps | M::Movlhps => {
            let d = dst_xmm(c)?;
            let s = read_x(c, 1)?;
            let old = c.cpu.xmm[d];
            let lo = u128::from(u64::MAX);
            c.cpu.xmm[d] =
                if m == M::Movhlps { (old & !lo) | (s >> 64) } else { (old & lo) | (s << 64) };
        }
        M::Pmovmskb | M::Movmskps | M::Movmskpd => {
            let s = read_x(c, 1)?;
            let bits = match m {
                M::Pmovmskb => 8,
                M::Movmskps => 32,
                _ => 64,
            };
            let mut mask = 0u64;
            for k in 0..128 / bits {
                mask |= (((s >> ((k + 1) * bits - 1)) & 1) as u64) << k;
            }
            let r = c.i.op_register(0);
            let idx = (r.full_register() as usize).wrapping_sub(Register::RAX as usize);
            c.cpu.set_gpr_sized(idx & 15, 8, mask);
        }
        M::Pinsrw => {
            let d = dst_xmm(c)?;
            let k = u32::from(c.i.immediate8() & 7);
            let v = read_x(c, 1)? & 0xffff;
            c.cpu.xmm[d] = (c.cpu.xmm[d] & !(0xffff << (16 * k))) | (v << (16 * k));
        }
        M::Pextrw => {
            // The SSE2 form: a general register destination (the SSE4.1 memory form is #UD).
            let r = c.i.op_register(0);
            if c.i.op0_kind() != OpKind::Register || is_xmm(r) {
                return Err(Exception::ud().into());
            }
            let k = u32::from(c.i.immediate8() & 7);
            let v = (read_x(c, 1)? >> (16 * k)) as u64 & 0xffff;
            let idx = (r.full_register() as usize).wrapping_sub(Register::RAX as usize);
            c.cpu.set_gpr_sized(idx & 15, 8, v);
        }
        M::Pmaddwd => {
            let d = dst_xmm(c)?;
            let s = read_x(c, 1)?;
            let a = c.cpu.xmm[d];
            let word = |v: u128, k: u32| i64::from((v >> (16 * k)) as u16 as i16);
            let mut r = 0u128;
            for k in 0..4 {
                let sum = word(a, 2 * k) * word(s, 2 * k) + word(a, 2 * k + 1) * word(s, 2 * k + 1);
                r |= u128::from(sum as u32) << (32 * k);
            }
            c.cpu.xmm[d] = r;
        }
        M::Psadbw => {
            let d = dst_xmm(c)?;
            let s = read_x(c, 1)?;
            let a = c.cpu.xmm[d];
            let mut r = 0u128;
            for half in 0..2 {
                let sum: u32 = (0..8)
                    .map(|k| {
                        let at = 64 * half + 8 * k;
                        u32::from(((a >> at) as u8).abs_diff((s >> at) as u8))
                    })
                    .sum();
                r |= u128::from(sum) << (64 * half);
            }
            c.cpu.xmm[d] = r;
        }
        M::Pshufd | M::Pshuflw | M::Pshufhw | M::Shufps | M::Shufpd => {
            let d = dst_xmm(c)?;
            let imm = u32::from(c.i.immediate8());
            let s = read_x(c, 1)?;
            let old = c.cpu.xmm[d];
            let w = |v: u128, bits: u32, k: u32| (v >> (k * bits)) & ((1u128 << bits) - 1);
            let mut r = 0u128;
            match m {
                M::Pshufd => {
                    for k in 0..4 {
                        r |= w(s, 32, (imm >> (2 * k)) & 3) << (32 * k);
                    }
                }
                M::Pshuflw => {
                    for k in 0..4 {
                        r |= w(s, 16, (imm >> (2 * k)) & 3) << (16 * k);
                    }
                    r |= s & !u128::from(u64::MAX);
                }
                M::Pshufhw => {
                    for k in 0..4 {
                        r |= w(s, 16, 4 + ((imm >> (2 * k)) & 3)) << (16 * (k + 4));
                    }
                    r |= s & u128::from(u64::MAX);
                }
                M::Shufps => {
                    r |= w(old, 32, imm & 3);
                    r |= w(old, 32, (imm >> 2) & 3) << 32;
                    r |= w(s, 32, (imm >> 4) & 3) << 64;
                    r |= w(s, 32, (imm >> 6) & 3) << 96;
                }
                _ => {
                    r |= w(old, 64, imm & 1);
                    r |= w(s, 64, (imm >> 1) & 1) << 64;
                }
            }
            c.cpu.xmm[d] = r;
        }
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => {
            let d = dst_xmm(c)?;
            let cnt = shift_count(c)?;
            let bits = match m {
                M::Psllw | M::Psrlw | M::Psraw => 16,
                M::Pslld | M::Psrld | M::Psrad => 32,
                _ => 64,
            };
            let a = c.cpu.xmm[d];
            c.cpu.xmm[d] = lanes(a, 0, bits, |x, _| match m {
                M::Psllw | M::Pslld | M::Psllq => {
                    if cnt >= u64::from(bits) {
                        0
                    } else {
                        x << cnt
                    }
                }
                M::Psrlw | M::Psrld | M::Psrlq => {
                    if cnt >= u64::from(bits) {
                        0
                    } else {
                        x >> cnt
                    }
                }
                _ => (sx(x, bits) >> cnt.min(u64::from(bits) - 1)) as u64,
            });
        }
        M::Pslldq | M::Psrldq => {
            let d = dst_xmm(c)?;
            let n = u32::from(c.i.immediate8());
            let a = c.cpu.xmm[d];
            c.cpu.xmm[d] = if n > 15 {
                0
            } else if m == M::Pslldq {
                a << (8 * n)
            } else {
                a >> (8 * n)
            };
        }
        _ => {
            let d = dst_xmm(c)?;
            let b = read_x(c, 1)?;
            let a = c.cpu.xmm[d];
            c.cpu.xmm[d] = binary(m, a, b)?;
        }
    }
    Ok(())
}

/// Two-operand packed operations `a op b`.
fn binary(m: Mnemonic, a: u128, b: u128) -> Result<u128, Exception> {
    use Mnemonic as M;
    let ones = |t: bool, bits: u32| if t { (1u64 << (bits - 1) << 1).wrapping_sub(1) } else { 0 };
    Ok(match m {
        M::Pxor | M::Xorps | M::Xorpd => a ^ b,
        M::Por | M::Orps | M::Orpd => a | b,
        M::Pand | M::Andps | M::Andpd => a & b,
        M::Pandn | M::Andnps | M::Andnpd => !a & b,
        M::Paddb => lanes(a, b, 8, u64::wrapping_add),
        M::Paddw => lanes(a, b, 16, u64::wrapping_add),
        M::Paddd => lanes(a, b, 32, u64::wrapping_add),
        M::Paddq => lanes(a, b, 64, u64::wrapping_add),
        M::Psubb => lanes(a, b, 8, u64::wrapping_sub),
        M::Psubw => lanes(a, b, 16, u64::wrapping_sub),
        M::Psubd => lanes(a, b, 32, u64::wrapping_sub),
        M::Psubq => lanes(a, b, 64, u64::wrapping_sub),
        M::Pcmpeqb => lanes(a, b, 8, |x, y| ones(x == y, 8)),
        M::Pcmpeqw => lanes(a, b, 16, |x, y| ones(x == y, 16)),
        M::Pcmpeqd => lanes(a, b, 32, |x, y| ones(x == y, 32)),
        M::Pcmpgtb => lanes(a, b, 8, |x, y| ones(sx(x, 8) > sx(y, 8), 8)),
        M::Pcmpgtw => lanes(a, b, 16, |x, y| ones(sx(x, 16) > sx(y, 16), 16)),
        M::Pcmpgtd => lanes(a, b, 32, |x, y| ones(sx(x, 32) > sx(y, 32), 32)),
        M::Pminub => lanes(a, b, 8, u64::min),
        M::Pmaxub => lanes(a, b, 8, u64::max),
        M::Pminsw => lanes(a, b, 16, |x, y| if sx(x, 16) < sx(y, 16) { x } else { y }),
        M::Pmaxsw => lanes(a, b, 16, |x, y| if sx(x, 16) > sx(y, 16) { x } else { y }),
        M::Paddusb => lanes(a, b, 8, |x, y| sat_u((x + y) as i64, 8)),
        M::Paddusw => lanes(a, b, 16, |x, y| sat_u((x + y) as i64, 16)),
        M::Psubusb => lanes(a, b, 8, |x, y| sat_u(x as i64 - y as i64, 8)),
        M::Psubusw => lanes(a, b, 16, |x, y| sat_u(x as i64 - y as i64, 16)),
        M::Paddsb => lanes(a, b, 8, |x, y| sat_s(sx(x, 8) + sx(y, 8), 8)),
        M::Paddsw => lanes(a, b, 16, |x, y| sat_s(sx(x, 16) + sx(y, 16), 16)),
        M::Psubsb => lanes(a, b, 8, |x, y| sat_s(sx(x, 8) - sx(y, 8), 8)),
        M::Psubsw => lanes(a, b, 16, |x, y| sat_s(sx(x, 16) - sx(y, 16), 16)),
        M::Pavgb => lanes(a, b, 8, |x, y| (x + y + 1) >> 1),
        M::Pavgw => lanes(a, b, 16, |x, y| (x + y + 1) >> 1),
        M::Pmullw => lanes(a, b, 16, |x, y| (sx(x, 16) * sx(y, 16)) as u64),
        M::Pmulhw => lanes(a, b, 16, |x, y| ((sx(x, 16) * sx(y, 16)) >> 16) as u64),
        M::Pmulhuw => lanes(a, b, 16, |x, y| (x * y) >> 16),
        M::Pmuludq => lanes(a, b, 64, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        M::Punpcklbw => unpack(a, b, 8, false),
        M::Punpcklwd => unpack(a, b, 16, false),
        M::Punpckldq => unpack(a, b, 32, false),
        M::Punpcklqdq => unpack(a, b, 64, false),
        M::Punpckhbw => unpack(a, b, 8, true),
        M::Punpckhwd => unpack(a, b, 16, true),
        M::Punpckhdq => unpack(a, b, 32, true),
        M::Punpckhqdq => unpack(a, b, 64, true),
        M::Packsswb | M::Packuswb | M::Packssdw => {
            let (src_bits, dst_bits) = if m == M::Packssdw { (32, 16) } else { (16, 8) };
            let n = 128 / src_bits;
            let mut out = 0u128;
            for (half, v) in [a, b].iter().enumerate() {
                for k in 0..n {
                    let x =
                        sx(((v >> (k * src_bits)) & ((1u128 << src_bits) - 1)) as u64, src_bits);
                    let s = if m == M::Packuswb {
                        sat_u(x, dst_bits)
                    } else {
                        sat_s(x, dst_bits) & ((1u64 << dst_bits) - 1)
                    };
                    out |= u128::from(s) << ((half as u32 * n + k) * dst_bits);
                }
            }
            out
        }
        _ => return Err(Exception::ud()),
    })
}

fn movnti(c: &mut Ctx) -> R {
    let v = c.read(1)?;
    c.write(0, v)?;
    Ok(())
}

fn mxcsr(c: &mut Ctx, m: Mnemonic) -> R {
    sse_available(c)?;
    let la = c.mem_lin()?;
    if m == Mnemonic::Ldmxcsr {
        let v = c.read_mem(la, 4)? as u32;
        if v & !MXCSR_MASK != 0 {
            return Err(Exception::gp(0).into());
        }
        c.cpu.mxcsr = v;
    } else {
        let v = u64::from(c.cpu.mxcsr);
        c.write_mem(la, 4, v)?;
    }
    Ok(())
}

/// FWAIT: #NM if CR0.TS and CR0.MP, #MF if an unmasked x87 exception is pending.
fn fwait(c: &mut Ctx) -> R {
    x87_available(c, true)?;
    if c.cpu.fpu.fsw & 0x80 != 0 {
        return Err(Exception::new(Vector::MF).into());
    }
    Ok(())
}

/// FCW with its reserved bits as the hardware keeps them (bit 6 set; 7, 13-15 clear).
fn sanitize_fcw(v: u16) -> u16 {
    (v & 0x1f3f) | 0x40
}

/// FSW with ES and B recomputed: set while an exception flag is unmasked in `fcw`.
fn summarize_fsw(fsw: u16, fcw: u16) -> u16 {
    let pending = fsw & !fcw & 0x3f != 0;
    let fsw = fsw & !0x8080;
    if pending {
        fsw | 0x8080
    } else {
        fsw
    }
}

/// FXSAVE/FXRSTOR (and their 64-bit forms) on the 512-byte legacy area.
fn fxsave(c: &mut Ctx, m: Mnemonic) -> R {
    let cr0 = c.cpu.cr0;
    if cr0 & cpu::CR0_EM != 0 {
        return Err(Exception::ud().into());
    }
    if cr0 & cpu::CR0_TS != 0 {
        return Err(Exception::new(Vector::NM).into());
    }
    let la = c.mem_lin()?;
    if la % 16 != 0 {
        return Err(Exception::gp(0).into());
    }
    let with_xmm = c.cpu.cr4 & cpu::CR4_OSFXSR != 0;
    let nxmm = if c.cpu.code64() { 16 } else { 8 };
    if matches!(m, Mnemonic::Fxsave | Mnemonic::Fxsave64) {
        let mut b = [0u8; 512];
        let f = c.cpu.fpu;
        b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
        b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
        b[4] = f.ftw;
        b[6..8].copy_from_slice(&f.fop.to_le_bytes());
        b[8..16].copy_from_slice(&f.fip.to_le_bytes());
        b[16..24].copy_from_slice(&f.fdp.to_le_bytes());
        b[24..28].copy_from_slice(&c.cpu.mxcsr.to_le_bytes());
        b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
        for (k, st) in f.st.iter().enumerate() {
            b[32 + 16 * k..32 + 16 * k + 10].copy_from_slice(&st[..10]);
        }
        if with_xmm {
            for k in 0..nxmm {
                b[160 + 16 * k..176 + 16 * k].copy_from_slice(&c.cpu.xmm[k].to_le_bytes());
            }
        }
        // Bytes 416..512 (reserved and available to software) are not written.
        c.cpu.probe_write(la, 512, Priv::Current)?;
        c.cpu.write_lin(c.io, la, &b[..416], Priv::Current)?;
    } else {
        let mut b = [0u8; 512];
        c.cpu.read_lin(c.io, la, &mut b, Priv::Current)?;
        let mx = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
        if mx & !MXCSR_MASK != 0 {
            return Err(Exception::gp(0).into());
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let mut st = [[0u8; 16]; 8];
        for (k, s) in st.iter_mut().enumerate() {
            s[..10].copy_from_slice(&b[32 + 16 * k..42 + 16 * k]);
        }
        let fcw = sanitize_fcw(u16_at(0));
        c.cpu.fpu = crate::cpu::Fpu {
            fcw,
            fsw: summarize_fsw(u16_at(2), fcw),
            ftw: b[4],
            fop: u16_at(6) & 0x7ff,
            fip: u64_at(8),
            fdp: u64_at(16),
            st,
        };
        c.cpu.mxcsr = mx;
        if with_xmm {
            for k in 0..nxmm {
                let mut x = [0u8; 16];
                x.copy_from_slice(&b[160 + 16 * k..176 + 16 * k]);
                c.cpu.xmm[k] = u128::from_le_bytes(x);
            }
        }
    }
    Ok(())
}
