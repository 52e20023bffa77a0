//! The Containerfile reading that names a build's base images.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shisa::builds::base_images(text);
    }
});
