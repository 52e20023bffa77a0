//! Registry bearer tokens: ES256 JWTs carrying an `x5c` header with the
//! certificate the registry trusts (`auth.token.rootcertbundle`). Without
//! `x5c` (or a libtrust `kid`) distribution 2.x rejects the token as
//! "invalid token" (shared/docs/protocols.md §5.2b).

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;
use serde::Serialize;

pub struct TokenSigner {
    key: SigningKey,
    cert_der: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Create the signing key and its self-signed certificate if they do not exist.
pub fn ensure_keys(key_file: &Path, cert_file: &Path) -> anyhow::Result<bool> {
    if key_file.exists() && cert_file.exists() {
        return Ok(false);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec!["shisa-token-signer".to_string()])?;
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    for p in [key_file, cert_file] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
    }
    std::fs::write(cert_file, cert.pem())?;
    std::fs::write(key_file, key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600))?;
    Ok(true)
}

impl TokenSigner {
    pub fn load(key_file: &Path, cert_file: &Path) -> anyhow::Result<TokenSigner> {
        let key_pem = std::fs::read_to_string(key_file)
            .map_err(|e| anyhow::anyhow!("registry.key_file {}: {e}", key_file.display()))?;
        let key = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("registry.key_file: not a PKCS#8 P-256 key: {e}"))?;
        let cert_pem = std::fs::read_to_string(cert_file)
            .map_err(|e| anyhow::anyhow!("registry.cert_file {}: {e}", cert_file.display()))?;
        let body: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let cert_der = STANDARD
            .decode(body.trim())
            .map_err(|e| anyhow::anyhow!("registry.cert_file: not PEM: {e}"))?;
        Ok(TokenSigner { key, cert_der })
    }

    /// A signed token for `sub` with `access`, valid `ttl` seconds.
    pub fn issue(
        &self,
        issuer: &str,
        service: &str,
        sub: &str,
        access: &[Access],
        ttl: u64,
    ) -> String {
        let now = crate::store::now();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]});
        let claims = serde_json::json!({
            "iss": issuer,
            "sub": sub,
            "aud": service,
            "exp": now + ttl as i64,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid::Uuid::new_v4().simple().to_string(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn tokens_verify_with_the_certificate_key() {
        let d = tempfile::tempdir().unwrap();
        let (k, c) = (d.path().join("k.pem"), d.path().join("c.pem"));
        assert!(ensure_keys(&k, &c).unwrap());
        assert!(!ensure_keys(&k, &c).unwrap(), "existing keys are kept");
        let s = TokenSigner::load(&k, &c).unwrap();
        let t = s.issue(
            "shisa",
            "reg",
            "alice",
            &[Access {
                kind: "repository".into(),
                name: "alice/app".into(),
                actions: vec!["pull".into()],
            }],
            300,
        );
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["access"][0]["name"], "alice/app");
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        s.key
            .verifying_key()
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }
}
