//! Secrets in the configuration: inline, from an environment variable, or from a file.
//! The value never appears in `Debug` output or logs.

use std::fmt;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a secret is written in the TOML.
#[derive(Deserialize, Clone)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    Inline(String),
    Env { env: String },
    File { file: std::path::PathBuf },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::Env { env } => write!(f, "Env({env})"),
            SecretSource::File { file } => write!(f, "File({})", file.display()),
        }
    }
}

impl SecretSource {
    pub fn resolve(&self, base: &Path) -> Result<Secret, String> {
        let v = match self {
            SecretSource::Inline(s) => s.clone(),
            SecretSource::Env { env } => std::env::var(env)
                .map_err(|_| format!("environment variable `{env}` is not set"))?,
            SecretSource::File { file } => {
                let p = base.join(file);
                check_private(&p)?;
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read secret file `{}`: {e}", p.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
        };
        if v.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Secret(v))
    }
}

/// A secret or key file must be its owner's alone, as ssh insists of a private key: one
/// that group or others can read is refused (a missing file is the caller's to report).
pub fn check_private(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(format!(
            "`{}` can be read by group or others (mode {:o}); make it its owner's alone: chmod 600 {}",
            p.display(),
            m.permissions().mode() & 0o777,
            p.display()
        )),
        _ => Ok(()),
    }
}

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time equality. Both sides are hashed first so the comparison
    /// does not leak the secret's length either.
    pub fn matches(&self, candidate: &str) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(candidate.as_bytes());
        a.as_slice().ct_eq(b.as_slice()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// True if `candidate` equals any of `secrets`. Every secret is compared, so
/// timing does not reveal which one (or whether an early one) matched.
pub fn any_matches(secrets: &[Secret], candidate: &str) -> bool {
    let mut hit = subtle::Choice::from(0u8);
    let b = Sha256::digest(candidate.as_bytes());
    for s in secrets {
        let a = Sha256::digest(s.0.as_bytes());
        hit |= a.as_slice().ct_eq(b.as_slice());
    }
    hit.into()
}

/// A signing key from `whsec_<base64 of 32 bytes>`.
pub fn signing_key(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s
        .strip_prefix("whsec_")
        .ok_or("a signing key starts with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the part after `whsec_` is not base64")?;
    if key.len() != 32 {
        return Err(format!(
            "a signing key is 32 bytes, this one is {}",
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_redact() {
        let s = vec![Secret::new("one"), Secret::new("two")];
        assert!(any_matches(&s, "two") && !any_matches(&s, "tw") && !any_matches(&[], "x"));
        assert_eq!(format!("{:?}", s[0]), "Secret(<redacted>)");
    }
}
