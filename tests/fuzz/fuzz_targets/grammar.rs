//! The slash-command grammar: parsing, then typing, of any text, for both programs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shisa::commands::{parse, Command, Parsed, Program};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for p in [Program::Container, Program::Job] {
        if let Ok(Parsed::Invocation(inv)) = parse(p, text) {
            let _ = Command::of(&inv);
        }
    }
});
