//! `/container run|ps|logs|exec|stop|start|rm|inspect`.
//!
//! Quick commands (ps, logs, inspect) answer at once. The others are checked
//! here (name, image, limits, home), recorded with their port leases in one
//! transaction, queued, and acknowledged; a worker does the Podman part.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::commands::{Invocation, Value};
use crate::config::Blade;
use crate::containers::{self, fmt_cpus, fmt_size};
use crate::identity::{Account, Role};
use crate::images::{self, Source};
use crate::mattermost::Reply;
use crate::messages::{render, Lang, UserError};
use crate::ownership::{authorize, Action, Decision, ResourceRef};
use crate::podman::{ExecRequest, PodmanError};
use crate::store::containers::{ContainerRow, InsertError, NewContainer};
use crate::store::queue::{NewJob, OwnedJob, QueuedJob, ReplyTarget};

use super::JobError;

pub const RUN: &str = "container.run";
pub const STOP: &str = "container.stop";
pub const START: &str = "container.start";
pub const RM: &str = "container.rm";
pub const EXEC: &str = "container.exec";

/// What the slash handler needs back: the reply, and how to record it.
pub struct Handled {
    pub reply: Reply,
    pub outcome: &'static str,
    pub resource: Option<String>,
}

fn answer(request: &str, text: String, outcome: &'static str, resource: Option<String>) -> Handled {
    Handled {
        reply: Reply::new(request, text, true),
        outcome,
        resource,
    }
}

fn user_err(request: &str, e: UserError) -> Handled {
    answer(request, e.to_string(), "rejected", None)
}

pub async fn handle(
    app: &Arc<App>,
    caller: &Account,
    inv: &Invocation,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    match inv.sub {
        "run" => run(app, caller, inv, target, request).await,
        "ps" => ps(app, caller, inv, request).await,
        "logs" | "inspect" => {
            let (row, decision) = match find(app, caller, inv, Action::View).await? {
                Ok(x) => x,
                Err(e) => return Ok(user_err(request, e)),
            };
            let res = Some(format!("container:{}/{}", row.owner, row.name));
            let text = if inv.sub == "logs" {
                logs(app, &row, inv).await
            } else {
                inspect(app, &row).await
            };
            let _ = decision;
            Ok(answer(request, text, "ok", res))
        }
        "stop" | "start" | "rm" | "exec" => {
            let action = if inv.sub == "rm" {
                Action::Delete
            } else {
                Action::Modify
            };
            let (row, decision) = match find(app, caller, inv, action).await? {
                Ok(x) => x,
                Err(e) => return Ok(user_err(request, e)),
            };
            let res = Some(format!("container:{}/{}", row.owner, row.name));
            let name = row.name.clone();
            // Answer what needs no blade at once.
            let early = match (inv.sub, row.state.as_str()) {
                ("stop", s) if s != "running" => Some(UserError::new("container.already_stopped")),
                ("start", "running") => Some(UserError::new("container.already_running")),
                ("start", s) if s != "exited" => {
                    Some(UserError::new("container.busy").arg("state", s))
                }
                ("rm", "running") if !inv.has("force") => {
                    Some(UserError::new("container.running_use_force"))
                }
                ("rm", s) if matches!(s, "pending" | "stopping" | "removing") => {
                    Some(UserError::new("container.busy").arg("state", s))
                }
                ("exec", s) if s != "running" => Some(UserError::new("container.not_running_exec")),
                _ => None,
            };
            if let Some(e) = early {
                return Ok(answer(
                    request,
                    e.arg("name", &name).to_string(),
                    "rejected",
                    res,
                ));
            }
            let kind = match inv.sub {
                "stop" => STOP,
                "start" => START,
                "rm" => RM,
                _ => EXEC,
            };
            let payload = serde_json::json!({"container": row.id, "actor": caller.uid, "cmd": inv.command, "staff": decision == Decision::Staff});
            enqueue(app, kind, payload, &caller.uid, request, target).await?;
            Ok(Handled {
                reply: accepted(request, inv.sub),
                outcome: "queued",
                resource: res,
            })
        }
        _ => unreachable!("routed by slash.rs"),
    }
}

fn accepted(request: &str, sub: &str) -> Reply {
    let t = UserError::new("command.accepted")
        .arg("command", "/container")
        .arg("sub", sub)
        .arg("request", request);
    Reply::new(request, t.to_string(), false)
}

