//! The local APIC (Intel SDM vol. 3, chapter 11), xAPIC mode.

/// Default physical base of the local APIC's registers.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Size of the register window.
pub const LAPIC_SIZE: u64 = 0x1000;

const REG_ID: u32 = 0x20;
const REG_VERSION: u32 = 0x30;
const REG_TPR: u32 = 0x80;
const REG_APR: u32 = 0x90;
const REG_PPR: u32 = 0xa0;
const REG_EOI: u32 = 0xb0;
const REG_LDR: u32 = 0xd0;
const REG_DFR: u32 = 0xe0;
const REG_SVR: u32 = 0xf0;
const REG_ISR: u32 = 0x100;
const REG_TMR: u32 = 0x180;
const REG_IRR: u32 = 0x200;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_THERMAL: u32 = 0x330;
const REG_LVT_PMC: u32 = 0x340;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

/// Version 0x14 (integrated APIC), 6 LVT entries (max LVT index 5).
const VERSION: u32 = 0x0005_0014;
const LVT_MASKED: u32 = 1 << 16;
const SVR_ENABLED: u32 = 1 << 8;
const TIMER_MODE_MASK: u32 = 3 << 17;
const TIMER_PERIODIC: u32 = 1 << 17;
const TIMER_TSC_DEADLINE: u32 = 2 << 17;

/// How an IPI or interrupt is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// A vector, to the IRR.
    Fixed,
    /// Lowest priority among the destinations (treated as fixed to the first).
    LowestPriority,
    /// System management interrupt (ignored by Kiln).
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT: reset the target into wait-for-SIPI.
    Init,
    /// Start-up IPI: start the target at `vector << 12` in real mode.
    StartUp,
    /// External interrupt (from a PIC).
    ExtInt,
}

impl DeliveryMode {
    fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Fixed,
        }
    }
}

/// Whom an IPI goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiDestination {
    /// The APIC with this physical ID (or, with `logical`, these logical bits).
    Apic {
        /// Destination field of ICR high.
        id: u8,
        /// Logical destination mode.
        logical: bool,
    },
    /// The sender itself.
    SelfOnly,
    /// Every APIC including the sender.
    AllIncludingSelf,
    /// Every APIC except the sender.
    AllExcludingSelf,
}

/// An inter-processor interrupt the guest asked for by writing ICR; the engine delivers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// The vector (for SIPI: the start page).
    pub vector: u8,
    /// How to deliver it.
    pub mode: DeliveryMode,
    /// Where to.
    pub destination: IpiDestination,
    /// Level bit (INIT de-assert has it clear).
    pub assert: bool,
}

/// One local APIC.
#[derive(Clone, Debug)]
pub struct LocalApic {
    id: u8,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    esr: u32,
    icr_high: u32,
    icr_low: u32,
    lvt: [u32; 6],
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    divide: u32,
    initial_count: u32,
    /// Guest time (ns) when the current count was loaded from the initial count.
    timer_start: u64,
    /// Absolute TSC deadline in TSC-deadline mode (0: disarmed).
    tsc_deadline: u64,
    /// Nanoseconds per APIC bus tick before division.
    ns_per_tick: u64,
}

impl LocalApic {
    /// A local APIC with physical ID `id` in its reset state, its timer counting at
    /// `bus_hz` before division.
    pub fn new(id: u8, bus_hz: u64) -> Self {
        LocalApic {
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            esr: 0,
            icr_high: 0,
            icr_low: 0,
            lvt: [LVT_MASKED; 6],
            irr: [0; 8],
            isr: [0; 8],
            tmr: [0; 8],
            divide: 0,
            initial_count: 0,
            timer_start: 0,
            tsc_deadline: 0,
            ns_per_tick: (1_000_000_000 / bus_hz.max(1)).max(1),
        }
    }

    /// The APIC's physical ID.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// True when software has enabled the APIC (SVR bit 8).
    pub fn enabled(&self) -> bool {
        self.svr & SVR_ENABLED != 0
    }

