//! The emulated platform around the CPUs: guest time, one local APIC per vCPU, the I/O APIC,
//! the legacy PIC path, and INIT/SIPI start-up.
//!
//! * **Guest time** ([`GuestClock`]) is driven by executed instructions: one nanosecond (one TSC
//!   tick at the declared 1 GHz) per retired instruction, summed over all vCPUs, plus the time
//!   skipped when every vCPU is idle. A vCPU commits its retired instructions to the clock at
//!   the end of each slice, on RDTSC and on I/O, so the TSC is globally monotonic. One vCPU with
//!   no asynchronous devices boots the same way every time.
//! * **Idle skip-ahead**: when the last running vCPU halts, the clock jumps to the earliest
//!   local-APIC timer deadline of any vCPU, so an idle guest costs no host CPU and a `sleep`
//!   in the guest takes no wall time. With no deadline armed, halted vCPUs wait for a device.
//! * **Interrupts**: an [`kiln_engine::IrqLine`] for GSI `n` pulses I/O APIC pin `n`; an unmasked
//!   pin is routed by its redirection entry to local APICs. Before the guest programs the I/O
//!   APIC (pin masked) and while the boot CPU's local APIC passes external interrupts through
//!   (software-disabled, or LINT0 in ExtINT mode), the line behaves as a legacy 8259 would
//!   after Linux programmed it: vector `0x30 + n` on vCPU 0. The 8259 registers themselves are a
//!   device of the VMM (`kiln-devices::pic`).
//! * **IPIs**: fixed, lowest-priority (to the first target), NMI, INIT and start-up IPIs. An AP
//!   waits for a SIPI and starts in real mode at `vector << 12`.
//!
//! The APIC state machines are `kiln-apic`'s; this module adds the wiring, the locking and the
//! wake-ups. Each local APIC sits behind its own mutex; `attention` flags let a vCPU see pending
//! work without taking it.