async fn enqueue(
    app: &Arc<App>,
    kind: &str,
    payload: serde_json::Value,
    owner: &str,
    request: &str,
    target: ReplyTarget,
) -> anyhow::Result<()> {
    app.store
        .enqueue(NewJob {
            kind,
            payload,
            owner,
            request_id: request,
            reply: Some(target),
            max_attempts: app.cfg.queue.max_attempts,
        })
        .await?;
    app.wake.notify_one();
    Ok(())
}

/// Find a container by name for a caller, through the one authorisation function.
/// Anything the caller may not see is "not found".
async fn find(
    app: &Arc<App>,
    caller: &Account,
    inv: &Invocation,
    action: Action,
) -> anyhow::Result<Result<(ContainerRow, Decision), UserError>> {
    let name = inv.arg_text("NAME").unwrap_or_default().to_string();
    let owner = match inv.text("user") {
        Some(u) if caller.role == Role::Admin => u.to_string(),
        Some(_) => return Ok(Err(UserError::new("container.only_admins_user"))),
        None => caller.uid.clone(),
    };
    let not_found = || UserError::new("container.not_found").arg("name", &name);
    let Some(row) = app.store.container_by_name(&owner, &name).await? else {
        return Ok(Err(not_found()));
    };
    let owner_groups = super::owner_groups(app, caller, &row.owner).await;
    let d = authorize(
        caller,
        action,
        &ResourceRef {
            kind: "container",
            name: &row.name,
            owner: &row.owner,
            shared_with: &[],
            owner_groups: &owner_groups,
        },
        &app.role_groups,
    );
    if !d.allowed() {
        return Ok(Err(not_found()));
    }
    Ok(Ok((row, d)))
}

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
    Ok(authorize(caller, Action::Use, &r, &app.role_groups).allowed())
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

fn blade_of<'a>(
    app: &'a App,
    name: &str,
) -> anyhow::Result<(&'a Blade, &'a crate::podman::PodmanClient)> {
    app.blades
        .iter()
        .find(|(b, _)| b.name == name)
        .map(|(b, c)| (b, c))
        .ok_or_else(|| anyhow::anyhow!("blade {name} is no longer configured"))
}

