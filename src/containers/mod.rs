//! Containers: names, what a run request becomes, limits, and the libpod
//! spec. Nothing here talks to Podman or chat; handlers do.

pub mod reclaim;

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Blade, Containers, Limits};
use crate::identity::Account;
use crate::messages::UserError;
use crate::store::containers::{ContainerRow, Holdings, PortLease};

/// The label that marks a container as shisa's.
pub const MANAGED_LABEL: &str = "shisa.managed=true";

/// The label naming the shisa installation that made a container (`App::instance`).
pub const INSTANCE_LABEL: &str = "shisa.instance";

/// Whether a labelled container is another installation's (one without the label
/// predates instance labels and counts as ours).
pub fn is_other_instance(
    labels: Option<&std::collections::HashMap<String, String>>,
    instance: &str,
) -> bool {
    labels
        .and_then(|m| m.get(INSTANCE_LABEL))
        .is_some_and(|i| i != instance)
}

/// Podman's name for a container: owner and name joined by `_`, which names
/// cannot contain, so two owners' names never collide. Ownership is never
/// read back from this; the database and labels say who owns what.
pub fn podman_name(owner: &str, name: &str) -> String {
    format!("{owner}_{name}")
}

/// A generated name: the image's last component and a short random suffix.
pub fn generated_name(image: &str) -> String {
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or("c")
        .split([':', '@'])
        .next()
        .unwrap_or("c");
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let base = base.trim_matches('-');
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..4];
    if base.is_empty() {
        format!("c-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

pub fn fmt_size(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    if bytes >= G && ((bytes % G) * 10).is_multiple_of(G) || bytes >= 10 * G {
        format!("{:.1}G", bytes as f64 / G as f64).replace(".0G", "G")
    } else if bytes >= M || bytes == 0 {
        format!("{}M", bytes.div_ceil(M))
    } else {
        format!("{}K", bytes.div_ceil(1024))
    }
}

pub fn fmt_cpus(milli: u32) -> String {
    let s = format!("{:.3}", milli as f64 / 1000.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A refusal over a per-user total, listing what the user holds.
fn over_total(h: &Holdings, what: &str, max: String) -> UserError {
    let holding = format!(
        "{} containers, {} CPUs, {} memory, {} GPUs and {} ports",
        h.containers,
        fmt_cpus(h.cpus_milli),
        fmt_size(h.memory),
        h.gpus,
        h.ports
    );
    UserError::new("limits.total")
        .arg("what", what)
        .arg("max", max)
        .arg("holding", holding)
}

/// The per-user totals of what runs: at `run` (with the container and port counts in
/// `check_limits`) and when a stopped container starts again (it already counts as a
/// container and for its ports).
pub fn check_running_totals(
    l: &Limits,
    h: &Holdings,
    cpus_milli: u32,
    memory: u64,
    gpus: u32,
) -> Result<(), UserError> {
    let total_cpus = (l.total_cpus * 1000.0) as u32;
    if h.cpus_milli + cpus_milli > total_cpus {
        return Err(over_total(h, "CPUs", fmt_cpus(total_cpus)));
    }
    if h.memory + memory > l.total_memory.bytes {
        return Err(over_total(h, "memory", l.total_memory.to_string()));
    }
    if h.gpus + gpus > l.total_gpus {
        return Err(over_total(h, "GPUs", l.total_gpus.to_string()));
    }
    Ok(())
}

/// Per-request limits and per-user totals. A refusal lists what the user holds.
pub fn check_limits(
    l: &Limits,
    h: &Holdings,
    cpus_milli: u32,
    memory: u64,
    gpus: u32,
    ports: u32,
) -> Result<(), UserError> {
    let max_cpus = (l.max_cpus * 1000.0) as u32;
    let over = |what: &str, asked: String, max: String| {
        UserError::new("limits.request")
            .arg("what", what)
            .arg("asked", asked)
            .arg("max", max)
    };
    if cpus_milli > max_cpus {
        return Err(over("CPUs", fmt_cpus(cpus_milli), fmt_cpus(max_cpus)));
    }
    if memory > l.max_memory.bytes {
        return Err(over("memory", fmt_size(memory), l.max_memory.to_string()));
    }
    if gpus > l.max_gpus {
        return Err(over("GPUs", gpus.to_string(), l.max_gpus.to_string()));
    }
    if ports > l.max_ports {
        return Err(over(
            "published ports",
            ports.to_string(),
            l.max_ports.to_string(),
        ));
    }
    if h.containers + 1 > l.total_containers {
        return Err(over_total(h, "containers", l.total_containers.to_string()));
    }
    check_running_totals(l, h, cpus_milli, memory, gpus)?;
    if h.ports + ports > l.total_ports {
        return Err(over_total(h, "published ports", l.total_ports.to_string()));
    }
    Ok(())
}

/// The owner's home may be mounted only if it is a real directory directly
/// under the configured base, owned by the owner's uid (symlinks are not followed).
pub fn check_home(account: &Account, base: &Path, contact: &str) -> Result<(), UserError> {
    use std::os::unix::fs::MetadataExt;
    let home = &account.home;
    let bad = || {
        UserError::new("home.unusable")
            .arg("home", home.display().to_string())
            .arg("contact", contact)
    };
    if !home.is_absolute()
        || home.parent() != Some(base)
        || home
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad());
    }
    let m = std::fs::symlink_metadata(home).map_err(|_| bad())?;
    if !m.file_type().is_dir() || m.uid() != account.uid_number {
        return Err(bad());
    }
    Ok(())
}

/// The libpod SpecGenerator for a container (shared/docs/protocols.md §6.2).
/// The process is the owner's uid:gid with no capabilities and
/// no-new-privileges; the home is bind-mounted nosuid,nodev as the working
/// directory; low ports are allowed inside the container's own network namespace.
pub fn spec(
    c: &ContainerRow,
    owner: &Account,
    cfg: &Containers,
    ports: &[PortLease],
    devices: &[String],
    place: &Where<'_>,
) -> serde_json::Value {
    let (blade, ip, instance) = (place.blade, place.ip, place.instance);
    let home = owner.home.display().to_string();
    let mut env: BTreeMap<String, String> = c.env.clone();
    env.insert("HOME".into(), home.clone());
    env.insert("USER".into(), owner.uid.clone());
    // The granted GPUs come only as CDI devices. Without this, an image built on CUDA bases
    // (`ENV NVIDIA_VISIBLE_DEVICES=all`) asks the NVIDIA hook for every GPU of the blade, with
    // a grant or without; the spec's env is applied after the image's.
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), "void".into());
    let host_ip = if c.private { "127.0.0.1" } else { "" };
    let portmappings: Vec<_> = ports
        .iter()
        .map(|p| serde_json::json!({"container_port": p.container_port, "host_port": p.port, "host_ip": host_ip, "protocol": p.proto, "range": 1}))
        .collect();
    // The display name goes into /etc/passwd: keep it to characters that cannot break the format.
    let gecos: String = owner
        .display_name
        .chars()
        .filter(|ch| ch.is_alphanumeric() || *ch == ' ' || *ch == '-')
        .take(64)
        .collect();
    let mut resources = serde_json::json!({
        "memory": {"limit": c.memory, "swap": c.memory},
        "cpu": {"quota": (c.cpus_milli as i64) * 100, "period": 100000},
        "pids": {"limit": cfg.pids_limit},
    });
    if c.cpus_milli == 0 {
        resources["cpu"] = serde_json::json!({});
    }
    let mut spec = serde_json::json!({
        "name": c.podman_name,
        "hostname": c.name,
        "image": c.image,
        "labels": {
            "shisa.managed": "true",
            "shisa.owner": c.owner,
            "shisa.name": c.name,
            "shisa.id": c.id.to_string(),
            "shisa.blade": blade.name,
        },
        "env": env,
        "user": format!("{}:{}", owner.uid_number, owner.gid_number),
        "passwd_entry": format!("{}:*:{}:{}:{}:{}:/bin/sh", owner.uid, owner.uid_number, owner.gid_number, gecos, home),
        "work_dir": home,
        "cap_drop": ["ALL"],
        "no_new_privileges": true,
        "privileged": false,
        "mounts": [{"destination": home, "type": "bind", "source": home, "options": ["rbind", "nosuid", "nodev"]}],
        "netns": {"nsmode": "bridge"},
        "portmappings": portmappings,
        "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"},
        "resource_limits": resources,
        "r_limits": [{"type": "nofile", "hard": 4096, "soft": 4096}, {"type": "nproc", "hard": 4096, "soft": 4096}],
        "stop_timeout": cfg.stop_timeout,
        "devices": devices.iter().map(|d| serde_json::json!({"path": d})).collect::<Vec<_>>(),
    });
    if !c.command.is_empty() {
        spec["command"] = serde_json::json!(c.command);
    }
    match (ip, &blade.ip_pool) {
        // The pool's address, and its owner's network for the owner's other containers.
        (Some(ip), Some(pool)) => {
            spec["Networks"] = serde_json::json!({
                pool.network.clone(): {"static_ips": [ip]},
                owner_network(instance, &owner.uid): {},
            });
        }
        // Its owner's own network: other owners' containers cannot reach it directly.
        _ => {
            spec["Networks"] = serde_json::json!({ owner_network(instance, &owner.uid): {} });
        }
    }
    spec
}

