//! `[server]` and `[storage]`: where shisa listens and keeps its data.

use serde::Deserialize;

use super::*;

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

pub(super) fn default_grace() -> u64 {
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
