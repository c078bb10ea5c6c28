//! Random instruction sequences built from iced-x86's op-code tables.

use crate::tables::{family_of, operand_supported, uses_vector_state, Family, FAMILIES};
use iced_x86::{
    Code, Encoder, EncodingKind, Instruction, Mnemonic, OpCodeOperandKind as K, OpKind, Register,
    RepPrefixKind,
};

/// A tiny xorshift64* generator: reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    /// A 32-bit float pattern biased towards the special cases.
    pub fn float32(&mut self) -> u32 {
        match self.below(12) {
            0 => *self.pick(&[0, 0x8000_0000, 0x3f80_0000, 0xbf80_0000, 0x7f80_0000, 0xff80_0000]),
            1 => *self.pick(&[0x7fc0_0000, 0xffc0_0000, 0x7f80_0001, 0x7fa0_0000]), // NaNs
            2 => self.next() as u32 & 0x807f_ffff,                                  // denormals
            3 => *self.pick(&[0x4f00_0000, 0xcf00_0000, 0x5f00_0000, 0x7f7f_ffff]), // 2^31, 2^63, max
            4 => (self.below(200) as u32).wrapping_mul(0x0080_0000).wrapping_add(0x3000_0000),
            _ => self.next() as u32,
        }
    }

    /// A 64-bit float pattern biased towards the special cases.
    pub fn float64(&mut self) -> u64 {
        match self.below(12) {
            0 => *self.pick(&[0, 1 << 63, 0x3ff0 << 48, 0xbff0 << 48, 0x7ff0 << 48, 0xfff0 << 48]),
            1 => *self.pick(&[0x7ff8 << 48, 0xfff8 << 48, (0x7ff0 << 48) | 1, 0x7ff4 << 48]),
            2 => self.next() & 0x800f_ffff_ffff_ffff,
            3 => *self.pick(&[0x41e0 << 48, 0xc1e0 << 48, 0x43e0 << 48, 0x7fef_ffff_ffff_ffff]),
            4 => (self.below(400) << 52).wrapping_add(0x3000 << 48),
            _ => self.next(),
        }
    }

    /// 128 bits for an XMM register: integers, or floats of either width.
    pub fn xmm(&mut self) -> u128 {
        match self.below(3) {
            0 => (u128::from(self.interesting()) << 64) | u128::from(self.interesting()),
            1 => (0..4).fold(0u128, |acc, k| acc | (u128::from(self.float32()) << (32 * k))),
            _ => (u128::from(self.float64()) << 64) | u128::from(self.float64()),
        }
    }

    /// An 80-bit extended-precision pattern, mostly normal numbers near 1.
    pub fn float80(&mut self) -> [u8; 10] {
        let sign = (self.below(2) as u16) << 15;
        let exp: u16 = match self.below(10) {
            0 => 0,
            1 => 0x7fff,
            2 => self.below(0x7fff) as u16,
            _ => 0x3fff - 40 + self.below(80) as u16,
        };
        let mut mant = self.next();
        if exp != 0 && !self.chance(3) {
            mant |= 1 << 63;
        }
        if self.chance(20) {
            mant &= 0xffff_ffff_0000_0000;
        }
        let mut out = [0u8; 10];
        out[..8].copy_from_slice(&mant.to_le_bytes());
        out[8..].copy_from_slice(&(sign | exp).to_le_bytes());
        out
    }

    /// A value biased towards the edges of the operand ranges.
    pub fn interesting(&mut self) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => *self.pick(&[1, u64::MAX, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff]),
            2 => *self.pick(&[0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 63, (1 << 63) - 1]),
            3 => self.below(64),
            4 => self.next() & 0xff,
            5 => self.next() & 0xffff_ffff,
            _ => self.next(),
        }
    }
}

/// The instruction families the generator covers.
const R8: [Register; 15] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::AH,
    Register::CH,
    Register::DH,
    Register::BH,
    Register::BPL,
    Register::SIL,
    Register::DIL,
    Register::R8L,
    Register::R9L,
    Register::R12L,
    Register::R14L,
];
// Every general register except RSP (the stack) and R15 (the data base).
const GPR_INDEXES: [u32; 14] = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

