//! Image references: what a user typed, resolved to the one full reference
//! shisa hands to Podman. Only references built here from validated parts
//! reach Podman, so no transport (`docker-archive:`, `dir:`, …) ever can.
//!
//! Without a registry (the embedded default): `myimg:1` is the caller's own
//! `localhost/OWNER/myimg:1`; `localhost/NAME:TAG` is an admin-provided image
//! anyone may run; `bob/myimg:1` is bob's (usable when shared); a reference
//! starting with a registry host is external and must be on `images.allow`.

use serde::Serialize;

use crate::messages::UserError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The caller's own image.
    Own,
    /// Another user's image (needs sharing).
    User(String),
    /// `localhost/NAME`: provided by the admins.
    Admin,
    /// From an outside registry, allowed by the configuration.
    External,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    /// The full reference given to Podman.
    pub reference: String,
    pub source: Source,
}

pub use crate::values::valid_component;

/// `[\w][\w.-]{0,127}`
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

fn valid_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        })
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

fn bad(raw: &str) -> UserError {
    UserError::new("image.invalid").arg("image", raw.chars().take(80).collect::<String>())
}

/// Resolve what `caller` typed. `allow` is the admins' allow-list.
pub fn resolve(raw: &str, caller: &str, allow: &[String]) -> Result<ImageRef, UserError> {
    resolve_with(raw, caller, allow, None)
}

/// With a department registry, users' images live there: `myimg:1` is
/// `REGISTRY/OWNER/myimg:1`, `bob/x` is `REGISTRY/bob/x`, `library/x` the admins'.
pub fn resolve_with(
    raw: &str,
    caller: &str,
    allow: &[String],
    registry: Option<&str>,
) -> Result<ImageRef, UserError> {
    if raw.is_empty() || raw.len() > 255 || raw.contains("://") {
        return Err(bad(raw));
    }
    // Split off the digest, then the tag (a ':' after the last '/').
    let (rest, digest) = match raw.split_once('@') {
        Some((r, d)) if valid_digest(d) => (r, Some(d)),
        Some(_) => return Err(bad(raw)),
        None => (raw, None),
    };
    let (path, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if tag.is_some_and(|t| !valid_tag(t)) {
        return Err(bad(raw));
    }
    let parts: Vec<&str> = path.split('/').collect();
    let first = parts[0];
    let mut has_host =
        parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    // The department registry written out in full is the same as not written.
    let ours = has_host && registry == Some(first);
    if ours {
        has_host = false;
    }
    let repo_parts = if has_host || ours {
        &parts[1..]
    } else {
        &parts[..]
    };
    if repo_parts.is_empty()
        || !repo_parts.iter().all(|p| valid_component(p))
        || (has_host && !valid_host(first))
    {
        return Err(bad(raw));
    }
    let suffix = match (tag, digest) {
        (_, Some(d)) => format!("@{d}"),
        (Some(t), None) => format!(":{t}"),
        (None, None) => ":latest".to_string(),
    };
    let (reference, source) = if has_host && first == "localhost" {
        match repo_parts {
            [name] => (format!("localhost/{name}{suffix}"), Source::Admin),
            [owner, name] if *owner == caller => {
                (format!("localhost/{owner}/{name}{suffix}"), Source::Own)
            }
            [owner, name] => (
                format!("localhost/{owner}/{name}{suffix}"),
                Source::User(owner.to_string()),
            ),
            _ => return Err(bad(raw)),
        }
    } else if has_host {
        let full = format!("{path}{suffix}");
        if !allowed(&full, allow) {
            return Err(UserError::new("image.not_allowed").arg("image", raw));
        }
        (full, Source::External)
    } else {
        let prefix = registry.unwrap_or("localhost");
        match repo_parts {
            [name] => (format!("{prefix}/{caller}/{name}{suffix}"), Source::Own),
            [owner, name] if *owner == caller => {
                (format!("{prefix}/{owner}/{name}{suffix}"), Source::Own)
            }
            ["library", name] if registry.is_some() => {
                (format!("{prefix}/library/{name}{suffix}"), Source::Admin)
            }
            [owner, name] => (
                format!("{prefix}/{owner}/{name}{suffix}"),
                Source::User(owner.to_string()),
            ),
            _ => return Err(bad(raw)),
        }
    };
    Ok(ImageRef { reference, source })
}

fn allowed(full: &str, allow: &[String]) -> bool {
    allow.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => full.starts_with(prefix),
        None => a == full || format!("{a}:latest") == full,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Result<(String, Source), &'static str> {
        resolve(
            s,
            "alice",
            &[
                "docker.io/library/python:3.12".into(),
                "ghcr.io/dept/*".into(),
            ],
        )
        .map(|i| (i.reference, i.source))
        .map_err(|e| e.key)
    }

    #[test]
    fn resolution() {
        assert_eq!(
            r("myimg"),
            Ok(("localhost/alice/myimg:latest".into(), Source::Own))
        );
        assert_eq!(
            r("myimg:1"),
            Ok(("localhost/alice/myimg:1".into(), Source::Own))
        );
        assert_eq!(
            r("bob/myimg:1"),
            Ok(("localhost/bob/myimg:1".into(), Source::User("bob".into())))
        );
        assert_eq!(
            r("localhost/busybox"),
            Ok(("localhost/busybox:latest".into(), Source::Admin))
        );
        assert_eq!(
            r("docker.io/library/python:3.12"),
            Ok(("docker.io/library/python:3.12".into(), Source::External))
        );
        assert_eq!(
            r("ghcr.io/dept/cuda:12"),
            Ok(("ghcr.io/dept/cuda:12".into(), Source::External))
        );
        assert_eq!(r("docker.io/library/python:3.11"), Err("image.not_allowed"));
        // A transport-looking word is just a name and tag under the caller's namespace.
        assert_eq!(
            r("oci-archive:x"),
            Ok(("localhost/alice/oci-archive:x".into(), Source::Own))
        );
        for bad in [
            "docker-archive:/tmp/x.tar",
            "dir:/etc",
            "docker://evil/x",
            "../x",
            "MyImg",
            "a//b",
            "x:",
            "x@sha256:zz",
            "a/b/c",
            "-x",
            "x:-1",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn resolved_references_never_carry_a_transport(s in "[a-z0-9:/._@-]{0,40}") {
            if let Ok(i) = resolve(&s, "alice", &[]) {
                proptest::prop_assert!(i.reference.starts_with("localhost/"));
                proptest::prop_assert!(!i.reference.contains("//"));
            }
        }
    }
}
