//! `[slurm]`: batch jobs on the cluster.

use serde::Deserialize;

use super::*;

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
    pub default_time: Seconds,
    #[serde(default = "default_job_memory")]
    pub default_memory: Size,
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

pub(super) fn default_launcher() -> Vec<String> {
    vec!["apptainer".into(), "exec".into()]
}

pub(super) fn default_gpu_flag() -> String {
    "--nv".into()
}

pub(super) fn default_jobs_dir() -> String {
    "shisa-jobs".into()
}

pub(super) fn default_poll() -> u64 {
    10
}

pub(super) fn default_job_time() -> Seconds {
    units::seconds("1h")
}

pub(super) fn default_job_memory() -> Size {
    units::size("2G")
}

pub(super) fn default_job_cpus() -> u32 {
    1
}
