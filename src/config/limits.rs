//! `[limits.ROLE]`, `[templates.NAME]`, `[containers]`, `[images]`, `[queue]`, `[reconcile]`,
//! `[reclaim]`.

use serde::Deserialize;

use super::*;

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
    /// Seconds between checks that each course is ready for its next lecture.
    pub course_check_seconds: u64,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            interval_seconds: 60,
            health_seconds: 10,
            remove_unknown: false,
            course_check_seconds: 60,
        }
    }
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
    pub default_memory: Size,
    /// Most one container may ask for.
    pub max_cpus: f64,
    pub max_memory: Size,
    pub max_gpus: u32,
    pub max_ports: u32,
    /// Most one user may hold at once (containers and ports: existing; CPUs, memory, GPUs: running).
    pub total_containers: u32,
    pub total_cpus: f64,
    pub total_memory: Size,
    pub total_gpus: u32,
    pub total_ports: u32,
    /// Registry storage per user (their images' layers, counted once per digest).
    pub registry_bytes: Size,
    /// A GPU container is stopped after this long (`1d`, `12h`).
    pub gpu_lifetime: Seconds,
    /// Slurm partitions besides `[slurm] partition` (the default) that `/job submit
    /// --partition` may name; `"*"`: any. shisa checks this itself, since it submits as root.
    pub job_partitions: Vec<String>,
    /// The longest `--time` a job may ask for.
    pub max_job_time: Seconds,
    /// Jobs one user may have queued or running at once (submissions not yet sent count too).
    pub max_jobs: u32,
    /// How long a personal registry token (`/container token new`) is valid.
    pub registry_token_lifetime: Seconds,
    /// Live personal registry tokens one user may hold.
    pub max_registry_tokens: u32,
    /// A build's repository archive as GitLab sends it, and unpacked.
    pub max_build_archive: Size,
    pub max_build_unpacked: Size,
    /// A stopped container is removed after this long.
    pub remove_stopped_after: Seconds,
    /// A running container is stopped after this long.
    pub max_lifetime: Seconds,
    /// A running container that used no CPU (nor GPU) for this long is stopped.
    pub idle_after: Seconds,
    /// The longest `/container extend` may keep a container from being reclaimed.
    pub max_extend: Seconds,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_cpus: 1.0,
            default_memory: units::size("2G"),
            max_cpus: 4.0,
            max_memory: units::size("16G"),
            max_gpus: 1,
            max_ports: 5,
            total_containers: 5,
            total_cpus: 8.0,
            total_memory: units::size("32G"),
            total_gpus: 1,
            total_ports: 10,
            registry_bytes: units::size("20G"),
            gpu_lifetime: units::seconds("1d"),
            job_partitions: Vec::new(),
            max_job_time: units::seconds("1d"),
            max_jobs: 10,
            registry_token_lifetime: units::seconds("90d"),
            max_registry_tokens: 5,
            max_build_archive: units::size("1G"),
            max_build_unpacked: units::size("4G"),
            remove_stopped_after: units::seconds("7d"),
            max_lifetime: units::seconds("14d"),
            idle_after: units::seconds("1d"),
            max_extend: units::seconds("7d"),
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
    pub memory: Option<Size>,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub time: Option<Seconds>,
    #[serde(default)]
    pub comment: String,
}

/// The durable queue's lanes: each with workers of its own, so a build never holds up a run.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Workers for quick container actions (run, stop, start, rm, exec, info).
    pub quick_workers: usize,
    /// Workers for builds, SIF conversions and GitLab events.
    pub slow_workers: usize,
    /// Workers for Slurm submissions.
    pub slurm_workers: usize,
    /// Container actions running at once on one blade.
    pub per_blade: u32,
    pub max_attempts: u32,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            quick_workers: 4,
            slow_workers: 2,
            slurm_workers: 1,
            per_blade: 2,
            max_attempts: 5,
        }
    }
}

/// Taking back what nobody uses: stale and idle containers, addresses, images, waits.
/// The per-role times are in `[limits.ROLE]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Reclaim {
    /// Seconds between reclaim sweeps (usage samples, warnings, waits that gave up).
    pub check_seconds: u64,
    /// How long before removing a stopped container its owner is warned.
    pub warn_before_remove: Seconds,
    /// How long before stopping a running one (lifetime, idle) its owner is warned.
    pub warn_before_stop: Seconds,
    /// Below this share of one CPU between two samples a container counts as idle.
    pub idle_cpu_percent: f64,
    /// Keep a stopped container's pool address this long (unset: give it back at the stop;
    /// a start leases one again).
    pub release_address_after: Option<Seconds>,
    /// A run waiting for room gives up after this long.
    pub max_wait: Seconds,
    /// An image no container uses and nobody ran on a blade for this long is removed there.
    pub prune_images_after: Seconds,
    /// Seconds between image prunes on each blade.
    pub prune_seconds: u64,
}

impl Default for Reclaim {
    fn default() -> Self {
        Reclaim {
            check_seconds: 60,
            warn_before_remove: units::seconds("24h"),
            warn_before_stop: units::seconds("30m"),
            idle_cpu_percent: 1.0,
            release_address_after: None,
            max_wait: units::seconds("2h"),
            prune_images_after: units::seconds("14d"),
            prune_seconds: 3600,
        }
    }
}
