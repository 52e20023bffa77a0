//! The Podman part of `/container run|stop|start|rm|exec`, done by a worker after the
//! command was checked, recorded and acknowledged; and the GPU wait queue.

use std::sync::Arc;
use std::time::Duration;

use crate::access::{authorize, Action, Resource, ResourceRef};
use crate::app::App;
use crate::config::Blade;
use crate::containers::{self, fmt_cpus, fmt_size};
use crate::identity::Account;
use crate::images::{self, Source};
use crate::messages::{render, Lang, UserError};
use crate::podman::{ExecRequest, PodmanError};
use crate::store::containers::ContainerRow;
use crate::store::queue::{QueuedTask, ReplyTarget};
use crate::work::tasks::{ContainerTask, Task};

use super::TaskError;

/// May `caller` use this image? Their own and the admins' always; another
/// user's only when shared with them (or they are an admin).
pub async fn may_use_image(
    app: &App,
    caller: &Account,
    image: &images::ImageRef,
) -> anyhow::Result<bool> {
    let Source::User(owner) = &image.source else {
        return Ok(true);
    };
    let shared = match registry_repository(app, &image.reference) {
        Some(repo) if repo.starts_with("courses/") => {
            super::courses::groups_of_repository(app, &repo).await
        }
        Some(repo) => app.store.shared_with_of(&repo).await?,
        None => Vec::new(),
    };
    let r = ResourceRef {
        kind: "image",
        name: &image.reference,
        owner,
        shared_with: &shared,
        owner_groups: &[],
    };
    Ok(authorize(caller, Action::Use, &Resource::Owned(r), &app.cfg.courses).allowed())
}

/// `REGISTRY/alice/app:1` → `alice/app`, for images in the department registry.
pub fn registry_repository(app: &App, reference: &str) -> Option<String> {
    let host = &app.registry.as_ref()?.cfg.host;
    let rest = reference.strip_prefix(host.as_str())?.strip_prefix('/')?;
    let end = rest.find(['@']).unwrap_or(rest.len());
    let path = &rest[..end];
    let path = match path.rfind(':') {
        Some(i) if !path[i..].contains('/') => &path[..i],
        _ => path,
    };
    Some(path.to_string())
}

pub fn blade_of<'a>(
    app: &'a App,
    name: &str,
) -> anyhow::Result<(&'a Blade, &'a dyn crate::podman::Podman)> {
    app.blades
        .iter()
        .find(|(b, _)| b.name == name)
        .map(|(b, c)| (b, c.as_ref()))
        .ok_or_else(|| anyhow::anyhow!("blade {name} is no longer configured"))
}

/// The container a queued job is about; `Gone` if it was removed meanwhile.
pub async fn row_of(app: &Arc<App>, t: &ContainerTask) -> Result<ContainerRow, TaskError> {
    app.store
        .container(t.container)
        .await
        .map_err(TaskError::Retry)?
        .ok_or(TaskError::Gone)
}

/// An unreachable blade is retried (then `command.gave_up`); a refusal of the Podman API
/// is internal: logged with the request id, the user told the reference (no Podman text).
pub fn retry_or_fail(app: &App, job: &QueuedTask, e: PodmanError) -> TaskError {
    match e {
        PodmanError::Unreachable { .. } => TaskError::Retry(e.into()),
        PodmanError::Api { .. } => TaskError::User(
            crate::error::internal(
                "command.failed_here",
                &job.request_id,
                &app.cfg.mattermost.contact,
                &e,
            )
            .arg("command", "/container")
            .arg("sub", job.kind.trim_start_matches("container.")),
        ),
    }
}

/// Why a container could not start, for its owner: what they can fix in their own words
/// (the command is not in the image), anything else as an internal error with a reference.
fn start_failure(app: &App, job: &QueuedTask, name: &str, message: &str) -> UserError {
    let m = message.to_ascii_lowercase();
    if m.contains("executable file not found") || m.contains("no such file or directory") {
        return UserError::new("container.command_not_found").arg("name", name);
    }
    crate::error::internal(
        "container.start_failed_here",
        &job.request_id,
        &app.cfg.mattermost.contact,
        &message,
    )
    .arg("name", name)
}

