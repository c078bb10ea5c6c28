//! Decoded blocks: the fast path of the interpreter for 64-bit code.
//!
//! A block is a run of instructions in one page, starting at a RIP and ending at the first
//! branch, the first instruction the fast path does not model, the page end, 32 bytes or
//! [`MAX_OPS`] instructions. Its instructions are decoded once into `op::Op`s (operands
//! resolved) and run back to back with lazily computed flags (`lazy`), so a hot loop costs a
//! table lookup and a byte comparison per block instead of a fetch, a decode-cache probe and an
//! operand-kind dispatch per instruction. Anything else (and every operation that meets an
//! unusual case: see `exec`) runs on the generic path, [`Cpu::execute_one`].
//!
//! Blocks are keyed by RIP and validated against the guest's bytes on every entry, not by
//! tracking writes: Linux patches its own code at boot (alternatives, static keys, ftrace), other
//! vCPUs and devices write memory, and the same linear address can hold other code under another
//! CR3. Comparing a block's bytes (tens of bytes, in place through the TLB's host pointer) covers
//! all of these; a block that stores into its own page ends there and is validated again.

mod exec;
mod lazy;
mod op;

use crate::cpu::Cpu;
use crate::fault::{ExecError, StepError};
use crate::flags;
use exec::{Bail, Flow};
use iced_x86::{Decoder, DecoderOptions};
use kiln_engine::IoHandler;
use lazy::Lazy;
use op::Op;

/// The most instructions in one block.
pub const MAX_OPS: usize = 16;
/// The most bytes a block's instructions span: a block's entry, bytes included, is one cache
/// line, so finding and validating it costs one memory access (longer runs become several
/// blocks).
const MAX_BYTES: usize = 32;
/// Blocks in the cache (a power of two).
const SLOTS: usize = 8192;

/// One decoded block, in one cache line.
#[repr(align(64))]
struct Block {
    /// The RIP it starts at (`u64::MAX` for an empty slot).
    rip: u64,
    /// The operations and their instruction lengths.
    ops: Box<[(Op, u8)]>,
    /// How many of `bytes` are the block's.
    len: u8,
    /// The guest bytes it was decoded from. For a block whose first instruction is generic
    /// (no ops), that instruction's bytes, so a rewrite is noticed.
    bytes: [u8; MAX_BYTES],
}

impl Block {
    /// The block's bytes equal the guest's at `code`, the host address of its RIP.
    #[inline(always)]
    fn matches(&self, code: *const u8) -> bool {
        let n = usize::from(self.len);
        if (code as usize & 0xfff) + MAX_BYTES <= 4096 {
            for k in 0..MAX_BYTES / 8 {
                let valid = n.saturating_sub(8 * k).min(8);
                if valid == 0 {
                    break;
                }
                let mask = if valid == 8 { u64::MAX } else { (1u64 << (8 * valid)) - 1 };
                let mut want = [0u8; 8];
                want.copy_from_slice(&self.bytes[8 * k..8 * k + 8]);
                // SAFETY: `code` is the host address of RIP in a mapped RAM page and the 32-byte
                // window lies in that page (checked above). Other vCPUs may write concurrently:
                // this is why bytes are compared.
                let now = unsafe { std::ptr::read_unaligned(code.add(8 * k).cast::<u64>()) };
                if (u64::from_le(now) ^ u64::from_le_bytes(want)) & mask != 0 {
                    return false;
                }
            }
            true
        } else {
            // SAFETY: the block's bytes were read from `code` without crossing the page end.
            (0..n).all(|k| unsafe { *code.add(k) } == self.bytes[k])
        }
    }

    /// Decodes the block at `rip`, whose host address is `code`.
    fn compile(&mut self, rip: u64, code: *const u8) {
        let avail = (4096 - (rip & 0xfff) as usize).min(MAX_BYTES);
        let mut buf = [0u8; MAX_BYTES];
        // SAFETY: `code` is the host address of RIP in a mapped RAM page; `avail` bytes up to the
        // page end are readable.
        unsafe { std::ptr::copy_nonoverlapping(code, buf.as_mut_ptr(), avail) };
        let mut dec = Decoder::with_ip(64, &buf[..avail], rip, DecoderOptions::NONE);
        // Built on the stack, then one allocation of the exact size.
        let mut ops = [(Op::Nop, 0u8); MAX_OPS];
        let mut count = 0;
        let mut used = 0;
        while count < MAX_OPS && dec.can_decode() {
            let i = dec.decode();
            if i.is_invalid() {
                break;
            }
            match op::translate(&i) {
                Some(op) => {
                    ops[count] = (op, i.len() as u8);
                    count += 1;
                    used += i.len();
                    if op.is_branch() {
                        break;
                    }
                }
                None => {
                    if count == 0 {
                        used = i.len();
                    }
                    break;
                }
            }
        }
        self.rip = rip;
        self.ops = Box::from(&ops[..count]);
        self.len = used as u8;
        self.bytes = [0; MAX_BYTES];
        self.bytes[..used].copy_from_slice(&buf[..used]);
    }
}

/// A vCPU's cache of decoded blocks.
pub struct Blocks {
    slots: Box<[Block]>,
}

impl Default for Blocks {
    fn default() -> Self {
        Self::new()
    }
}

