//! Instruction execution: fetch and decode (iced-x86), operand access, and dispatch to the
//! instruction families in the submodules.
//!
//! Every handler works on a [`Ctx`]: the CPU, the VMM's I/O handler, the decoded instruction and
//! the RIP the instruction continues at. Handlers write memory before registers and flags so that
//! a fault leaves no partial effect; RIP is committed only when the handler succeeds.

mod alu;
mod bits;
mod control;
mod data;
mod mmx;
mod msr;
pub(crate) mod muldiv;
mod seg;
pub(crate) mod shift;
pub(crate) mod sse;
mod sse41;
mod sse42;
mod ssefp;
mod ssse3;
mod string;
mod system;
mod vector;
mod x87;

pub use msr::{cpuid, read_msr, write_msr};

use crate::cpu::{seg_index, Cpu, FS, GS, SS};
use crate::fault::{is_canonical, Exception, ExecError, StepError, Vector};
use crate::flags;
use crate::mmu::{Access, Priv};
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use kiln_engine::IoHandler;

/// Entries of the per-CPU decode cache.
pub(crate) const DECODE_CACHE_SIZE: usize = 4096;

#[derive(Clone, Copy)]
struct Decoded {
    rip: u64,
    bitness: u32,
    len: u8,
    /// Selects the instruction's `len` bytes in a 16-byte window.
    mask: u128,
    bytes: [u8; 16],
    instr: Instruction,
}

/// Recently decoded instructions by RIP, validated against the current bytes on every use.
pub(crate) struct DecodeCache {
    entries: Box<[Decoded]>,
}

impl DecodeCache {
    pub(crate) fn new() -> Self {
        let empty = Decoded {
            rip: u64::MAX,
            bitness: 0,
            len: 0,
            mask: 0,
            bytes: [0; 16],
            instr: Instruction::default(),
        };
        DecodeCache { entries: vec![empty; DECODE_CACHE_SIZE].into_boxed_slice() }
    }
}

/// Serializes locked read-modify-write instructions of all vCPUs.
static ATOMIC: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The result type of instruction handlers.
pub type R<T = ()> = Result<T, ExecError>;

/// The execution context of one instruction.
pub struct Ctx<'a> {
    /// The CPU.
    pub cpu: &'a mut Cpu,
    /// The VMM's port and MMIO handler.
    pub io: &'a dyn IoHandler,
    /// The decoded instruction.
    pub i: &'a Instruction,
    /// Where execution continues if the instruction completes (handlers of branches set it).
    pub next_rip: u64,
    /// A locked read-modify-write (LOCK prefix, XCHG with memory): its memory write is a
    /// compare-and-swap against what its read saw.
    locked: bool,
    rmw: Option<LockedRmw>,
    /// The compare-and-swap of a locked instruction lost a race; the instruction runs again.
    conflict: bool,
}

/// What the read of a locked read-modify-write saw.
#[derive(Clone, Copy)]
struct LockedRmw {
    la: u64,
    size: u32,
    seen: u64,
}

impl Cpu {
    /// Executes one instruction and delivers the exception it raises, if any.
    pub fn step(&mut self, io: &dyn IoHandler) -> Result<(), StepError> {
        let single_step = self.rflags & flags::TF != 0;
        match self.execute_one(io) {
            Ok(()) => {
                // A single-step trap after an instruction that began with TF set (software
                // interrupts clear TF on entry and are not trapped).
                if single_step && self.rflags & flags::TF != 0 {
                    self.dr[6] |= 1 << 14;
                    let rip = self.rip;
                    return match self.deliver(
                        io,
                        Vector::DB as u8,
                        crate::fault::EventKind::Exception(None),
                        rip,
                    ) {
                        Ok(()) => Ok(()),
                        Err(ExecError::Fault(e)) => self.raise(io, e),
                        Err(ExecError::Unsupported(w)) => Err(StepError::Unsupported(w)),
                    };
                }
                Ok(())
            }
            Err(ExecError::Fault(e)) => self.raise(io, e),
            Err(ExecError::Unsupported(w)) => Err(StepError::Unsupported(w)),
        }
    }