/// A container stopped (by a stop, on its own, or found so): recorded, and its pool
/// address given back now unless `reclaim.release_address_after` keeps it a while.
pub async fn mark_stopped(
    app: &App,
    id: i64,
    exit_code: Option<i32>,
    oom: bool,
) -> anyhow::Result<()> {
    let release = app.cfg.reclaim.release_address_after.is_none();
    app.store.mark_exited(id, exit_code, oom, release).await
}

/// The role an owner's limits come from (one the directory no longer knows: a student's).
pub async fn role_of(app: &App, uid: &str) -> anyhow::Result<crate::config::Role> {
    Ok(app
        .directory
        .lookup(uid)
        .await?
        .map(|a| a.role)
        .unwrap_or(crate::config::Role::Student))
}

pub async fn owner_of(app: &Arc<App>, row: &ContainerRow) -> Result<Account, TaskError> {
    match app.directory.lookup(&row.owner).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(TaskError::User(
            UserError::new("identity.unknown_user")
                .arg("user", &row.owner)
                .arg("contact", &app.cfg.mattermost.contact),
        )),
        Err(e) => Err(TaskError::Retry(e.into())),
    }
}

/// Undo a run that cannot complete: nothing is left created or leased.
pub async fn discard(app: &Arc<App>, row: &ContainerRow) {
    if let Ok((_, client)) = blade_of(app, &row.blade) {
        // By id, or by our labels: a container of the same name may be another installation's.
        let target = match &row.podman_id {
            Some(id) => Some(id.clone()),
            None => earlier_attempt(app, client, row)
                .await
                .ok()
                .flatten()
                .map(|l| l.id),
        };
        if let Some(target) = target {
            if let Err(e) = client.remove(&target, true).await {
                tracing::warn!(error = %e, container = row.id, "could not remove a failed container; reconciliation will");
            }
        }
    }
    let _ = app.allocator.release(row.id).await;
    let _ = app.store.delete_container(row.id).await;
    release_owner_network(app, row).await;
    promote_waiting(app, &row.blade).await;
}

/// An owner's network on a blade goes with their last container there (one still in use,
/// say by a run starting now, stays: Podman refuses to remove it).
pub async fn release_owner_network(app: &App, row: &ContainerRow) {
    let Ok((_, client)) = blade_of(app, &row.blade) else {
        return;
    };
    let left = app
        .store
        .containers_of(vec![row.owner.clone()], true)
        .await
        .map(|rows| rows.iter().any(|r| r.blade == row.blade))
        .unwrap_or(true);
    if !left {
        let net = containers::owner_network(&app.instance, &row.owner);
        if let Err(e) = client.remove_network(&net).await {
            tracing::debug!(error = %e, network = %net, "owner network kept");
        }
    }
}