impl Blocks {
    /// An empty cache.
    pub fn new() -> Self {
        let slots = (0..SLOTS).map(|_| Block {
            rip: u64::MAX,
            ops: Box::new([]),
            len: 0,
            bytes: [0; MAX_BYTES],
        });
        Blocks { slots: slots.collect() }
    }

    /// Runs at least one and at most `limit` instructions (fewer when an instruction on the
    /// generic path ran, so the caller can look at devices and interrupts) and delivers the
    /// exception one raises, as [`Cpu::step`] does. Returns the instructions run, counting one
    /// that faulted.
    pub fn run(&mut self, cpu: &mut Cpu, io: &dyn IoHandler, limit: u64) -> Result<u64, StepError> {
        if cpu.rflags & flags::TF != 0 {
            cpu.step(io)?;
            return Ok(1);
        }
        match self.execute(cpu, io, limit) {
            Ok(n) => Ok(n),
            Err((n, ExecError::Fault(e))) => {
                cpu.raise(io, e)?;
                Ok(n + 1)
            }
            Err((_, ExecError::Unsupported(w))) => Err(StepError::Unsupported(w)),
        }
    }

    /// Runs as [`Blocks::run`] without delivering exceptions: on `Err`, the instructions that
    /// completed and the error of the next, with the CPU state before it (as
    /// [`Cpu::execute_one`] leaves it).
    pub fn execute(
        &mut self,
        cpu: &mut Cpu,
        io: &dyn IoHandler,
        limit: u64,
    ) -> Result<u64, (u64, ExecError)> {
        // The pending flags and the count are locals of this function only (no pointer to them
        // leaves it), so the compiler keeps them in registers in the block loop.
        let mut lazy = Lazy::NONE;
        let mut n = 0u64;
        let result: Result<(), ExecError> = 'run: {
            'blocks: while n < limit {
                // Outside 64-bit code, and for the one instruction after an IRET that set RF
                // (which the generic path clears once it completes), the generic path runs.
                if !cpu.code64() || cpu.rflags & flags::RF != 0 {
                    break 'run generic(cpu, io, &mut lazy, &mut n);
                }
                let rip = cpu.rip;
                let Some(code) = cpu.tlb_exec_host(rip) else {
                    break 'run generic(cpu, io, &mut lazy, &mut n);
                };
                let block = &mut self.slots[((rip ^ (rip >> 13)) as usize) & (SLOTS - 1)];
                if block.rip != rip || !block.matches(code) {
                    block.compile(rip, code);
                }
                if block.ops.is_empty() {
                    break 'run generic(cpu, io, &mut lazy, &mut n);
                }
                let code_page = code as usize;
                cpu.interrupt_shadow = false;
                loop {
                    // Instructions completed in this pass, added to the counters once.
                    let room = limit - n;
                    let mut done = 0;
                    let mut rewritten = false;
                    for &(ref op, len) in block.ops.iter() {
                        if done == room {
                            break;
                        }
                        match exec::exec(cpu, op, len, &mut lazy, code_page) {
                            Ok(Flow::Next) => cpu.rip = cpu.rip.wrapping_add(u64::from(len)),
                            Ok(Flow::Branch) => {}
                            Ok(Flow::CodeWritten) => {
                                cpu.rip = cpu.rip.wrapping_add(u64::from(len));
                                rewritten = true;
                            }
                            Err(Bail) => {
                                cpu.icount = cpu.icount.wrapping_add(done);
                                n += done;
                                break 'run generic(cpu, io, &mut lazy, &mut n);
                            }
                        }
                        done += 1;
                        if rewritten {
                            break;
                        }
                    }
                    cpu.icount = cpu.icount.wrapping_add(done);
                    n += done;
                    // A loop onto itself runs again without a lookup: its own stores (which
                    // end it above) and generic instructions (which end the run) are what
                    // could change it from this vCPU; another vCPU's rewrite is seen at the
                    // next lookup, as a real CPU needs a serializing instruction to see
                    // cross-modified code.
                    if rewritten || cpu.rip != rip || n >= limit {
                        continue 'blocks;
                    }
                }
            }
            Ok(())
        };
        lazy.materialize(&mut cpu.rflags);
        result.map(|()| n).map_err(|e| (n, e))
    }
}

/// Runs one instruction on the generic path, with RFLAGS current (out of line: the block loop
/// stays small). The flags and the count come by value and go back the same way, so that
/// the loop's copies need not live in memory.
#[inline(never)]
fn generic_out_of_line(cpu: &mut Cpu, io: &dyn IoHandler, mut lazy: Lazy) -> Result<(), ExecError> {
    lazy.materialize(&mut cpu.rflags);
    cpu.execute_one(io)
}

/// [`generic_out_of_line`] for the loop's locals: RFLAGS becomes current, the instruction
/// counts if it completed.
#[inline(always)]
fn generic(
    cpu: &mut Cpu,
    io: &dyn IoHandler,
    lazy: &mut Lazy,
    n: &mut u64,
) -> Result<(), ExecError> {
    let pending = *lazy;
    *lazy = Lazy::NONE;
    generic_out_of_line(cpu, io, pending)?;
    *n += 1;
    Ok(())
}
