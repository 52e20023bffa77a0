//! The Mattermost edge: the slash-command request (verified and parsed here,
//! nothing else sees raw form data), reply bodies, and the outbound client
//! for `response_url` posts, user look-ups and direct messages.

pub mod client;
pub mod notify;
pub mod slash;

use serde::{Deserialize, Serialize};

/// A reply in Mattermost's `CommandResponse` shape (protocols.md §4.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub response_type: String,
    pub text: String,
    pub props: serde_json::Value,
}

impl Reply {
    /// Every reply carries `props.shisa = {request, final}` so clients (and
    /// `shisa chat`) know which request it answers and whether more will come.
    pub fn new(request: &str, text: impl Into<String>, is_final: bool) -> Reply {
        Reply {
            response_type: "ephemeral".into(),
            text: clip_post(text.into()),
            props: serde_json::json!({"shisa": {"request": request, "final": is_final}}),
        }
    }
    pub fn is_final(&self) -> bool {
        self.props["shisa"]["final"].as_bool().unwrap_or(true)
    }
}

/// Mattermost refuses posts over 16383 characters.
pub fn clip_post(mut s: String) -> String {
    const MAX: usize = 16000;
    if s.chars().count() > MAX {
        s = s.chars().take(MAX).collect();
        s.push_str("\n… (cut)");
    }
    s
}
