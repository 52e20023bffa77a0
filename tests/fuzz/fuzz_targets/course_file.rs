//! The course file (`shisa-course.toml`) reader and the lecture schedule it gives.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = shisa::courses::parse(text) {
            let _ = c.next_lecture(1_800_000_000);
            let _ = shisa::courses::plan::rows(&c);
        }
    }
});
