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
    pub insecure: bool,
}
