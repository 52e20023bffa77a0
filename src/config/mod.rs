//! The configuration: one TOML file, validated at start.
//!
//! Unknown keys are refused (`deny_unknown_fields`), and every error names
//! the key it is about, e.g. `mattermost.tokens[1]: environment variable … is not set`.
//! Relative paths are relative to the directory of the configuration file.

pub mod blades;
pub mod directory;
pub mod gitlab;
pub mod limits;
pub mod mattermost;
pub mod registry;
pub mod roles;
pub mod secret;
pub mod server;
pub mod sif;
pub mod slurm;
pub mod units;
pub mod users_file;

pub use blades::*;
pub use directory::*;
pub use gitlab::*;
pub use limits::*;
pub use mattermost::*;
pub use registry::*;
pub use roles::*;
pub use server::*;
pub use sif::*;
pub use slurm::*;
pub use units::{Seconds, Size};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use secret::{Secret, SecretSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Server,
    pub storage: Storage,
    pub mattermost: MattermostRaw,
    pub directory: DirectoryRaw,
    #[serde(default)]
    pub roles: Roles,
    #[serde(default)]
    pub courses: Courses,
    #[serde(default)]
    pub blades: Vec<Blade>,
    #[serde(default)]
    pub templates: BTreeMap<String, Template>,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub containers: Containers,
    #[serde(default)]
    pub images: Images,
    #[serde(default)]
    pub limits: BTreeMap<String, Limits>,
    #[serde(default)]
    pub reconcile: Reconcile,
    #[serde(default)]
    pub reclaim: Reclaim,
    #[serde(default)]
    pub registry: Option<RegistryRaw>,
    #[serde(default)]
    pub sif: SifConfig,
    #[serde(default)]
    pub gitlab: Option<GitlabRaw>,
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
}

/// The validated configuration the service runs with.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: Server,
    /// `server.metrics_token`, resolved.
    pub metrics_token: Option<Secret>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub mattermost: Mattermost,
    pub directory: Directory,
    pub roles: Roles,
    pub courses: Courses,
    pub blades: Vec<Blade>,
    pub templates: BTreeMap<String, Template>,
    pub queue: Queue,
    pub containers: Containers,
    pub home_base: PathBuf,
    pub images: Images,
    pub limits: BTreeMap<String, Limits>,
    pub reconcile: Reconcile,
    pub reclaim: Reclaim,
    pub registry: Option<Registry>,
    pub sif: SifConfig,
    pub gitlab: Option<Gitlab>,
    pub slurm: Option<SlurmConfig>,
    /// Things that are allowed but worth an admin's attention.
    pub warnings: Vec<String>,
}