    fn lvt_index(offset: u32) -> Option<usize> {
        match offset {
            REG_LVT_TIMER => Some(0),
            REG_LVT_THERMAL => Some(1),
            REG_LVT_PMC => Some(2),
            REG_LVT_LINT0 => Some(3),
            REG_LVT_LINT1 => Some(4),
            REG_LVT_ERROR => Some(5),
            _ => None,
        }
    }

    fn divisor(&self) -> u64 {
        let bits = (self.divide & 3) | ((self.divide >> 1) & 4);
        if bits == 7 {
            1
        } else {
            2 << bits
        }
    }

    fn period_ns(&self) -> u64 {
        u64::from(self.initial_count) * self.divisor() * self.ns_per_tick
    }

    fn timer_mode(&self) -> u32 {
        self.lvt[0] & TIMER_MODE_MASK
    }

    /// Reads the 32-bit register at `offset` (from the APIC base) at guest time `now_ns`.
    pub fn read(&self, offset: u32, now_ns: u64) -> u32 {
        let bank = |bits: &[u32; 8], base: u32| bits[((offset - base) / 0x10) as usize];
        match offset {
            REG_ID => u32::from(self.id) << 24,
            REG_VERSION => VERSION,
            REG_TPR => self.tpr,
            REG_APR => 0,
            REG_PPR => self.ppr(),
            REG_LDR => self.ldr,
            REG_DFR => self.dfr,
            REG_SVR => self.svr,
            REG_ISR..=0x170 if offset.is_multiple_of(0x10) => bank(&self.isr, REG_ISR),
            REG_TMR..=0x1f0 if offset.is_multiple_of(0x10) => bank(&self.tmr, REG_TMR),
            REG_IRR..=0x270 if offset.is_multiple_of(0x10) => bank(&self.irr, REG_IRR),
            REG_ESR => self.esr,
            REG_ICR_LOW => self.icr_low & !(1 << 12), // delivery is instant: never "send pending"
            REG_ICR_HIGH => self.icr_high,
            REG_TIMER_INITIAL => self.initial_count,
            REG_TIMER_CURRENT => self.current_count(now_ns),
            REG_TIMER_DIVIDE => self.divide,
            other => Self::lvt_index(other).map_or(0, |i| self.lvt[i]),
        }
    }

    /// Writes the register at `offset`. Returns the IPI a write to ICR low asks for, and the
    /// vector an EOI completed (so the engine can tell the I/O APIC about level interrupts).
    pub fn write(&mut self, offset: u32, value: u32, now_ns: u64) -> WriteEffect {
        let mut effect = WriteEffect::default();
        match offset {
            REG_ID => self.id = (value >> 24) as u8,
            REG_TPR => self.tpr = value & 0xff,
            REG_EOI => effect.eoi = self.eoi(),
            REG_LDR => self.ldr = value & 0xff00_0000,
            REG_DFR => self.dfr = value | 0x0fff_ffff,
            REG_SVR => {
                self.svr = value & 0x13ff;
                if !self.enabled() {
                    self.lvt.iter_mut().for_each(|l| *l |= LVT_MASKED);
                }
            }
            REG_ESR => self.esr = 0,
            REG_ICR_HIGH => self.icr_high = value,
            REG_ICR_LOW => {
                self.icr_low = value;
                effect.ipi = Some(self.ipi_from_icr());
            }
            REG_TIMER_INITIAL => {
                self.initial_count = value;
                self.timer_start = now_ns;
            }
            REG_TIMER_DIVIDE => {
                // Keep the current count continuous across a change of divisor.
                let current = self.current_count(now_ns);
                self.divide = value & 0xb;
                self.restart_from(current, now_ns);
            }
            other => {
                if let Some(i) = Self::lvt_index(other) {
                    let mut v = value;
                    if !self.enabled() {
                        v |= LVT_MASKED;
                    }
                    let was_deadline = self.timer_mode() == TIMER_TSC_DEADLINE;
                    self.lvt[i] = v;
                    if i == 0 && was_deadline != (self.timer_mode() == TIMER_TSC_DEADLINE) {
                        self.tsc_deadline = 0;
                        self.initial_count = 0;
                    }
                }
            }
        }
        effect
    }