async fn run(
    app: &Arc<App>,
    caller: &Account,
    inv: &Invocation,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    let cfg = &app.cfg;
    let contact = cfg.mattermost.contact.as_str();
    let template = match inv.text("template") {
        Some(t) => match cfg.templates.get(t) {
            Some(tp) => Some(tp),
            None => {
                let names = if cfg.templates.is_empty() {
                    "(none)".to_string()
                } else {
                    cfg.templates
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Ok(user_err(
                    request,
                    UserError::new("container.template_unknown")
                        .arg("template", t)
                        .arg("templates", names),
                ));
            }
        },
        None => None,
    };
    let raw_image = match (inv.arg_text("IMAGE"), template) {
        (Some(i), _) => i.to_string(),
        (None, Some(t)) => t.image.clone(),
        (None, None) => return Ok(user_err(request, UserError::new("container.need_image"))),
    };
    let registry_host = app.registry.as_ref().map(|r| r.cfg.host.as_str());
    let image =
        match images::resolve_with(&raw_image, &caller.uid, &cfg.images.allow, registry_host) {
            Ok(i) => i,
            Err(e) => return Ok(user_err(request, e.arg("contact", contact))),
        };
    // Checked on every run: a rootful Podman may still hold an image pulled
    // earlier by someone who was allowed to then.
    if !may_use_image(app, caller, &image).await? {
        return Ok(user_err(
            request,
            UserError::new("image.not_found").arg("image", &raw_image),
        ));
    }
    if let (Some(reg), Some(repo)) = (
        app.registry.as_ref(),
        registry_repository(app, &image.reference),
    ) {
        let reference = image
            .reference
            .rsplit_once(['@', ':'])
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| "latest".into());
        if reg
            .client()
            .manifest(&repo, &reference)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            return Ok(user_err(
                request,
                UserError::new("image.not_found").arg("image", &raw_image),
            ));
        }
    }
    let limits = cfg.limits_for(caller.role);
    let name = match inv.text("name") {
        Some(n) => n.to_string(),
        None => containers::generated_name(&image.reference),
    };
    let cpus_milli = match inv.value("cpus") {
        Some(Value::MilliCpus(m)) => *m,
        _ => template
            .and_then(|t| t.cpus)
            .map(|c| (c * 1000.0) as u32)
            .unwrap_or((limits.default_cpus.min(limits.max_cpus) * 1000.0) as u32),
    };
    let memory = match inv.value("memory") {
        Some(Value::Size(s)) => *s,
        // The default never exceeds the role's maximum.
        _ => template
            .and_then(|t| t.memory.as_deref())
            .map(containers::size_of)
            .unwrap_or_else(|| {
                containers::size_of(&limits.default_memory)
                    .min(containers::size_of(&limits.max_memory))
            }),
    };
    let gpus = match inv.value("gpus") {
        Some(Value::Gpus { count, .. }) => *count,
        _ => template.map(|t| t.gpus).unwrap_or(0),
    };
    let mut ports: Vec<(u16, String)> = inv
        .values("port")
        .iter()
        .filter_map(|v| match v {
            Value::Port { port, proto } => Some((*port, proto.clone())),
            _ => None,
        })
        .collect();
    if ports.is_empty() {
        if let Some(t) = template {
            ports = t.ports.iter().map(|p| (*p, "tcp".to_string())).collect();
        }
    }
    ports.sort();
    ports.dedup();
    let mut env = std::collections::BTreeMap::new();
    for v in inv.values("env") {
        if let Value::Env { name, value } = v {
            if name.starts_with("NVIDIA_") || name == "HOME" || name == "USER" {
                return Ok(user_err(
                    request,
                    UserError::new("container.env_reserved").arg("name", name),
                ));
            }
            env.insert(name.clone(), value.clone());
        }
    }
    let command = inv
        .command
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| template.map(|t| t.command.clone()))
        .unwrap_or_default();
    // A fast refusal before placement asks the blades anything; the binding
    // check is repeated inside the insert transaction.
    if let Err(e) = containers::check_limits(
        &limits,
        &app.store.holdings(&caller.uid).await?,
        cpus_milli,
        memory,
        gpus,
        ports.len() as u32,
    ) {
        return Ok(user_err(request, e));
    }
    if let Err(e) = containers::check_home(caller, &cfg.home_base, contact) {
        return Ok(user_err(request, e));
    }
    // GPUs now, or a place in the queue with --wait.
    let want_ip = inv.has("ip");
    let placed = crate::blades::place(
        app,
        &crate::blades::PlaceRequest {
            image: &image.reference,
            gpus,
            cpus_milli,
            memory,
            wait: inv.has("wait"),
            ip: want_ip,
            pullable: registry_repository(app, &image.reference).is_some(),
        },
    )
    .await?;
    let (blade, state) = match placed {
        Ok(crate::blades::Placement::Now(b)) => (b, "pending"),
        Ok(crate::blades::Placement::Wait(b)) => (b, "waiting"),
        Err(e) => {
            let e = if e.key == "image.not_found" {
                UserError::new("image.not_found").arg("image", &raw_image)
            } else {
                e
            };
            return Ok(user_err(request, e));
        }
    };
    let blade = &blade;
    let new = NewContainer {
        owner: caller.uid.clone(),
        name: name.clone(),
        blade: blade.name.clone(),
        podman_name: containers::podman_name(&caller.uid, &name),
        image: image.reference.clone(),
        command,
        env,
        cpus_milli,
        memory,
        gpus,
        private: inv.has("private"),
        state,
        ports,
        ip_hosts: if want_ip {
            blade.ip_pool.as_ref().map(|p| p.hosts())
        } else {
            None
        },
    };
    let nports = new.ports.len() as u32;
    let lim = limits.clone();
    let job = (state == "pending").then(|| OwnedJob {
        kind: RUN.into(),
        payload: serde_json::json!({}),
        owner: caller.uid.clone(),
        request_id: request.into(),
        reply: Some(target.clone()),
        max_attempts: cfg.queue.max_attempts,
    });
    let inserted = app
        .store
        .insert_container(new, job, blade.port_range, move |h, _| {
            containers::check_limits(&lim, h, cpus_milli, memory, gpus, nports)
        })
        .await?;
    let row = match inserted {
        Ok(r) => r,
        Err(Ok(InsertError::NameTaken { state })) => {
            let key = if state == "running" {
                "container.name_taken_running"
            } else {
                "container.name_taken_stopped"
            };
            return Ok(user_err(
                request,
                UserError::new(key).arg("name", &name).arg("state", state),
            ));
        }
        Err(Ok(InsertError::NoIp)) => {
            let pool = blade
                .ip_pool
                .as_ref()
                .map(|p| p.hosts().len())
                .unwrap_or(0)
                .to_string();
            let e = if caller.role == Role::Admin {
                let holders = app.store.ip_holders(&blade.name).await?;
                let list = holders
                    .iter()
                    .map(|(ip, o, n)| format!("{ip} {o}/{n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                UserError::new("blades.ip_exhausted_admin")
                    .arg("blade", &blade.name)
                    .arg("total", pool)
                    .arg("holders", list)
            } else {
                UserError::new("blades.ip_exhausted")
                    .arg("blade", &blade.name)
                    .arg("total", pool)
                    .arg("contact", contact)
            };
            return Ok(user_err(request, e));
        }
        Err(Ok(InsertError::NoPorts)) => {
            return Ok(user_err(
                request,
                UserError::new("container.no_ports")
                    .arg("blade", &blade.name)
                    .arg("contact", contact),
            ))
        }
        Err(Err(e)) => return Ok(user_err(request, e)),
    };
    let res = Some(format!("container:{}/{}", row.owner, row.name));
    if state == "waiting" {
        let position = app.store.waiting_position(row.id).await?;
        let t = UserError::new("container.waiting")
            .arg("blade", &blade.name)
            .arg("name", &name)
            .arg("position", position.to_string());
        return Ok(Handled {
            reply: Reply::new(request, t.to_string(), true),
            outcome: "waiting",
            resource: res,
        });
    }
    app.wake.notify_one();
    Ok(Handled {
        reply: accepted(request, "run"),
        outcome: "queued",
        resource: res,
    })
}

async fn ps(
    app: &Arc<App>,
    caller: &Account,
    inv: &Invocation,
    request: &str,
) -> anyhow::Result<Handled> {
    let owners = match super::listed_owners(app, caller, inv, "/container").await? {
        Ok(o) => o,
        Err(e) => return Ok(user_err(request, e)),
    };
    let several = owners.len() > 1 || owners.first() != Some(&caller.uid);
    let rows = app.store.containers_of(owners, inv.has("all")).await?;
    if rows.is_empty() {
        return Ok(answer(
            request,
            render(Lang::En, "container.ps_empty", &[]),
            "ok",
            None,
        ));
    }
    let now = crate::store::now();
    let mut out = String::from(if several {
        "| owner | name | state | image | ports | GPUs | age | time left |\n|---|---|---|---|---|---|---|---|\n"
    } else {
        "| name | state | image | ports | GPUs | age | time left |\n|---|---|---|---|---|---|---|\n"
    });
    for r in rows {
        let blade = app.cfg.blade(&r.blade);
        let ports = app.store.ports_of(r.id).await?;
        let ports = match blade {
            Some(b) => containers::port_lines(&ports, b, r.private).replace('\n', "<br>"),
            None => String::new(),
        };
        let state = match (r.state.as_str(), r.exit_code, r.oom) {
            ("exited", _, true) => "exited (out of memory)".to_string(),
            ("exited", Some(c), _) => format!("exited ({c})"),
            (s, _, _) => s.to_string(),
        };
        let left = r
            .expires_at
            .map(|e| human(e - now))
            .unwrap_or_else(|| "-".into());
        let owner = if several {
            format!("{} | ", r.owner)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {owner}`{}` | {state} | `{}` | {ports} | {} | {} | {left} |\n",
            r.name,
            short_image(&r.image),
            r.gpus,
            human(now - r.created_at)
        ));
    }
    Ok(answer(request, out, "ok", None))
}