    /// Executes one instruction without delivering its exception: on `Err`, the CPU state is
    /// that before the instruction (except CR2 for page faults and, for REP string instructions,
    /// the iterations already completed).
    pub fn execute_one(&mut self, io: &dyn IoHandler) -> R {
        let instr = self.fetch_decode(io)?;
        self.interrupt_shadow = false;
        // Locked read-modify-writes (LOCK prefix, XCHG with memory) are atomic with respect to
        // every other vCPU's accesses: on aligned RAM operands their write is a host
        // compare-and-swap against the value their read saw, and the instruction runs again if
        // another vCPU wrote in between (memory is the first thing an instruction writes, so
        // nothing else has changed yet). Every locked instruction also holds one process-wide
        // lock, which is what makes the operands a host CAS cannot cover (MMIO, split) atomic.
        let locked = instr.has_lock_prefix()
            || (instr.mnemonic() == Mnemonic::Xchg
                && (instr.op0_kind() == OpKind::Memory || instr.op1_kind() == OpKind::Memory));
        let _serial =
            locked.then(|| ATOMIC.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut c = Ctx {
            next_rip: instr.next_ip(),
            cpu: self,
            io,
            i: &instr,
            locked,
            rmw: None,
            conflict: false,
        };
        loop {
            match dispatch(&mut c) {
                Err(ExecError::Fault(_)) if c.conflict => {
                    c.conflict = false;
                    c.rmw = None;
                    c.next_rip = instr.next_ip();
                }
                r => break r?,
            }
        }
        // RF, which an IRET loads from a fault's frame, lasts one instruction: it is cleared
        // once an instruction completes, except by the IRET that set it.
        let next = c.next_rip;
        if self.rflags & flags::RF != 0
            && !matches!(instr.mnemonic(), Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq)
        {
            self.rflags &= !flags::RF;
        }
        self.rip = if self.code64() { next } else { next & 0xffff_ffff };
        self.icount = self.icount.wrapping_add(1);
        Ok(())
    }

    /// Fetches and decodes the instruction at RIP.
    pub fn fetch_decode(&mut self, io: &dyn IoHandler) -> Result<Instruction, Exception> {
        let bitness = self.bitness();
        let la = if bitness == 64 {
            if !is_canonical(self.rip) {
                return Err(Exception::gp(0));
            }
            self.rip
        } else {
            self.seg[crate::cpu::CS].base.wrapping_add(self.rip) & 0xffff_ffff
        };
        // Fast path: the page's translation is in the TLB and the instruction's 16-byte window
        // lies in it, so the cached decode is checked against guest memory in place.
        if la & 0xfff <= 4096 - 16 {
            if let Some(p) = self.tlb_exec_host(la) {
                let slot = (self.rip as usize ^ (self.rip >> 12) as usize) % DECODE_CACHE_SIZE;
                let cached = &self.dcache.entries[slot];
                if cached.rip == self.rip && cached.len != 0 && cached.bitness == bitness {
                    // SAFETY: `p` points into a mapped RAM page at offset <= 4080, so 16 bytes
                    // are readable; guest memory may change under us (other vCPUs, devices),
                    // which is why the bytes are compared, not trusted.
                    let now = u128::from_le(unsafe { std::ptr::read_unaligned(p.cast::<u128>()) });
                    if (now ^ u128::from_le_bytes(cached.bytes)) & cached.mask == 0 {
                        return Ok(cached.instr);
                    }
                }
            }
        }
        let mut bytes = [0u8; 15];
        let first = (4096 - (la & 0xfff) as usize).min(15);
        let e = self.translate(la, Access::Exec, Priv::Current)?;
        self.read_phys_chunk(io, e.pa + (la & 0xfff), e.host, la, &mut bytes[..first]);
        let mut len = first;
        let mut second_fault = None;
        if first < 15 {
            let la2 = la.wrapping_add(first as u64);
            match self.translate(la2, Access::Exec, Priv::Current) {
                Ok(e2) => {
                    self.read_phys_chunk(io, e2.pa, e2.host, la2, &mut bytes[first..]);
                    len = 15;
                }
                Err(f) => second_fault = Some(f),
            }
        }
        // Decoding is a pure function of (bytes, RIP, bitness): reuse the last decode at this
        // RIP if the bytes are still the same (code the guest rewrote is decoded again).
        let slot = (self.rip as usize ^ (self.rip >> 12) as usize) % DECODE_CACHE_SIZE;
        let cached = &self.dcache.entries[slot];
        if cached.rip == self.rip
            && cached.len != 0
            && cached.bitness == bitness
            && usize::from(cached.len) <= len
        {
            let mut now = [0u8; 16];
            now[..15].copy_from_slice(&bytes);
            if (u128::from_le_bytes(now) ^ u128::from_le_bytes(cached.bytes)) & cached.mask == 0 {
                return Ok(cached.instr);
            }
        }
        let mut dec = Decoder::with_ip(bitness, &bytes[..len], self.rip, DecoderOptions::NONE);
        let instr = dec.decode();
        if instr.is_invalid() {
            if dec.last_error() == DecoderError::NoMoreBytes {
                if let Some(f) = second_fault {
                    // Translate again so CR2 names the second page even if the first retried.
                    let la2 = la.wrapping_add(first as u64);
                    self.cr2 = la2;
                    return Err(f);
                }
            }
            return Err(Exception::ud());
        }
        let n = instr.len().min(15);
        let e = &mut self.dcache.entries[slot];
        e.rip = self.rip;
        e.bitness = bitness;
        e.len = n as u8;
        e.mask = (1u128 << (8 * n as u32)) - 1;
        e.bytes[..n].copy_from_slice(&bytes[..n]);
        e.instr = instr;
        Ok(instr)
    }

    fn read_phys_chunk(&self, io: &dyn IoHandler, pa: u64, host: *mut u8, la: u64, buf: &mut [u8]) {
        if host.is_null() {
            self.mem.read(pa, buf, io);
        } else {
            let off = (la & 0xfff) as usize;
            // SAFETY: `host` is the host pointer of the RAM page of `pa`; `off + buf.len()` is at
            // most 4096 because callers never read past the end of the page.
            unsafe {
                std::ptr::copy_nonoverlapping(host.add(off), buf.as_mut_ptr(), buf.len());
            }
        }
    }
}

impl Ctx<'_> {
    /// The size in bytes of operand `n`.
    #[inline]
    pub fn op_size(&self, n: u32) -> u32 {
        match self.i.op_kind(n) {
            OpKind::Register => self.i.op_register(n).size() as u32,
            OpKind::Memory => self.i.memory_size().size() as u32,
            OpKind::Immediate8 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            _ => 8,
        }
    }

