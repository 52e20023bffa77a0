//! The slash-command request: form decoding and token verification.

use axum::http::HeaderMap;
use serde::Deserialize;

use crate::config::secret::{any_matches, Secret};

/// The form Mattermost posts (protocols.md §4.1). Mention keys repeat, so
/// they are lists (serde_html_form, since serde_urlencoded cannot).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct SlashForm {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub team_id: String,
    #[serde(default)]
    pub team_domain: String,
    #[serde(default)]
    pub channel_id: String,
    #[serde(default)]
    pub channel_name: String,
    pub user_id: String,
    #[serde(default)]
    pub user_name: String,
    pub command: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub trigger_id: Option<String>,
    #[serde(default)]
    pub user_mentions: Vec<String>,
    #[serde(default)]
    pub user_mentions_ids: Vec<String>,
    #[serde(default)]
    pub channel_mentions: Vec<String>,
    #[serde(default)]
    pub channel_mentions_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SlashError {
    #[error("missing or wrong command token")]
    Unauthorized,
    #[error("malformed form body: {0}")]
    Malformed(String),
}

/// Decode and verify. The token may come in the form or as
/// `Authorization: Token …`; either matching one configured token is enough.
pub fn verify_and_parse(
    headers: &HeaderMap,
    body: &[u8],
    tokens: &[Secret],
) -> Result<SlashForm, SlashError> {
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::trim);
    // Verify before decoding fully: an unauthenticated body gets no parser time beyond the token.
    #[derive(Deserialize)]
    struct TokenOnly {
        #[serde(default)]
        token: Option<String>,
    }
    let form_token = serde_html_form::from_bytes::<TokenOnly>(body)
        .ok()
        .and_then(|f| f.token);
    let ok = header_token.is_some_and(|t| any_matches(tokens, t))
        || form_token
            .as_deref()
            .is_some_and(|t| any_matches(tokens, t));
    if !ok {
        // A body we cannot even decode has no valid token either.
        return Err(SlashError::Unauthorized);
    }
    let form: SlashForm =
        serde_html_form::from_bytes(body).map_err(|e| SlashError::Malformed(e.to_string()))?;
    if form.user_id.is_empty() || form.command.is_empty() {
        return Err(SlashError::Malformed(
            "`user_id` and `command` are required".into(),
        ));
    }
    if form.text.len() > 4000 {
        return Err(SlashError::Malformed(
            "`text` is longer than 4000 bytes".into(),
        ));
    }
    Ok(form)
}

/// Only post to response URLs that point back at the configured Mattermost
/// (or, with none configured, at this machine): the form is authenticated,
/// but a leaked command token must not turn shisa into a request proxy.
pub fn acceptable_response_url(url: &str, mattermost_url: Option<&str>) -> bool {
    // Compared as parsed URLs, never as strings: `…/hooks/commands/../../x` has the prefix.
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https")
        || u.query().is_some()
        || u.fragment().is_some()
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return false;
    }
    // The raw path, as sent: one plain id segment after /hooks/commands/ (no dots,
    // percent-escapes or further segments for a server to resolve differently).
    let path_ok = |prefix: &str| {
        let raw = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("");
        raw.strip_prefix(prefix)
            .and_then(|p| p.strip_prefix("/hooks/commands/"))
            .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
    };
    match mattermost_url {
        Some(base) => {
            let Ok(b) = url::Url::parse(base) else {
                return false;
            };
            u.scheme() == b.scheme()
                && u.host_str() == b.host_str()
                && u.port_or_known_default() == b.port_or_known_default()
                && path_ok(b.path().trim_end_matches('/'))
        }
        None => crate::config::is_loopback_url(url) && path_ok(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        // A copy of ../shared/fixtures (see tests/fixtures/README.md for provenance).
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mattermost/slash_command_request.reconstructed.form"
        ))
        .unwrap()
    }

    #[test]
    fn fixture_form_with_repeated_mentions() {
        let tokens = vec![
            Secret::new("other"),
            Secret::new("okwexkjpe7ygb8eq1ww58t483w"),
        ];
        let f = verify_and_parse(&HeaderMap::new(), fixture().trim_ascii_end(), &tokens).unwrap();
        assert_eq!(f.user_mentions, vec!["aaron.peterson", "aaron.medina"]);
        assert_eq!(f.channel_mentions_ids.len(), 2);
        assert_eq!(f.command, "/test");
        assert_eq!(f.text, "asd @aaron.peterson @aaron.medina ~saepe-5 ~aut-8");
        assert_eq!(
            verify_and_parse(&HeaderMap::new(), &fixture(), &[Secret::new("nope")]),
            Err(SlashError::Unauthorized)
        );
    }

    #[test]
    fn header_token() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Token abc".parse().unwrap());
        let body = b"user_id=u&command=%2Fcontainer&text=help";
        assert!(verify_and_parse(&h, body, &[Secret::new("abc")]).is_ok());
        assert_eq!(
            verify_and_parse(&HeaderMap::new(), body, &[Secret::new("abc")]),
            Err(SlashError::Unauthorized)
        );
    }

    #[test]
    fn response_url_checks() {
        assert!(acceptable_response_url(
            "https://mm.example/hooks/commands/x",
            Some("https://mm.example")
        ));
        assert!(!acceptable_response_url(
            "https://evil.example/hooks/commands/x",
            Some("https://mm.example")
        ));
        assert!(acceptable_response_url(
            "http://127.0.0.1:5000/hooks/commands/x",
            None
        ));
        assert!(!acceptable_response_url("http://10.0.0.1/x", None));
        for bad in [
            "https://mm.example/hooks/commands/../../api/v4/users",
            "https://mm.example/hooks/commands/%2e%2e/x",
            "https://mm.example/hooks/commands/x/../../y",
            "https://mm.example/hooks/commands/",
            "https://mm.example/hooks/commands/x?y=1",
            "https://mm.example:8443/hooks/commands/x",
            "https://user@mm.example/hooks/commands/x",
            "http://mm.example/hooks/commands/x",
            "https://mm.example.evil/hooks/commands/x",
        ] {
            assert!(
                !acceptable_response_url(bad, Some("https://mm.example")),
                "{bad}"
            );
        }
        assert!(acceptable_response_url(
            "https://mm.example/chat/hooks/commands/abc123",
            Some("https://mm.example/chat/")
        ));
    }

    proptest::proptest! {
        #[test]
        fn response_urls_never_leave_the_hooks_path(tail in "\\PC{0,60}") {
            let u = format!("https://mm.example/hooks/commands/{tail}");
            if acceptable_response_url(&u, Some("https://mm.example")) {
                proptest::prop_assert!(tail.chars().all(|c| c.is_ascii_alphanumeric()));
            }
        }
    }
}
