//! Is this delivery from our GitLab? (protocols.md §1.1–1.2)
//!
//! A configured signing key and a `webhook-signature` header: the Standard
//! Webhooks HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` must
//! match one `v1,` entry, with the timestamp within the allowed skew. Without
//! a signature: `X-Gitlab-Token` must equal one of the configured tokens
//! (several, for rotation). All comparisons are constant-time.

use base64::Engine;
use hmac::{KeyInit, Mac};

use crate::config::secret::any_matches;
use crate::config::Secret;

/// The headers that matter, as received.
#[derive(Debug, Default, Clone)]
pub struct Delivery<'a> {
    pub token: Option<&'a str>,
    pub webhook_id: Option<&'a str>,
    pub webhook_timestamp: Option<&'a str>,
    pub webhook_signature: Option<&'a str>,
}

pub use crate::config::secret::signing_key;

/// Why a delivery was refused (logged, never shown to the sender beyond 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NoCredentials,
    BadToken,
    BadSignature,
    StaleTimestamp,
}

pub fn check(
    d: &Delivery,
    body: &[u8],
    tokens: &[Secret],
    keys: &[Vec<u8>],
    max_skew: i64,
    now: i64,
) -> Result<(), Refused> {
    if let (Some(sig), false) = (d.webhook_signature, keys.is_empty()) {
        let (Some(id), Some(ts)) = (d.webhook_id, d.webhook_timestamp) else {
            return Err(Refused::BadSignature);
        };
        let t: i64 = ts.trim().parse().map_err(|_| Refused::BadSignature)?;
        if (now - t).abs() > max_skew {
            return Err(Refused::StaleTimestamp);
        }
        let mut good = subtle::Choice::from(0u8);
        for key in keys {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
            m.update(id.as_bytes());
            m.update(b".");
            m.update(ts.as_bytes());
            m.update(b".");
            m.update(body);
            let want = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
            for entry in sig.split_whitespace() {
                if let Some(given) = entry.strip_prefix("v1,") {
                    good |= subtle::ConstantTimeEq::ct_eq(want.as_bytes(), given.as_bytes());
                }
            }
        }
        return if bool::from(good) {
            Ok(())
        } else {
            Err(Refused::BadSignature)
        };
    }
    match d.token {
        Some(t) if !tokens.is_empty() => {
            if any_matches(tokens, t) {
                Ok(())
            } else {
                Err(Refused::BadToken)
            }
        }
        _ => Err(Refused::NoCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        m.update(format!("{id}.{ts}.").as_bytes());
        m.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
        )
    }

    #[test]
    fn tokens_and_signatures() {
        let tokens = vec![Secret::new("old"), Secret::new("new")];
        let key = [7u8; 32].to_vec();
        let keys = vec![key.clone()];
        let body = b"{}";
        let now = 1_800_000_000;
        let tok = |t| Delivery {
            token: Some(t),
            ..Default::default()
        };
        assert_eq!(check(&tok("new"), body, &tokens, &[], 300, now), Ok(()));
        assert_eq!(check(&tok("old"), body, &tokens, &[], 300, now), Ok(()));
        assert_eq!(
            check(&tok("nope"), body, &tokens, &[], 300, now),
            Err(Refused::BadToken)
        );
        assert_eq!(
            check(&Delivery::default(), body, &tokens, &keys, 300, now),
            Err(Refused::NoCredentials)
        );
        let sig = sign(&key, "abc", now - 10, body);
        let signed = |sig: &str, ts: i64| {
            let ts = Box::leak(ts.to_string().into_boxed_str());
            let sig = Box::leak(sig.to_string().into_boxed_str());
            Delivery {
                token: None,
                webhook_id: Some("abc"),
                webhook_timestamp: Some(ts),
                webhook_signature: Some(sig),
            }
        };
        assert_eq!(
            check(&signed(&sig, now - 10), body, &[], &keys, 300, now),
            Ok(())
        );
        // Several entries: one good one is enough.
        let both = format!("v1,AAAA {sig}");
        assert_eq!(
            check(&signed(&both, now - 10), body, &[], &keys, 300, now),
            Ok(())
        );
        assert_eq!(
            check(&signed(&sig, now - 10), b"{ }", &[], &keys, 300, now),
            Err(Refused::BadSignature),
            "a tampered body"
        );
        let old = sign(&key, "abc", now - 1000, body);
        assert_eq!(
            check(&signed(&old, now - 1000), body, &[], &keys, 300, now),
            Err(Refused::StaleTimestamp)
        );
        // A bad signature is not rescued by a good token.
        let mut d = signed("v1,AAAA", now);
        d.token = Some("new");
        assert_eq!(
            check(&d, body, &tokens, &keys, 300, now),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn signing_keys() {
        let k = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 32])
        );
        assert_eq!(signing_key(&k).unwrap(), vec![1u8; 32]);
        assert!(signing_key("whsec_AAAA").is_err());
        assert!(signing_key("secret").is_err());
    }
}
