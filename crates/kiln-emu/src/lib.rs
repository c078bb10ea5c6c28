//! Kiln's own x86-64 CPU: the `emu` engine.
//!
//! Decoding is done by `iced-x86`; everything after decoding is Kiln's: the architectural state
//! ([`cpu::Cpu`]), guest-physical memory access ([`mem`]), 4-level paging with a software TLB
//! ([`mmu`]), exceptions and their delivery through the IDT ([`fault`]), the instruction semantics
//! grouped by family ([`exec`]), and the adapter to Kiln's engine boundary ([`EmuEngine`]).
//!
//! 64-bit code runs in decoded blocks ([`block`]): runs of common instructions decoded once
//! into operations with resolved operands and executed with lazily computed flags, validated
//! against the guest's bytes at every entry. Everything else runs on the generic interpreter,
//! one instruction per [`cpu::Cpu::step`] or [`cpu::Cpu::execute_one`]. An instruction either
//! completes (all architectural effects applied) or raises an exception before any architectural
//! effect (faults are precise: memory is written before registers and flags, and every page an
//! access touches is translated before the first byte is written).
//!
//! The platform around the CPUs ([`irqchip`]): local APICs, the I/O APIC, INIT/SIPI and guest
//! time driven by executed instructions.
//!
//! What is not here yet: MMX and SSE3+, legacy (non-long-mode) paging and 32-bit
//! protected-mode interrupt delivery. x87 and SSE/SSE2 floating point run
//! on the host's FPU under the guest's control words (see `exec/x87.rs`, `exec/ssefp.rs`).

pub mod block;
pub mod cpu;
mod engine;
pub mod exec;
pub mod fault;
pub mod flags;
pub mod irqchip;
pub mod mem;
pub mod mmu;
pub mod sandbox;

pub use block::Blocks;
pub use cpu::Cpu;
pub use engine::{EmuConfig, EmuEngine, EmuVcpu, EmuVm};
pub use fault::{Exception, Vector};
