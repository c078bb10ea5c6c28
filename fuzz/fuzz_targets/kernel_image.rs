//! Fuzzes the kernel image loader with any file: `KernelImage::open` must name what is wrong or
//! accept it, and an accepted image that fits 64 MiB must load into guest memory or fail with
//! an error, never panic or write outside the memory it was given.

#![no_main]

use kiln_boot::image::KernelImage;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEMORY: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("kiln-fuzz-kernel-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(image) = KernelImage::open(&path) {
        if image.check_fit(MEMORY).is_ok() {
            let memory =
                GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY as usize)])
                    .expect("guest memory");
            let _ = image.load(&memory, MEMORY);
        }
    }
    let _ = std::fs::remove_file(&path);
});