    /// The effective address (segment offset) of the memory operand.
    #[inline]
    pub fn ea(&self) -> u64 {
        let i = self.i;
        let base = i.memory_base();
        let index = i.memory_index();
        let mut a = i.memory_displacement64();
        if base == Register::RIP {
            return a;
        }
        if base == Register::EIP {
            return a & 0xffff_ffff;
        }
        let mut asz = if self.cpu.code64() { 8 } else { 4 };
        if base != Register::None {
            a = a.wrapping_add(self.cpu.reg(base));
            asz = base.size();
        }
        if index != Register::None {
            a = a.wrapping_add(self.cpu.reg(index).wrapping_mul(u64::from(i.memory_index_scale())));
            asz = index.size();
        }
        match asz {
            8 => a,
            4 => a & 0xffff_ffff,
            _ => a & 0xffff,
        }
    }

    /// The linear address of offset `off` in segment `seg`, with the canonical check of long
    /// mode (#GP(0), or #SS(0) for the stack segment).
    #[inline]
    pub fn lin(&self, seg: Register, off: u64) -> Result<u64, Exception> {
        let idx = seg_index(seg).unwrap_or(crate::cpu::DS);
        if self.cpu.code64() {
            let la =
                if idx == FS || idx == GS { self.cpu.seg[idx].base.wrapping_add(off) } else { off };
            if !is_canonical(la) {
                return Err(if idx == SS {
                    Exception::with_code(Vector::SS, 0)
                } else {
                    Exception::gp(0)
                });
            }
            Ok(la)
        } else {
            Ok(self.cpu.seg[idx].base.wrapping_add(off) & 0xffff_ffff)
        }
    }

    /// The linear address of the instruction's memory operand.
    #[inline]
    pub fn mem_lin(&self) -> Result<u64, Exception> {
        self.lin(self.i.memory_segment(), self.ea())
    }

    /// Reads `size` bytes at linear `la` with the current privilege.
    #[inline]
    pub fn read_mem(&mut self, la: u64, size: u32) -> Result<u64, Exception> {
        let v = self.cpu.read_lin_u(self.io, la, size, Priv::Current)?;
        if self.locked && self.rmw.is_none() {
            self.rmw = Some(LockedRmw { la, size, seen: v });
        }
        Ok(v)
    }

    /// Writes `size` bytes at linear `la` with the current privilege.
    #[inline]
    pub fn write_mem(&mut self, la: u64, size: u32, v: u64) -> Result<(), Exception> {
        if let Some(rmw) = self.rmw.filter(|r| self.locked && r.la == la && r.size == size) {
            match self.cpu.cas_lin(la, size, rmw.seen, v)? {
                Some(true) => return Ok(()),
                Some(false) => {
                    // Another vCPU changed the operand since the read: run the instruction
                    // again (the error only carries the retry to execute_one).
                    self.conflict = true;
                    return Err(Exception::gp(0));
                }
                None => {}
            }
        }
        self.cpu.write_lin_u(self.io, la, size, v, Priv::Current)
    }

    /// Reads operand `n` (immediates come sign-extended as encoded; callers mask to the size).
    #[inline]
    pub fn read(&mut self, n: u32) -> Result<u64, Exception> {
        match self.i.op_kind(n) {
            OpKind::Register => Ok(self.cpu.reg(self.i.op_register(n))),
            OpKind::Memory => {
                let la = self.mem_lin()?;
                let size = self.op_size(n);
                self.read_mem(la, size)
            }
            _ => Ok(self.i.immediate(n)),
        }
    }