fn short_image(r: &str) -> String {
    r.strip_prefix("localhost/").unwrap_or(r).to_string()
}

fn human(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

async fn logs(app: &Arc<App>, row: &ContainerRow, inv: &Invocation) -> String {
    let tail = match inv.value("tail") {
        Some(Value::Count(n)) => *n,
        _ => 50,
    };
    let Some(id) = row.podman_id.as_deref() else {
        return render(
            Lang::En,
            "container.logs",
            &[
                ("lines", "0".into()),
                ("name", row.name.clone()),
                ("output", String::new()),
            ],
        );
    };
    let Ok((_, client)) = blade_of(app, &row.blade) else {
        return String::new();
    };
    match client.logs(id, tail).await {
        Ok(text) => {
            // Fit one post: keep the end.
            let clipped = clip_tail(&text.replace("```", "'''"), 12000);
            render(
                Lang::En,
                "container.logs",
                &[
                    ("lines", tail.to_string()),
                    ("name", row.name.clone()),
                    ("output", clipped),
                ],
            )
        }
        Err(e) => UserError::new("command.failed")
            .arg("command", "/container")
            .arg("sub", "logs")
            .arg("reason", e.to_string())
            .to_string(),
    }
}

fn clip_tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.trim_end().to_string()
    } else {
        format!(
            "…{}",
            s.chars().skip(n - max).collect::<String>().trim_end()
        )
    }
}