/// A configuration error: the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {key}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub key: String,
    pub reason: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            key: "(file)".into(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::from_str(&text, path)
    }

    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            path: path.display().to_string(),
            key: key.to_string(),
            reason,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err("(syntax)", one_line(&e.to_string())))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let reason = match line {
                Some(l) => format!("{} (line {l})", one_line(inner.message())),
                None => one_line(inner.message()),
            };
            err(if key == "." { "(top level)" } else { &key }, reason)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Self::validate(raw, path, &base).map_err(|(k, r)| err(&k, r))
    }

    fn validate(raw: RawConfig, path: &Path, base: &Path) -> Result<Config, (String, String)> {
        let mut warnings = Vec::new();
        let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
            (
                "server.listen".to_string(),
                format!(
                    "`{}` is not an address like `127.0.0.1:8470`",
                    raw.server.listen
                ),
            )
        })?;
        if let Some(u) = &raw.server.public_url {
            check_url("server.public_url", u)?;
        }
        if raw.mattermost.tokens.is_empty() {
            return Err((
                "mattermost.tokens".into(),
                "give at least one slash-command token".into(),
            ));
        }
        let mut tokens = Vec::new();
        for (i, t) in raw.mattermost.tokens.iter().enumerate() {
            tokens.push(
                t.resolve(base)
                    .map_err(|r| (format!("mattermost.tokens[{i}]"), r))?,
            );
        }
        let bot_token = match &raw.mattermost.bot_token {
            Some(s) => Some(
                s.resolve(base)
                    .map_err(|r| ("mattermost.bot_token".to_string(), r))?,
            ),
            None => None,
        };
        if let Some(u) = &raw.mattermost.url {
            check_url("mattermost.url", u)?;
        }
        match raw.mattermost.linking {
            Linking::MattermostLdap => {
                if raw.mattermost.url.is_none() || bot_token.is_none() {
                    return Err((
                        "mattermost.linking".into(),
                        "`mattermost-ldap` asks Mattermost who the user is: set `mattermost.url` and `mattermost.bot_token`".into(),
                    ));
                }
            }
            Linking::Username => warnings.push(
                "mattermost.linking = \"username\" trusts Mattermost user names: use it for demos and tests only, \"mattermost-ldap\" in production".into(),
            ),
        }
        for (g, c) in &raw.courses {
            if !crate::values::valid_group(g) {
                return Err((
                    format!("courses.{g}"),
                    "a course is named by its directory group".into(),
                ));
            }
            if let Some(bad) = c
                .instructors
                .iter()
                .find(|i| !crate::values::valid_account(i))
            {
                return Err((
                    format!("courses.{g}.instructors"),
                    format!("`{bad}` is not an account name"),
                ));
            }
        }
        let directory = directory::checked(&raw.directory, base, &mut warnings)?;
        let blades = blades::checked(raw.blades, base, &raw.storage.data_dir)?;
        for (name, t) in &raw.templates {
            let k = format!("templates.{name}");
            if !crate::values::valid_name(name) {
                return Err((
                    k,
                    "template names are lowercase letters, digits and `-`".into(),
                ));
            }
            if let Some(c) = t.cpus {
                if !(c > 0.0 && c <= 1024.0) {
                    return Err((
                        format!("{k}.cpus"),
                        "must be more than 0 and at most 1024".into(),
                    ));
                }
            }
            if t.ports.contains(&0) {
                return Err((format!("{k}.ports"), "port 0 is not a port".into()));
            }
        }
        for (i, b) in blades.iter().enumerate() {
            if b.port_range[0] == 0 || b.port_range[0] > b.port_range[1] {
                return Err((
                    format!("blades[{i}].port_range"),
                    "give [first, last] with 0 < first <= last".into(),
                ));
            }
            if b.port_range[0] <= 60999 && b.port_range[1] >= 32768 {
                warnings.push(format!("blades[{i}].port_range overlaps the kernel's ephemeral range 32768-60999; leased ports may collide with outgoing connections"));
            }
            if b.gpu_share == 0 {
                return Err((
                    format!("blades[{i}].gpu_share"),
                    "must be at least 1".into(),
                ));
            }
            for g in &b.gpus {
                if g.is_empty()
                    || !g
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err((
                        format!("blades[{i}].gpus"),
                        format!("`{g}` is not a device index or name"),
                    ));
                }
            }
        }
        for pat in &raw.images.allow {
            let body = pat.strip_suffix('*').unwrap_or(pat);
            if body.is_empty()
                || body.contains('*')
                || !body
                    .split('/')
                    .next()
                    .is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost")
            {
                return Err(("images.allow".into(), format!("`{pat}`: give a full reference starting with a registry host, optionally ending in `*`")));
            }
        }
        for (role, l) in &raw.limits {
            let k = format!("limits.{role}");
            if !["student", "instructor", "admin"].contains(&role.as_str()) {
                return Err((k, "roles are `student`, `instructor` and `admin`".into()));
            }
            for (f, v) in [
                ("default_cpus", l.default_cpus),
                ("max_cpus", l.max_cpus),
                ("total_cpus", l.total_cpus),
            ] {
                if !(v > 0.0 && v <= 1024.0) {
                    return Err((
                        format!("{k}.{f}"),
                        "must be more than 0 and at most 1024".into(),
                    ));
                }
            }
        }
        let registry = registry::checked(&raw.registry, base)?;
        let gitlab = gitlab::checked(&raw.gitlab, base, &raw.storage.data_dir, &mut warnings)?;
        if let Some(sl) = &raw.slurm {
            if sl.launcher.is_empty() {
                return Err((
                    "slurm.launcher".into(),
                    "name the program that runs a command in a SIF, e.g. [\"apptainer\", \"exec\"]"
                        .into(),
                ));
            }
            if sl.jobs_dir.is_empty()
                || sl.jobs_dir.starts_with('/')
                || sl.jobs_dir.split('/').any(|c| c == ".." || c.is_empty())
            {
                return Err((
                    "slurm.jobs_dir".into(),
                    "a relative folder inside each home, like `shisa-jobs`".into(),
                ));
            }
        }
        if raw.sif.link_ttl_seconds == 0 || raw.sif.link_ttl_seconds > 900 {
            return Err((
                "sif.link_ttl_seconds".into(),
                "a download link may work for 1 to 900 seconds (15 minutes)".into(),
            ));
        }
        if !matches!(raw.sif.writer.as_str(), "native" | "mksquashfs") {
            return Err((
                "sif.writer".into(),
                format!("`{}`: use `native` or `mksquashfs`", raw.sif.writer),
            ));
        }
        if !matches!(raw.sif.compression.as_str(), "gzip" | "zstd") {
            return Err((
                "sif.compression".into(),
                format!(
                    "`{}`: use `gzip` (readable by every Apptainer) or `zstd`",
                    raw.sif.compression
                ),
            ));
        }
        for (key, n) in [
            ("queue.quick_workers", raw.queue.quick_workers),
            ("queue.slow_workers", raw.queue.slow_workers),
            ("queue.slurm_workers", raw.queue.slurm_workers),
            ("queue.per_blade", raw.queue.per_blade as usize),
        ] {
            if n == 0 || n > 64 {
                return Err((key.into(), "must be from 1 to 64".into()));
            }
        }
        if !(raw.reclaim.idle_cpu_percent >= 0.0 && raw.reclaim.idle_cpu_percent <= 100.0) {
            return Err((
                "reclaim.idle_cpu_percent".into(),
                "must be from 0 to 100".into(),
            ));
        }
        if raw.queue.max_attempts == 0 {
            return Err(("queue.max_attempts".into(), "must be at least 1".into()));
        }
        let metrics_token = match &raw.server.metrics_token {
            Some(t) => Some(
                t.resolve(base)
                    .map_err(|e| ("server.metrics_token".to_string(), e))?,
            ),
            None => None,
        };
        Ok(Config {
            path: path.to_path_buf(),
            metrics_token,
            listen,
            server: raw.server,
            data_dir: base.join(&raw.storage.data_dir),
            mattermost: Mattermost {
                tokens,
                url: raw
                    .mattermost
                    .url
                    .map(|u| u.trim_end_matches('/').to_string()),
                bot_token,
                linking: raw.mattermost.linking,
                contact: raw.mattermost.contact,
                timeout_seconds: raw.mattermost.timeout_seconds,
            },
            directory,
            roles: raw.roles,
            courses: raw.courses.clone(),
            blades,
            templates: raw.templates,
            queue: raw.queue,
            home_base: raw
                .containers
                .home_base
                .as_ref()
                .map(|h| base.join(h))
                .unwrap_or_else(|| base.join(&raw.storage.data_dir).join("home")),
            containers: raw.containers,
            images: raw.images,
            limits: raw.limits,
            reconcile: raw.reconcile,
            reclaim: raw.reclaim,
            registry,
            sif: SifConfig {
                store_dir: Some(
                    raw.sif
                        .store_dir
                        .as_ref()
                        .map(|p| base.join(p))
                        .unwrap_or_else(|| base.join(&raw.storage.data_dir).join("sif")),
                ),
                tmp_dir: Some(
                    raw.sif
                        .tmp_dir
                        .as_ref()
                        .map(|p| base.join(p))
                        .unwrap_or_else(|| base.join(&raw.storage.data_dir).join("sif-tmp")),
                ),
                cluster_path: raw.sif.cluster_path.clone(),
                compression: raw.sif.compression.clone(),
                link_ttl_seconds: raw.sif.link_ttl_seconds,
                writer: raw.sif.writer.clone(),
                helper: raw.sif.helper.clone(),
                max_bytes: raw.sif.max_bytes.clone(),
            },
            gitlab,
            slurm: raw.slurm.clone().map(|mut sl| {
                sl.conf = sl.conf.map(|c| base.join(c));
                sl.poll_seconds = sl.poll_seconds.clamp(1, 600);
                sl
            }),
            warnings,
        })
    }

    /// The limits for a role (defaults when the role has no table).
    pub fn limits_for(&self, role: Role) -> Limits {
        self.limits.get(role.as_str()).cloned().unwrap_or_default()
    }

    pub fn blade(&self, name: &str) -> Option<&Blade> {
        self.blades.iter().find(|b| b.name == name)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("shisa.db")
    }

    /// The key that seals values at rest in the database.
    pub fn state_key_path(&self) -> PathBuf {
        self.data_dir.join("state.key")
    }

    /// Where shisa tells `shisa chat` (and Mattermost) to reach it.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_url(key: &str, u: &str) -> Result<(), (String, String)> {
    if !(u.starts_with("http://") || u.starts_with("https://")) || reqwest::Url::parse(u).is_err() {
        return Err((key.into(), format!("`{u}` is not an http(s) URL")));
    }
    Ok(())
}

pub fn is_loopback_url(u: &str) -> bool {
    reqwest::Url::parse(u)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
                || h == "[::1]"
        })
}
