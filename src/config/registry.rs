//! `[registry]`: the department registry and shisa's token service.

use serde::Deserialize;

use super::*;

/// The department registry; shisa is its token (authorisation) server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryRaw {
    /// The registry's API as shisa reaches it, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// The registry as written in image references (`registry.example.edu`, `127.0.0.1:5000`).
    pub host: String,
    /// Must equal `auth.token.service` and `auth.token.issuer` in the registry's config.
    #[serde(default = "default_service")]
    pub service: String,
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// This service's token endpoint as the registry tells clients (`auth.token.realm`).
    pub realm: String,
    /// The P-256 key that signs tokens (PKCS#8 PEM) and its certificate, which the registry
    /// trusts (`auth.token.rootcertbundle`). `shisa registry keys` creates both.
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
    #[serde(default = "default_token_ttl")]
    pub token_ttl_seconds: u64,
    /// The `Authorization` header value the registry sends with notifications.
    pub notification_token: SecretSource,
    #[serde(default = "default_sync")]
    pub sync_seconds: u64,
    /// How long an uploaded layer may stay in no image (its push still running, or abandoned)
    /// before shisa deletes it from the registry; until then it counts against the quota.
    #[serde(default = "default_upload_grace")]
    pub upload_grace_seconds: u64,
    /// Use HTTP, not HTTPS, when Podman pulls from it (test and demo registries).
    #[serde(default)]
    pub insecure: bool,
}

pub(super) fn default_service() -> String {
    "shisa-registry".into()
}

pub(super) fn default_issuer() -> String {
    "shisa".into()
}

pub(super) fn default_token_ttl() -> u64 {
    300
}

pub(super) fn default_sync() -> u64 {
    300
}

pub(super) fn default_upload_grace() -> u64 {
    6 * 3600
}

#[derive(Debug, Clone)]
pub struct Registry {
    pub url: String,
    pub host: String,
    pub service: String,
    pub issuer: String,
    pub realm: String,
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
    pub token_ttl_seconds: u64,
    pub notification_token: Secret,
    pub sync_seconds: u64,
    pub upload_grace_seconds: u64,
    pub insecure: bool,
}

/// `[registry]`, checked.
pub(super) fn checked(
    raw: &Option<RegistryRaw>,
    base: &Path,
) -> Result<Option<Registry>, (String, String)> {
    Ok(match raw {
        None => None,
        Some(r) => {
            check_url("registry.url", &r.url)?;
            check_url("registry.realm", &r.realm)?;
            if r.realm.starts_with("http://") && !is_loopback_url(&r.realm) {
                return Err((
                    "registry.realm".into(),
                    "a token realm over plain HTTP on a non-loopback address would send passwords in clear; use https://".into(),
                ));
            }
            if r.host.is_empty() || r.host.contains('/') {
                return Err((
                    "registry.host".into(),
                    "give the registry's host[:port] as written in image references".into(),
                ));
            }
            if !(30..=3600).contains(&r.token_ttl_seconds) {
                return Err((
                    "registry.token_ttl_seconds".into(),
                    "must be from 30 to 3600".into(),
                ));
            }
            let notification_token = r
                .notification_token
                .resolve(base)
                .map_err(|e| ("registry.notification_token".to_string(), e))?;
            secret::check_private(&base.join(&r.key_file))
                .map_err(|e| ("registry.key_file".to_string(), e))?;
            Some(Registry {
                url: r.url.trim_end_matches('/').to_string(),
                host: r.host.clone(),
                service: r.service.clone(),
                issuer: r.issuer.clone(),
                realm: r.realm.clone(),
                key_file: base.join(&r.key_file),
                cert_file: base.join(&r.cert_file),
                token_ttl_seconds: r.token_ttl_seconds,
                notification_token,
                sync_seconds: r.sync_seconds.max(5),
                upload_grace_seconds: r.upload_grace_seconds,
                insecure: r.insecure,
            })
        }
    })
}
