//! The department's blades: health, drains, placement, SSH tunnels, and
//! reconciliation between the database and what each blade really runs.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::Blade;
use crate::gpus::Allocator;
use crate::messages::UserError;
use crate::podman::Podman;
use crate::store::Store;

#[derive(Debug, Clone, Default)]
pub struct Health {
    pub up: bool,
    pub version: String,
    pub last_error: String,
}

/// Current health of each blade, as seen by the health loop.
#[derive(Default)]
pub struct HealthBoard {
    inner: Mutex<HashMap<String, Health>>,
}

impl HealthBoard {
    pub fn get(&self, blade: &str) -> Health {
        self.inner
            .lock()
            .unwrap()
            .get(blade)
            .cloned()
            .unwrap_or_default()
    }
    pub fn set(&self, blade: &str, h: Health) -> bool {
        let mut m = self.inner.lock().unwrap();
        let was = m.get(blade).map(|x| x.up);
        m.insert(blade.to_string(), h.clone());
        was != Some(h.up)
    }
}

pub struct PlaceRequest<'a> {
    pub image: &'a str,
    pub gpus: u32,
    pub cpus_milli: u32,
    pub memory: u64,
    pub ip: bool,
    /// The image is in the department registry: a blade without it can pull it.
    pub pullable: bool,
}

pub enum Placement {
    /// Start here now.
    Now(Blade),
    /// Queue here for room (GPUs, CPUs or memory).
    Wait(Blade),
}

/// Among healthy, undrained blades that have the image and the room, the
/// least loaded. A local-only image pins the request to the blades that have it.
/// What placement looks at: the blades and their Podman, their health and load, the GPUs.
pub struct Fleet<'a> {
    pub blades: &'a [(Blade, std::sync::Arc<dyn Podman>)],
    pub health: &'a HealthBoard,
    pub store: &'a Store,
    pub allocator: &'a dyn Allocator,
    /// Who to contact when nothing is up (in the reply).
    pub contact: &'a str,
}

pub async fn place(
    fleet: &Fleet<'_>,
    r: &PlaceRequest<'_>,
) -> anyhow::Result<Result<Placement, UserError>> {
    let app = fleet;
    let contact = fleet.contact.to_string();
    let drained = app.store.drained().await?;
    let mut usable = Vec::new();
    let mut down = Vec::new();
    for (b, client) in app.blades {
        if drained.contains(&b.name) {
            continue;
        }
        if !app.health.get(&b.name).up {
            down.push(b.name.clone());
            continue;
        }
        match client.image_exists(r.image).await {
            Ok(true) => usable.push(b.clone()),
            Ok(false) if r.pullable => usable.push(b.clone()),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(blade = %b.name, error = %e, "blade did not answer during placement");
                down.push(b.name.clone());
            }
        }
    }
    if usable.is_empty() {
        if app
            .blades
            .iter()
            .all(|(b, _)| drained.contains(&b.name) || down.contains(&b.name))
        {
            return Ok(Err(UserError::new("blades.none_up").arg("contact", contact)));
        }
        return Ok(Err(UserError::new("image.not_found").arg(
            "image",
            r.image.strip_prefix("localhost/").unwrap_or(r.image),
        )));
    }
    if r.gpus > 0 {
        usable.retain(|b| !b.gpus.is_empty());
        if usable.is_empty() {
            return Ok(Err(UserError::new("container.no_gpus")
                .arg("blade", "any blade that has the image")
                .arg("contact", contact)));
        }
    }
    if r.ip {
        usable.retain(|b| b.ip_pool.is_some());
        if usable.is_empty() {
            return Ok(Err(
                UserError::new("blades.no_ip_pool").arg("contact", contact)
            ));
        }
    }
    // Capacity and load. A blade that is full now, or has runs queued that this one
    // would overtake, is a place to wait; one too small even when empty is none.
    let mut scored = Vec::new();
    let mut full = Vec::new();
    for b in usable {
        let load = app.store.blade_load(&b.name).await?;
        let cap_cpus = b.cpus.map(|c| (c * 1000.0) as u64);
        let cap_mem = b.memory.as_ref().map(|m| m.bytes);
        let gpu_cap = b.gpus.len() as u32 * b.gpu_share.max(1);
        if cap_cpus.is_some_and(|c| r.cpus_milli as u64 > c)
            || cap_mem.is_some_and(|m| r.memory > m)
            || (r.gpus > 0 && r.gpus > gpu_cap)
        {
            continue;
        }
        let queued = load.waiting_other + if r.gpus > 0 { load.waiting_gpu } else { 0 };
        if queued > 0
            || cap_cpus.is_some_and(|c| load.cpus_milli + r.cpus_milli as u64 > c)
            || cap_mem.is_some_and(|m| load.memory + r.memory > m)
        {
            full.push((queued, b));
            continue;
        }
        if r.gpus > 0 && app.allocator.free(&b).await? < r.gpus {
            full.push((load.waiting_gpu, b));
            continue;
        }
        let share = match cap_cpus {
            Some(c) if c > 0 => load.cpus_milli as f64 / c as f64,
            _ => load.running as f64,
        };
        scored.push((share, load.running, b));
    }
    scored.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    if let Some((_, _, b)) = scored.into_iter().next() {
        return Ok(Ok(Placement::Now(b)));
    }
    if !full.is_empty() {
        // The shortest queue; among equals, the blade with the most GPUs, then CPUs.
        full.sort_by(|(qa, a), (qb, b)| {
            qa.cmp(qb)
                .then((b.gpus.len() as u32 * b.gpu_share).cmp(&(a.gpus.len() as u32 * a.gpu_share)))
                .then(b.cpus.unwrap_or(0.0).total_cmp(&a.cpus.unwrap_or(0.0)))
        });
        return Ok(Ok(Placement::Wait(full.remove(0).1)));
    }
    Ok(Err(UserError::new("blades.full").arg("contact", contact)))
}