pub fn port_in_message(msg: &str) -> Option<u16> {
    // netavark/rootlessport say e.g. "cannot listen on the TCP port: listen tcp4 :61000: bind: address already in use"
    let before = msg.split("address already in use").next()?;
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// The container an earlier attempt of this row's run made on the blade, if any:
/// labelled with this row's id and this instance (or, from before instance labels,
/// with no instance and this row's Podman name).
pub async fn earlier_attempt(
    app: &Arc<App>,
    client: &dyn crate::podman::Podman,
    row: &ContainerRow,
) -> Result<Option<crate::podman::Listed>, PodmanError> {
    let listed = client
        .list_labelled(&format!("shisa.id={}", row.id))
        .await?;
    Ok(listed.into_iter().find(|l| {
        let label = |k: &str| l.labels.as_ref().and_then(|m| m.get(k)).map(String::as_str);
        label("shisa.managed") == Some("true")
            && label("shisa.blade") == Some(row.blade.as_str())
            && match label(containers::INSTANCE_LABEL) {
                Some(i) => i == app.instance,
                None => l
                    .names
                    .iter()
                    .any(|n| n.trim_start_matches('/') == row.podman_name),
            }
    }))
}

pub async fn run(app: &Arc<App>, job: &QueuedTask, t: &ContainerTask) -> Result<String, TaskError> {
    let row = row_of(app, t).await?;
    let (blade, client) = blade_of(app, &row.blade).map_err(TaskError::Retry)?;
    let blade = blade.clone();
    if row.state == "running" {
        // A retry after a crash that came after the start: it is done, say so.
        if let Some(pid) = &row.podman_id {
            if client
                .inspect(pid)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.running)
            {
                return Ok(started_text(app, &row, &blade, None).await);
            }
        }
    }
    let owner = match owner_of(app, &row).await {
        Ok(o) => o,
        Err(TaskError::User(e)) => {
            discard(app, &row).await;
            return Err(TaskError::User(e));
        }
        Err(e) => return Err(e),
    };
    let grant = if row.gpus > 0 {
        match app
            .allocator
            .grant(&blade, row.id, row.gpus)
            .await
            .map_err(TaskError::Retry)?
        {
            Some(g) => Some(g),
            None => {
                app.store
                    .set_container_state(row.id, "waiting")
                    .await
                    .map_err(TaskError::Retry)?;
                let position = app
                    .store
                    .waiting_position(row.id)
                    .await
                    .map_err(TaskError::Retry)?;
                return Ok(crate::messages::Message::new("container.waiting")
                    .arg("max_wait", app.cfg.reclaim.max_wait.to_string())
                    .arg("blade", &blade.name)
                    .arg("name", &row.name)
                    .arg("position", position.to_string())
                    .to_string());
            }
        }
    } else {
        None
    };
    let devices = grant
        .as_ref()
        .map(|g| g.devices.clone())
        .unwrap_or_default();
    // A registry image the blade does not have yet: pull it as its owner, for this repository only.
    if let (Some(reg), Some(repo)) = (app.registry.as_ref(), registry_repository(app, &row.image)) {
        if !client
            .image_exists(&row.image)
            .await
            .map_err(|e| retry_or_fail(app, job, e))?
        {
            let cred = reg.pull_credential(&row.owner, &repo);
            if let Err(e) = client
                .pull(&row.image, &row.owner, &cred, !reg.cfg.insecure)
                .await
            {
                return Err(match e {
                    PodmanError::Api { message, .. } => {
                        discard(app, &row).await;
                        TaskError::User(start_failure(
                            app,
                            job,
                            &row.name,
                            &format!("pulling the image failed: {message}"),
                        ))
                    }
                    other => TaskError::Retry(other.into()),
                });
            }
        }
    }
    let ip = app.store.ip_of(row.id).await.map_err(TaskError::Retry)?;
    // Every container is on its owner's network (a pool container too, for its owner's
    // other containers to reach it).
    {
        let labels = serde_json::json!({
            "shisa.managed": "true",
            containers::INSTANCE_LABEL: app.instance,
            "shisa.owner": row.owner,
        });
        let net = containers::owner_network(&app.instance, &row.owner);
        // Named by network and blade: two blades may share a host (the tests' do).
        let bridge = crate::podman::pool_bridge(&net, &blade.name);
        if let Err(e) = client.ensure_isolated_network(&net, &bridge, &labels).await {
            return Err(retry_or_fail(app, job, e));
        }
    }
    if let (Some(_), Some(pool)) = (&ip, &blade.ip_pool) {
        if let Err(e) = client
            .ensure_network(
                &pool.network,
                &pool.subnet,
                &pool.gateway().map(|g| g.to_string()).unwrap_or_default(),
            )
            .await
        {
            return Err(retry_or_fail(app, job, e));
        }
    }
    // An earlier attempt of this job (cut off by a crash) may have made the container
    // already: find it by our labels, never by name alone, and adopt it.
    // (A first attempt has nothing to find: no Podman query on the common path.)
    let earlier = if job.attempts > 1 {
        earlier_attempt(app, client, &row)
            .await
            .map_err(|e| retry_or_fail(app, job, e))?
    } else {
        None
    };
    if let Some(l) = earlier {
        if l.state == "running" {
            tracing::info!(container = row.id, podman = %l.id, "adopting the container an earlier attempt started");
            app.store
                .set_podman_id(row.id, &l.id)
                .await
                .map_err(TaskError::Retry)?;
            let lifetime = gpu_lifetime(app, &owner, &row);
            app.store
                .mark_running(row.id, lifetime)
                .await
                .map_err(TaskError::Retry)?;
            return Ok(started_text(app, &row, &blade, grant.as_ref()).await);
        }
        // Created but never started (or already dead): made again below, from today's leases.
        tracing::info!(container = row.id, podman = %l.id, state = %l.state, "replacing what an earlier attempt left");
        client
            .remove(&l.id, true)
            .await
            .map_err(|e| retry_or_fail(app, job, e))?;
    }
    let mut started = None;
    // The environment's values are sealed in the database; open only for the spec.
    let mut opened = row.clone();
    for v in opened.env.values_mut() {
        *v = crate::sealing::open_text(&app.state_key, v).map_err(TaskError::Retry)?;
    }
    for _ in 0..5 {
        let ports = app.store.ports_of(row.id).await.map_err(TaskError::Retry)?;
        let mut spec = containers::spec(
            &opened,
            &owner,
            &app.cfg.containers,
            &ports,
            &devices,
            &containers::Where {
                blade: &blade,
                ip: ip.as_deref(),
                instance: &app.instance,
            },
        );
        spec["labels"][containers::INSTANCE_LABEL] = serde_json::json!(app.instance);
        let created = client.create(&spec).await;
        let pid = match created {
            Ok(p) => p,
            Err(e @ PodmanError::Unreachable { .. }) => {
                if job.attempts >= job.max_attempts {
                    discard(app, &row).await;
                }
                return Err(TaskError::Retry(e.into()));
            }
            Err(PodmanError::Api { message, .. }) => {
                discard(app, &row).await;
                return Err(TaskError::User(start_failure(
                    app, job, &row.name, &message,
                )));
            }
        };
        app.store
            .set_podman_id(row.id, &pid)
            .await
            .map_err(TaskError::Retry)?;
        match client.start(&pid).await {
            Ok(()) => {
                started = Some(pid);
                break;
            }
            Err(PodmanError::Api { message, .. }) if message.contains("address already in use") => {
                let _ = client.remove(&pid, true).await;
                let bad: Vec<u16> = match port_in_message(&message) {
                    Some(p) => vec![p],
                    None => ports.iter().map(|p| p.port).collect(),
                };
                tracing::warn!(?bad, "host port taken outside shisa; leasing another");
                for p in bad {
                    if !app
                        .store
                        .replace_bad_port(&blade.name, blade.port_range, p)
                        .await
                        .map_err(TaskError::Retry)?
                    {
                        let mut r = row.clone();
                        r.podman_id = None;
                        discard(app, &r).await;
                        return Err(TaskError::User(
                            UserError::new("container.no_ports")
                                .arg("blade", &blade.name)
                                .arg("contact", &app.cfg.mattermost.contact),
                        ));
                    }
                }
            }
            Err(e) => {
                let mut r = row.clone();
                r.podman_id = Some(pid);
                discard(app, &r).await;
                return Err(match e {
                    PodmanError::Api { message, .. } => {
                        TaskError::User(start_failure(app, job, &row.name, &message))
                    }
                    other => {
                        TaskError::User(start_failure(app, job, &row.name, &other.to_string()))
                    }
                });
            }
        }
    }
    if started.is_none() {
        discard(app, &row).await;
        return Err(TaskError::User(
            UserError::new("container.no_ports")
                .arg("blade", &blade.name)
                .arg("contact", &app.cfg.mattermost.contact),
        ));
    }
    if ip.is_some() {
        isolate_pool_ports(&blade);
    }
    if let Err(e) = app
        .store
        .note_image_used(&blade.name, &row.image, app.now())
        .await
    {
        tracing::warn!(error = %e, "image use not recorded");
    }
    let lifetime = gpu_lifetime(app, &owner, &row);
    app.store
        .mark_running(row.id, lifetime)
        .await
        .map_err(TaskError::Retry)?;
    Ok(started_text(app, &row, &blade, grant.as_ref()).await)
}