    fn restart_from(&mut self, current: u32, now_ns: u64) {
        if self.initial_count == 0 || current == 0 {
            return;
        }
        let elapsed_ticks = u64::from(self.initial_count - current.min(self.initial_count));
        self.timer_start = now_ns.saturating_sub(elapsed_ticks * self.divisor() * self.ns_per_tick);
    }

    fn ipi_from_icr(&self) -> Ipi {
        let low = self.icr_low;
        let destination = match (low >> 18) & 3 {
            1 => IpiDestination::SelfOnly,
            2 => IpiDestination::AllIncludingSelf,
            3 => IpiDestination::AllExcludingSelf,
            _ => IpiDestination::Apic {
                id: (self.icr_high >> 24) as u8,
                logical: low & (1 << 11) != 0,
            },
        };
        Ipi {
            vector: low as u8,
            mode: DeliveryMode::from_bits(low >> 8),
            destination,
            assert: low & (1 << 14) != 0,
        }
    }

    /// True if an external interrupt from a legacy PIC reaches the CPU through this APIC: the
    /// APIC is software-disabled (its reset state, where the PIC's INTR line passes through) or
    /// LINT0 is unmasked in ExtINT mode (virtual wire).
    pub fn accepts_extint(&self) -> bool {
        let lint0 = self.lvt[3];
        !self.enabled() || (lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == 7)
    }

    /// True if a logical-mode destination `dest` selects this APIC (flat model).
    pub fn matches_logical(&self, dest: u8) -> bool {
        (self.ldr >> 24) as u8 & dest != 0
    }

    /// The timer's current count at `now_ns`.
    pub fn current_count(&self, now_ns: u64) -> u32 {
        if self.initial_count == 0 || self.timer_mode() == TIMER_TSC_DEADLINE {
            return 0;
        }
        let tick_ns = self.divisor() * self.ns_per_tick;
        let elapsed = now_ns.saturating_sub(self.timer_start) / tick_ns;
        let initial = u64::from(self.initial_count);
        if self.timer_mode() == TIMER_PERIODIC {
            (initial - elapsed % initial) as u32
        } else {
            initial.saturating_sub(elapsed) as u32
        }
    }

    /// Arms the TSC-deadline timer (MSR 0x6e0); 0 disarms it. Ignored outside that mode.
    pub fn set_tsc_deadline(&mut self, tsc: u64) {
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            self.tsc_deadline = tsc;
        }
    }

    /// The TSC-deadline MSR's value.
    pub fn tsc_deadline(&self) -> u64 {
        self.tsc_deadline
    }

    /// When the timer fires next: guest nanoseconds for one-shot/periodic, or TSC ticks for
    /// TSC-deadline mode. `None` when disarmed.
    pub fn next_timer_event(&self) -> Option<TimerEvent> {
        match self.timer_mode() {
            TIMER_TSC_DEADLINE => {
                (self.tsc_deadline != 0).then_some(TimerEvent::Tsc(self.tsc_deadline))
            }
            _ if self.initial_count == 0 => None,
            _ => Some(TimerEvent::Ns(self.timer_start + self.period_ns())),
        }
    }

    /// Fires the timer if it is due at `now_ns` / `now_tsc`: sets the LVT timer vector in the
    /// IRR (unless masked) and re-arms a periodic timer or disarms a one-shot one.
    pub fn poll_timer(&mut self, now_ns: u64, now_tsc: u64) {
        let due = match self.next_timer_event() {
            Some(TimerEvent::Ns(at)) => now_ns >= at,
            Some(TimerEvent::Tsc(at)) => now_tsc >= at,
            None => false,
        };
        if !due {
            return;
        }
        match self.timer_mode() {
            TIMER_TSC_DEADLINE => self.tsc_deadline = 0,
            TIMER_PERIODIC => {
                let period = self.period_ns().max(1);
                let missed = (now_ns - self.timer_start) / period;
                self.timer_start += missed * period;
            }
            _ => self.initial_count = 0,
        }
        if self.lvt[0] & LVT_MASKED == 0 {
            self.accept_fixed(self.lvt[0] as u8, false);
        }
    }

    /// Latches a fixed interrupt (from the I/O APIC, an IPI or the timer) into the IRR.
    /// Vectors below 16 are illegal and set the error status instead.
    pub fn accept_fixed(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.esr |= 1 << 6; // received illegal vector
            return;
        }
        set_bit(&mut self.irr, vector);
        if level {
            set_bit(&mut self.tmr, vector);
        } else {
            clear_bit(&mut self.tmr, vector);
        }
    }

    fn ppr(&self) -> u32 {
        let isrv = highest(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xf0) >= (isrv & 0xf0) {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The vector the CPU would take now, if any (higher priority class than PPR).
    pub fn pending(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let vector = highest(&self.irr)?;
        (u32::from(vector) & 0xf0 > self.ppr() & 0xf0).then_some(vector)
    }

    /// The CPU takes the pending interrupt: it moves from IRR to ISR. Returns its vector.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.pending()?;
        clear_bit(&mut self.irr, vector);
        set_bit(&mut self.isr, vector);
        Some(vector)
    }

    fn eoi(&mut self) -> Option<u8> {
        let vector = highest(&self.isr)?;
        clear_bit(&mut self.isr, vector);
        get_bit(&self.tmr, vector).then_some(vector)
    }
}

