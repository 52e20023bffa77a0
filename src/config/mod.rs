//! The configuration: one TOML file, validated at start.
//!
//! Unknown keys are refused (`deny_unknown_fields`), and every error names
//! the key it is about, e.g. `mattermost.tokens[1]: environment variable … is not set`.
//! Relative paths are relative to the directory of the configuration file.

pub mod secret;
pub mod users_file;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    pub registry: Option<RegistryRaw>,
    #[serde(default)]
    pub sif: SifConfig,
    #[serde(default)]
    pub gitlab: Option<GitlabRaw>,
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
}

/// Slurm: `/job` (batch jobs in the user's SIF image).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `SLURM_CONF` for sbatch, squeue and scancel (default: theirs).
    #[serde(default)]
    pub conf: Option<PathBuf>,
    /// What runs a command in a SIF: `["apptainer", "exec"]`, then `gpu_flag` with GPUs,
    /// then the SIF and the command.
    #[serde(default = "default_launcher")]
    pub launcher: Vec<String>,
    #[serde(default = "default_gpu_flag")]
    pub gpu_flag: String,
    /// The job directories' folder in each home.
    #[serde(default = "default_jobs_dir")]
    pub jobs_dir: String,
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default = "default_job_time")]
    pub default_time: String,
    #[serde(default = "default_job_memory")]
    pub default_memory: String,
    #[serde(default = "default_job_cpus")]
    pub default_cpus: u32,
    /// GPU type names users may ask for (`--gpus tesla:1`); empty: any.
    #[serde(default)]
    pub gpu_types: Vec<String>,
    /// The blades are Slurm nodes: Slurm owns their GPUs, and a GPU container holds them
    /// through an allocation submitted as its owner.
    #[serde(default)]
    pub gpu_containers: bool,
}

fn default_launcher() -> Vec<String> {
    vec!["apptainer".into(), "exec".into()]
}
fn default_gpu_flag() -> String {
    "--nv".into()
}
fn default_jobs_dir() -> String {
    "shisa-jobs".into()
}
fn default_poll() -> u64 {
    10
}
fn default_job_time() -> String {
    "1h".into()
}
fn default_job_memory() -> String {
    "2G".into()
}
fn default_job_cpus() -> u32 {
    1
}

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

fn default_runner_reconcile() -> u64 {
    30
}

fn default_runner_image() -> String {
    "docker.io/gitlab/gitlab-runner:alpine".into()
}
fn default_runner_uid_base() -> u32 {
    300_000
}

fn default_skew() -> i64 {
    300
}
fn default_build_files() -> Vec<String> {
    vec!["Containerfile".into(), "Dockerfile".into()]
}
fn default_build_timeout() -> u64 {
    1800
}
fn default_build_uid_base() -> u32 {
    200_000
}
fn default_build_uid_count() -> u32 {
    65_536
}
fn default_gitlab_link() -> String {
    "extern_uid".into()
}
fn default_gitlab_timeout() -> u64 {
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

/// Singularity images for Slurm jobs.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SifConfig {
    /// Where converted files live (default DATA_DIR/sif); content files by digest, `OWNER/` links.
    pub store_dir: Option<PathBuf>,
    /// Scratch space for conversions, on a local disk (default DATA_DIR/sif-tmp).
    pub tmp_dir: Option<PathBuf>,
    /// `gzip` (what every Apptainer reads) or `zstd`.
    pub compression: String,
    /// The store as the cluster's nodes see it, for job scripts and replies (default: store_dir).
    pub cluster_path: Option<PathBuf>,
    /// How long a download link works, seconds (at most 900).
    pub link_ttl_seconds: u64,
    /// `native` (shisa's own squashfs writer in a confined child) or `mksquashfs`.
    pub writer: String,
    /// The shisa binary the native writer runs as `HELPER sif squash` (default: this program).
    pub helper: Option<PathBuf>,
    /// Size bound of the store (`500G`); least recently used files go first,
    /// never one a pending or running job holds. Unset: unbounded.
    pub max_bytes: Option<String>,
}

