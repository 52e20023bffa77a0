//! `[gitlab]`: builds from GitLab, CI tokens, runners.

use serde::Deserialize;

use super::*;

/// GitLab: the webhook receiver and the API client (builds from pushes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabRaw {
    /// The GitLab instance, e.g. `https://gitlab.example.edu`.
    pub url: String,
    /// An admin token with the `api` and `sudo` scopes: calls for a user carry `Sudo:`.
    pub api_token: SecretSource,
    /// `X-Gitlab-Token` values accepted (several, for rotation).
    #[serde(default)]
    pub webhook_tokens: Vec<SecretSource>,
    /// `whsec_…` signing keys; a signed delivery must verify against one.
    #[serde(default)]
    pub signing_keys: Vec<SecretSource>,
    #[serde(default = "default_skew")]
    pub max_skew_seconds: i64,
    /// Where GitLab reaches the receiver (default: server.public_url + /hooks/gitlab).
    #[serde(default)]
    pub hook_url: Option<String>,
    /// Files whose change in a push starts a build.
    #[serde(default = "default_build_files")]
    pub build_files: Vec<String>,
    #[serde(default = "default_build_timeout")]
    pub build_timeout_seconds: u64,
    /// The host uid/gid range a build's root is mapped to (never host root).
    #[serde(default = "default_build_uid_base")]
    pub build_uid_base: u32,
    #[serde(default = "default_build_uid_count")]
    pub build_uid_count: u32,
    /// How a GitLab user becomes a department account: `extern_uid` (GitLab signs in
    /// with LDAP; its identity's extern_uid names the account) or `username` (demo only).
    #[serde(default = "default_gitlab_link")]
    pub link_by: String,
    #[serde(default = "default_gitlab_timeout")]
    pub timeout_seconds: u64,
    /// Convert every successful build to a SIF for Slurm (as `/container sif` would).
    #[serde(default)]
    pub convert_sif: bool,
    /// The image per-project runners run (it must provide `gitlab-runner` and a shell
    /// executor that can build images rootless).
    #[serde(default = "default_runner_image")]
    pub runner_image: String,
    /// The host range a runner's root is mapped to.
    #[serde(default = "default_runner_uid_base")]
    pub runner_uid_base: u32,
    /// Where the key that seals runner tokens lives (default DATA_DIR/runner-token.key).
    #[serde(default)]
    pub runner_key_file: Option<PathBuf>,
    /// How often runners are reconciled with GitLab (pending jobs, stray containers).
    #[serde(default = "default_runner_reconcile")]
    pub runner_reconcile_seconds: u64,
}

pub(super) fn default_runner_reconcile() -> u64 {
    30
}

pub(super) fn default_runner_image() -> String {
    "docker.io/gitlab/gitlab-runner:alpine".into()
}

pub(super) fn default_runner_uid_base() -> u32 {
    300_000
}

pub(super) fn default_skew() -> i64 {
    300
}

pub(super) fn default_build_files() -> Vec<String> {
    vec!["Containerfile".into(), "Dockerfile".into()]
}

pub(super) fn default_build_timeout() -> u64 {
    1800
}

pub(super) fn default_build_uid_base() -> u32 {
    200_000
}

pub(super) fn default_build_uid_count() -> u32 {
    65_536
}

pub(super) fn default_gitlab_link() -> String {
    "extern_uid".into()
}

pub(super) fn default_gitlab_timeout() -> u64 {
    10
}

#[derive(Debug)]
pub struct Gitlab {
    pub url: String,
    pub api_token: Secret,
    pub webhook_tokens: Vec<Secret>,
    pub signing_keys: Vec<Vec<u8>>,
    pub max_skew_seconds: i64,
    pub hook_url: Option<String>,
    pub build_files: Vec<String>,
    pub build_timeout_seconds: u64,
    pub build_uid_base: u32,
    pub build_uid_count: u32,
    pub link_by: String,
    pub timeout_seconds: u64,
    pub convert_sif: bool,
    pub runner_image: String,
    pub runner_uid_base: u32,
    pub runner_key_file: PathBuf,
    pub runner_reconcile_seconds: u64,
}