/// On a pool's bridge every container's port is isolated: pool containers talk to the
/// host's side of the bridge (their gateway, the way in from outside) and never directly to
/// each other, whoever owns them; an owner's own containers meet on the owner's network.
/// Runs after each start on the pool (a start makes a new port) and in reconciliation.
/// Only a blade on this machine can be reached through its /sys; for others, a warning.
pub fn isolate_pool_ports(blade: &Blade) {
    let Some(pool) = &blade.ip_pool else {
        return;
    };
    let bridge = crate::podman::pool_bridge(&pool.network, &pool.subnet);
    let brif = std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .join("brif");
    let Ok(ports) = std::fs::read_dir(&brif) else {
        if blade.ssh.is_some() {
            tracing::warn!(blade = %blade.name, "pool ports on a remote blade cannot be isolated from here");
        }
        return;
    };
    for p in ports.flatten() {
        let f = std::path::Path::new("/sys/class/net")
            .join(p.file_name())
            .join("brport/isolated");
        if std::fs::read_to_string(&f).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        if let Err(e) = std::fs::write(&f, "1") {
            tracing::warn!(error = %e, port = ?p.file_name(), bridge = %bridge, "cannot isolate a pool port");
        }
    }
}

pub async fn started_text(
    app: &Arc<App>,
    row: &ContainerRow,
    blade: &Blade,
    grant: Option<&crate::gpus::Grant>,
) -> String {
    let gpus = match grant {
        Some(g) if g.shared => render(
            Lang::En,
            "container.gpus_shared",
            &[("devices", g.devices.join(", "))],
        ),
        Some(g) => render(
            Lang::En,
            "container.gpus_exclusive",
            &[("devices", g.devices.join(", "))],
        ),
        None => String::new(),
    };
    let mut t = crate::messages::Message::new("container.started")
        .arg("name", &row.name)
        .arg("blade", &blade.name)
        .arg(
            "image",
            format!("`{}`", containers::short_image(&row.image)),
        )
        .arg("cpus", fmt_cpus(row.cpus_milli))
        .arg("memory", fmt_size(row.memory))
        .arg("gpus", gpus)
        .to_string();
    let ports = app.store.ports_of(row.id).await.unwrap_or_default();
    if !ports.is_empty() {
        t.push('\n');
        t.push_str(&containers::port_lines(&ports, blade, row.private));
    }
    if let Ok(Some(ip)) = app.store.ip_of(row.id).await {
        t.push_str(&format!("\naddress: {ip}"));
    }
    t
}