/// `8888/tcp -> HOST:PORT`, one per line (the contract in the brief).
pub fn port_lines(ports: &[PortLease], blade: &Blade, private: bool) -> String {
    ports
        .iter()
        .map(|p| {
            if private {
                format!(
                    "{}/{} -> 127.0.0.1:{} (private: `ssh -L {}:127.0.0.1:{} {}`)",
                    p.container_port, p.proto, p.port, p.port, p.port, blade.address
                )
            } else {
                format!(
                    "{}/{} -> {}:{}",
                    p.container_port, p.proto, blade.address, p.port
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a container goes: its blade, its pool address (`--ip`), this installation's id
/// (which names the owner's network there).
pub struct Where<'a> {
    pub blade: &'a Blade,
    pub ip: Option<&'a str>,
    pub instance: &'a str,
}

/// The network of one owner's containers on a blade (per installation, so two sharing a
/// blade never mix their users).
pub fn owner_network(instance: &str, uid: &str) -> String {
    format!("shisa-{instance}-{uid}")
}

/// An image reference as students typed it: without `localhost/`.
pub fn short_image(r: &str) -> String {
    r.strip_prefix("localhost/").unwrap_or(r).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes() {
        assert_eq!(podman_name("alice", "web"), "alice_web");
        let g = generated_name("localhost/alice/my_img:1");
        assert!(crate::values::valid_name(&g), "{g}");
        assert!(g.starts_with("my-img-"));
        assert_eq!(fmt_size(2 << 30), "2G");
        assert_eq!(fmt_size(512 << 20), "512M");
        assert_eq!(fmt_cpus(1500), "1.5");
        assert_eq!(fmt_cpus(2000), "2");
    }

    #[test]
    fn limits_refusals_list_holdings() {
        let l = Limits::default();
        let h = Holdings {
            containers: 5,
            cpus_milli: 2000,
            memory: 4 << 30,
            gpus: 0,
            ports: 2,
        };
        let e = check_limits(&l, &h, 1000, 1 << 30, 0, 1).unwrap_err();
        assert_eq!(e.key, "limits.total");
        assert!(
            e.to_string()
                .contains("5 containers, 2 CPUs, 4G memory, 0 GPUs and 2 ports"),
            "{e}"
        );
        let e = check_limits(&l, &Holdings::default(), 8000, 1 << 30, 0, 0).unwrap_err();
        assert_eq!(e.key, "limits.request");
        assert!(check_limits(&l, &Holdings::default(), 1000, 1 << 30, 1, 2).is_ok());
    }
}
