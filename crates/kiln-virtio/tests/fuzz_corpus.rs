//! Replays the fuzz corpus (`fuzz/corpus/virtio_mmio/`) and a seeded batch of random inputs
//! through the same harness the fuzzer runs, so every `cargo test` re-checks them.

use kiln_virtio::fuzzing::drive;

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_mmio");
    let mut replayed = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if let Ok(data) = std::fs::read(entry.path()) {
                drive(&data);
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} corpus inputs from {}", dir.display());
    assert!(replayed > 0, "the checked-in corpus is missing from {}", dir.display());
}

#[test]
fn seeded_random_inputs_run_through_the_harness() {
    let seed: u64 =
        std::env::var("KILN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xf022);
    eprintln!("seeded_random_inputs_run_through_the_harness: seed {seed} (KILN_FUZZ_SEED replays)");
    let mut state = seed | 1;
    for _ in 0..300 {
        let len = (state % 2048) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        drive(&data);
    }
}
