//! The SIF reader on any bytes: a descriptor table must never send it out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = shisa::sif::read_bytes(data) {
        let _ = s.primary();
    }
});
