//! What a blade says a container uses, for reclaiming idle ones: CPU time from Podman's
//! stats, GPU utilisation from `nvidia-smi` where the blade has GPUs. Behind a trait so
//! tests can inject figures (no GPU here, and a real container's CPU use is not exact).

use async_trait::async_trait;

use crate::config::Blade;
use crate::podman::Podman;

/// One sample of a container's use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// CPU time used since it started, in nanoseconds (`None`: not running, or unknown).
    pub cpu_nanos: Option<u64>,
    /// Whether any of its GPUs is busy now (`None`: no GPUs, or the blade does not say).
    pub gpu_busy: Option<bool>,
}

#[async_trait]
pub trait Usage: Send + Sync {
    /// `gpus`: the container's GPU devices (CDI names, `nvidia.com/gpu=0`).
    async fn sample(
        &self,
        blade: &Blade,
        podman: &dyn Podman,
        podman_id: &str,
        gpus: &[String],
    ) -> anyhow::Result<Sample>;
}

/// Podman's stats, and `nvidia-smi` on a blade that is this machine (a blade reached over
/// SSH reports no GPU figures: it is then judged by its CPU alone).
pub struct BladeUsage;

#[async_trait]
impl Usage for BladeUsage {
    async fn sample(
        &self,
        blade: &Blade,
        podman: &dyn Podman,
        podman_id: &str,
        gpus: &[String],
    ) -> anyhow::Result<Sample> {
        let cpu_nanos = podman.cpu_nanos(podman_id).await?;
        let gpu_busy = if gpus.is_empty() || blade.ssh.is_some() {
            None
        } else {
            nvidia_smi_busy(gpus).await
        };
        Ok(Sample {
            cpu_nanos,
            gpu_busy,
        })
    }
}

/// `nvidia-smi --query-gpu=index,utilization.gpu`: is any of these devices above 0 %?
/// `None` when nvidia-smi is missing or says nothing readable.
async fn nvidia_smi_busy(gpus: &[String]) -> Option<bool> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,utilization.gpu",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    busy_from_csv(&String::from_utf8_lossy(&out.stdout), gpus)
}

/// The parsing half of [`nvidia_smi_busy`], kept pure for its test.
pub fn busy_from_csv(csv: &str, gpus: &[String]) -> Option<bool> {
    let wanted: Vec<&str> = gpus
        .iter()
        .map(|g| g.rsplit('=').next().unwrap_or(g))
        .collect();
    let mut seen = false;
    for line in csv.lines() {
        let mut f = line.split(',').map(str::trim);
        let (Some(idx), Some(util)) = (f.next(), f.next()) else {
            continue;
        };
        if !wanted.contains(&idx) {
            continue;
        }
        let Ok(u) = util.parse::<f64>() else {
            continue;
        };
        seen = true;
        if u > 0.0 {
            return Some(true);
        }
    }
    seen.then_some(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nvidia_smi_lines() {
        let csv = "0, 0\n1, 37\n2, [N/A]\n";
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::busy_from_csv(csv, &g(&["nvidia.com/gpu=0"])),
            Some(false)
        );
        assert_eq!(
            super::busy_from_csv(csv, &g(&["nvidia.com/gpu=0", "nvidia.com/gpu=1"])),
            Some(true)
        );
        assert_eq!(super::busy_from_csv(csv, &g(&["nvidia.com/gpu=2"])), None);
        assert_eq!(super::busy_from_csv("garbage", &g(&["0"])), None);
    }
}
