//! CPU vendors, the host's features, and the classes of cases where Intel and AMD CPUs differ
//! in what their manuals define.
//!
//! emu behaves as the vendor its CPUID names (Intel). Where the host is that vendor, every case
//! is compared exactly against it. Where it is not, a case in one of the classes below is
//! compared against the claimed vendor's result instead: the host's outcome is turned into the
//! one the claimed vendor's manual (or, where the manual leaves it open, its CPUs) gives, and the
//! comparison stays exact. The x87 pointer fields are model-specific even among Intel CPUs
//! (FOP compatibility mode, FDP_EXCPTN_ONLY), so they are compared against emu's declared model
//! on every host. Each adjustment is idempotent: applied on a host of the claimed vendor it would
//! change nothing.

use crate::tables::Family;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use kiln_emu::sandbox::Sandbox;
use std::arch::x86_64::{__cpuid_count, CpuidResult};
use std::collections::BTreeMap;

/// An x86-64 vendor, as CPUID leaf 0 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

impl Vendor {
    fn from_leaf0(ebx: u32, ecx: u32, edx: u32) -> (Vendor, String) {
        let mut name = Vec::with_capacity(12);
        for w in [ebx, edx, ecx] {
            name.extend_from_slice(&w.to_le_bytes());
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let vendor = match name.as_str() {
            "GenuineIntel" => Vendor::Intel,
            // Hygon's CPUs are AMD's Zen cores.
            "AuthenticAMD" | "HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        };
        (vendor, name)
    }
}

fn host_cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

/// The host CPU: its vendor and the optional features the generator may use.
pub struct Host {
    pub vendor: Vendor,
    pub name: String,
    pub bmi1: bool,
    pub lzcnt: bool,
    pub popcnt: bool,
    pub cx16: bool,
    pub lahf_lm: bool,
    pub sse3: bool,
    pub ssse3: bool,
    pub sse41: bool,
    pub sse42: bool,
}

impl Host {
    pub fn detect() -> Host {
        let l0 = host_cpuid(0, 0);
        let (vendor, name) = Vendor::from_leaf0(l0.ebx, l0.ecx, l0.edx);
        let l1 = host_cpuid(1, 0);
        let l7 = if l0.eax >= 7 { host_cpuid(7, 0) } else { host_cpuid(0, 0) };
        let max_ext = host_cpuid(0x8000_0000, 0).eax;
        let e1 = if max_ext >= 0x8000_0001 { host_cpuid(0x8000_0001, 0).ecx } else { 0 };
        Host {
            vendor,
            name,
            bmi1: l0.eax >= 7 && l7.ebx & (1 << 3) != 0,
            lzcnt: e1 & (1 << 5) != 0,
            popcnt: l1.ecx & (1 << 23) != 0,
            cx16: l1.ecx & (1 << 13) != 0,
            lahf_lm: e1 & 1 != 0,
            sse3: l1.ecx & 1 != 0,
            ssse3: l1.ecx & (1 << 9) != 0,
            sse41: l1.ecx & (1 << 19) != 0,
            sse42: l1.ecx & (1 << 20) != 0,
        }
    }

    /// Why the host cannot run instructions of mnemonic `m` natively, if it cannot.
    pub fn lacks(&self, m: Mnemonic) -> Option<&'static str> {
        use Mnemonic as M;
        match m {
            M::Andn | M::Bextr | M::Blsi | M::Blsmsk | M::Blsr | M::Tzcnt if !self.bmi1 => {
                Some("BMI1")
            }
            M::Lzcnt if !self.lzcnt => Some("LZCNT"),
            M::Popcnt if !self.popcnt => Some("POPCNT"),
            M::Cmpxchg16b if !self.cx16 => Some("CMPXCHG16B"),
            M::Lahf | M::Sahf if !self.lahf_lm => Some("LAHF/SAHF in 64-bit mode"),
            M::Fisttp if !self.sse3 => Some("SSE3"),
            _ => match crate::tables::family(m) {
                Some(Family::Sse3) if !self.sse3 => Some("SSE3"),
                Some(Family::Ssse3) if !self.ssse3 => Some("SSSE3"),
                Some(Family::Sse41) if !self.sse41 => Some("SSE4.1"),
                Some(Family::Sse42 | Family::Crc32) if !self.sse42 => Some("SSE4.2"),
                _ => None,
            },
        }
    }
}

/// The vendor emu's CPUID names.
pub fn claimed(sb: &Sandbox) -> (Vendor, String) {
    let (_, ebx, ecx, edx) = kiln_emu::exec::cpuid(&sb.cpu, 0, 0);
    Vendor::from_leaf0(ebx, ecx, edx)
}

/// A documented class of vendor differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A near CALL to a non-canonical target (register or memory operand): Intel CPUs store the
    /// return address below RSP, then raise #GP(0) on the CALL with RSP and RIP unchanged; AMD
    /// CPUs raise it with nothing stored.
    NonCanonicalCall,
    /// A near CALL, RET or Jcc with an operand-size prefix (0x66) in 64-bit mode: Intel ignores
    /// the prefix (SDM: the operand size is forced to 64 bits), AMD makes it a 16-bit branch.
    /// The host of the other vendor runs the instruction with the prefix byte replaced by a DS
    /// prefix (0x3E), which both vendors ignore there: the Intel meaning, at the same length.
    OperandSizeBranch,
    /// BSF/BSR with a 32-bit destination register and a zero source: AMD documents the whole
    /// register unchanged; Intel documents it undefined, and its CPUs write the old low half,
    /// clearing the upper half (as Linux's `ffs` relies on).
    ZeroBitScan32,
    /// LDMXCSR or FXRSTOR of an MXCSR with only bit 17 (MM, AMD's misaligned-SSE mode) above the
    /// low 16 bits: AMD CPUs with misaligned SSE accept it, Intel raises #GP(0).
    MxcsrMm,
    /// FOP, FIP, FDP, FCS, FDS in FXSAVE/FNSTENV/FNSAVE images, and FXSAVE's MXCSR_MASK. AMD
    /// stores the pointers only with an exception pending; Intel always, subject to model
    /// features. Compared on every host against emu's declared Intel model (docs/emu.md): the
    /// last non-control x87 instruction's RIP, opcode and operand offset (zero without one),
    /// FCS/FDS zero (CPUID.7.0:EBX[13]), MXCSR_MASK 0xffff.
    X87Pointers,
}

