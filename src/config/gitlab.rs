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
    /// Where each owner's build storage lives (default DATA_DIR/build-stores): a build sees
    /// only the images in its owner's, never the blade's.
    #[serde(default)]
    pub build_store: Option<PathBuf>,
    /// The containers.conf a build's Podman reads (default: the host's).
    #[serde(default)]
    pub build_containers_conf: Option<PathBuf>,
    /// How a GitLab user becomes a department account: `extern_uid` (GitLab signs in
    /// with LDAP; its identity's extern_uid names the account) or `username` (demo only).
    #[serde(default = "default_gitlab_link")]
    pub link_by: String,
    /// With `extern_uid`: the name of GitLab's LDAP provider (`gitlab.yml`'s `ldap.servers`).
    #[serde(default = "default_ldap_provider")]
    pub ldap_provider: String,
    /// With `extern_uid` and an account the directory gives no DN for (the static users
    /// file): its DN is `uid=UID,` and this.
    #[serde(default)]
    pub ldap_people_base: Option<String>,
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

pub(super) fn default_ldap_provider() -> String {
    "ldapmain".into()
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
    pub build_store: PathBuf,
    pub build_containers_conf: Option<PathBuf>,
    pub link_by: String,
    pub ldap_provider: String,
    pub ldap_people_base: Option<String>,
    pub timeout_seconds: u64,
    pub convert_sif: bool,
    pub runner_image: String,
    pub runner_uid_base: u32,
    pub runner_key_file: PathBuf,
    pub runner_reconcile_seconds: u64,
}

/// `[gitlab]`, checked.
pub(super) fn checked(
    raw: &Option<GitlabRaw>,
    base: &Path,
    data_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<Gitlab>, (String, String)> {
    Ok(match raw {
        None => None,
        Some(g) => {
            check_url("gitlab.url", &g.url)?;
            let webhook_tokens = g
                .webhook_tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.resolve(base)
                        .map_err(|e| (format!("gitlab.webhook_tokens[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let signing_keys = g
                .signing_keys
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let k = format!("gitlab.signing_keys[{i}]");
                    let s = t.resolve(base).map_err(|e| (k.clone(), e))?;
                    secret::signing_key(s.expose()).map_err(|e| (k, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if webhook_tokens.is_empty() && signing_keys.is_empty() {
                return Err((
                    "gitlab.webhook_tokens".into(),
                    "give at least one webhook token or signing key, or anyone could post events"
                        .into(),
                ));
            }
            if !matches!(g.link_by.as_str(), "extern_uid" | "username") {
                return Err((
                    "gitlab.link_by".into(),
                    "use `extern_uid` or `username`".into(),
                ));
            }
            if g.link_by == "username" {
                warnings.push("gitlab.link_by = \"username\": a GitLab user named like a department account acts as it; use only for demos".into());
            }
            if g.build_uid_base == 0 || g.build_uid_count < 65_536 {
                return Err((
                    "gitlab.build_uid_base".into(),
                    "builds need a range of at least 65536 host ids that does not start at 0"
                        .into(),
                ));
            }
            // A runner's root is runner_uid_base..+65536 on the host: never host root, and
            // never the builds' range, or a CI job and a build would share host ids.
            let runner = (g.runner_uid_base as u64, g.runner_uid_base as u64 + 65_536);
            let build = (
                g.build_uid_base as u64,
                g.build_uid_base as u64 + g.build_uid_count as u64,
            );
            if g.runner_uid_base == 0 || (runner.0 < build.1 && build.0 < runner.1) {
                return Err((
                    "gitlab.runner_uid_base".into(),
                    format!(
                        "runners need 65536 host ids that do not start at 0 and do not overlap the builds' {}..{}",
                        build.0, build.1
                    ),
                ));
            }
            if let Some(u) = &g.hook_url {
                check_url("gitlab.hook_url", u)?;
            }
            let runner_key_file = g
                .runner_key_file
                .as_ref()
                .map(|p| base.join(p))
                .unwrap_or_else(|| base.join(data_dir).join("runner-token.key"));
            secret::check_private(&runner_key_file)
                .map_err(|e| ("gitlab.runner_key_file".to_string(), e))?;
            Some(Gitlab {
                url: g.url.trim_end_matches('/').to_string(),
                api_token: g
                    .api_token
                    .resolve(base)
                    .map_err(|e| ("gitlab.api_token".to_string(), e))?,
                webhook_tokens,
                signing_keys,
                max_skew_seconds: g.max_skew_seconds.clamp(30, 3600),
                hook_url: g.hook_url.clone(),
                build_files: g.build_files.clone(),
                build_timeout_seconds: g.build_timeout_seconds.clamp(5, 86_400),
                build_uid_base: g.build_uid_base,
                build_uid_count: g.build_uid_count,
                build_store: g
                    .build_store
                    .as_ref()
                    .map(|p| base.join(p))
                    .unwrap_or_else(|| base.join(data_dir).join("build-stores")),
                build_containers_conf: g.build_containers_conf.as_ref().map(|p| base.join(p)),
                link_by: g.link_by.clone(),
                ldap_provider: g.ldap_provider.clone(),
                ldap_people_base: g.ldap_people_base.clone(),
                timeout_seconds: g.timeout_seconds.clamp(1, 120),
                convert_sif: g.convert_sif,
                runner_image: g.runner_image.clone(),
                runner_uid_base: g.runner_uid_base,
                runner_key_file,
                runner_reconcile_seconds: g.runner_reconcile_seconds.clamp(1, 3600),
            })
        }
    })
}