use kiln_apic::{
    Delivery, DeliveryMode, IoApic, Ipi, IpiDestination, LocalApic, TimerEvent, IOAPIC_BASE,
    IOAPIC_PINS, LAPIC_BASE, LAPIC_SIZE,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Where a legacy PIC delivers ISA interrupt 0 (Linux's `ISA_IRQ_VECTOR(0)`).
pub const LEGACY_VECTOR_BASE: u8 = 0x30;
/// The I/O APIC's register window.
pub const IOAPIC_SIZE: u64 = 0x1000;

/// No timer armed.
const NEVER: u64 = u64::MAX;

/// Guest time in nanoseconds, which is also the TSC before a vCPU's offset.
#[derive(Debug, Default)]
pub struct GuestClock {
    now: AtomicU64,
}

impl GuestClock {
    /// The current guest time.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// Adds `ns` executed by a vCPU; returns the new time.
    pub fn advance(&self, ns: u64) -> u64 {
        self.now.fetch_add(ns, Ordering::AcqRel).wrapping_add(ns)
    }

    /// Moves the clock forward to `t` (never back).
    fn skip_to(&self, t: u64) {
        self.now.fetch_max(t, Ordering::AcqRel);
    }
}

/// What one vCPU's slot holds besides its APIC.
struct CpuSlot {
    apic: Mutex<LocalApic>,
    /// A deliverable interrupt, an NMI, an INIT or a SIPI waits for this vCPU.
    attention: AtomicBool,
    /// Guest time of the APIC timer's next expiry ([`NEVER`] when disarmed).
    deadline: AtomicU64,
    /// The vCPU's TSC offset (TSC = guest time + offset), to place TSC-deadline timers in time.
    tsc_offset: AtomicU64,
    /// Legacy (ExtINT) vectors pending, one bit each.
    legacy: [AtomicU64; 4],
    nmi: AtomicBool,
    init: AtomicBool,
    /// The vector of a start-up IPI plus one (0: none).
    sipi: AtomicU32,
}

/// The start-up requests a vCPU can receive from other vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startup {
    /// INIT: reset and wait for a SIPI.
    Init,
    /// SIPI: start in real mode at this page.
    Sipi(u8),
}

/// One VM's interrupt controllers and clock, shared by its vCPUs and interrupt lines.
pub struct IrqChip {
    clock: GuestClock,
    cpus: Vec<CpuSlot>,
    ioapic: Mutex<IoApic>,
    /// vCPUs executing instructions now (not halted, not waiting for a SIPI, not outside `run`).
    running: AtomicU32,
    lock: Mutex<()>,
    wake: Condvar,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The APIC state machines hold no invariant a panicking holder could break half-way that
    // matters more than keeping the VM alive: take the state as it is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl IrqChip {
    /// The controllers of a VM with `vcpus` vCPUs; APIC IDs are the vCPU indices and the I/O
    /// APIC's ID follows them (as in Kiln's MP table).
    pub fn new(vcpus: u32) -> Self {
        let n = vcpus.clamp(1, 255);
        let cpus = (0..n)
            .map(|i| CpuSlot {
                apic: Mutex::new(LocalApic::new(i as u8, crate::cpu::TSC_HZ)),
                attention: AtomicBool::new(false),
                deadline: AtomicU64::new(NEVER),
                tsc_offset: AtomicU64::new(0),
                legacy: Default::default(),
                nmi: AtomicBool::new(false),
                init: AtomicBool::new(false),
                sipi: AtomicU32::new(0),
            })
            .collect();
        IrqChip {
            clock: GuestClock::default(),
            cpus,
            ioapic: Mutex::new(IoApic::new(n.min(254) as u8)),
            running: AtomicU32::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// The guest clock.
    pub fn clock(&self) -> &GuestClock {
        &self.clock
    }

    fn slot(&self, cpu: usize) -> &CpuSlot {
        // Indices come from `EmuVm::create_vcpu`, which checks them against the VM's size.
        &self.cpus[cpu.min(self.cpus.len() - 1)]
    }

    /// Wakes every waiting vCPU.
    pub fn notify(&self) {
        let _g = locked(&self.lock);
        self.wake.notify_all();
    }

    /// True if vCPU `cpu` has something to take: an interrupt it can deliver now (if its
    /// RFLAGS.IF allows), an NMI, INIT or SIPI.
    pub fn attention(&self, cpu: usize) -> bool {
        self.slot(cpu).attention.load(Ordering::Acquire)
    }

    /// Guest time of vCPU `cpu`'s next timer expiry, if armed.
    pub fn deadline(&self, cpu: usize) -> Option<u64> {
        let d = self.slot(cpu).deadline.load(Ordering::Acquire);
        (d != NEVER).then_some(d)
    }

    // ---- interrupt lines and routing ----

    /// An edge on GSI `gsi` (a device's interrupt).
    pub fn pulse(&self, gsi: u32) {
        let pin = gsi as usize;
        if pin >= IOAPIC_PINS {
            return;
        }
        let delivery = locked(&self.ioapic).pulse(pin);
        match delivery {
            Some(d) => self.route(d),
            None => self.legacy(pin),
        }
        self.notify();
    }

    /// The legacy path: a masked I/O APIC pin below 16 reaches vCPU 0 as the PIC's vector while
    /// its local APIC passes external interrupts through.
    fn legacy(&self, pin: usize) {
        if pin >= 16 {
            return;
        }
        let slot = self.slot(0);
        let apic = locked(&slot.apic);
        if apic.accepts_extint() {
            let v = usize::from(LEGACY_VECTOR_BASE) + pin;
            slot.legacy[v / 64].fetch_or(1 << (v % 64), Ordering::AcqRel);
            slot.attention.store(true, Ordering::Release);
        }
    }

    fn route(&self, d: Delivery) {
        let destination = IpiDestination::Apic { id: d.destination, logical: d.logical };
        self.deliver(None, destination, d.mode, d.vector, d.level);
    }

    /// Delivers to the APICs `destination` selects (`from` is the sender, for shorthands).
    fn deliver(
        &self,
        from: Option<usize>,
        destination: IpiDestination,
        mode: DeliveryMode,
        vector: u8,
        level: bool,
    ) {
        let mut targets: Vec<usize> = Vec::new();
        for (i, slot) in self.cpus.iter().enumerate() {
            let hit = match destination {
                IpiDestination::SelfOnly => Some(i) == from,
                IpiDestination::AllIncludingSelf => true,
                IpiDestination::AllExcludingSelf => Some(i) != from,
                IpiDestination::Apic { id, logical: false } => {
                    id == 0xff || locked(&slot.apic).id() == id
                }
                IpiDestination::Apic { id, logical: true } => {
                    locked(&slot.apic).matches_logical(id)
                }
            };
            if hit {
                targets.push(i);
            }
        }
        if mode == DeliveryMode::LowestPriority {
            targets.truncate(1);
        }
        for i in targets {
            let slot = &self.cpus[i];
            match mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    let mut apic = locked(&slot.apic);
                    apic.accept_fixed(vector, level);
                    if apic.pending().is_some() {
                        slot.attention.store(true, Ordering::Release);
                    }
                }
                DeliveryMode::Nmi => {
                    slot.nmi.store(true, Ordering::Release);
                    slot.attention.store(true, Ordering::Release);
                }
                DeliveryMode::Init => {
                    // INIT discards a start-up IPI that came before it (not one after it).
                    slot.sipi.store(0, Ordering::Release);
                    slot.init.store(true, Ordering::Release);
                    slot.attention.store(true, Ordering::Release);
                }
                DeliveryMode::StartUp => {
                    slot.sipi.store(u32::from(vector) + 1, Ordering::Release);
                    slot.attention.store(true, Ordering::Release);
                }
                // SMIs and external interrupts sent as IPIs have no meaning here.
                DeliveryMode::Smi | DeliveryMode::ExtInt => {}
            }
        }
        self.notify();
    }

    fn send_ipi(&self, from: usize, ipi: Ipi) {
        // INIT de-assert (level, de-assert) only synchronises arbitration IDs on old CPUs.
        if ipi.mode == DeliveryMode::Init && !ipi.assert {
            return;
        }
        self.deliver(Some(from), ipi.destination, ipi.mode, ipi.vector, false);
    }

    // ---- what a vCPU takes ----

    /// Takes a pending INIT or SIPI of vCPU `cpu` (INIT first).
    pub fn take_startup(&self, cpu: usize) -> Option<Startup> {
        let slot = self.slot(cpu);
        if slot.init.swap(false, Ordering::AcqRel) {
            return Some(Startup::Init);
        }
        match slot.sipi.swap(0, Ordering::AcqRel) {
            0 => None,
            v => Some(Startup::Sipi((v - 1) as u8)),
        }
    }

    /// Takes an NMI pending for `cpu`.
    pub fn take_nmi(&self, cpu: usize) -> bool {
        self.slot(cpu).nmi.swap(false, Ordering::AcqRel)
    }

    /// Takes the interrupt vCPU `cpu` should take now (it has RFLAGS.IF set and no interrupt
    /// shadow): a legacy PIC vector first, else the local APIC's highest deliverable one, which
    /// moves to its in-service register.
    pub fn acknowledge(&self, cpu: usize) -> Option<u8> {
        let slot = self.slot(cpu);
        let mut apic = locked(&slot.apic);
        let mut vector = None;
        for (k, w) in slot.legacy.iter().enumerate().rev() {
            let cur = w.load(Ordering::Acquire);
            if cur != 0 {
                let bit = 63 - cur.leading_zeros();
                w.fetch_and(!(1u64 << bit), Ordering::AcqRel);
                vector = Some((k as u32 * 64 + bit) as u8);
                break;
            }
        }
        if vector.is_none() {
            vector = apic.acknowledge();
        }
        self.refresh_attention(slot, &apic);
        vector
    }

    fn refresh_attention(&self, slot: &CpuSlot, apic: &LocalApic) {
        let more = apic.pending().is_some()
            || slot.legacy.iter().any(|w| w.load(Ordering::Acquire) != 0)
            || slot.nmi.load(Ordering::Acquire)
            || slot.init.load(Ordering::Acquire)
            || slot.sipi.load(Ordering::Acquire) != 0;
        slot.attention.store(more, Ordering::Release);
    }

    /// Fires vCPU `cpu`'s timer if it is due at guest time `now`, and re-arms it.
    pub fn poll_timer(&self, cpu: usize, now: u64) {
        let slot = self.slot(cpu);
        if slot.deadline.load(Ordering::Acquire) > now {
            return;
        }
        let mut apic = locked(&slot.apic);
        let offset = slot.tsc_offset.load(Ordering::Acquire);
        apic.poll_timer(now, now.wrapping_add(offset));
        self.rearm(slot, &apic);
        self.refresh_attention(slot, &apic);
    }

    fn rearm(&self, slot: &CpuSlot, apic: &LocalApic) {
        let offset = slot.tsc_offset.load(Ordering::Acquire);
        let at = match apic.next_timer_event() {
            Some(TimerEvent::Ns(t)) => t,
            Some(TimerEvent::Tsc(t)) => t.saturating_sub(offset),
            None => NEVER,
        };
        slot.deadline.store(at, Ordering::Release);
    }

    /// Records vCPU `cpu`'s TSC offset (after a write of the TSC MSR).
    pub fn set_tsc_offset(&self, cpu: usize, offset: u64) {
        let slot = self.slot(cpu);
        slot.tsc_offset.store(offset, Ordering::Release);
        let apic = locked(&slot.apic);
        self.rearm(slot, &apic);
    }

    /// IA32_TSC_DEADLINE of vCPU `cpu`.
    pub fn tsc_deadline(&self, cpu: usize) -> u64 {
        locked(&self.slot(cpu).apic).tsc_deadline()
    }

    /// Writes IA32_TSC_DEADLINE of vCPU `cpu`.
    pub fn set_tsc_deadline(&self, cpu: usize, tsc: u64) {
        let slot = self.slot(cpu);
        let mut apic = locked(&slot.apic);
        apic.set_tsc_deadline(tsc);
        self.rearm(slot, &apic);
    }

    /// INIT of vCPU `cpu`: its local APIC returns to the reset state.
    pub fn reset_apic(&self, cpu: usize) {
        let slot = self.slot(cpu);
        let mut apic = locked(&slot.apic);
        *apic = LocalApic::new(cpu as u8, crate::cpu::TSC_HZ);
        slot.legacy.iter().for_each(|w| w.store(0, Ordering::Release));
        self.rearm(slot, &apic);
        self.refresh_attention(slot, &apic);
    }

    // ---- register windows ----

    /// Serves an MMIO read of vCPU `cpu` if it falls in an interrupt controller's window.
    pub fn mmio_read(&self, cpu: usize, addr: u64, data: &mut [u8]) -> bool {
        let value = if let Some(offset) = window(addr, LAPIC_BASE, LAPIC_SIZE) {
            let now = self.clock.now();
            locked(&self.slot(cpu).apic).read(offset as u32 & !0xf, now)
        } else if let Some(offset) = window(addr, IOAPIC_BASE, IOAPIC_SIZE) {
            locked(&self.ioapic).read(offset & !0xf)
        } else {
            return false;
        };
        let shift = 8 * (addr & 3) as u32;
        let bytes = (value >> shift).to_le_bytes();
        for (d, b) in data.iter_mut().zip(bytes.iter().chain(std::iter::repeat(&0))) {
            *d = *b;
        }
        true
    }

    /// Serves an MMIO write of vCPU `cpu` if it falls in an interrupt controller's window.
    pub fn mmio_write(&self, cpu: usize, addr: u64, data: &[u8]) -> bool {
        let mut word = [0u8; 4];
        for (w, d) in word.iter_mut().zip(data) {
            *w = *d;
        }
        let value = u32::from_le_bytes(word);
        if let Some(offset) = window(addr, LAPIC_BASE, LAPIC_SIZE) {
            self.lapic_write(cpu, offset as u32 & !0xf, value);
        } else if let Some(offset) = window(addr, IOAPIC_BASE, IOAPIC_SIZE) {
            let delivery = locked(&self.ioapic).write(offset & !0xf, value);
            if let Some(d) = delivery {
                self.route(d);
            }
        } else {
            return false;
        }
        true
    }

    fn lapic_write(&self, cpu: usize, offset: u32, value: u32) {
        let slot = self.slot(cpu);
        let effect = {
            let mut apic = locked(&slot.apic);
            let effect = apic.write(offset, value, self.clock.now());
            self.rearm(slot, &apic);
            self.refresh_attention(slot, &apic);
            effect
        };
        if let Some(vector) = effect.eoi {
            let redeliver = {
                let mut io = locked(&self.ioapic);
                io.eoi(vector);
                io.poll_level()
            };
            for d in redeliver {
                self.route(d);
            }
        }
        if let Some(ipi) = effect.ipi {
            self.send_ipi(cpu, ipi);
        }
    }

    // ---- idling ----

    /// A vCPU enters `run`'s execution loop.
    pub fn enter_running(&self) {
        self.running.fetch_add(1, Ordering::AcqRel);
    }

    /// A vCPU leaves it (to halt, wait for a SIPI, or return to the VMM). The last one to leave
    /// while no vCPU has anything to do moves guest time to the earliest timer deadline.
    pub fn leave_running(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.skip_ahead();
        }
    }

    fn skip_ahead(&self) {
        if self.cpus.iter().any(|s| s.attention.load(Ordering::Acquire)) {
            return;
        }
        let next = self.cpus.iter().map(|s| s.deadline.load(Ordering::Acquire)).min();
        if let Some(t) = next.filter(|&t| t != NEVER) {
            self.clock.skip_to(t);
            self.notify();
        }
    }

    /// Blocks a halted or waiting vCPU until `ready()` or at most a short while: guest time
    /// moves while other vCPUs run, so a waiter looks at its deadline now and then.
    pub fn wait(&self, ready: impl Fn() -> bool) {
        let g = locked(&self.lock);
        if ready() {
            return;
        }
        let others_run = self.running.load(Ordering::Acquire) > 0;
        let limit = Duration::from_millis(if others_run { 1 } else { 50 });
        let _ = self.wake.wait_timeout(g, limit);
    }
}

fn window(addr: u64, base: u64, size: u64) -> Option<u64> {
    addr.checked_sub(base).filter(|&o| o < size)
}
