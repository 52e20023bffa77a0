//! `[sif]`: Singularity images and their store.

use serde::Deserialize;

use super::*;

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
    /// never one a pending or running job holds. Unset: half of its file system.
    pub max_bytes: Option<Size>,
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
