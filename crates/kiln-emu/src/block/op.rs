//! The operations of decoded blocks: the common integer instructions of 64-bit code, translated
//! once from iced-x86's decoding into a compact form that executes without looking at the
//! instruction again (operand kinds, register numbers and sizes, immediates, branch targets and
//! RIP-relative addresses are resolved here).
//!
//! With them the hot SSE2 instructions of glibc's string and memory functions (vector moves,
//! the packed logic, compares, minimum and arithmetic, PMOVMSKB, MOVD/MOVQ between XMM and
//! general registers) on XMM registers.
//!
//! [`translate`] returns `None` for everything else (system instructions, string instructions,
//! LOCK, MMX and the other SSE forms, 16/32-bit addressing, high-byte registers...), which
//! runs on the generic path.

use crate::flags::mask;
use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind, Register};

/// "No register" in [`Mem::base`] and [`Mem::index`].
pub(crate) const NO_REG: u8 = 16;
/// [`Mem::base`] of a RIP-relative operand: the displacement counts from the next instruction.
pub(crate) const RIP_REL: u8 = 17;

/// A memory operand with 64-bit addressing and a 32-bit displacement (8 bytes, so that an
/// operation fits in half a cache line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mem {
    /// Displacement, sign-extended at use.
    pub disp: i32,
    /// Base register index, [`NO_REG`] or [`RIP_REL`].
    pub base: u8,
    /// Index register index, or [`NO_REG`].
    pub index: u8,
    /// log2 of the index scale.
    pub shift: u8,
    /// The segment whose base is added: `crate::cpu::FS`, `crate::cpu::GS`, or 0 for none
    /// (the other segments have base 0 in 64-bit mode).
    pub seg: u8,
}

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    /// A general register (index 0-15; 8-bit operands are the low bytes).
    Reg(u8),
    /// An immediate as encoded (at most 32 bits), sign-extended and masked to the operand
    /// size at use.
    Imm(i32),
    /// Memory.
    Mem(Mem),
}

/// A 128-bit vector source: an XMM register (0-15) or 16 bytes of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VSrc {
    Reg(u8),
    Mem(Mem),
}

/// A destination operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dst {
    /// A general register.
    Reg(u8),
    /// Memory.
    Mem(Mem),
}

/// Two-operand arithmetic and logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

/// One-operand arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnOp {
    Inc,
    Dec,
    Neg,
    Not,
}

/// One decoded operation. Sizes are operand sizes in bytes (1, 2, 4, 8). Branch targets are
/// relative to the next instruction, as encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// MOV between registers, memory and immediates.
    Mov { size: u8, dst: Dst, src: Src },
    /// MOV of a 64-bit immediate into a register (split so that operations stay 4-aligned).
    MovImm64 { dst: u8, low: u32, high: u32 },
    /// MOV between two registers (the common forms have their own operations, which skip
    /// the operand-kind dispatch).
    MovRegs { size: u8, dst: u8, src: u8 },
    /// ADD OR ADC SBB AND SUB XOR CMP TEST.
    Alu { op: AluOp, size: u8, dst: Dst, src: Src },
    /// ALU on two registers.
    AluRegs { op: AluOp, size: u8, dst: u8, src: u8 },
    /// ALU on a register and an immediate (sign-extended, masked at use).
    AluRegImm { op: AluOp, size: u8, dst: u8, imm: i32 },
    /// INC DEC NEG NOT.
    Unary { op: UnOp, size: u8, dst: Dst },
    /// INC DEC NEG NOT of a register.
    UnaryReg { op: UnOp, size: u8, dst: u8 },
    /// SHL SHR SAR ROL ROR by an immediate count (already masked, non-zero) or, with
    /// [`SHIFT_BY_CL`], by CL.
    Shift { m: Mnemonic, size: u8, dst: Dst, count: u8 },
    /// LEA: the effective address, truncated to the destination size.
    Lea { size: u8, dst: u8, mem: Mem },
    /// MOVZX and MOVSX/MOVSXD from `from` bytes.
    Extend { size: u8, from: u8, signed: bool, dst: u8, src: Src },
    /// CMOVcc (a 32-bit destination is zero-extended even when the condition is false).
    Cmov { cc: ConditionCode, size: u8, dst: u8, src: Src },
    /// SETcc.
    Set { cc: ConditionCode, dst: Dst },
    /// XCHG of two registers.
    XchgRegs { size: u8, a: u8, b: u8 },
    /// CBW/CWDE/CDQE: sign-extends the low half of the accumulator of `size` bytes.
    ExtendAcc { size: u8 },
    /// CWD/CDQ/CQO: fills rDX with the sign of rAX.
    SignAcc { size: u8 },
    /// Two- and three-operand IMUL: `dst = a * b`.
    Imul { size: u8, dst: u8, a: Src, b: Src },
    /// PUSH of 8 bytes.
    Push { src: Src },
    /// POP of 8 bytes into a register.
    Pop { dst: u8 },
    /// Jcc.
    Jcc { cc: ConditionCode, rel: i32 },
    /// JMP.
    Jmp { rel: i32 },
    /// JMP through a register or memory.
    JmpIndirect { src: Src },
    /// CALL.
    Call { rel: i32 },
    /// CALL through a register or memory.
    CallIndirect { src: Src },
    /// RET without an immediate.
    Ret,
    /// NOP, ENDBR64, PAUSE and the like.
    Nop,
    /// MOVDQA MOVDQU MOVAPS MOVUPS MOVAPD MOVUPD into an XMM register (`aligned`: a memory
    /// source must be 16-byte aligned).
    VecLoad { dst: u8, src: VSrc, aligned: bool },
    /// The same moves, and MOVNTDQ/MOVNTPS/MOVNTPD, to memory.
    VecStore { dst: Mem, src: u8, aligned: bool },
    /// A two-operand packed operation on XMM registers, `dst = dst m src`, as
    /// `exec::sse::binary` computes it (a memory source must be aligned).
    VecBinary { m: Mnemonic, dst: u8, src: VSrc },
    /// PMOVMSKB of an XMM register into a general register (zero-extended).
    Pmovmskb { dst: u8, src: u8 },
    /// MOVD/MOVQ of a general register's low `size` bytes into an XMM register, zero-extended.
    MovToVec { size: u8, dst: u8, src: u8 },
    /// MOVD/MOVQ of an XMM register's low `size` bytes into a general register.
    MovFromVec { size: u8, dst: u8, src: u8 },
}