/// How many cases of each class were seen, and how they were compared.
#[derive(Default)]
pub struct Tally {
    counts: BTreeMap<Class, u64>,
}

impl Tally {
    pub fn add(&mut self, c: Class) {
        *self.counts.entry(c).or_default() += 1;
    }

    /// One line per class for the report.
    pub fn report(&self, host: &Host, claimed: Vendor) -> Vec<String> {
        let all = [
            Class::NonCanonicalCall,
            Class::OperandSizeBranch,
            Class::ZeroBitScan32,
            Class::MxcsrMm,
            Class::X87Pointers,
        ];
        all.iter()
            .map(|c| {
                let n = self.counts.get(c).copied().unwrap_or(0);
                let how = if *c == Class::X87Pointers {
                    "against emu's declared Intel model on every host"
                } else if host.vendor == claimed {
                    "exactly (the host is the claimed vendor)"
                } else {
                    "against the claimed vendor's result"
                };
                format!("{c:?}: {n} cases, compared {how}")
            })
            .collect()
    }
}

/// True if `a` is a canonical 48-bit address.
fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

/// The legacy prefix bytes of the instruction at `at` (before REX and the opcode).
pub fn legacy_prefixes(sb: &Sandbox, at: u64) -> Vec<u8> {
    let mut b = [0u8; 15];
    sb.peek(at, &mut b);
    b.iter()
        .copied()
        .take_while(|x| {
            matches!(x, 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65)
        })
        .collect()
}

/// The class of instruction `i` at `at`, judged from the emulator's state before it runs;
/// `operand` is the linear address of its memory operand, if it has one.
pub fn classify(sb: &Sandbox, i: &Instruction, at: u64, operand: u64) -> Option<Class> {
    let m = i.mnemonic();
    let mem_value = |offset: u64, size: usize| {
        let mut b = [0u8; 8];
        sb.peek(operand.wrapping_add(offset), &mut b[..size]);
        u64::from_le_bytes(b)
    };
    match m {
        Mnemonic::Call if matches!(i.op0_kind(), OpKind::Register | OpKind::Memory) => {
            let target = match i.op0_kind() {
                OpKind::Register => sb.cpu.reg(i.op0_register()),
                _ => mem_value(0, 8),
            };
            if !canonical(target) {
                return Some(Class::NonCanonicalCall);
            }
        }
        Mnemonic::Bsf | Mnemonic::Bsr
            if i.op0_kind() == OpKind::Register && i.op0_register().size() == 4 =>
        {
            let src = match i.op1_kind() {
                OpKind::Register => sb.cpu.reg(i.op1_register()),
                _ => mem_value(0, 4),
            };
            if src & 0xffff_ffff == 0 {
                return Some(Class::ZeroBitScan32);
            }
        }
        Mnemonic::Ldmxcsr | Mnemonic::Fxrstor64 => {
            let mx = mem_value(if m == Mnemonic::Ldmxcsr { 0 } else { 24 }, 4);
            if mx as u32 & 0xffff_0000 == 1 << 17 {
                return Some(Class::MxcsrMm);
            }
        }
        _ => {}
    }
    let branch = matches!(m, Mnemonic::Call | Mnemonic::Ret) || i.is_jcc_short_or_near();
    if branch && legacy_prefixes(sb, at).contains(&0x66) {
        return Some(Class::OperandSizeBranch);
    }
    None
}

/// The x87 last-instruction state of emu's declared model: FOP, FIP, FDP.
#[derive(Clone, Copy, Default)]
pub struct X87Pointers {
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
}

