#![no_main]
// Slash-command text from anyone in Mattermost: parse or explain, never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        for p in shisa::commands::Program::ALL {
            let _ = shisa::commands::parse(p, s);
        }
    }
});
