//! Fuzzes virtio-vsock packet headers as a guest writes them: any bytes and any room must give
//! a header or an error, never a panic, and a header that parses encodes back to the same bytes
//! and parses again to itself.

#![no_main]

use kiln_virtio::vsock::packet::{Header, HDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (room, bytes) = match data.split_first() {
        Some((room, rest)) => (usize::from(*room) * 256, rest),
        None => return,
    };
    if let Ok(header) = Header::parse(bytes, room) {
        let encoded = header.encode();
        assert_eq!(&encoded[..], &bytes[..HDR_LEN], "a header encodes to the bytes it came from");
        let again = Header::parse(&encoded, room).expect("an encoded header parses");
        assert_eq!(again.encode(), encoded);
    }
});
