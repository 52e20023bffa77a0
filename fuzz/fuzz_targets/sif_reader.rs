#![no_main]
// The SIF reader takes untrusted files: it must reject, never panic or over-allocate.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = shisa::sif::read_bytes(data);
});