impl Default for SifConfig {
    fn default() -> Self {
        SifConfig {
            store_dir: None,
            tmp_dir: None,
            compression: "gzip".into(),
            cluster_path: None,
            link_ttl_seconds: 900,
            max_bytes: None,
            writer: "native".into(),
            helper: None,
        }
    }
}

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

fn default_service() -> String {
    "shisa-registry".into()
}
fn default_issuer() -> String {
    "shisa".into()
}
fn default_token_ttl() -> u64 {
    300
}
fn default_sync() -> u64 {
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

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address to listen on, e.g. `127.0.0.1:8470`.
    pub listen: String,
    /// How Mattermost reaches shisa (used by `shisa chat` and in links).
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Seconds allowed for in-flight work to finish on shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
}

fn default_grace() -> u64 {
    20
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Created if missing; holds `shisa.db` and, for the static directory, `home/USER`.
    pub data_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MattermostRaw {
    /// One token per registered slash command; add the new one before removing the old to rotate.
    pub tokens: Vec<SecretSource>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub bot_token: Option<SecretSource>,
    pub linking: Linking,
    /// Who users should ask when something needs a human, shown in replies.
    #[serde(default = "default_contact")]
    pub contact: String,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_contact() -> String {
    "the shisa admins".into()
}
fn default_timeout() -> u64 {
    10
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Linking {
    /// Production: ask Mattermost for the user, link only LDAP-authenticated ones.
    MattermostLdap,
    /// Demo and tests: trust the Mattermost user name.
    Username,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryRaw {
    pub source: DirectorySource,
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    #[serde(default)]
    pub ldap: Option<LdapRaw>,
    #[serde(default = "default_cache")]
    pub cache_seconds: u64,
}

fn default_cache() -> u64 {
    60
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectorySource {
    Static,
    Ldap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapRaw {
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// Accept any certificate (test directories only).
    #[serde(default)]
    pub tls_insecure: bool,
    pub bind_dn: String,
    pub bind_password: SecretSource,
    pub base_dn: String,
    /// `{uid}` is replaced by the escaped account name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    #[serde(default)]
    pub group_base_dn: Option<String>,
    /// `{uid}` is the escaped account name, `{dn}` the escaped user DN.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    #[serde(default)]
    pub attributes: LdapAttributes,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_user_filter() -> String {
    "(&(objectClass=posixAccount)(uid={uid}))".into()
}
fn default_group_filter() -> String {
    "(&(objectClass=posixGroup)(memberUid={uid}))".into()
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct LdapAttributes {
    pub uid: String,
    pub uid_number: String,
    pub gid_number: String,
    pub home: String,
    pub mail: String,
    pub display_name: String,
    pub group_name: String,
}

impl Default for LdapAttributes {
    fn default() -> Self {
        LdapAttributes {
            uid: "uid".into(),
            uid_number: "uidNumber".into(),
            gid_number: "gidNumber".into(),
            home: "homeDirectory".into(),
            mail: "mail".into(),
            display_name: "cn".into(),
            group_name: "cn".into(),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Roles {
    pub admin_groups: Vec<String>,
    pub instructor_groups: Vec<String>,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            admin_groups: vec!["shisa-admins".into()],
            instructor_groups: vec!["instructors".into()],
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Blade {
    pub name: String,
    /// The blade's libpod socket: a Unix socket path (`/run/podman/podman.sock`).
    /// For a blade reached over SSH, the local end of the tunnel (default: DATA_DIR/tunnels/NAME.sock).
    #[serde(default)]
    pub podman_socket: PathBuf,
    /// Reach the blade's socket through SSH instead of locally.
    #[serde(default)]
    pub ssh: Option<SshBlade>,
    /// Capacity for placement: CPUs and memory shisa may hand out on this blade (unset: no limit).
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory: Option<String>,
    /// Addresses for `run --ip`, on a Podman network of their own.
    #[serde(default)]
    pub ip_pool: Option<IpPool>,
    /// The host name users are told to connect to for published ports.
    pub address: String,
    /// Host ports leased to containers, inclusive. The default sits above the
    /// kernel's ephemeral range (32768-60999), so the blade's own outgoing
    /// connections never take a leased port.
    #[serde(default = "default_port_range")]
    pub port_range: [u16; 2],
    /// GPU indexes this blade has, as CDI device names `GPU_KIND=INDEX`.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// The CDI kind of the GPUs (`nvidia.com/gpu` with NVIDIA's toolkit).
    #[serde(default = "default_gpu_kind")]
    pub gpu_kind: String,
    /// How many containers may share one GPU; 1 means exclusive (the default).
    #[serde(default = "one")]
    pub gpu_share: u32,
    /// This blade's Slurm node name, when Slurm owns its GPUs (default: the blade's name).
    #[serde(default)]
    pub slurm_node: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SshBlade {
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    /// The private key; on the blade, `authorized_keys` should restrict it to
    /// forwarding: `restrict,port-forwarding,command="/bin/false" ssh-ed25519 ...`.
    pub key_file: PathBuf,
    /// Known host keys (host keys are always checked).
    pub known_hosts: PathBuf,
    #[serde(default = "default_remote_socket")]
    pub remote_socket: String,
}

fn default_ssh_port() -> u16 {
    22
}
fn default_remote_socket() -> String {
    "/run/podman/podman.sock".into()
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    /// The Podman network shisa creates for the pool.
    pub network: String,
    /// Any prefix length, e.g. `10.90.0.0/24`; the first address is the gateway.
    pub subnet: String,
}

impl IpPool {
    /// (network address, prefix length) if the subnet parses.
    pub fn parse(&self) -> Option<(std::net::Ipv4Addr, u8)> {
        let (a, p) = self.subnet.split_once('/')?;
        let a: std::net::Ipv4Addr = a.parse().ok()?;
        let p: u8 = p.parse().ok()?;
        if !(8..=30).contains(&p) {
            return None;
        }
        let mask = u32::MAX << (32 - p);
        (u32::from(a) & !mask == 0).then_some((a, p))
    }

    /// Addresses containers may get: all hosts but the gateway (the first).
    pub fn hosts(&self) -> Vec<std::net::Ipv4Addr> {
        let Some((a, p)) = self.parse() else {
            return Vec::new();
        };
        let base = u32::from(a);
        let size = 1u32 << (32 - p);
        (2..size - 1)
            .map(|i| std::net::Ipv4Addr::from(base + i))
            .collect()
    }

    pub fn gateway(&self) -> Option<std::net::Ipv4Addr> {
        self.parse()
            .map(|(a, _)| std::net::Ipv4Addr::from(u32::from(a) + 1))
    }
}

/// Keeping the database and the blades in agreement.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Reconcile {
    /// Seconds between reconciliations (also run at start).
    pub interval_seconds: u64,
    /// Seconds between health checks of each blade.
    pub health_seconds: u64,
    /// Remove containers labelled as shisa's that the database does not know
    /// (false: only report them in the log and /metrics).
    pub remove_unknown: bool,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            interval_seconds: 60,
            health_seconds: 10,
            remove_unknown: false,
        }
    }
}

fn default_port_range() -> [u16; 2] {
    [61000, 64999]
}
fn default_gpu_kind() -> String {
    "nvidia.com/gpu".into()
}
fn one() -> u32 {
    1
}

/// How containers are made: applies to every blade.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Containers {
    /// Home directories must lie directly under this directory to be mounted
    /// (default: DATA_DIR/home, where the static directory puts them).
    pub home_base: Option<PathBuf>,
    /// Processes per container.
    pub pids_limit: i64,
    /// Seconds a container gets to stop before it is killed.
    pub stop_timeout: u64,
    /// Seconds an `exec` may run before it is cut off.
    pub exec_timeout: u64,
    /// Seconds between sweeps for GPU containers past their lifetime.
    pub sweep_seconds: u64,
}

impl Default for Containers {
    fn default() -> Self {
        Containers {
            home_base: None,
            pids_limit: 1024,
            stop_timeout: 10,
            exec_timeout: 20,
            sweep_seconds: 30,
        }
    }
}

/// Which images from outside the department may be run.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    /// Full references (`docker.io/library/python:3.12`), or prefixes ending
    /// in `*` (`docker.io/pytorch/*`). Nothing else external runs.
    pub allow: Vec<String>,
}

/// Limits for one role: per request, and totals per user.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Given when the request names none.
    pub default_cpus: f64,
    pub default_memory: String,
    /// Most one container may ask for.
    pub max_cpus: f64,
    pub max_memory: String,
    pub max_gpus: u32,
    pub max_ports: u32,
    /// Most one user may hold at once (containers and ports: existing; CPUs, memory, GPUs: running).
    pub total_containers: u32,
    pub total_cpus: f64,
    pub total_memory: String,
    pub total_gpus: u32,
    pub total_ports: u32,
    /// Registry storage per user (their images' layers, counted once per digest).
    pub registry_bytes: String,
    /// A GPU container is stopped after this long (`1d`, `12h`).
    pub gpu_lifetime: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_cpus: 1.0,
            default_memory: "2G".into(),
            max_cpus: 4.0,
            max_memory: "16G".into(),
            max_gpus: 1,
            max_ports: 5,
            total_containers: 5,
            total_cpus: 8.0,
            total_memory: "32G".into(),
            total_gpus: 1,
            total_ports: 10,
            registry_bytes: "20G".into(),
            gpu_lifetime: "1d".into(),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub image: String,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    pub workers: usize,
    pub max_attempts: u32,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            workers: 2,
            max_attempts: 5,
        }
    }
}

/// The validated configuration the service runs with.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: Server,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub mattermost: Mattermost,
    pub directory: Directory,
    pub roles: Roles,
    pub blades: Vec<Blade>,
    pub templates: BTreeMap<String, Template>,
    pub queue: Queue,
    pub containers: Containers,
    pub home_base: PathBuf,
    pub images: Images,
    pub limits: BTreeMap<String, Limits>,
    pub reconcile: Reconcile,
    pub registry: Option<Registry>,
    pub sif: SifConfig,
    pub gitlab: Option<Gitlab>,
    pub slurm: Option<SlurmConfig>,
    /// Things that are allowed but worth an admin's attention.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct Mattermost {
    pub tokens: Vec<Secret>,
    pub url: Option<String>,
    pub bot_token: Option<Secret>,
    pub linking: Linking,
    pub contact: String,
    pub timeout_seconds: u64,
}

#[derive(Debug)]
pub enum Directory {
    Static {
        users_file: PathBuf,
        cache_seconds: u64,
    },
    Ldap {
        ldap: Box<Ldap>,
        cache_seconds: u64,
    },
}

#[derive(Debug)]
pub struct Ldap {
    pub url: String,
    pub starttls: bool,
    pub tls_insecure: bool,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub base_dn: String,
    pub user_filter: String,
    pub group_base_dn: String,
    pub group_filter: String,
    pub attributes: LdapAttributes,
    pub timeout_seconds: u64,
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
        let cache_seconds = raw.directory.cache_seconds;
        let directory = match raw.directory.source {
            DirectorySource::Static => {
                let f = raw.directory.users_file.as_ref().ok_or((
                    "directory.users_file".to_string(),
                    "`source = \"static\"` needs `users_file`, the demo users file (see deploy/demo-users.toml)".to_string(),
                ))?;
                let users_file = base.join(f);
                users_file::UsersFile::load(&users_file)
                    .map_err(|r| ("directory.users_file".to_string(), r))?;
                Directory::Static {
                    users_file,
                    cache_seconds,
                }
            }
            DirectorySource::Ldap => {
                let l = raw.directory.ldap.as_ref().ok_or((
                    "directory.ldap".to_string(),
                    "`source = \"ldap\"` needs a `[directory.ldap]` table".to_string(),
                ))?;
                if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
                    return Err((
                        "directory.ldap.url".into(),
                        format!("`{}` must start with ldap:// or ldaps://", l.url),
                    ));
                }
                if l.url.starts_with("ldap://") && !l.starttls && !is_loopback_url(&l.url) {
                    warnings.push("directory.ldap: plain ldap:// to a remote server sends passwords in clear; use ldaps:// or starttls = true".into());
                }
                for (k, f) in [
                    ("user_filter", &l.user_filter),
                    ("group_filter", &l.group_filter),
                ] {
                    if !f.contains("{uid}") && !f.contains("{dn}") {
                        return Err((
                            format!("directory.ldap.{k}"),
                            "the filter must contain `{uid}`".into(),
                        ));
                    }
                    if !f.starts_with('(') || !f.ends_with(')') {
                        return Err((
                            format!("directory.ldap.{k}"),
                            "an LDAP filter must be enclosed in parentheses".into(),
                        ));
                    }
                }
                let bind_password = l
                    .bind_password
                    .resolve(base)
                    .map_err(|r| ("directory.ldap.bind_password".to_string(), r))?;
                Directory::Ldap {
                    ldap: Box::new(Ldap {
                        url: l.url.clone(),
                        starttls: l.starttls,
                        tls_insecure: l.tls_insecure,
                        bind_dn: l.bind_dn.clone(),
                        bind_password,
                        base_dn: l.base_dn.clone(),
                        user_filter: l.user_filter.clone(),
                        group_base_dn: l.group_base_dn.clone().unwrap_or_else(|| l.base_dn.clone()),
                        group_filter: l.group_filter.clone(),
                        attributes: l.attributes.clone(),
                        timeout_seconds: l.timeout_seconds,
                    }),
                    cache_seconds,
                }
            }
        };
        if raw.blades.is_empty() {
            return Err((
                "blades".into(),
                "configure at least one `[[blades]]`".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, b) in raw.blades.iter().enumerate() {
            if !crate::values::valid_name(&b.name) {
                return Err((
                    format!("blades[{i}].name"),
                    format!(
                        "`{}`: blade names are lowercase letters, digits and `-`",
                        b.name
                    ),
                ));
            }
            if !names.insert(b.name.clone()) {
                return Err((
                    format!("blades[{i}].name"),
                    format!("`{}` is used by two blades", b.name),
                ));
            }
            let s = b.podman_socket.to_string_lossy();
            if b.ssh.is_none() && s.is_empty() {
                return Err((
                    format!("blades[{i}]"),
                    "give `podman_socket` (a local Unix socket) or an `ssh` table".into(),
                ));
            }
            if let Some(p) = &b.ip_pool {
                if p.parse().is_none() {
                    return Err((
                        format!("blades[{i}].ip_pool.subnet"),
                        format!(
                            "`{}` is not an IPv4 network like `10.90.0.0/24` (prefix 8 to 30)",
                            p.subnet
                        ),
                    ));
                }
                if !crate::values::valid_name(&p.network) {
                    return Err((
                        format!("blades[{i}].ip_pool.network"),
                        "network names are lowercase letters, digits and `-`".into(),
                    ));
                }
            }
            if let Some(m) = &b.memory {
                crate::values::parse_size(m).map_err(|_| {
                    (
                        format!("blades[{i}].memory"),
                        format!("`{m}` is not a size like `256G`"),
                    )
                })?;
            }
            if s.starts_with("tcp:") || s.contains("://") && !s.starts_with("unix://") {
                return Err((
                    format!("blades[{i}].podman_socket"),
                    "a TCP Podman endpoint has no authentication; give the path of a Unix socket"
                        .into(),
                ));
            }
        }
        let blades: Vec<Blade> = raw
            .blades
            .into_iter()
            .map(|mut b| {
                let s = b.podman_socket.to_string_lossy().to_string();
                if let Some(p) = s.strip_prefix("unix://") {
                    b.podman_socket = PathBuf::from(p);
                }
                b.podman_socket = base.join(&b.podman_socket);
                if b.ssh.is_some() && s.is_empty() {
                    b.podman_socket = base
                        .join(&raw.storage.data_dir)
                        .join("tunnels")
                        .join(format!("{}.sock", b.name));
                }
                if let Some(ssh) = &mut b.ssh {
                    ssh.key_file = base.join(&ssh.key_file);
                    ssh.known_hosts = base.join(&ssh.known_hosts);
                }
                b
            })
            .collect();
        for (name, t) in &raw.templates {
            let k = format!("templates.{name}");
            if !crate::values::valid_name(name) {
                return Err((
                    k,
                    "template names are lowercase letters, digits and `-`".into(),
                ));
            }
            if let Some(m) = &t.memory {
                crate::values::parse_size(m).map_err(|_| {
                    (
                        format!("{k}.memory"),
                        format!("`{m}` is not a size like `8G`"),
                    )
                })?;
            }
            if let Some(d) = &t.time {
                crate::values::parse_duration(d).map_err(|_| {
                    (
                        format!("{k}.time"),
                        format!("`{d}` is not a duration like `2h`"),
                    )
                })?;
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
                ("default_memory", &l.default_memory),
                ("max_memory", &l.max_memory),
                ("total_memory", &l.total_memory),
                ("registry_bytes", &l.registry_bytes),
            ] {
                crate::values::parse_size(v)
                    .map_err(|_| (format!("{k}.{f}"), format!("`{v}` is not a size like `8G`")))?;
            }
            crate::values::parse_duration(&l.gpu_lifetime).map_err(|_| {
                (
                    format!("{k}.gpu_lifetime"),
                    format!("`{}` is not a duration like `1d`", l.gpu_lifetime),
                )
            })?;
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
        let registry = match &raw.registry {
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
                    insecure: r.insecure,
                })
            }
        };
        let gitlab = match &raw.gitlab {
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
                        "give at least one webhook token or signing key, or anyone could post events".into(),
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
                if let Some(u) = &g.hook_url {
                    check_url("gitlab.hook_url", u)?;
                }
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
                    link_by: g.link_by.clone(),
                    timeout_seconds: g.timeout_seconds.clamp(1, 120),
                    convert_sif: g.convert_sif,
                    runner_image: g.runner_image.clone(),
                    runner_uid_base: g.runner_uid_base,
                    runner_key_file: g
                        .runner_key_file
                        .as_ref()
                        .map(|p| base.join(p))
                        .unwrap_or_else(|| {
                            base.join(&raw.storage.data_dir).join("runner-token.key")
                        }),
                    runner_reconcile_seconds: g.runner_reconcile_seconds.clamp(1, 3600),
                })
            }
        };
        if let Some(sl) = &raw.slurm {
            if sl.launcher.is_empty() {
                return Err((
                    "slurm.launcher".into(),
                    "name the program that runs a command in a SIF, e.g. [\"apptainer\", \"exec\"]"
                        .into(),
                ));
            }
            crate::values::parse_duration(&sl.default_time).map_err(|_| {
                (
                    "slurm.default_time".to_string(),
                    format!("`{}` is not a time like `1h`", sl.default_time),
                )
            })?;
            crate::values::parse_size(&sl.default_memory).map_err(|_| {
                (
                    "slurm.default_memory".to_string(),
                    format!("`{}` is not a size like `2G`", sl.default_memory),
                )
            })?;
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
        if let Some(m) = &raw.sif.max_bytes {
            crate::values::parse_size(m).map_err(|_| {
                (
                    "sif.max_bytes".to_string(),
                    format!("`{m}` is not a size like `500G`"),
                )
            })?;
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
        if raw.queue.workers == 0 || raw.queue.workers > 64 {
            return Err(("queue.workers".into(), "must be from 1 to 64".into()));
        }
        if raw.queue.max_attempts == 0 {
            return Err(("queue.max_attempts".into(), "must be at least 1".into()));
        }
        Ok(Config {
            path: path.to_path_buf(),
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

/// Which role a person has, from the groups configured in `[roles]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Instructor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }

    pub fn from_groups(groups: &[String], roles: &Roles) -> Role {
        if groups.iter().any(|g| roles.admin_groups.contains(g)) {
            Role::Admin
        } else if groups.iter().any(|g| roles.instructor_groups.contains(g)) {
            Role::Instructor
        } else {
            Role::Student
        }
    }
}