/// [`Op::Shift`]'s count for a shift by CL (an immediate count of 0 is never translated).
pub(crate) const SHIFT_BY_CL: u8 = 0;

impl Op {
    /// Ends a block: the next instruction is not the one after this.
    pub(crate) fn is_branch(&self) -> bool {
        matches!(
            self,
            Op::Jcc { .. }
                | Op::Jmp { .. }
                | Op::JmpIndirect { .. }
                | Op::Call { .. }
                | Op::CallIndirect { .. }
                | Op::Ret
        )
    }
}

/// The index and size in bytes of a general register, except AH/CH/DH/BH.
fn gpr(r: Register) -> Option<(u8, u8)> {
    let n = r as u32;
    let at = |first: Register| (n - first as u32) as u8;
    let within = |first: Register, last: Register| (first as u32..=last as u32).contains(&n);
    if within(Register::RAX, Register::R15) {
        Some((at(Register::RAX), 8))
    } else if within(Register::EAX, Register::R15D) {
        Some((at(Register::EAX), 4))
    } else if within(Register::AX, Register::R15W) {
        Some((at(Register::AX), 2))
    } else if within(Register::AL, Register::BL) {
        Some((at(Register::AL), 1))
    } else if within(Register::SPL, Register::R15L) {
        Some((at(Register::SPL) + 4, 1))
    } else {
        None
    }
}

/// A 64-bit general register's index.
fn gpr64(r: Register) -> Option<u8> {
    gpr(r).filter(|&(_, size)| size == 8).map(|(i, _)| i)
}

fn mem(i: &Instruction) -> Option<Mem> {
    let base = i.memory_base();
    let index = i.memory_index();
    let seg = match i.memory_segment() {
        Register::FS => crate::cpu::FS as u8,
        Register::GS => crate::cpu::GS as u8,
        _ => 0,
    };
    if base == Register::RIP {
        (index == Register::None).then_some(())?;
        let rel = i.memory_displacement64().wrapping_sub(i.next_ip()) as i64;
        return Some(Mem {
            disp: i32::try_from(rel).ok()?,
            base: RIP_REL,
            index: NO_REG,
            shift: 0,
            seg,
        });
    }
    let disp = i32::try_from(i.memory_displacement64() as i64).ok()?;
    let base = if base == Register::None { NO_REG } else { gpr64(base)? };
    let index = if index == Register::None { NO_REG } else { gpr64(index)? };
    let shift = i.memory_index_scale().trailing_zeros() as u8;
    Some(Mem { disp, base, index, shift, seg })
}