/// How long a GPU container may run for its owner's role; `None` without GPUs.
pub fn gpu_lifetime(app: &App, owner: &Account, row: &ContainerRow) -> Option<i64> {
    (row.gpus > 0).then(|| app.cfg.limits_for(owner.role).gpu_lifetime.secs as i64)
}

/// Queue a stop or removal shisa itself decided (a GPU's time, a lecture's end, a reclaim),
/// answered to the owner by direct message under `command`. The row is marked `stopping`
/// or `removing` at once, so the next round of whatever decided it does not queue it
/// twice. Returns the request id (`why-ID-…`).
pub async fn queue_for_service(
    app: &App,
    row: &ContainerRow,
    task: Task,
    command: &str,
    why: &str,
) -> anyhow::Result<String> {
    let (state, sub) = match &task {
        Task::Remove(_) => ("removing", "rm"),
        _ => ("stopping", "stop"),
    };
    let request = format!("{why}-{}-{}", row.id, uuid::Uuid::new_v4().simple());
    app.store
        .enqueue(task.owned(
            &row.owner,
            &request,
            Some(ReplyTarget::to_user(&row.owner, command, sub)),
            app.cfg.queue.max_attempts,
        ))
        .await?;
    app.store.set_container_state(row.id, state).await?;
    Ok(request)
}

