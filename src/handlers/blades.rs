//! `/container blades` (capacity and health) and `/container drain BLADE` (admins).

use std::sync::Arc;

use crate::app::App;
use crate::containers::{fmt_cpus, fmt_size};
use crate::identity::Account;
use crate::messages::{render, Lang, UserError};

pub async fn blades(app: &Arc<App>) -> anyhow::Result<String> {
    let drained = app.store.drained().await?;
    let mut out = String::from("| blade | health | containers | CPUs | memory | GPUs in use | ports in use | IPs in use |\n|---|---|---|---|---|---|---|---|\n");
    for (b, _) in &app.blades {
        let h = app.health.get(&b.name);
        let l = app.store.blade_load(&b.name).await?;
        let health = match (h.up, drained.contains(&b.name)) {
            (true, false) => format!("up (Podman {})", h.version),
            (true, true) => "up, **drained**".to_string(),
            (false, d) => format!("**down**{}", if d { ", drained" } else { "" }),
        };
        let cpus = match b.cpus {
            Some(c) => format!("{} / {}", fmt_cpus(l.cpus_milli as u32), c),
            None => fmt_cpus(l.cpus_milli as u32),
        };
        let mem = match &b.memory {
            Some(m) => format!("{} / {m}", fmt_size(l.memory)),
            None => fmt_size(l.memory),
        };
        let gpus = format!("{} / {}", l.gpu_leases, b.gpus.len() as u32 * b.gpu_share);
        let ports = format!("{} / {}", l.ports, b.port_range[1] - b.port_range[0] + 1);
        let ips = match &b.ip_pool {
            Some(p) => format!("{} / {}", l.ips, p.hosts().len()),
            None => "-".into(),
        };
        out.push_str(&format!(
            "| `{}` | {health} | {} running of {} | {cpus} | {mem} | {gpus} | {ports} | {ips} |\n",
            b.name, l.running, l.containers
        ));
    }
    Ok(out)
}

pub async fn drain(
    app: &Arc<App>,
    caller: &Account,
    name: &str,
    undo: bool,
) -> anyhow::Result<Result<String, UserError>> {
    use crate::access::{authorize, Action, Resource};
    if !authorize(
        caller,
        Action::Administer,
        &Resource::Fleet,
        &app.cfg.courses,
    )
    .allowed()
    {
        return Ok(Err(UserError::new("command.forbidden")
            .arg("command", "/container")
            .arg("sub", "drain")
            .arg("role", "admin")));
    }
    if app.cfg.blade(name).is_none() {
        let all = app
            .blades
            .iter()
            .map(|(b, _)| format!("`{}`", b.name))
            .collect::<Vec<_>>()
            .join(", ");
        return Ok(Err(UserError::new("blades.unknown")
            .arg("blade", name)
            .arg("blades", all)));
    }
    app.store.set_drained(name, &caller.uid, !undo).await?;
    if undo {
        crate::work::containers::promote_waiting(app, name).await;
    }
    Ok(Ok(render(
        Lang::En,
        if undo {
            "blades.undrained"
        } else {
            "blades.drained"
        },
        &[("blade", name.to_string())],
    )))
}

/// Gauges per blade for /metrics: the numbers that would have warned of a
/// /24 running dry.
pub async fn gauges(app: &Arc<App>) -> Vec<(&'static str, &'static str, Vec<(String, f64)>)> {
    let mut up = Vec::new();
    let mut containers = Vec::new();
    let mut ports = Vec::new();
    let mut ips = Vec::new();
    let mut gpus = Vec::new();
    for (b, _) in &app.blades {
        let n = crate::metrics::esc(&b.name);
        up.push((
            format!("blade=\"{n}\""),
            if app.health.get(&b.name).up { 1.0 } else { 0.0 },
        ));
        let Ok(l) = app.store.blade_load(&b.name).await else {
            continue;
        };
        if let Ok(by) = app.store.container_states(&b.name).await {
            for (state, count) in by {
                containers.push((format!("blade=\"{n}\",state=\"{state}\""), count as f64));
            }
        }
        let total_ports = (b.port_range[1] - b.port_range[0] + 1) as f64;
        ports.push((format!("blade=\"{n}\",use=\"used\""), l.ports as f64));
        ports.push((
            format!("blade=\"{n}\",use=\"free\""),
            total_ports - l.ports as f64,
        ));
        if let Some(p) = &b.ip_pool {
            ips.push((format!("blade=\"{n}\",use=\"used\""), l.ips as f64));
            ips.push((
                format!("blade=\"{n}\",use=\"free\""),
                (p.hosts().len() as f64) - l.ips as f64,
            ));
        }
        let total_gpus = (b.gpus.len() as u32 * b.gpu_share) as f64;
        gpus.push((format!("blade=\"{n}\",use=\"used\""), l.gpu_leases as f64));
        gpus.push((
            format!("blade=\"{n}\",use=\"free\""),
            total_gpus - l.gpu_leases as f64,
        ));
    }
    vec![
        ("blade_up", "1 if the blade's Podman API answers.", up),
        ("containers", "Containers by blade and state.", containers),
        ("ports", "Host ports leased and free, by blade.", ports),
        ("ips", "IP pool addresses leased and free, by blade.", ips),
        ("gpus", "GPU slots leased and free, by blade.", gpus),
    ]
}
