//! The GSI routing of the in-kernel interrupt controllers, matching the firmware tables.
//!
//! Kiln's MP table and MADT say what every PC says: ISA IRQ 0 (the PIT) arrives on I/O APIC
//! pin 2 (an interrupt source override), the other ISA IRQs on the pin of their number. KVM's
//! default routing sends GSI n to pin n, so the in-kernel PIT, which raises GSI 0, would reach
//! pin 0, where the guest never looks: no timer tick, a frozen `jiffies`, a failed local APIC
//! timer calibration and every sleeping wait hung (the guest's `reboot -f` never returned).
//! This table is QEMU's (`kvm_pc_setup_irq_routing`): GSI 0 goes to pin 2 and PIC IRQ 0, GSI 2
//! (the PIC cascade) has no route, every other GSI goes to its own pin and, below 16, its PIC
//! line.

use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IOAPIC_NUM_PINS, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
};

/// One routing entry: `gsi` to `pin` of `chip`.
fn route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry =
        kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

/// The routing table: `(gsi, chip, pin)` for every line the firmware tables describe.
pub(crate) fn pc_routes() -> Vec<(u32, u32, u32)> {
    let mut routes = Vec::new();
    for irq in (0..16).filter(|&irq| irq != 2) {
        let chip = if irq < 8 { KVM_IRQCHIP_PIC_MASTER } else { KVM_IRQCHIP_PIC_SLAVE };
        routes.push((irq, chip, irq % 8));
    }
    for gsi in (0..KVM_IOAPIC_NUM_PINS).filter(|&gsi| gsi != 2) {
        let pin = if gsi == 0 { 2 } else { gsi };
        routes.push((gsi, KVM_IRQCHIP_IOAPIC, pin));
    }
    routes
}

/// [`pc_routes`] as KVM routing entries.
pub(crate) fn pc_routing_entries() -> Vec<kvm_irq_routing_entry> {
    pc_routes().into_iter().map(|(gsi, chip, pin)| route(gsi, chip, pin)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pit_reaches_ioapic_pin_2_like_the_firmware_tables_say() {
        let routes = pc_routes();
        let ioapic = |gsi| -> Vec<u32> {
            routes.iter().filter(|r| r.0 == gsi && r.1 == KVM_IRQCHIP_IOAPIC).map(|r| r.2).collect()
        };
        assert_eq!(ioapic(0), vec![2], "GSI 0 (the PIT) must reach pin 2");
        assert_eq!(ioapic(2), Vec::<u32>::new(), "GSI 2 is the cascade");
        for gsi in [1, 3, 4, 8, 12, 23] {
            assert_eq!(ioapic(gsi), vec![gsi], "GSI {gsi} reaches its own pin");
        }
        let pic0: Vec<_> =
            routes.iter().filter(|r| r.0 == 0 && r.1 != KVM_IRQCHIP_IOAPIC).collect();
        assert_eq!(pic0, vec![&(0, KVM_IRQCHIP_PIC_MASTER, 0)]);
        assert!(routes.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        let entries = pc_routing_entries();
        assert_eq!(entries.len(), routes.len());
        // SAFETY: reading the irqchip member of a union this module wrote as irqchip.
        let first = unsafe { entries[0].u.irqchip };
        assert_eq!((entries[0].gsi, first.irqchip, first.pin), routes[0]);
    }
}