/// Start the oldest waiting containers on a blade that now fit (CPUs, memory, GPUs).
pub async fn promote_waiting(app: &Arc<App>, blade_name: &str) {
    let Some(blade) = app.cfg.blade(blade_name).cloned() else {
        return;
    };
    let Ok(waiting) = app.store.containers_in_state(blade_name, "waiting").await else {
        return;
    };
    // Nobody waiting: no need to ask the allocator (for Slurm, a command per blade per round).
    if waiting.is_empty() {
        return;
    }
    let Ok(load) = app.store.blade_load(blade_name).await else {
        return;
    };
    let mut cpus_left = blade
        .cpus
        .map(|c| ((c * 1000.0) as u64).saturating_sub(load.cpus_milli));
    let mut mem_left = blade
        .memory
        .as_ref()
        .map(|m| m.bytes.saturating_sub(load.memory));
    let mut free = if waiting.iter().any(|w| w.gpus > 0) {
        match app.allocator.free(&blade).await {
            Ok(f) => f,
            Err(_) => return,
        }
    } else {
        0
    };
    for w in waiting {
        // First come, first served: nobody overtakes the head of the queue.
        if cpus_left.is_some_and(|c| (w.cpus_milli as u64) > c)
            || mem_left.is_some_and(|m| w.memory > m)
        {
            break;
        }
        if w.gpus > 0 {
            match app.allocator.ready(w.id).await {
                // Slurm keeps the GPU queue: promote exactly those whose allocation started.
                Ok(Some(true)) => {}
                Ok(Some(false)) | Err(_) => continue,
                Ok(None) => {
                    if w.gpus > free {
                        break;
                    }
                    free -= w.gpus;
                }
            }
        }
        cpus_left = cpus_left.map(|c| c - w.cpus_milli as u64);
        mem_left = mem_left.map(|m| m - w.memory);
        if app
            .store
            .set_container_state(w.id, "pending")
            .await
            .is_err()
        {
            return;
        }
        let target = ReplyTarget {
            mm_user_id: app.store.mm_user_of(&w.owner).await.ok().flatten(),
            ..ReplyTarget::to_user(&w.owner, "/container", "run")
        };
        let rid = format!("promote-{}-{}", w.id, uuid::Uuid::new_v4().simple());
        let task = Task::Run(ContainerTask {
            container: w.id,
            ..Default::default()
        });
        if let Err(e) = super::enqueue(app, task, &w.owner, &rid, Some(target)).await {
            tracing::error!(error = %e, "could not queue a waiting container");
        }
    }
}

pub async fn tell_owner_if_staff(
    app: &Arc<App>,
    t: &ContainerTask,
    row: &ContainerRow,
    action: &str,
) {
    if t.staff {
        let actor = t.actor.as_str();
        let t = render(
            Lang::En,
            "container.staff_action",
            &[
                ("actor", actor.into()),
                ("action", action.into()),
                ("name", row.name.clone()),
            ],
        );
        app.notifier
            .notice(
                &row.owner,
                &t,
                serde_json::json!({"shisa": {"notice": "staff_action"}}),
            )
            .await;
    }
}

pub async fn stop(
    app: &Arc<App>,
    job: &QueuedTask,
    t: &ContainerTask,
) -> Result<String, TaskError> {
    let row = row_of(app, t).await?;
    if row.state != "running" && row.state != "stopping" {
        return Ok(UserError::new("container.already_stopped")
            .arg("name", &row.name)
            .to_string());
    }
    let (_, client) = blade_of(app, &row.blade).map_err(TaskError::Retry)?;
    // Mark first, so the died event this causes is not reported as a crash.
    app.store
        .set_container_state(row.id, "stopping")
        .await
        .map_err(TaskError::Retry)?;
    if let Some(pid) = &row.podman_id {
        if let Err(e) = client.stop(pid, app.cfg.containers.stop_timeout).await {
            app.store
                .set_container_state(row.id, "running")
                .await
                .map_err(TaskError::Retry)?;
            return Err(retry_or_fail(app, job, e));
        }
    }
    let state = match &row.podman_id {
        Some(pid) => client.inspect(pid).await.ok().flatten(),
        None => None,
    };
    mark_stopped(app, row.id, state.as_ref().map(|s| s.exit_code), false)
        .await
        .map_err(TaskError::Retry)?;
    app.allocator
        .release(row.id)
        .await
        .map_err(TaskError::Retry)?;
    promote_waiting(app, &row.blade).await;
    tell_owner_if_staff(app, t, &row, "stop").await;
    if t.allocation_ended {
        return Ok(render(
            Lang::En,
            "container.allocation_ended",
            &[("name", row.name.clone())],
        ));
    }
    if t.expired {
        return Ok(render(
            Lang::En,
            "container.expired",
            &[("name", row.name.clone())],
        ));
    }
    match t.reclaimed.as_str() {
        "idle" => {
            return Ok(render(
                Lang::En,
                "reclaim.stopped_idle",
                &[("name", row.name.clone())],
            ))
        }
        "lifetime" => {
            return Ok(render(
                Lang::En,
                "reclaim.stopped_lifetime",
                &[("name", row.name.clone())],
            ))
        }
        _ => {}
    }
    Ok(render(
        Lang::En,
        "container.stopped",
        &[("name", row.name.clone())],
    ))
}