impl X87Pointers {
    /// The pointer bytes of a saved image, as the model has them: the FXSAVE64 range 6..24 plus
    /// MXCSR_MASK at 28, the 28-byte FNSTENV range 12..28, the 14-byte one 6..14.
    pub fn image(&self, range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        match (range.start, range.end) {
            (6, 24) => vec![
                (6, self.fop.to_le_bytes().to_vec()),
                (8, self.fip.to_le_bytes().to_vec()),
                (16, self.fdp.to_le_bytes().to_vec()),
                (28, 0xffffu32.to_le_bytes().to_vec()),
            ],
            (12, 28) => vec![
                (12, (self.fip as u32).to_le_bytes().to_vec()),
                (16, (u32::from(self.fop) << 16).to_le_bytes().to_vec()),
                (20, (self.fdp as u32).to_le_bytes().to_vec()),
                (24, vec![0; 4]),
            ],
            _ => vec![
                (6, (self.fip as u16).to_le_bytes().to_vec()),
                (8, vec![0; 2]),
                (10, (self.fdp as u16).to_le_bytes().to_vec()),
                (12, vec![0; 2]),
            ],
        }
    }

    /// The model's state after instruction `i` at `at` completed. `bytes` are its bytes,
    /// `offset` its memory operand's offset (effective address), `image` reads the memory
    /// operand before the instruction ran.
    pub fn after(&mut self, i: &Instruction, at: u64, bytes: &[u8], offset: u64, image: &[u8]) {
        let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([image[o], image[o + 1], image[o + 2], image[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        if i.mnemonic() == Mnemonic::Fxrstor64 {
            *self = X87Pointers { fop: u16_at(6) & 0x7ff, fip: u64_at(8), fdp: u64_at(16) };
            return;
        }
        let Some(k) = bytes.iter().position(|b| {
            !matches!(
                b,
                0x66 | 0x67
                    | 0xf0
                    | 0xf2
                    | 0xf3
                    | 0x2e
                    | 0x36
                    | 0x3e
                    | 0x26
                    | 0x64
                    | 0x65
                    | 0x9b
                    | 0x40..=0x4f
            )
        }) else {
            return;
        };
        let (op, modrm) = match (bytes.get(k), bytes.get(k + 1)) {
            (Some(&op @ 0xd8..=0xdf), Some(&modrm)) => (op, modrm),
            _ => return,
        };
        let reg = (modrm >> 3) & 7;
        let memory = modrm < 0xc0;
        let wide = !matches!(
            i.memory_size(),
            iced_x86::MemorySize::FpuEnv14 | iced_x86::MemorySize::FpuState94
        );
        match (op, reg, memory) {
            // FLDENV, FRSTOR: loaded from the image.
            (0xd9 | 0xdd, 4, true) => {
                *self = if wide {
                    X87Pointers {
                        fop: ((u32_at(16) >> 16) & 0x7ff) as u16,
                        fip: u64::from(u32_at(12)),
                        fdp: u64::from(u32_at(20)),
                    }
                } else {
                    X87Pointers { fop: 0, fip: u64::from(u16_at(6)), fdp: u64::from(u16_at(10)) }
                };
            }
            // FNSAVE initializes the FPU.
            (0xdd, 6, true) => *self = X87Pointers::default(),
            // Other control instructions with a memory operand: FLDCW, FNSTENV, FNSTCW, FNSTSW.
            (0xd9, 5..=7, true) | (0xdd, 7, true) => {}
            // FNINIT.
            (0xdb, _, false) if modrm == 0xe3 => *self = X87Pointers::default(),
            // FNCLEX, FNSTSW AX, FNOP, FDECSTP, FINCSTP, FFREE, FFREEP.
            (0xdb, _, false) if modrm == 0xe2 => {}
            (0xdf, _, false) if modrm == 0xe0 => {}
            (0xd9, _, false) if matches!(modrm, 0xd0 | 0xf6 | 0xf7) => {}
            (0xdd | 0xdf, 0, false) => {}
            _ => {
                *self = X87Pointers {
                    fop: (u16::from(op & 7) << 8) | u16::from(modrm),
                    fip: at,
                    fdp: if memory { offset } else { 0 },
                }
            }
        }
    }
}

/// Registers that name a segment whose base a memory operand adds (FS, GS in 64-bit mode).
pub fn segment_base(sb: &Sandbox, i: &Instruction) -> u64 {
    match i.segment_prefix() {
        Register::FS => sb.cpu.seg[kiln_emu::cpu::FS].base,
        Register::GS => sb.cpu.seg[kiln_emu::cpu::GS].base,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::{Code, Decoder, DecoderOptions};

    /// The emulator decodes as Intel does: an operand-size prefix on a near branch is ignored.
    #[test]
    fn operand_size_prefix_on_near_branches_decodes_as_intel() {
        for (bytes, code) in [
            (&[0x66, 0xe8, 0, 0, 0, 0][..], Code::Call_rel32_64),
            (&[0x66, 0xc3][..], Code::Retnq),
            (&[0x66, 0xc2, 8, 0][..], Code::Retnq_imm16),
            (&[0x66, 0xff, 0xd0][..], Code::Call_rm64),
            (&[0x66, 0x74, 0][..], Code::Je_rel8_64),
        ] {
            let i = Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE).decode();
            assert_eq!((i.code(), i.len()), (code, bytes.len()), "{bytes:02x?}");
        }
    }
}
