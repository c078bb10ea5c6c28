//! The virtio-mmio register interface and descriptor chains, driven by arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_virtio::fuzzing::drive(data));
