//! GitLab webhook bodies, for every event kind shisa reads (and one it does not).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for event in [
        "Push Hook",
        "Tag Push Hook",
        "Pipeline Hook",
        "Job Hook",
        "Merge Request Hook",
        "System Hook",
        "Note Hook",
    ] {
        let _ = shisa::gitlab::hooks::parse(event, data);
    }
});