/// What a register write asks the engine to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// An IPI to deliver.
    pub ipi: Option<Ipi>,
    /// A level-triggered vector that was just EOIed (broadcast to the I/O APIC).
    pub eoi: Option<u8>,
}

/// When a timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerEvent {
    /// At this guest time in nanoseconds.
    Ns(u64),
    /// When the TSC reaches this value.
    Tsc(u64),
}

fn set_bit(bank: &mut [u32; 8], vector: u8) {
    bank[usize::from(vector / 32)] |= 1 << (vector % 32);
}

fn clear_bit(bank: &mut [u32; 8], vector: u8) {
    bank[usize::from(vector / 32)] &= !(1 << (vector % 32));
}

fn get_bit(bank: &[u32; 8], vector: u8) -> bool {
    bank[usize::from(vector / 32)] & (1 << (vector % 32)) != 0
}

fn highest(bank: &[u32; 8]) -> Option<u8> {
    bank.iter()
        .enumerate()
        .rev()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| (i as u32 * 32 + 31 - w.leading_zeros()) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUS_HZ: u64 = 1_000_000_000; // 1 ns per tick makes the arithmetic readable

    fn enabled_apic() -> LocalApic {
        let mut apic = LocalApic::new(0, BUS_HZ);
        apic.write(REG_SVR, SVR_ENABLED | 0xff, 0);
        apic
    }

    #[test]
    fn reset_state_reports_id_version_and_masked_lvts() {
        let apic = LocalApic::new(3, BUS_HZ);
        assert_eq!(apic.read(REG_ID, 0), 3 << 24);
        assert_eq!(apic.read(REG_VERSION, 0), VERSION);
        assert_eq!(apic.read(REG_LVT_TIMER, 0) & LVT_MASKED, LVT_MASKED);
        assert!(!apic.enabled());
    }

    #[test]
    fn higher_vectors_preempt_and_eoi_retires_the_highest_in_service() {
        let mut apic = enabled_apic();
        apic.accept_fixed(0x31, false);
        assert_eq!(apic.acknowledge(), Some(0x31));
        apic.accept_fixed(0x35, false); // same priority class: must wait
        assert_eq!(apic.pending(), None);
        apic.accept_fixed(0x41, false); // higher class: preempts
        assert_eq!(apic.acknowledge(), Some(0x41));
        apic.write(REG_EOI, 0, 0);
        apic.write(REG_EOI, 0, 0);
        assert_eq!(apic.acknowledge(), Some(0x35));
    }

    #[test]
    fn tpr_blocks_lower_priority_classes() {
        let mut apic = enabled_apic();
        apic.write(REG_TPR, 0x50, 0);
        apic.accept_fixed(0x45, false);
        assert_eq!(apic.pending(), None);
        apic.write(REG_TPR, 0x30, 0);
        assert_eq!(apic.pending(), Some(0x45));
    }

    #[test]
    fn one_shot_timer_counts_down_with_the_divisor_and_fires_once() {
        let mut apic = enabled_apic();
        apic.write(REG_TIMER_DIVIDE, 0x3, 0); // divide by 16
        apic.write(REG_LVT_TIMER, 0xec, 0);
        apic.write(REG_TIMER_INITIAL, 1000, 100);
        assert_eq!(apic.read(REG_TIMER_CURRENT, 100 + 16 * 250), 750);
        assert_eq!(apic.next_timer_event(), Some(TimerEvent::Ns(100 + 16_000)));
        apic.poll_timer(100 + 15_999, 0);
        assert_eq!(apic.pending(), None);
        apic.poll_timer(100 + 16_000, 0);
        assert_eq!(apic.acknowledge(), Some(0xec));
        assert_eq!(apic.next_timer_event(), None, "one-shot disarms");
    }

    #[test]
    fn periodic_timer_rearms_and_tsc_deadline_fires_at_the_tsc() {
        let mut apic = enabled_apic();
        apic.write(REG_TIMER_DIVIDE, 0xb, 0); // divide by 1
        apic.write(REG_LVT_TIMER, TIMER_PERIODIC | 0xef, 0);
        apic.write(REG_TIMER_INITIAL, 100, 0);
        apic.poll_timer(250, 0);
        assert_eq!(apic.acknowledge(), Some(0xef));
        assert_eq!(apic.next_timer_event(), Some(TimerEvent::Ns(300)));

        let mut apic = enabled_apic();
        apic.write(REG_LVT_TIMER, TIMER_TSC_DEADLINE | 0xee, 0);
        apic.set_tsc_deadline(5_000);
        apic.poll_timer(0, 4_999);
        assert_eq!(apic.pending(), None);
        apic.poll_timer(0, 5_000);
        assert_eq!(apic.acknowledge(), Some(0xee));
        assert_eq!(apic.tsc_deadline(), 0);
    }

    #[test]
    fn icr_write_produces_init_and_startup_ipis() {
        let mut apic = enabled_apic();
        apic.write(REG_ICR_HIGH, 1 << 24, 0);
        let init = apic.write(REG_ICR_LOW, 0x0000_4500, 0).ipi.unwrap();
        assert_eq!(init.mode, DeliveryMode::Init);
        assert_eq!(init.destination, IpiDestination::Apic { id: 1, logical: false });
        let sipi = apic.write(REG_ICR_LOW, 0x0000_4608, 0).ipi.unwrap();
        assert_eq!((sipi.mode, sipi.vector), (DeliveryMode::StartUp, 0x08));
        let all = apic.write(REG_ICR_LOW, 0x000c_40fd, 0).ipi.unwrap();
        assert_eq!(all.destination, IpiDestination::AllExcludingSelf);
    }

    #[test]
    fn level_triggered_eoi_is_reported_for_the_io_apic() {
        let mut apic = enabled_apic();
        apic.accept_fixed(0x39, true);
        apic.acknowledge();
        assert_eq!(apic.write(REG_EOI, 0, 0).eoi, Some(0x39));
        apic.accept_fixed(0x39, false);
        apic.acknowledge();
        assert_eq!(apic.write(REG_EOI, 0, 0).eoi, None);
    }

    #[test]
    fn illegal_vectors_set_the_error_status_and_a_disabled_apic_delivers_nothing() {
        let mut apic = LocalApic::new(0, BUS_HZ);
        apic.accept_fixed(0x40, false);
        assert_eq!(apic.pending(), None, "software-disabled");
        apic.write(REG_SVR, SVR_ENABLED, 0);
        assert_eq!(apic.pending(), Some(0x40));
        apic.accept_fixed(3, false);
        assert_ne!(apic.read(REG_ESR, 0), 0);
    }
}