async fn inspect(app: &Arc<App>, row: &ContainerRow) -> String {
    let ports = app.store.ports_of(row.id).await.unwrap_or_default();
    let blade = app.cfg.blade(&row.blade);
    let live = match (row.podman_id.as_deref(), blade_of(app, &row.blade)) {
        (Some(id), Ok((_, c))) => c
            .inspect(id)
            .await
            .ok()
            .flatten()
            .map(|s| s.status)
            .unwrap_or_else(|| "unknown".into()),
        _ => "not created".into(),
    };
    let mut out = format!(
        "**{}** on `{}`\n- state: {} (Podman: {live})\n- image: `{}`\n- limits: {} CPUs, {} memory, {} GPUs\n",
        row.name,
        row.blade,
        row.state,
        row.image,
        fmt_cpus(row.cpus_milli),
        fmt_size(row.memory),
        row.gpus
    );
    if !row.command.is_empty() {
        out.push_str(&format!(
            "- command: `{}`\n",
            row.command.join(" ").replace('`', "'")
        ));
    }
    if !row.env.is_empty() {
        out.push_str(&format!(
            "- environment: {}\n",
            row.env
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let (Some(b), false) = (blade, ports.is_empty()) {
        out.push_str(&format!(
            "- ports:\n```\n{}\n```\n",
            containers::port_lines(&ports, b, row.private)
        ));
    }
    if let Some(c) = row.exit_code {
        out.push_str(&format!(
            "- exit code: {c}{}\n",
            if row.oom { " (out of memory)" } else { "" }
        ));
    }
    out
}

// ---- queued work ----

/// The container a queued job is about; `Gone` if it was removed meanwhile.
async fn job_row(app: &Arc<App>, job: &QueuedJob) -> Result<ContainerRow, JobError> {
    app.store
        .container(id_of(job))
        .await
        .map_err(JobError::Retry)?
        .ok_or(JobError::Gone)
}

fn id_of(job: &QueuedJob) -> i64 {
    job.payload["container"].as_i64().unwrap_or(-1)
}

fn retry_or_fail(job: &QueuedJob, e: PodmanError) -> JobError {
    match e {
        PodmanError::Unreachable { .. } if job.attempts < job.max_attempts => {
            JobError::Retry(e.into())
        }
        PodmanError::Unreachable { .. } => JobError::Retry(e.into()),
        PodmanError::Api { message, .. } => JobError::User(
            UserError::new("command.failed")
                .arg("command", "/container")
                .arg("sub", job.kind.trim_start_matches("container."))
                .arg("reason", message),
        ),
    }
}

async fn owner_of(app: &Arc<App>, row: &ContainerRow) -> Result<Account, JobError> {
    match app.directory.lookup(&row.owner).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(JobError::User(
            UserError::new("identity.unknown_user")
                .arg("user", &row.owner)
                .arg("contact", &app.cfg.mattermost.contact),
        )),
        Err(e) => Err(JobError::Retry(e.into())),
    }
}

/// Undo a run that cannot complete: nothing is left created or leased.
async fn discard(app: &Arc<App>, row: &ContainerRow) {
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
    promote_waiting(app, &row.blade).await;
}

fn port_in_message(msg: &str) -> Option<u16> {
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
async fn earlier_attempt(
    app: &Arc<App>,
    client: &crate::podman::PodmanClient,
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

pub async fn run_job(app: &Arc<App>, job: &QueuedJob) -> Result<String, JobError> {
    let row = job_row(app, job).await?;
    let (blade, client) = blade_of(app, &row.blade).map_err(JobError::Retry)?;
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
        Err(JobError::User(e)) => {
            discard(app, &row).await;
            return Err(JobError::User(e));
        }
        Err(e) => return Err(e),
    };
    let grant = if row.gpus > 0 {
        match app
            .allocator
            .grant(&blade, row.id, row.gpus)
            .await
            .map_err(JobError::Retry)?
        {
            Some(g) => Some(g),
            None => {
                app.store
                    .set_container_state(row.id, "waiting")
                    .await
                    .map_err(JobError::Retry)?;
                let position = app
                    .store
                    .waiting_position(row.id)
                    .await
                    .map_err(JobError::Retry)?;
                return Ok(UserError::new("container.waiting")
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
            .map_err(|e| retry_or_fail(job, e))?
        {
            let cred = reg.pull_credential(&row.owner, &repo);
            if let Err(e) = client
                .pull(&row.image, &row.owner, &cred, !reg.cfg.insecure)
                .await
            {
                return Err(match e {
                    PodmanError::Api { message, .. } => {
                        discard(app, &row).await;
                        JobError::User(
                            UserError::new("container.start_failed")
                                .arg("name", &row.name)
                                .arg("reason", format!("pulling the image failed: {message}")),
                        )
                    }
                    other => JobError::Retry(other.into()),
                });
            }
        }
    }
    let ip = app.store.ip_of(row.id).await.map_err(JobError::Retry)?;
    if let (Some(_), Some(pool)) = (&ip, &blade.ip_pool) {
        if let Err(e) = client
            .ensure_network(
                &pool.network,
                &pool.subnet,
                &pool.gateway().map(|g| g.to_string()).unwrap_or_default(),
            )
            .await
        {
            return Err(retry_or_fail(job, e));
        }
    }
    let fail = |reason: String| {
        UserError::new("container.start_failed")
            .arg("name", &row.name)
            .arg("reason", reason)
    };
    // An earlier attempt of this job (cut off by a crash) may have made the container
    // already: find it by our labels, never by name alone, and adopt it.
    // (A first attempt has nothing to find: no Podman query on the common path.)
    let earlier = if job.attempts > 1 {
        earlier_attempt(app, client, &row)
            .await
            .map_err(|e| retry_or_fail(job, e))?
    } else {
        None
    };
    if let Some(l) = earlier {
        if l.state == "running" {
            tracing::info!(container = row.id, podman = %l.id, "adopting the container an earlier attempt started");
            app.store
                .set_podman_id(row.id, &l.id)
                .await
                .map_err(JobError::Retry)?;
            let lifetime = gpu_lifetime(app, &owner, &row);
            app.store
                .mark_running(row.id, lifetime)
                .await
                .map_err(JobError::Retry)?;
            return Ok(started_text(app, &row, &blade, grant.as_ref()).await);
        }
        // Created but never started (or already dead): made again below, from today's leases.
        tracing::info!(container = row.id, podman = %l.id, state = %l.state, "replacing what an earlier attempt left");
        client
            .remove(&l.id, true)
            .await
            .map_err(|e| retry_or_fail(job, e))?;
    }
    let mut started = None;
    for _ in 0..5 {
        let ports = app.store.ports_of(row.id).await.map_err(JobError::Retry)?;
        let mut spec = containers::spec(
            &row,
            &owner,
            &app.cfg.containers,
            &ports,
            &devices,
            &blade,
            ip.as_deref(),
        );
        spec["labels"][containers::INSTANCE_LABEL] = serde_json::json!(app.instance);
        let created = client.create(&spec).await;
        let pid = match created {
            Ok(p) => p,
            Err(e @ PodmanError::Unreachable { .. }) => {
                if job.attempts >= job.max_attempts {
                    discard(app, &row).await;
                }
                return Err(JobError::Retry(e.into()));
            }
            Err(PodmanError::Api { message, .. }) => {
                discard(app, &row).await;
                return Err(JobError::User(fail(message)));
            }
        };
        app.store
            .set_podman_id(row.id, &pid)
            .await
            .map_err(JobError::Retry)?;
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
                        .map_err(JobError::Retry)?
                    {
                        let mut r = row.clone();
                        r.podman_id = None;
                        discard(app, &r).await;
                        return Err(JobError::User(
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
                    PodmanError::Api { message, .. } => JobError::User(fail(message)),
                    other => JobError::User(fail(other.to_string())),
                });
            }
        }
    }
    if started.is_none() {
        discard(app, &row).await;
        return Err(JobError::User(fail(
            "no free host port could be bound".into(),
        )));
    }
    let lifetime = gpu_lifetime(app, &owner, &row);
    app.store
        .mark_running(row.id, lifetime)
        .await
        .map_err(JobError::Retry)?;
    Ok(started_text(app, &row, &blade, grant.as_ref()).await)
}

async fn started_text(
    app: &Arc<App>,
    row: &ContainerRow,
    blade: &Blade,
    grant: Option<&containers::allocator::Grant>,
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
    let mut t = UserError::new("container.started")
        .arg("name", &row.name)
        .arg("blade", &blade.name)
        .arg("image", format!("`{}`", short_image(&row.image)))
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
fn gpu_lifetime(app: &App, owner: &Account, row: &ContainerRow) -> Option<i64> {
    (row.gpus > 0)
        .then(|| {
            crate::commands::values::parse_duration(&app.cfg.limits_for(owner.role).gpu_lifetime)
                .ok()
        })
        .flatten()
        .map(|s| s as i64)
}

/// Start the oldest waiting containers on a blade that now fit.
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
    let Ok(mut free) = app.allocator.free(&blade).await else {
        return;
    };
    for w in waiting {
        match app.allocator.ready(w.id).await {
            // Slurm keeps the queue: promote exactly those whose allocation started.
            Ok(Some(true)) => {}
            Ok(Some(false)) | Err(_) => continue,
            Ok(None) => {
                if w.gpus > free {
                    break; // first come, first served: nobody overtakes the head of the queue
                }
                free -= w.gpus;
            }
        }
        if app
            .store
            .set_container_state(w.id, "pending")
            .await
            .is_err()
        {
            return;
        }
        let target = ReplyTarget {
            response_url: None,
            channel_id: None,
            mm_user_id: app.store.mm_user_of(&w.owner).await.ok().flatten(),
            uid: w.owner.clone(),
            command: "/container".into(),
            sub: "run".into(),
        };
        let rid = format!("promote-{}-{}", w.id, uuid::Uuid::new_v4().simple());
        if let Err(e) = enqueue(
            app,
            RUN,
            serde_json::json!({"container": w.id}),
            &w.owner,
            &rid,
            target,
        )
        .await
        {
            tracing::error!(error = %e, "could not queue a waiting container");
        }
    }
}

async fn tell_owner_if_staff(app: &Arc<App>, job: &QueuedJob, row: &ContainerRow, action: &str) {
    if job.payload["staff"].as_bool() == Some(true) {
        let actor = job.payload["actor"].as_str().unwrap_or("an admin");
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

pub async fn stop_job(app: &Arc<App>, job: &QueuedJob) -> Result<String, JobError> {
    let row = job_row(app, job).await?;
    if row.state != "running" && row.state != "stopping" {
        return Ok(UserError::new("container.already_stopped")
            .arg("name", &row.name)
            .to_string());
    }
    let (_, client) = blade_of(app, &row.blade).map_err(JobError::Retry)?;
    // Mark first, so the died event this causes is not reported as a crash.
    app.store
        .set_container_state(row.id, "stopping")
        .await
        .map_err(JobError::Retry)?;
    if let Some(pid) = &row.podman_id {
        if let Err(e) = client.stop(pid, app.cfg.containers.stop_timeout).await {
            app.store
                .set_container_state(row.id, "running")
                .await
                .map_err(JobError::Retry)?;
            return Err(retry_or_fail(job, e));
        }
    }
    let state = match &row.podman_id {
        Some(pid) => client.inspect(pid).await.ok().flatten(),
        None => None,
    };
    app.store
        .mark_exited(row.id, state.as_ref().map(|s| s.exit_code), false)
        .await
        .map_err(JobError::Retry)?;
    app.allocator
        .release(row.id)
        .await
        .map_err(JobError::Retry)?;
    promote_waiting(app, &row.blade).await;
    tell_owner_if_staff(app, job, &row, "stop").await;
    if job.payload["allocation_ended"].as_bool() == Some(true) {
        return Ok(render(
            Lang::En,
            "container.allocation_ended",
            &[("name", row.name.clone())],
        ));
    }
    if job.payload["expired"].as_bool() == Some(true) {
        return Ok(render(
            Lang::En,
            "container.expired",
            &[("name", row.name.clone())],
        ));
    }
    Ok(render(
        Lang::En,
        "container.stopped",
        &[("name", row.name.clone())],
    ))
}

pub async fn start_job(app: &Arc<App>, job: &QueuedJob) -> Result<String, JobError> {
    let row = job_row(app, job).await?;
    if row.state == "running" {
        return Ok(UserError::new("container.already_running")
            .arg("name", &row.name)
            .to_string());
    }
    let (blade, client) = blade_of(app, &row.blade).map_err(JobError::Retry)?;
    let blade = blade.clone();
    let grant = if row.gpus > 0 {
        match app
            .allocator
            .grant(&blade, row.id, row.gpus)
            .await
            .map_err(JobError::Retry)?
        {
            Some(g) => Some(g),
            None => {
                let total = blade.gpus.len() as u32 * blade.gpu_share;
                return Err(JobError::User(
                    UserError::new("container.gpus_busy")
                        .arg("blade", &blade.name)
                        .arg("total", total.to_string()),
                ));
            }
        }
    } else {
        None
    };
    let Some(pid) = row.podman_id.clone() else {
        return Err(JobError::User(
            UserError::new("container.busy")
                .arg("name", &row.name)
                .arg("state", "not created"),
        ));
    };
    app.store
        .set_container_state(row.id, "pending")
        .await
        .map_err(JobError::Retry)?;
    if let Err(e) = client.start(&pid).await {
        app.allocator
            .release(row.id)
            .await
            .map_err(JobError::Retry)?;
        app.store
            .set_container_state(row.id, "exited")
            .await
            .map_err(JobError::Retry)?;
        return Err(retry_or_fail(job, e));
    }
    let owner = owner_of(app, &row).await?;
    let lifetime = gpu_lifetime(app, &owner, &row);
    app.store
        .mark_running(row.id, lifetime)
        .await
        .map_err(JobError::Retry)?;
    tell_owner_if_staff(app, job, &row, "start").await;
    Ok(started_text(app, &row, &blade, grant.as_ref()).await)
}

pub async fn rm_job(app: &Arc<App>, job: &QueuedJob) -> Result<String, JobError> {
    let row = job_row(app, job).await?;
    let (_, client) = blade_of(app, &row.blade).map_err(JobError::Retry)?;
    let before = row.state.clone();
    app.store
        .set_container_state(row.id, "removing")
        .await
        .map_err(JobError::Retry)?;
    let target = row
        .podman_id
        .clone()
        .unwrap_or_else(|| row.podman_name.clone());
    if let Err(e) = client.remove(&target, true).await {
        app.store
            .set_container_state(row.id, &before)
            .await
            .map_err(JobError::Retry)?;
        return Err(retry_or_fail(job, e));
    }
    app.allocator
        .release(row.id)
        .await
        .map_err(JobError::Retry)?;
    app.store
        .delete_container(row.id)
        .await
        .map_err(JobError::Retry)?;
    promote_waiting(app, &row.blade).await;
    tell_owner_if_staff(app, job, &row, "rm").await;
    Ok(render(
        Lang::En,
        "container.removed",
        &[("name", row.name.clone())],
    ))
}

pub async fn exec_job(app: &Arc<App>, job: &QueuedJob) -> Result<String, JobError> {
    let row = job_row(app, job).await?;
    let cmd: Vec<String> = serde_json::from_value(job.payload["cmd"].clone()).unwrap_or_default();
    let Some(pid) = row.podman_id.clone().filter(|_| row.state == "running") else {
        return Err(JobError::User(
            UserError::new("container.not_running_exec").arg("name", &row.name),
        ));
    };
    let owner = owner_of(app, &row).await?;
    let (_, client) = blade_of(app, &row.blade).map_err(JobError::Retry)?;
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
        .map_err(|e| retry_or_fail(job, e))?;
    let shown = cmd.join(" ").replace('`', "'");
    let output = r.output.replace("```", "'''");
    tell_owner_if_staff(app, job, &row, "exec").await;
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