/// An XMM register's index.
fn xmm(r: Register) -> Option<u8> {
    let n = r as u32;
    (Register::XMM0 as u32..=Register::XMM15 as u32)
        .contains(&n)
        .then(|| (n - Register::XMM0 as u32) as u8)
}

/// Operand `n` as a vector source: an XMM register or a 16-byte memory operand.
fn vsrc(i: &Instruction, n: u32) -> Option<VSrc> {
    match i.op_kind(n) {
        OpKind::Register => Some(VSrc::Reg(xmm(i.op_register(n))?)),
        OpKind::Memory => {
            (i.memory_size().size() == 16).then_some(())?;
            Some(VSrc::Mem(mem(i)?))
        }
        _ => None,
    }
}

/// The block operation of a legacy-SSE instruction on XMM registers, or `None`.
fn vector(i: &Instruction) -> Option<Op> {
    use Mnemonic as M;
    let m = i.mnemonic();
    let op = match m {
        M::Movdqa | M::Movdqu | M::Movaps | M::Movups | M::Movapd | M::Movupd => {
            let aligned = matches!(m, M::Movdqa | M::Movaps | M::Movapd);
            if i.op0_kind() == OpKind::Memory {
                (i.memory_size().size() == 16).then_some(())?;
                Op::VecStore { dst: mem(i)?, src: xmm(i.op1_register())?, aligned }
            } else {
                Op::VecLoad { dst: xmm(i.op0_register())?, src: vsrc(i, 1)?, aligned }
            }
        }
        M::Movntdq | M::Movntps | M::Movntpd => {
            (i.op0_kind() == OpKind::Memory && i.memory_size().size() == 16).then_some(())?;
            Op::VecStore { dst: mem(i)?, src: xmm(i.op1_register())?, aligned: true }
        }
        M::Pmovmskb => {
            let (dst, _) = dst_reg(i, 0)?;
            (i.op1_kind() == OpKind::Register).then_some(())?;
            Op::Pmovmskb { dst, src: xmm(i.op1_register())? }
        }
        M::Movd | M::Movq => {
            let size = if m == M::Movd { 4 } else { 8 };
            (i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register).then_some(())?;
            match (xmm(i.op0_register()), xmm(i.op1_register())) {
                (Some(dst), None) => {
                    let (src, s) = gpr(i.op1_register())?;
                    (s == size).then_some(Op::MovToVec { size, dst, src })?
                }
                (None, Some(src)) => {
                    let (dst, s) = gpr(i.op0_register())?;
                    (s == size).then_some(Op::MovFromVec { size, dst, src })?
                }
                _ => return None,
            }
        }
        _ if crate::exec::sse::is_packed_binary(m) => {
            (i.op_count() == 2 && i.op0_kind() == OpKind::Register).then_some(())?;
            Op::VecBinary { m, dst: xmm(i.op0_register())?, src: vsrc(i, 1)? }
        }
        _ => return None,
    };
    Some(op)
}

/// A branch's target relative to the next instruction.
fn rel(i: &Instruction) -> Option<i32> {
    (i.op0_kind() == OpKind::NearBranch64).then_some(())?;
    i32::try_from(i.near_branch_target().wrapping_sub(i.next_ip()) as i64).ok()
}