pub async fn start(
    app: &Arc<App>,
    job: &QueuedTask,
    t: &ContainerTask,
) -> Result<String, TaskError> {
    let row = row_of(app, t).await?;
    if row.state == "running" {
        return Ok(UserError::new("container.already_running")
            .arg("name", &row.name)
            .to_string());
    }
    let (blade, client) = blade_of(app, &row.blade).map_err(TaskError::Retry)?;
    let blade = blade.clone();
    let Some(pid) = row.podman_id.clone() else {
        return Err(TaskError::User(
            UserError::new("container.busy")
                .arg("name", &row.name)
                .arg("state", "not created"),
        ));
    };
    // Its GPU time is the grant's: spent is spent, a restart does not renew it.
    if row.gpus > 0 && row.expires_at.is_some_and(|t| t <= crate::store::now()) {
        return Err(TaskError::User(
            UserError::new("container.gpu_time_used").arg("name", &row.name),
        ));
    }
    // The owner's totals hold at every start, checked with the move to `pending`.
    let owner = owner_of(app, &row).await?;
    let limits = app.cfg.limits_for(owner.role);
    let (cpus, memory, gpus) = (row.cpus_milli, row.memory, row.gpus);
    app.store
        .claim_start(row.id, &row.owner, move |h| {
            containers::check_running_totals(&limits, h, cpus, memory, gpus)
        })
        .await
        .map_err(TaskError::Retry)?
        .map_err(TaskError::User)?;
    let grant = if row.gpus > 0 {
        match app.allocator.grant(&blade, row.id, row.gpus).await {
            Ok(Some(g)) => Some(g),
            other => {
                app.store
                    .set_container_state(row.id, "exited")
                    .await
                    .map_err(TaskError::Retry)?;
                let total = blade.gpus.len() as u32 * blade.gpu_share;
                return Err(match other {
                    Err(e) => TaskError::Retry(e),
                    _ => TaskError::User(
                        UserError::new("container.gpus_busy")
                            .arg("blade", &blade.name)
                            .arg("total", total.to_string()),
                    ),
                });
            }
        }
    } else {
        None
    };
    // A pool address was given back at the stop: lease one again (the reply names it).
    if let (true, Some(pool)) = (row.wants_ip, &blade.ip_pool) {
        let leased = app
            .store
            .relase_ip(row.id, &blade.name, pool.hosts())
            .await
            .map_err(TaskError::Retry)?;
        let refused = match leased {
            None => Some(TaskError::User(
                UserError::new("blades.ip_exhausted")
                    .arg("blade", &blade.name)
                    .arg("total", pool.hosts().len().to_string())
                    .arg("contact", &app.cfg.mattermost.contact),
            )),
            Some((ip, true)) => match client.readdress(&pool.network, &pid, &ip).await {
                Ok(()) => None,
                Err(e) => {
                    let _ = app.store.release_ip(row.id).await;
                    Some(retry_or_fail(app, job, e))
                }
            },
            Some((_, false)) => None,
        };
        if let Some(e) = refused {
            let _ = app.allocator.release(row.id).await;
            app.store
                .set_container_state(row.id, "exited")
                .await
                .map_err(TaskError::Retry)?;
            return Err(e);
        }
    }
    if let Err(e) = client.start(&pid).await {
        app.allocator
            .release(row.id)
            .await
            .map_err(TaskError::Retry)?;
        app.store
            .set_container_state(row.id, "exited")
            .await
            .map_err(TaskError::Retry)?;
        return Err(retry_or_fail(app, job, e));
    }
    isolate_pool_ports(&blade);
    let lifetime = gpu_lifetime(app, &owner, &row);
    app.store
        .mark_running(row.id, lifetime)
        .await
        .map_err(TaskError::Retry)?;
    tell_owner_if_staff(app, t, &row, "start").await;
    Ok(started_text(app, &row, &blade, grant.as_ref()).await)
}