    /// Writes operand `n`.
    #[inline]
    pub fn write(&mut self, n: u32, v: u64) -> Result<(), Exception> {
        match self.i.op_kind(n) {
            OpKind::Register => {
                self.cpu.set_reg(self.i.op_register(n), v);
                Ok(())
            }
            OpKind::Memory => {
                let la = self.mem_lin()?;
                let size = self.op_size(n);
                self.write_mem(la, size, v)
            }
            _ => Err(Exception::ud()),
        }
    }

    /// The stack pointer, masked to the stack width.
    #[inline]
    fn sp(&self) -> u64 {
        self.cpu.gpr[4] & flags::mask(self.cpu.stack_size())
    }

    #[inline]
    fn set_sp(&mut self, v: u64) {
        let w = self.cpu.stack_size();
        self.cpu.set_gpr_sized(4, w, v);
    }

    /// Pushes `size` bytes.
    pub fn push(&mut self, v: u64, size: u32) -> Result<(), Exception> {
        let sp = self.sp().wrapping_sub(u64::from(size)) & flags::mask(self.cpu.stack_size());
        let la = self.lin(Register::SS, sp)?;
        self.write_mem(la, size, v)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Reads the value `offset` bytes above the stack top without popping it.
    pub fn peek(&mut self, offset: u64, size: u32) -> Result<u64, Exception> {
        let sp = self.sp().wrapping_add(offset) & flags::mask(self.cpu.stack_size());
        let la = self.lin(Register::SS, sp)?;
        self.read_mem(la, size)
    }

    /// Pops `size` bytes.
    pub fn pop(&mut self, size: u32) -> Result<u64, Exception> {
        let v = self.peek(0, size)?;
        let sp = self.sp().wrapping_add(u64::from(size));
        self.set_sp(sp);
        Ok(v)
    }

    /// The operand size of a stack operation (push/pop/call/ret): 8 or 2 in 64-bit mode.
    pub fn stack_op_size(&self) -> u32 {
        let inc = self.i.stack_pointer_increment().unsigned_abs();
        match inc {
            2 | 4 | 8 => inc,
            _ => {
                if self.cpu.code64() {
                    8
                } else {
                    4
                }
            }
        }
    }

    /// Raises #GP(0) unless the CPU is at CPL0.
    pub fn require_cpl0(&self) -> Result<(), Exception> {
        if self.cpu.cpl() != 0 {
            Err(Exception::gp(0))
        } else {
            Ok(())
        }
    }
}

fn dispatch(c: &mut Ctx) -> R {
    use Mnemonic as M;
    let m = c.i.mnemonic();
    match m {
        M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp | M::And | M::Or | M::Xor | M::Test => {
            alu::binop(c, m)
        }
        M::Inc | M::Dec | M::Neg | M::Not => alu::unop(c, m),
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => shift::shift(c, m),
        M::Shld | M::Shrd => shift::double(c, m),
        M::Mul | M::Imul | M::Div | M::Idiv => muldiv::exec(c, m),
        M::Bt | M::Bts | M::Btr | M::Btc => bits::bit_test(c, m),
        M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt | M::Popcnt => bits::scan(c, m),
        M::Bswap => bits::bswap(c),
        M::Crc32 => sse42::crc32(c),
        M::Andn | M::Bextr | M::Blsi | M::Blsmsk | M::Blsr => bits::bmi1(c, m),
        M::Movsd if !is_string_form(c.i) => sse::exec(c, m).unwrap_or(Err(Exception::ud().into())),
        M::Cmpsd if !is_string_form(c.i) => sse::exec(c, m).unwrap_or(Err(Exception::ud().into())),
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Insb
        | M::Insw
        | M::Insd
        | M::Outsb
        | M::Outsw
        | M::Outsd => string::exec(c, m),
        _ => {
            if let Some(r) = data::exec(c, m) {
                return r;
            }
            if let Some(r) = control::exec(c, m) {
                return r;
            }
            if let Some(r) = system::exec(c, m) {
                return r;
            }
            if let Some(r) = sse::exec(c, m) {
                return r;
            }
            Err(Exception::ud().into())
        }
    }
}

/// True for the string-instruction forms of mnemonics shared with SSE (MOVSD, CMPSD).
fn is_string_form(i: &Instruction) -> bool {
    matches!(i.op0_kind(), OpKind::MemoryESRDI | OpKind::MemoryESEDI | OpKind::MemoryESDI)
        || matches!(i.op0_kind(), OpKind::MemorySegRSI | OpKind::MemorySegESI | OpKind::MemorySegSI)
}
