//! `[[blades]]`: the blade servers, their Podman, SSH, IP pools and capacity.

use serde::Deserialize;

use super::*;

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
    pub memory: Option<Size>,
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

pub(super) fn default_ssh_port() -> u16 {
    22
}

pub(super) fn default_remote_socket() -> String {
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

pub(super) fn default_port_range() -> [u16; 2] {
    [61000, 64999]
}

pub(super) fn default_gpu_kind() -> String {
    "nvidia.com/gpu".into()
}

pub(super) fn one() -> u32 {
    1
}

/// `[[blades]]`, checked; paths made absolute (a remote blade's socket is its tunnel's).
pub(super) fn checked(
    raw: Vec<Blade>,
    base: &Path,
    data_dir: &Path,
) -> Result<Vec<Blade>, (String, String)> {
    if raw.is_empty() {
        return Err((
            "blades".into(),
            "configure at least one `[[blades]]`".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, b) in raw.iter().enumerate() {
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
        if s.starts_with("tcp:") || s.contains("://") && !s.starts_with("unix://") {
            return Err((
                format!("blades[{i}].podman_socket"),
                "a TCP Podman endpoint has no authentication; give the path of a Unix socket"
                    .into(),
            ));
        }
    }
    Ok(raw
        .into_iter()
        .map(|mut b| {
            let s = b.podman_socket.to_string_lossy().to_string();
            if let Some(p) = s.strip_prefix("unix://") {
                b.podman_socket = PathBuf::from(p);
            }
            b.podman_socket = base.join(&b.podman_socket);
            if b.ssh.is_some() && s.is_empty() {
                b.podman_socket = base
                    .join(data_dir)
                    .join("tunnels")
                    .join(format!("{}.sock", b.name));
            }
            if let Some(ssh) = &mut b.ssh {
                ssh.key_file = base.join(&ssh.key_file);
                ssh.known_hosts = base.join(&ssh.known_hosts);
            }
            b
        })
        .collect())
}