/// Operand `n` as a source of `size` bytes.
fn src(i: &Instruction, n: u32, size: u8) -> Option<Src> {
    match i.op_kind(n) {
        OpKind::Register => {
            let (r, s) = gpr(i.op_register(n))?;
            (s == size).then_some(Src::Reg(r))
        }
        OpKind::Memory => {
            (i.memory_size().size() == usize::from(size)).then_some(())?;
            Some(Src::Mem(mem(i)?))
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => {
            // Every immediate but MOV's imm64 has at most 32 significant bits once masked.
            let v = i.immediate(n) & mask(u32::from(size));
            (v == (v as i32 as i64 as u64) & mask(u32::from(size))).then_some(Src::Imm(v as i32))
        }
        _ => None,
    }
}

/// Operand `n` as a destination, with its size.
fn dst(i: &Instruction, n: u32) -> Option<(Dst, u8)> {
    match i.op_kind(n) {
        OpKind::Register => {
            let (r, s) = gpr(i.op_register(n))?;
            Some((Dst::Reg(r), s))
        }
        OpKind::Memory => {
            let size = u8::try_from(i.memory_size().size()).ok()?;
            matches!(size, 1 | 2 | 4 | 8).then_some(())?;
            Some((Dst::Mem(mem(i)?), size))
        }
        _ => None,
    }
}

/// A register destination, with its size.
fn dst_reg(i: &Instruction, n: u32) -> Option<(u8, u8)> {
    (i.op_kind(n) == OpKind::Register).then_some(())?;
    gpr(i.op_register(n))
}

/// A 64-bit register or memory operand of an indirect branch.
fn indirect(i: &Instruction) -> Option<Src> {
    match i.op0_kind() {
        OpKind::Register | OpKind::Memory => src(i, 0, 8),
        _ => None,
    }
}

/// The block operation for `i`, decoded in 64-bit mode, or `None` for the generic path.
pub(crate) fn translate(i: &Instruction) -> Option<Op> {
    use Mnemonic as M;
    if i.has_lock_prefix() || i.has_rep_prefix() || i.has_repne_prefix() {
        return None;
    }
    let m = i.mnemonic();
    if i.is_jcc_short_or_near() {
        return Some(Op::Jcc { cc: i.condition_code(), rel: rel(i)? });
    }
    // The other instructions with a condition code and general-register operands: SETcc
    // (one operand) and CMOVcc (two).
    if i.condition_code() != ConditionCode::None && !i.is_loopcc() {
        let cc = i.condition_code();
        return match i.op_count() {
            1 => {
                let (d, size) = dst(i, 0)?;
                (size == 1).then_some(Op::Set { cc, dst: d })
            }
            2 => {
                let (d, size) = dst_reg(i, 0)?;
                Some(Op::Cmov { cc, size, dst: d, src: src(i, 1, size)? })
            }
            _ => None,
        };
    }
    let op = match m {
        M::Mov => {
            let (d, size) = dst(i, 0)?;
            if let (Dst::Reg(r), OpKind::Immediate64) = (d, i.op1_kind()) {
                let v = i.immediate64();
                return Some(Op::MovImm64 { dst: r, low: v as u32, high: (v >> 32) as u32 });
            }
            let s = src(i, 1, size)?;
            match (d, s) {
                (Dst::Mem(_), Src::Mem(_)) => return None,
                (Dst::Reg(dst), Src::Reg(src)) => Op::MovRegs { size, dst, src },
                _ => Op::Mov { size, dst: d, src: s },
            }
        }
        M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
            let op = match m {
                M::Add => AluOp::Add,
                M::Or => AluOp::Or,
                M::Adc => AluOp::Adc,
                M::Sbb => AluOp::Sbb,
                M::And => AluOp::And,
                M::Sub => AluOp::Sub,
                M::Xor => AluOp::Xor,
                M::Cmp => AluOp::Cmp,
                _ => AluOp::Test,
            };
            let (d, size) = dst(i, 0)?;
            match (d, src(i, 1, size)?) {
                (Dst::Reg(dst), Src::Reg(src)) => Op::AluRegs { op, size, dst, src },
                (Dst::Reg(dst), Src::Imm(imm)) => Op::AluRegImm { op, size, dst, imm },
                (d, s) => Op::Alu { op, size, dst: d, src: s },
            }
        }
        M::Inc | M::Dec | M::Neg | M::Not => {
            let op = match m {
                M::Inc => UnOp::Inc,
                M::Dec => UnOp::Dec,
                M::Neg => UnOp::Neg,
                _ => UnOp::Not,
            };
            match dst(i, 0)? {
                (Dst::Reg(dst), size) => Op::UnaryReg { op, size, dst },
                (d, size) => Op::Unary { op, size, dst: d },
            }
        }
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror => {
            let (d, size) = dst(i, 0)?;
            let count = match i.op1_kind() {
                OpKind::Register if i.op1_register() == Register::CL => SHIFT_BY_CL,
                OpKind::Immediate8 => i.immediate8() & if size == 8 { 0x3f } else { 0x1f },
                _ => return None,
            };
            if count == 0 && i.op1_kind() == OpKind::Immediate8 {
                return None;
            }
            let m = if m == M::Sal { M::Shl } else { m };
            Op::Shift { m, size, dst: d, count }
        }
        M::Lea => {
            let (d, size) = dst_reg(i, 0)?;
            (size >= 2 && i.op1_kind() == OpKind::Memory).then_some(())?;
            let mut mem = mem(i)?;
            // LEA computes the offset only; FS/GS overrides do not apply.
            mem.seg = 0;
            Op::Lea { size, dst: d, mem }
        }
        M::Movzx | M::Movsx | M::Movsxd => {
            let (d, size) = dst_reg(i, 0)?;
            let from = match i.op1_kind() {
                OpKind::Register => gpr(i.op_register(1))?.1,
                OpKind::Memory => u8::try_from(i.memory_size().size()).ok()?,
                _ => return None,
            };
            (from < size).then_some(())?;
            Op::Extend { size, from, signed: m != M::Movzx, dst: d, src: src(i, 1, from)? }
        }
        M::Xchg => {
            let (a, size) = dst_reg(i, 0)?;
            let (b, size_b) = dst_reg(i, 1)?;
            (size == size_b).then_some(())?;
            Op::XchgRegs { size, a, b }
        }
        M::Cbw => Op::ExtendAcc { size: 2 },
        M::Cwde => Op::ExtendAcc { size: 4 },
        M::Cdqe => Op::ExtendAcc { size: 8 },
        M::Cwd => Op::SignAcc { size: 2 },
        M::Cdq => Op::SignAcc { size: 4 },
        M::Cqo => Op::SignAcc { size: 8 },
        M::Imul if i.op_count() >= 2 => {
            let (d, size) = dst_reg(i, 0)?;
            let (a, b) = if i.op_count() == 3 {
                (src(i, 1, size)?, src(i, 2, size)?)
            } else {
                (Src::Reg(d), src(i, 1, size)?)
            };
            Op::Imul { size, dst: d, a, b }
        }
        M::Push if i.stack_pointer_increment() == -8 => Op::Push { src: src(i, 0, 8)? },
        M::Pop if i.stack_pointer_increment() == 8 => {
            let (d, size) = dst_reg(i, 0)?;
            (size == 8).then_some(())?;
            Op::Pop { dst: d }
        }
        M::Jmp => match rel(i) {
            Some(rel) => Op::Jmp { rel },
            None => Op::JmpIndirect { src: indirect(i)? },
        },
        M::Call if i.stack_pointer_increment() == -8 => match rel(i) {
            Some(rel) => Op::Call { rel },
            None => Op::CallIndirect { src: indirect(i)? },
        },
        M::Ret if i.op_count() == 0 && i.stack_pointer_increment() == 8 => Op::Ret,
        M::Nop | M::Endbr64 | M::Pause => Op::Nop,
        _ => return vector(i),
    };
    Some(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn op(bytes: &[u8]) -> Option<Op> {
        let i = Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE).decode();
        translate(&i)
    }

    #[test]
    fn common_forms_translate_with_resolved_operands() {
        // mov rax, [rbx+rcx*8+0x10]
        assert_eq!(
            op(&[0x48, 0x8b, 0x44, 0xcb, 0x10]),
            Some(Op::Mov {
                size: 8,
                dst: Dst::Reg(0),
                src: Src::Mem(Mem { disp: 0x10, base: 3, index: 1, shift: 3, seg: 0 })
            })
        );
        // add dword [rip+0x100], -1
        assert_eq!(
            op(&[0x83, 0x05, 0x00, 0x01, 0x00, 0x00, 0xff]),
            Some(Op::Alu {
                op: AluOp::Add,
                size: 4,
                dst: Dst::Mem(Mem { disp: 0x100, base: RIP_REL, index: NO_REG, shift: 0, seg: 0 }),
                src: Src::Imm(-1)
            })
        );
        // jne back to the start (75 fe).
        assert_eq!(op(&[0x75, 0xfe]), Some(Op::Jcc { cc: ConditionCode::ne, rel: -2 }));
        // sete al, cmovl rax, [rbx]
        assert_eq!(
            op(&[0x0f, 0x94, 0xc0]),
            Some(Op::Set { cc: ConditionCode::e, dst: Dst::Reg(0) })
        );
        assert!(matches!(
            op(&[0x48, 0x0f, 0x4c, 0x03]),
            Some(Op::Cmov { cc: ConditionCode::l, size: 8, dst: 0, src: Src::Mem(_) })
        ));
        // add rax, rcx and sub ecx, 8 skip the operand-kind dispatch.
        assert_eq!(
            op(&[0x48, 0x01, 0xc8]),
            Some(Op::AluRegs { op: AluOp::Add, size: 8, dst: 0, src: 1 })
        );
        assert_eq!(
            op(&[0x83, 0xe9, 0x08]),
            Some(Op::AluRegImm { op: AluOp::Sub, size: 4, dst: 1, imm: 8 })
        );
        // mov rax, 0x1122334455667788
        assert_eq!(
            op(&[0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]),
            Some(Op::MovImm64 { dst: 0, low: 0x5566_7788, high: 0x1122_3344 })
        );
        // shl eax, cl
        assert_eq!(
            op(&[0xd3, 0xe0]),
            Some(Op::Shift { m: Mnemonic::Shl, size: 4, dst: Dst::Reg(0), count: SHIFT_BY_CL })
        );
        // An operation with its length takes at most half a cache line.
        assert!(std::mem::size_of::<(Op, u8)>() <= 32, "{}", std::mem::size_of::<(Op, u8)>());
        // mov rax, gs:[0x28]
        assert!(matches!(
            op(&[0x65, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0]),
            Some(Op::Mov { src: Src::Mem(Mem { seg: 5, disp: 0x28, .. }), .. })
        ));
    }

    #[test]
    fn sse2_string_instructions_on_xmm_registers_translate() {
        // movdqa xmm1, [rdi]; movdqu [rsi+16], xmm2; pcmpeqb xmm1, xmm0
        assert_eq!(
            op(&[0x66, 0x0f, 0x6f, 0x0f]),
            Some(Op::VecLoad {
                dst: 1,
                src: VSrc::Mem(Mem { disp: 0, base: 7, index: NO_REG, shift: 0, seg: 0 }),
                aligned: true
            })
        );
        assert!(matches!(
            op(&[0xf3, 0x0f, 0x7f, 0x56, 0x10]),
            Some(Op::VecStore { src: 2, aligned: false, dst: Mem { base: 6, disp: 16, .. } })
        ));
        assert_eq!(
            op(&[0x66, 0x0f, 0x74, 0xc8]),
            Some(Op::VecBinary { m: Mnemonic::Pcmpeqb, dst: 1, src: VSrc::Reg(0) })
        );
        // pmovmskb eax, xmm1; movd xmm0, esi; movq rax, xmm3 (66 REX.W 0F 7E)
        assert_eq!(op(&[0x66, 0x0f, 0xd7, 0xc1]), Some(Op::Pmovmskb { dst: 0, src: 1 }));
        assert_eq!(op(&[0x66, 0x0f, 0x6e, 0xc6]), Some(Op::MovToVec { size: 4, dst: 0, src: 6 }));
        assert_eq!(
            op(&[0x66, 0x48, 0x0f, 0x7e, 0xd8]),
            Some(Op::MovFromVec { size: 8, dst: 0, src: 3 })
        );
        // pminub xmm9, [rax] (REX.R)
        assert!(matches!(
            op(&[0x66, 0x44, 0x0f, 0xda, 0x08]),
            Some(Op::VecBinary { m: Mnemonic::Pminub, dst: 9, src: VSrc::Mem(_) })
        ));
    }

    #[test]
    fn what_the_fast_path_does_not_model_stays_generic() {
        // pcmpeqb mm1, mm0 (the MMX form: the x87 state's transition)
        assert_eq!(op(&[0x0f, 0x74, 0xc8]), None);
        // pshufb xmm1, xmm0 (SSSE3) and vpcmpeqb xmm1, xmm1, xmm0 (VEX)
        assert_eq!(op(&[0x66, 0x0f, 0x38, 0x00, 0xc8]), None);
        assert_eq!(op(&[0xc5, 0xf1, 0x74, 0xc8]), None);
        // movq xmm0, [rax] (8 bytes of memory) and movd [rax], xmm0
        assert_eq!(op(&[0xf3, 0x0f, 0x7e, 0x00]), None);
        assert_eq!(op(&[0x66, 0x0f, 0x7e, 0x00]), None);
        // lock add [rax], ebx
        assert_eq!(op(&[0xf0, 0x01, 0x18]), None);
        // mov ah, bl (high-byte register)
        assert_eq!(op(&[0x88, 0xdc]), None);
        // mov eax, [ebx] (32-bit addressing)
        assert_eq!(op(&[0x67, 0x8b, 0x03]), None);
        // mov rax, cr3
        assert_eq!(op(&[0x0f, 0x20, 0xd8]), None);
        // rep movsb
        assert_eq!(op(&[0xf3, 0xa4]), None);
        // xchg [rax], ebx (locked implicitly)
        assert_eq!(op(&[0x87, 0x18]), None);
        // shl eax, 0 (no flags change: left to the generic path)
        assert_eq!(op(&[0xc1, 0xe0, 0x00]), None);
        // ret 8
        assert_eq!(op(&[0xc2, 0x08, 0x00]), None);
    }
}
