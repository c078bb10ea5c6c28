//! The 16550A UART (COM1) on `vm-superio`, interrupting through an engine-provided IRQ line.

use crate::bus::BusDevice;
use kiln_engine::IrqLine;
use std::io::Write;
use std::sync::Arc;
use vm_superio::{serial::NoEvents, Serial, Trigger};

/// COM1's port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's register window size.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA interrupt.
pub const COM1_GSI: u32 = 4;

/// Adapts an engine IRQ line to `vm-superio`'s trigger.
pub struct LineTrigger(pub Arc<dyn IrqLine>);

impl Trigger for LineTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

/// The guest's serial console.
pub struct SerialConsole {
    uart: Serial<LineTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART whose output goes to `out` and whose interrupts go to `irq`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        SerialConsole { uart: Serial::new(LineTrigger(irq), out) }
    }

    /// Queues host input for the guest to read. Returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // An output error (closed stdout) or a failed interrupt is not the guest's fault
            // and must not stop it; the byte is lost as on a disconnected line.
            let _ = self.uart.write(offset, *byte);
            let _ = self.uart.writer_mut().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct CountingLine(AtomicUsize);
    impl IrqLine for CountingLine {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output_and_raise_thre_interrupt() {
        let line = Arc::new(CountingLine::default());
        let sink = Sink::default();
        let mut uart = SerialConsole::new(line.clone(), Box::new(sink.clone()));
        uart.write(1, &[0x02]); // IER: transmitter holding register empty interrupt
        uart.write(0, b"K");
        assert_eq!(&*sink.0.lock().unwrap(), b"K");
        assert!(line.0.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn wide_accesses_are_ignored_not_fatal() {
        let sink = Sink::default();
        let mut uart =
            SerialConsole::new(Arc::new(CountingLine::default()), Box::new(sink.clone()));
        uart.write(0, b"ab");
        let mut wide = [0u8; 4];
        uart.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