pub async fn remove(
    app: &Arc<App>,
    job: &QueuedTask,
    t: &ContainerTask,
) -> Result<String, TaskError> {
    let row = row_of(app, t).await?;
    let (_, client) = blade_of(app, &row.blade).map_err(TaskError::Retry)?;
    let before = row.state.clone();
    app.store
        .set_container_state(row.id, "removing")
        .await
        .map_err(TaskError::Retry)?;
    let target = row
        .podman_id
        .clone()
        .unwrap_or_else(|| row.podman_name.clone());
    if let Err(e) = client.remove(&target, true).await {
        app.store
            .set_container_state(row.id, &before)
            .await
            .map_err(TaskError::Retry)?;
        return Err(retry_or_fail(app, job, e));
    }
    app.allocator
        .release(row.id)
        .await
        .map_err(TaskError::Retry)?;
    app.store
        .delete_container(row.id)
        .await
        .map_err(TaskError::Retry)?;
    release_owner_network(app, &row).await;
    promote_waiting(app, &row.blade).await;
    tell_owner_if_staff(app, t, &row, "rm").await;
    let key = if t.reclaimed.is_empty() {
        "container.removed"
    } else {
        "reclaim.removed"
    };
    Ok(render(Lang::En, key, &[("name", row.name.clone())]))
}

pub async fn exec(
    app: &Arc<App>,
    job: &QueuedTask,
    t: &ContainerTask,
) -> Result<String, TaskError> {
    let row = row_of(app, t).await?;
    let cmd = t.cmd.clone();
    let Some(pid) = row.podman_id.clone().filter(|_| row.state == "running") else {
        return Err(TaskError::User(
            UserError::new("container.not_running_exec").arg("name", &row.name),
        ));
    };
    let owner = owner_of(app, &row).await?;
    let (_, client) = blade_of(app, &row.blade).map_err(TaskError::Retry)?;
    let home = owner.home.display().to_string();
    let user = format!("{}:{}", owner.uid_number, owner.gid_number);
    let timeout = Duration::from_secs(app.cfg.containers.exec_timeout);
    // Always as the owner, never root, even when an admin runs it.
    let req = ExecRequest {
        cmd: &cmd,
        env: vec![format!("HOME={home}"), format!("USER={}", owner.uid)],
        workdir: &home,
        user: &user,
        timeout,
        max_output: 3000,
    };
    let r = client
        .exec(&pid, &req)
        .await
        .map_err(|e| retry_or_fail(app, job, e))?;
    let shown = cmd.join(" ").replace('`', "'");
    let output = r.output.replace("```", "'''");
    tell_owner_if_staff(app, t, &row, "exec").await;
    if r.timed_out {
        return Ok(render(
            Lang::En,
            "container.exec_timeout",
            &[
                ("cmd", shown),
                ("name", row.name.clone()),
                ("seconds", timeout.as_secs().to_string()),
                ("output", output),
            ],
        ));
    }
    let note = if r.truncated {
        " (output cut to its last 3000 bytes)".to_string()
    } else {
        String::new()
    };
    Ok(render(
        Lang::En,
        "container.exec_result",
        &[
            ("cmd", shown),
            ("name", row.name.clone()),
            (
                "code",
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
            ),
            ("note", note),
            ("output", output),
        ],
    ))
}
#[cfg(test)]
mod tests {
    #[test]
    fn port_from_podman_message() {
        let m = "cannot listen on the TCP port: listen tcp4 :61000: bind: address already in use";
        assert_eq!(super::port_in_message(m), Some(61000));
        assert_eq!(super::port_in_message("something else"), None);
    }
}