fn reg_of(size: u32, idx: u32) -> Register {
    let base = match size {
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    // iced orders each register class contiguously, in encoding order.
    Register::values().nth(base as usize + idx as usize).unwrap_or(base)
}

fn reg_xmm(idx: u32) -> Register {
    Register::values().nth(Register::XMM0 as usize + idx as usize).unwrap_or(Register::XMM0)
}

fn reg_mm(idx: u32) -> Register {
    Register::values().nth(Register::MM0 as usize + idx as usize).unwrap_or(Register::MM0)
}

fn st_reg(idx: u32) -> Register {
    Register::values().nth(Register::ST0 as usize + idx as usize).unwrap_or(Register::ST0)
}

/// One generated program.
pub struct Program {
    pub code: Vec<u8>,
    pub families: Vec<Family>,
    /// Offsets in `code` of operand-size prefixes put on near CALL/RET/Jcc (a vendor
    /// difference: see `vendor::Class::OperandSizeBranch`).
    pub branch_size_prefixes: Vec<usize>,
}

/// The generator: op-code tables per family.
pub struct Gen {
    codes: Vec<(Family, Vec<Code>)>,
    /// Mnemonics left out because the host CPU lacks them, with the feature.
    pub excluded: Vec<(Mnemonic, &'static str)>,
}

/// True for the 64-bit near CALL, RET and Jcc forms that may carry an operand-size prefix.
fn takes_branch_size_prefix(code: Code) -> bool {
    matches!(code, Code::Call_rel32_64 | Code::Call_rm64 | Code::Retnq | Code::Retnq_imm16)
        || (code.op_code().operand_size() != 16 && Instruction::with(code).is_jcc_short())
}

impl Gen {
    /// The tables, without the instructions the host cannot run (`lacks` names the feature).
    pub fn new(lacks: impl Fn(Mnemonic) -> Option<&'static str>) -> Self {
        let mut excluded: Vec<(Mnemonic, &'static str)> = vec![];
        let mut codes: Vec<(Family, Vec<Code>)> = FAMILIES.iter().map(|f| (*f, vec![])).collect();
        for code in Code::values() {
            let op = code.op_code();
            if !op.is_instruction() || !op.mode64() {
                continue;
            }
            if !matches!(op.encoding(), EncodingKind::Legacy | EncodingKind::VEX) {
                continue;
            }
            // SIMD: only the legacy SSE encodings (VEX forms are AVX).
            if family_of(code).is_some_and(uses_vector_state)
                && op.encoding() != EncodingKind::Legacy
            {
                continue;
            }
            let Some(fam) = family_of(code) else {
                continue;
            };
            if let Some(feature) = lacks(op.mnemonic()) {
                if !excluded.iter().any(|(m, _)| *m == op.mnemonic()) {
                    excluded.push((op.mnemonic(), feature));
                }
                continue;
            }
            if !op.op_kinds().iter().all(|k| operand_supported(*k)) {
                if std::env::var_os("KILN_EMU_GEN_DEBUG").is_some() {
                    eprintln!("not generated: {code:?} {:?}", op.op_kinds());
                }
                continue;
            }
            // BSWAP r16 is undefined; the 16-bit branch forms truncate RIP.
            if matches!(code, Code::Bswap_r16) || (fam == Family::Branch && op.operand_size() == 16)
            {
                continue;
            }
            if fam == Family::Branch
                && !matches!(
                    op.mnemonic(),
                    Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jrcxz
                )
                && op.op_kind(0) != K::br64_1
            {
                continue;
            }
            // The 16-bit near CALL/RET forms are AMD's reading of the operand-size prefix; the
            // prefix is put on the 64-bit forms instead (`takes_branch_size_prefix`). Far CALL
            // is not covered.
            if matches!(op.mnemonic(), Mnemonic::Call | Mnemonic::Ret)
                && (op.operand_size() == 16 || op.op_kinds().contains(&K::mem))
            {
                continue;
            }
            if let Some(e) = codes.iter_mut().find(|(f, _)| *f == fam) {
                e.1.push(code);
            }
        }
        Gen { codes, excluded }
    }

    /// Counts of op-codes per family (for the report).
    pub fn table_sizes(&self) -> Vec<(Family, usize)> {
        self.codes.iter().map(|(f, c)| (*f, c.len())).collect()
    }

    /// A program of 1..=8 instructions (plus the preludes some of them need).
    pub fn program(&self, rng: &mut Rng, ip: u64) -> Program {
        let mut out = Program { code: vec![], families: vec![], branch_size_prefixes: vec![] };
        let n = 1 + rng.below(8);
        let mut emitted = 0;
        while emitted < n {
            let fam = *rng.pick(&FAMILIES);
            let mut list: Vec<Instruction> = vec![];
            let ok = if fam == Family::String {
                self.string(rng, &mut list)
            } else {
                let Some((_, codes)) = self.codes.iter().find(|(f, _)| *f == fam) else {
                    continue;
                };
                if codes.is_empty() {
                    continue;
                }
                let code = *rng.pick(codes);
                self.build(code, rng, &mut list)
            };
            if !ok {
                continue;
            }
            // Encode; a branch skips a one-byte NOP that follows it. Now and then the main
            // instruction, if a near CALL/RET/Jcc, gets an operand-size prefix.
            let mut bytes = vec![];
            let mut cur = ip + out.code.len() as u64;
            let mut good = true;
            let count = list.len();
            let prefix_main =
                list.last().is_some_and(|i| takes_branch_size_prefix(i.code())) && rng.chance(20);
            let mut prefixes = vec![];
            for (k, mut ins) in list.into_iter().enumerate() {
                if prefix_main && k + 1 == count {
                    prefixes.push(out.code.len() + bytes.len());
                    bytes.push(0x66);
                    cur += 1;
                }
                let is_branch = ins.op_count() == 1 && ins.op0_kind() == OpKind::NearBranch64;
                if is_branch {
                    // Branch over a one-byte NOP: learn the length, then aim past the NOP.
                    let blen = if ins.code().op_code().op_kind(0) == K::br64_4 { 5 } else { 2 };
                    ins.set_near_branch64(cur + blen + 1);
                }
                let mut enc = Encoder::new(64);
                match enc.encode(&ins, cur) {
                    Ok(len) => {
                        bytes.extend(enc.take_buffer());
                        cur += len as u64;
                        if is_branch {
                            if ins.near_branch64() != cur + 1 {
                                good = false;
                            }
                            bytes.push(0x90);
                            cur += 1;
                        }
                    }
                    Err(e) => {
                        if std::env::var_os("KILN_EMU_GEN_DEBUG").is_some() {
                            eprintln!("cannot encode {:?}: {e}", ins.code());
                        }
                        good = false
                    }
                }
            }
            if !good {
                continue;
            }
            out.code.extend(bytes);
            out.branch_size_prefixes.extend(prefixes);
            out.families.push(fam);
            emitted += 1;
        }
        out
    }

    fn reg(&self, rng: &mut Rng, size: u32) -> Register {
        if size == 1 {
            *rng.pick(&R8)
        } else {
            reg_of(size, *rng.pick(&GPR_INDEXES))
        }
    }

    fn set_mem(ins: &mut Instruction, n: u32, disp: u64) {
        ins.set_op_kind(n, OpKind::Memory);
        ins.set_memory_base(Register::R15);
        ins.set_memory_index(Register::None);
        ins.set_memory_index_scale(1);
        ins.set_memory_displacement64(disp);
        ins.set_memory_displ_size(if disp < 0x80 { 1 } else { 8 });
        ins.set_segment_prefix(Register::None);
    }

    fn build(&self, code: Code, rng: &mut Rng, out: &mut Vec<Instruction>) -> bool {
        let op = code.op_code();
        let m = op.mnemonic();
        let mut ins = Instruction::default();
        ins.set_code(code);
        let mut mem_used = false;
        let mut regs: Vec<Register> = vec![];
        for n in 0..op.op_count() {
            let k = op.op_kind(n);
            let size = match k {
                K::r8_or_mem | K::r8_reg | K::r8_opcode => 1,
                K::r16_or_mem | K::r16_reg | K::r16_opcode => 2,
                K::r32_or_mem | K::r32_reg | K::r32_opcode | K::r32_vvvv => 4,
                _ => 8,
            };
            match k {
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem => {
                    if m == Mnemonic::Lea || rng.chance(35) {
                        let disp = 0x400 + rng.below(0x1800);
                        Self::set_mem(&mut ins, n, disp);
                        mem_used = true;
                    } else {
                        let r = self.reg(rng, size);
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, r);
                        regs.push(r);
                    }
                }
                K::xmm_reg | K::xmm_rm => {
                    ins.set_op_kind(n, OpKind::Register);
                    ins.set_op_register(n, reg_xmm(rng.below(16) as u32));
                }
                K::mm_reg | K::mm_rm => {
                    ins.set_op_kind(n, OpKind::Register);
                    ins.set_op_register(n, reg_mm(rng.below(8) as u32));
                }
                K::mm_or_mem => {
                    if rng.chance(40) {
                        Self::set_mem(&mut ins, n, 0x400 + rng.below(0x1800));
                        mem_used = true;
                    } else {
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, reg_mm(rng.below(8) as u32));
                    }
                }
                K::st0 => {
                    ins.set_op_kind(n, OpKind::Register);
                    ins.set_op_register(n, Register::ST0);
                }
                K::sti_opcode => {
                    ins.set_op_kind(n, OpKind::Register);
                    ins.set_op_register(n, st_reg(rng.below(8) as u32));
                }
                K::xmm_or_mem => {
                    if rng.chance(40) {
                        let align = if rng.chance(85) { 16 } else { 1 };
                        let disp = (0x400 + rng.below(0x1800)) & !(align - 1);
                        Self::set_mem(&mut ins, n, disp);
                        mem_used = true;
                    } else {
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, reg_xmm(rng.below(16) as u32));
                    }
                }
                K::mem => {
                    let wants16 = matches!(
                        m,
                        Mnemonic::Fnsave
                            | Mnemonic::Frstor
                            | Mnemonic::Fnstenv
                            | Mnemonic::Fldenv
                            | Mnemonic::Cmpxchg16b
                            | Mnemonic::Fxsave64
                            | Mnemonic::Fxrstor64
                            | Mnemonic::Movntdq
                            | Mnemonic::Movntps
                            | Mnemonic::Movntpd
                    );
                    let align = if wants16 && rng.chance(90) { 16 } else { 1 };
                    let span = if wants16 { 0x1000 } else { 0x1800 };
                    let disp = (0x400 + rng.below(span)) & !(align - 1);
                    Self::set_mem(&mut ins, n, disp);
                    mem_used = true;
                }
                K::r8_reg
                | K::r8_opcode
                | K::r16_reg
                | K::r16_opcode
                | K::r32_reg
                | K::r32_opcode
                | K::r32_vvvv
                | K::r64_reg
                | K::r64_opcode
                | K::r64_vvvv => {
                    let r = self.reg(rng, size);
                    ins.set_op_kind(n, OpKind::Register);
                    ins.set_op_register(n, r);
                    regs.push(r);
                }
                K::al | K::cl | K::ax | K::eax | K::rax => {
                    let r = match k {
                        K::al => Register::AL,
                        K::cl => Register::CL,
                        K::ax => Register::AX,
                        K::eax => Register::EAX,
                        _ => Register::RAX,
                    };
                    ins.set_op_kind(n, OpKind::Register);
                    ins.set_op_register(n, r);
                }
                K::imm8 if m == Mnemonic::Enter && n == 1 => {
                    // ENTER's nesting level; small levels keep the frame inside the stack page.
                    ins.set_op_kind(n, OpKind::Immediate8_2nd);
                    ins.set_immediate8_2nd(rng.below(4) as u8 + if rng.chance(5) { 32 } else { 0 });
                }
                K::imm8 | K::imm8_const_1 => {
                    ins.set_op_kind(n, OpKind::Immediate8);
                    let v = if k == K::imm8_const_1 { 1 } else { rng.next() as u8 };
                    ins.set_immediate8(v);
                }
                K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => {
                    ins.set_op_kind(
                        n,
                        match k {
                            K::imm8sex16 => OpKind::Immediate8to16,
                            K::imm8sex32 => OpKind::Immediate8to32,
                            _ => OpKind::Immediate8to64,
                        },
                    );
                    ins.set_immediate_i64(n, i64::from(rng.next() as i8));
                }
                K::imm16 => {
                    ins.set_op_kind(n, OpKind::Immediate16);
                    let v = if matches!(m, Mnemonic::Enter | Mnemonic::Ret) {
                        rng.below(0x100)
                    } else {
                        rng.interesting() & 0xffff
                    };
                    ins.set_immediate_u64(n, v);
                }
                K::imm32 => {
                    ins.set_op_kind(n, OpKind::Immediate32);
                    ins.set_immediate_u64(n, rng.interesting() & 0xffff_ffff);
                }
                K::imm32sex64 => {
                    ins.set_op_kind(n, OpKind::Immediate32to64);
                    ins.set_immediate_i64(n, i64::from(rng.interesting() as i32));
                }
                K::imm64 => {
                    ins.set_op_kind(n, OpKind::Immediate64);
                    ins.set_immediate_u64(n, rng.interesting());
                }
                K::br64_1 | K::br64_4 => {
                    ins.set_op_kind(n, OpKind::NearBranch64);
                }
                K::seg_rDI => ins.set_op_kind(n, OpKind::MemorySegRDI),
                K::seg_rBX_al => {
                    ins.set_op_kind(n, OpKind::Memory);
                    ins.set_memory_base(Register::RBX);
                    ins.set_memory_index(Register::AL);
                    ins.set_memory_index_scale(1);
                    ins.set_memory_displ_size(0);
                }
                _ => return false,
            }
        }
        // AH..BH cannot be encoded with a REX prefix; let the encoder reject such mixes.
        let _ = regs;
        // Keep 16-bit SHLD/SHRD immediate counts within the defined range (masked count <= 16).
        if matches!(m, Mnemonic::Shld | Mnemonic::Shrd)
            && op.op_kind(0) == K::r16_or_mem
            && ins.op2_kind() == OpKind::Immediate8
        {
            ins.set_immediate8((rng.below(17) + 32 * rng.below(8)) as u8);
        }
        if mem_used && !matches!(ins.memory_base(), Register::R15 | Register::RBX) {
            // (FS/GS-relative forms are made below from R15-based ones.)
            return false;
        }
        if mem_used && ins.memory_base() == Register::R15 {
            // 32-bit addressing (0x67): the data area lies below 4 GiB.
            if m != Mnemonic::Lea && rng.chance(15) {
                ins.set_memory_base(Register::R15D);
                ins.set_memory_displ_size(if ins.memory_displacement64() < 0x80 { 1 } else { 4 });
            }
            // FS/GS-relative absolute addressing: the bases point into the data area.
            if m != Mnemonic::Lea && rng.chance(10) {
                let off = ins.memory_displacement64() & 0x7ff;
                ins.set_memory_base(Register::None);
                ins.set_memory_displacement64(off);
                ins.set_memory_displ_size(8);
                ins.set_segment_prefix(if rng.chance(50) { Register::FS } else { Register::GS });
            }
            // RIP-relative operands and base+index addressing, which the decoded-block fast
            // path resolves on its own: the same data address, reached another way.
            if ins.memory_base() == Register::R15 && rng.chance(10) {
                let target = crate::native::DATA + ins.memory_displacement64();
                ins.set_memory_base(Register::RIP);
                ins.set_memory_displacement64(target);
                ins.set_memory_displ_size(8);
            } else if ins.memory_base() == Register::R15 && rng.chance(10) {
                let index = *rng.pick(&[Register::RAX, Register::RDX, Register::RSI, Register::R9]);
                let scale = *rng.pick(&[1u32, 2, 4, 8]);
                let v = rng.below(0x20);
                if let Ok(set) = Instruction::with2(Code::Mov_rm64_imm32, index, v as i64) {
                    out.push(set);
                    ins.set_memory_index(index);
                    ins.set_memory_index_scale(scale);
                    ins.set_memory_displ_size(8);
                }
            }
            // LOCK on the read-modify-write forms (the encoder rejects the others).
            if rng.chance(20)
                && ins.op0_kind() == OpKind::Memory
                && matches!(
                    m,
                    Mnemonic::Add
                        | Mnemonic::Adc
                        | Mnemonic::Sub
                        | Mnemonic::Sbb
                        | Mnemonic::And
                        | Mnemonic::Or
                        | Mnemonic::Xor
                        | Mnemonic::Inc
                        | Mnemonic::Dec
                        | Mnemonic::Neg
                        | Mnemonic::Not
                        | Mnemonic::Xadd
                        | Mnemonic::Xchg
                        | Mnemonic::Cmpxchg
                        | Mnemonic::Cmpxchg8b
                        | Mnemonic::Cmpxchg16b
                        | Mnemonic::Bts
                        | Mnemonic::Btr
                        | Mnemonic::Btc
                )
            {
                ins.set_has_lock_prefix(true);
            }
        }
        self.prelude(&ins, rng, out);
        out.push(ins);
        true
    }

    /// Instructions that put operands in a range the test can compare meaningfully.
    fn prelude(&self, ins: &Instruction, rng: &mut Rng, out: &mut Vec<Instruction>) {
        let m = ins.mnemonic();
        let op = ins.code().op_code();
        // A register bit offset into memory must stay inside the data area.
        if matches!(m, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
            && ins.op0_kind() == OpKind::Memory
            && ins.op1_kind() == OpKind::Register
        {
            let r = ins.op_register(1);
            let v = rng.below(0x4000) as i64 - 0x2000;
            let code = match r.size() {
                2 => Code::Mov_r16_imm16,
                4 => Code::Mov_r32_imm32,
                _ => Code::Mov_rm64_imm32,
            };
            let v = if r.size() == 2 { v & 0xffff } else { v };
            if let Ok(i) = Instruction::with2(code, r, v) {
                out.push(i);
            }
        }
        // MASKMOVQ/MASKMOVDQU store to [RDI]: point it into the data area.
        if matches!(m, Mnemonic::Maskmovq | Mnemonic::Maskmovdqu) {
            let mut i = Instruction::default();
            i.set_code(Code::Lea_r64_m);
            i.set_op0_kind(OpKind::Register);
            i.set_op0_register(Register::RDI);
            Self::set_mem(&mut i, 1, 0x400 + rng.below(0x1800));
            out.push(i);
        }
        // XLAT reads [RBX + AL]: point RBX into the data area.
        if m == Mnemonic::Xlatb {
            let mut i = Instruction::default();
            i.set_code(Code::Lea_r64_m);
            i.set_op0_kind(OpKind::Register);
            i.set_op0_register(Register::RBX);
            Self::set_mem(&mut i, 1, 0x400 + rng.below(0x1000));
            out.push(i);
        }
        // Keep 16-bit SHLD/SHRD counts within the defined range.
        if matches!(m, Mnemonic::Shld | Mnemonic::Shrd)
            && op.op_kind(0) == K::r16_or_mem
            && ins.op2_kind() == OpKind::Register
        {
            if let Ok(i) = Instruction::with2(
                Code::Mov_r8_imm8,
                Register::CL,
                rng.below(17) as u32 + 32 * rng.below(2) as u32,
            ) {
                out.push(i);
            }
        }
        // LDMXCSR of a value with MM (bit 17, AMD's misaligned-SSE mode) set now and then: a
        // vendor difference (`vendor::Class::MxcsrMm`).
        if m == Mnemonic::Ldmxcsr && ins.op0_kind() == OpKind::Memory && rng.chance(50) {
            let mut store = *ins;
            store.set_code(Code::Mov_rm32_imm32);
            store.set_op1_kind(OpKind::Immediate32);
            store.set_immediate32((1 << 17) | 0x1f80 | ((rng.below(4) as u32) << 13));
            out.push(store);
        }
        // Make divisions mostly valid: a zero or sign-extended upper half.
        if matches!(m, Mnemonic::Div | Mnemonic::Idiv) && rng.chance(70) {
            let size = ins.code().op_code().operand_size();
            let size = if size == 0 { 1 } else { size / 8 };
            let i = match (m, size) {
                (Mnemonic::Div, 1) => {
                    Instruction::with2(Code::Movzx_r32_rm8, Register::EAX, Register::AL)
                }
                (Mnemonic::Div, _) => {
                    Instruction::with2(Code::Xor_r32_rm32, Register::EDX, Register::EDX)
                }
                (_, 1) => Ok(Instruction::with(Code::Cbw)),
                (_, 2) => Ok(Instruction::with(Code::Cwd)),
                (_, 4) => Ok(Instruction::with(Code::Cdq)),
                _ => Ok(Instruction::with(Code::Cqo)),
            };
            if let Ok(i) = i {
                out.push(i);
            }
        }
    }

    fn string(&self, rng: &mut Rng, out: &mut Vec<Instruction>) -> bool {
        let lea = |r: Register, d: u64| -> Option<Instruction> {
            let mut i = Instruction::default();
            i.set_code(Code::Lea_r64_m);
            i.set_op0_kind(OpKind::Register);
            i.set_op0_register(r);
            Self::set_mem(&mut i, 1, d);
            Some(i)
        };
        let (Some(a), Some(b)) = (
            lea(Register::RSI, 0x400 + rng.below(0x1800)),
            lea(Register::RDI, 0x400 + rng.below(0x1800)),
        ) else {
            return false;
        };
        out.push(a);
        out.push(b);
        if let Ok(i) = Instruction::with2(Code::Mov_r32_imm32, Register::ECX, rng.below(25) as u32)
        {
            out.push(i);
        }
        if rng.chance(30) {
            out.push(Instruction::with(Code::Std));
        } else if rng.chance(30) {
            out.push(Instruction::with(Code::Cld));
        }
        let rep = match rng.below(3) {
            0 => RepPrefixKind::None,
            1 => RepPrefixKind::Repe,
            _ => RepPrefixKind::Repne,
        };
        let seg = Register::None;
        let i = match rng.below(20) {
            0 => Instruction::with_movsb(64, seg, rep),
            1 => Instruction::with_movsw(64, seg, rep),
            2 => Instruction::with_movsd(64, seg, rep),
            3 => Instruction::with_movsq(64, seg, rep),
            4 => Instruction::with_cmpsb(64, seg, rep),
            5 => Instruction::with_cmpsw(64, seg, rep),
            6 => Instruction::with_cmpsd(64, seg, rep),
            7 => Instruction::with_cmpsq(64, seg, rep),
            8 => Instruction::with_scasb(64, rep),
            9 => Instruction::with_scasw(64, rep),
            10 => Instruction::with_scasd(64, rep),
            11 => Instruction::with_scasq(64, rep),
            12 => Instruction::with_lodsb(64, seg, rep),
            13 => Instruction::with_lodsw(64, seg, rep),
            14 => Instruction::with_lodsd(64, seg, rep),
            15 => Instruction::with_lodsq(64, seg, rep),
            16 => Instruction::with_stosb(64, rep),
            17 => Instruction::with_stosw(64, rep),
            18 => Instruction::with_stosd(64, rep),
            _ => Instruction::with_stosq(64, rep),
        };
        match i {
            Ok(i) => {
                out.push(i);
                true
            }
            Err(_) => false,
        }
    }
}
