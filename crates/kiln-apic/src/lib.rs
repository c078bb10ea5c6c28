//! Interrupt controllers as plain state machines: the local APIC ([`LocalApic`], xAPIC MMIO
//! registers, its timer in one-shot, periodic and TSC-deadline modes, IPIs) and the I/O APIC
//! ([`IoApic`], 24 redirection entries, edge and level pins).
//!
//! KVM provides both in the host kernel; Kiln's `emu` engine needs them in software. They do
//! no I/O and read no clock: the engine passes the guest's time in, asks for the next timer
//! deadline, and routes what they return (IPIs, I/O APIC deliveries) to the target vCPU's APIC.
//! That keeps them deterministic and testable, and usable for a split-irqchip KVM set-up too.

mod ioapic;
mod lapic;

pub use ioapic::{Delivery, IoApic, IOAPIC_BASE, IOAPIC_PINS};
pub use lapic::{
    DeliveryMode, Ipi, IpiDestination, LocalApic, TimerEvent, WriteEffect, LAPIC_BASE, LAPIC_SIZE,
};
