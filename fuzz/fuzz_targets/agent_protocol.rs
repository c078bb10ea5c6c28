//! Fuzzes what reaches the guest agent and kiln exec's client from the other side: request
//! lines as the agent parses them, and stream frames split off a buffer (what `kiln exec` does
//! with kilnd's bytes) or read from a stream (what the agent does with the client's). Nothing
//! is run: a request that parses is only checked to encode back. No input may panic, and a
//! frame over the limit is an error, not an allocation.

#![no_main]

use kiln_agent::protocol::{Reply, Request, ShutdownRequest};
use kiln_agent::stream::{read_frame, take_frames, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(request) = serde_json::from_slice::<Request>(line) {
            let encoded = serde_json::to_vec(&request).expect("a request encodes");
            let again: Request = serde_json::from_slice(&encoded).expect("and parses back");
            assert_eq!(again, request);
        }
        let _ = serde_json::from_slice::<ShutdownRequest>(line);
        let _ = serde_json::from_slice::<Reply>(line);
    }
    let mut buffer = data.to_vec();
    if let Ok(frames) = take_frames(&mut buffer) {
        let taken: usize = frames.iter().map(|(_, payload)| 5 + payload.len()).sum();
        assert_eq!(taken + buffer.len(), data.len(), "frames and the rest are the input");
        assert!(frames.iter().all(|(_, payload)| payload.len() <= MAX_FRAME));
    }
    let mut reader = data;
    while let Ok(Some((_, payload))) = read_frame(&mut reader) {
        assert!(payload.len() <= MAX_FRAME);
    }
});
