//! A slash-command request body as Mattermost posts it, and its response URL check.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tokens = [shisa::config::Secret::new("fuzz-token")];
    let headers = axum::http::HeaderMap::new();
    if let Ok(form) = shisa::mattermost::slash::verify_and_parse(&headers, data, &tokens) {
        if let Some(u) = &form.response_url {
            let _ = shisa::mattermost::slash::acceptable_response_url(u, Some("https://mm.example"));
        }
    }
    if let Ok(url) = std::str::from_utf8(data) {
        let _ = shisa::mattermost::slash::acceptable_response_url(url, Some("https://mm.example"));
        let _ = shisa::mattermost::slash::acceptable_response_url(url, None);
    }
});
