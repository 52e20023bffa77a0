//! `/container run|ps|logs|exec|stop|start|rm|inspect`.
//!
//! Quick commands (ps, logs, inspect) answer at once. The others are checked
//! here (name, image, limits, home), recorded with their port leases in one
//! transaction, queued, and acknowledged; a worker does the Podman part.

use std::sync::Arc;

use crate::access::{authorize, Action, Decision, Resource, ResourceRef};
use crate::app::App;
use crate::commands::typed::{ContainerCommand, Listing, RunArgs, Target};
use crate::containers::{self, fmt_cpus, fmt_size};
use crate::identity::{Account, Role};
use crate::images::{self};
use crate::mattermost::Reply;
use crate::messages::{render, Lang, UserError};
use crate::store::containers::{ContainerRow, InsertError, NewContainer};
use crate::store::queue::ReplyTarget;
use crate::values::human_duration;
pub use crate::work::containers::{blade_of, may_use_image, promote_waiting, registry_repository};
use crate::work::{
    self,
    tasks::{ContainerTask, Task},
};

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
    command: ContainerCommand,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    use ContainerCommand as C;
    // What each command does to one container, and what it queues.
    let (who, action, sub) = match &command {
        C::Run(r) => return run(app, caller, r, target, request).await,
        C::Ps(l) => return ps(app, caller, l, request).await,
        C::Logs { target, .. } => (target, Action::View, "logs"),
        C::Inspect(t) => (t, Action::View, "inspect"),
        C::Stop(t) => (t, Action::Modify, "stop"),
        C::Start(t) => (t, Action::Modify, "start"),
        C::Extend { target, .. } => (target, Action::Modify, "extend"),
        C::Exec { target, .. } => (target, Action::Modify, "exec"),
        C::Rm { target, .. } => (target, Action::Delete, "rm"),
        _ => {
            return Ok(user_err(
                request,
                UserError::new("command.not_available")
                    .arg("command", "/container")
                    .arg("sub", "?"),
            ))
        }
    };
    let (row, decision) = match find(app, caller, who, action).await? {
        Ok(x) => x,
        Err(e) => return Ok(user_err(request, e)),
    };
    let res = Some(format!("container:{}/{}", row.owner, row.name));
    let name = row.name.clone();
    // Answer what needs no blade at once.
    let state = row.state.as_str();
    let early = match &command {
        C::Logs { tail, .. } => {
            let text = logs(app, &row, tail.unwrap_or(50), request).await;
            return Ok(answer(request, text, "ok", res));
        }
        C::Inspect(_) => {
            let text = inspect(app, &row).await;
            return Ok(answer(request, text, "ok", res));
        }
        C::Extend { time, .. } => {
            return extend(app, &row, *time, request, res).await;
        }
        C::Stop(_) if state != "running" => Some(UserError::new("container.already_stopped")),
        C::Start(_) if state == "running" => Some(UserError::new("container.already_running")),
        C::Start(_) if state != "exited" => {
            Some(UserError::new("container.busy").arg("state", state))
        }
        C::Rm { force: false, .. } if state == "running" => {
            Some(UserError::new("container.running_use_force"))
        }
        C::Rm { .. } if matches!(state, "pending" | "stopping" | "removing") => {
            Some(UserError::new("container.busy").arg("state", state))
        }
        C::Exec { .. } if state != "running" => Some(UserError::new("container.not_running_exec")),
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
    let mut t = ContainerTask {
        container: row.id,
        actor: caller.uid.clone(),
        staff: decision == Decision::Staff,
        ..Default::default()
    };
    let task = match command {
        C::Stop(_) => Task::Stop(t),
        C::Start(_) => Task::Start(t),
        C::Rm { .. } => Task::Remove(t),
        C::Exec { command, .. } => {
            t.cmd = command;
            Task::Exec(t)
        }
        _ => return Ok(answer(request, String::new(), "ok", res)),
    };
    work::enqueue(app, task, &caller.uid, request, Some(target)).await?;
    Ok(Handled {
        reply: accepted(request, sub),
        outcome: "queued",
        resource: res,
    })
}

/// `/container extend NAME [TIME]`: not reclaimed before now + TIME, capped by the
/// owner's role (an admin extending a student's container gets the student's cap).
async fn extend(
    app: &Arc<App>,
    row: &ContainerRow,
    time: Option<u64>,
    request: &str,
    res: Option<String>,
) -> anyhow::Result<Handled> {
    if !matches!(row.state.as_str(), "running" | "exited") {
        let e = UserError::new("container.extend_waiting")
            .arg("name", &row.name)
            .arg("state", &row.state);
        return Ok(answer(request, e.to_string(), "rejected", res));
    }
    let limits = app
        .cfg
        .limits_for(crate::work::containers::role_of(app, &row.owner).await?);
    let now = app.now();
    let (until, capped) = crate::containers::reclaim::extend_until(now, time, &limits);
    let until = until.max(row.keep_until.unwrap_or(0));
    app.store.set_keep_until(row.id, until).await?;
    let when = jiff::Timestamp::from_second(until)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let key = if capped {
        "container.extend_capped"
    } else {
        "container.extended"
    };
    let t = crate::messages::Message::new(key)
        .arg("name", &row.name)
        .arg("until", when)
        .arg("left", human_duration(until - now))
        .arg("max", limits.max_extend.to_string());
    Ok(answer(request, t.to_string(), "ok", res))
}

fn accepted(request: &str, sub: &str) -> Reply {
    let t = crate::messages::Message::new("command.accepted")
        .arg("command", "/container")
        .arg("sub", sub)
        .arg("request", request);
    Reply::new(request, t.to_string(), false)
}

/// Find a container by name for a caller, through the one authorisation function.
/// Anything the caller may not see is "not found".
async fn find(
    app: &Arc<App>,
    caller: &Account,
    who: &Target,
    action: Action,
) -> anyhow::Result<Result<(ContainerRow, Decision), UserError>> {
    let name = who.name.clone();
    let owner = match super::owner_named(app, caller, who.user.as_deref()) {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    let not_found = || UserError::new("container.not_found").arg("name", &name);
    let Some(row) = app.store.container_by_name(&owner, &name).await? else {
        return Ok(Err(not_found()));
    };
    let owner_groups = super::owner_groups(app, caller, &row.owner).await;
    let d = authorize(
        caller,
        action,
        &Resource::Owned(ResourceRef {
            kind: "container",
            name: &row.name,
            owner: &row.owner,
            shared_with: &[],
            owner_groups: &owner_groups,
        }),
        &app.cfg.courses,
    );
    if !d.allowed() {
        return Ok(Err(not_found()));
    }
    Ok(Ok((row, d)))
}

async fn run(
    app: &Arc<App>,
    caller: &Account,
    run: &RunArgs,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    let cfg = &app.cfg;
    let contact = cfg.mattermost.contact.as_str();
    // `--course`: the course's environment as its instructors defined it, nothing else.
    if let Some(course) = &run.course {
        let plain = RunArgs {
            name: run.name.clone(),
            course: run.course.clone(),
            wait: run.wait,
            ..Default::default()
        };
        if *run != plain || run.name.is_some() {
            return Ok(user_err(
                request,
                UserError::new("course.run_as_defined").arg("course", course),
            ));
        }
        return super::courses::run(app, caller, course, target, request).await;
    }
    let template = match run.template.as_deref() {
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
    let raw_image = match (run.image.as_deref(), template) {
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
    let name = match &run.name {
        Some(n) => n.clone(),
        None => containers::generated_name(&image.reference),
    };
    let cpus_milli = match run.resources.cpus_milli {
        Some(m) => m,
        None => template
            .and_then(|t| t.cpus)
            .map(|c| (c * 1000.0) as u32)
            .unwrap_or((limits.default_cpus.min(limits.max_cpus) * 1000.0) as u32),
    };
    let memory = match run.resources.memory {
        Some(s) => s,
        // The default never exceeds the role's maximum.
        None => template
            .and_then(|t| t.memory.as_ref())
            .map(|m| m.bytes)
            .unwrap_or_else(|| limits.default_memory.bytes.min(limits.max_memory.bytes)),
    };
    let gpus = match &run.resources.gpus {
        Some(g) => g.count,
        None => template.map(|t| t.gpus).unwrap_or(0),
    };
    let mut ports: Vec<(u16, String)> = run
        .ports
        .iter()
        .map(|p| (p.port, p.proto.clone()))
        .collect();
    if ports.is_empty() {
        if let Some(t) = template {
            ports = t.ports.iter().map(|p| (*p, "tcp".to_string())).collect();
        }
    }
    ports.sort();
    ports.dedup();
    let mut env = std::collections::BTreeMap::new();
    for (name, value) in &run.env {
        if name.starts_with("NVIDIA_") || name == "HOME" || name == "USER" {
            return Ok(user_err(
                request,
                UserError::new("container.env_reserved").arg("name", name),
            ));
        }
        // Sealed at rest: opened only to create the container.
        env.insert(
            name.clone(),
            crate::sealing::seal_text(&app.state_key, value)?,
        );
    }
    let command = run
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
    let pullable = registry_repository(app, &image.reference).is_some();
    place_and_insert(
        app,
        caller,
        Planned {
            name,
            image: image.reference.clone(),
            raw_image,
            cpus_milli,
            memory,
            gpus,
            ports,
            env,
            command,
            private: run.private,
            ip: run.ip,
            pullable,
            course: None,
        },
        target,
        request,
    )
    .await
}

/// A run, resolved and checked: what to place and record.
pub(super) struct Planned {
    pub name: String,
    pub image: String,
    /// As the user wrote it, for messages.
    pub raw_image: String,
    pub cpus_milli: u32,
    pub memory: u64,
    pub gpus: u32,
    pub ports: Vec<(u16, String)>,
    pub env: std::collections::BTreeMap<String, String>,
    pub command: Vec<String>,
    pub private: bool,
    pub ip: bool,
    pub pullable: bool,
    /// A course's seat: the course and its most containers at once. Checked instead of the
    /// owner's own totals.
    pub course: Option<(String, u32)>,
}

/// Place a planned run on a blade and record it with its queued work in one transaction.
pub(super) async fn place_and_insert(
    app: &Arc<App>,
    caller: &Account,
    p: Planned,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    let cfg = &app.cfg;
    let contact = cfg.mattermost.contact.as_str();
    let limits = cfg.limits_for(caller.role);
    let Planned {
        name,
        raw_image,
        cpus_milli,
        memory,
        gpus,
        ports,
        env,
        command,
        ..
    } = p;
    // GPUs now, or a place in the queue with --wait.
    let want_ip = p.ip;
    let placed = crate::blades::place(
        &app.fleet(),
        &crate::blades::PlaceRequest {
            image: &p.image,
            gpus,
            cpus_milli,
            memory,
            ip: want_ip,
            pullable: p.pullable,
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
        image: p.image.clone(),
        command,
        env,
        cpus_milli,
        memory,
        gpus,
        private: p.private,
        state,
        ports,
        ip_hosts: if want_ip {
            blade.ip_pool.as_ref().map(|p| p.hosts())
        } else {
            None
        },
        course: p.course.as_ref().map(|c| c.0.clone()),
    };
    let nports = new.ports.len() as u32;
    let lim = limits.clone();
    // The container's id is filled in by the store, in the transaction that records it.
    let job = (state == "pending").then(|| {
        Task::Run(ContainerTask::default()).owned(
            &caller.uid,
            request,
            Some(target.clone()),
            cfg.queue.max_attempts,
        )
    });
    let seat = p.course.clone();
    let inserted = app
        .store
        .insert_container(new, job, blade.port_range, move |h, tx| match &seat {
            // A course's seat counts against the course, not the student's own totals.
            Some((course, max)) => {
                let held = crate::store::Store::course_seats_tx(tx, course)
                    .map_err(|_| UserError::new("course.full").arg("course", course))?;
                if held >= *max {
                    Err(UserError::new("course.full")
                        .arg("course", course)
                        .arg("max", max.to_string()))
                } else {
                    Ok(())
                }
            }
            None => containers::check_limits(&lim, h, cpus_milli, memory, gpus, nports),
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
            // Who holds the pool is the fleet's business: admins see it.
            let e = if authorize(caller, Action::View, &Resource::Fleet, &cfg.courses).allowed() {
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
        let t = crate::messages::Message::new("container.waiting")
            .arg("max_wait", cfg.reclaim.max_wait.to_string())
            .arg("blade", &blade.name)
            .arg("name", &name)
            .arg("position", position.to_string());
        return Ok(Handled {
            reply: Reply::new(request, t.to_string(), true),
            outcome: "waiting",
            resource: res,
        });
    }
    crate::work::wake(app);
    Ok(Handled {
        reply: accepted(request, "run"),
        outcome: "queued",
        resource: res,
    })
}

async fn ps(
    app: &Arc<App>,
    caller: &Account,
    listing: &Listing,
    request: &str,
) -> anyhow::Result<Handled> {
    let owners = match super::listed_owners(app, caller, listing, "/container").await? {
        Ok(o) => o,
        Err(e) => return Ok(user_err(request, e)),
    };
    let several = owners.len() > 1 || owners.first() != Some(&caller.uid);
    let rows = app.store.containers_of(owners, listing.all).await?;
    if rows.is_empty() {
        return Ok(answer(
            request,
            render(Lang::En, "container.ps_empty", &[]),
            "ok",
            None,
        ));
    }
    let now = app.now();
    let mut roles: std::collections::HashMap<String, Role> = std::collections::HashMap::new();
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
            ("waiting", _, _) => render(
                Lang::En,
                "container.ps_queued",
                &[
                    (
                        "position",
                        app.store.waiting_position(r.id).await?.to_string(),
                    ),
                    ("blade", r.blade.clone()),
                ],
            ),
            (s, _, _) => s.to_string(),
        };
        // The soonest of its GPU time and its reclaim (`/container extend` moves the latter).
        let role = match roles.get(&r.owner) {
            Some(x) => *x,
            None if r.owner == caller.uid => caller.role,
            None => {
                let x = crate::work::containers::role_of(app, &r.owner)
                    .await
                    .unwrap_or(Role::Student);
                roles.insert(r.owner.clone(), x);
                x
            }
        };
        let reclaim = crate::containers::reclaim::due(&r, &app.cfg.limits_for(role));
        let left = match (r.expires_at, reclaim) {
            (Some(e), Some(d)) if e <= d.at => human_duration(e - now),
            (_, Some(d)) => render(
                Lang::En,
                match d.reason {
                    crate::containers::reclaim::Reason::Stale => "container.ps_left_removed",
                    crate::containers::reclaim::Reason::Idle => "container.ps_left_idle",
                    crate::containers::reclaim::Reason::Lifetime => "container.ps_left_lifetime",
                },
                &[("left", human_duration(d.at - now))],
            ),
            (Some(e), None) => human_duration(e - now),
            (None, None) => "-".into(),
        };
        let owner = if several {
            format!("{} | ", r.owner)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {owner}`{}` | {state} | `{}` | {ports} | {} | {} | {left} |\n",
            r.name,
            containers::short_image(&r.image),
            r.gpus,
            human_duration(now - r.created_at)
        ));
    }
    Ok(answer(request, out, "ok", None))
}

async fn logs(app: &Arc<App>, row: &ContainerRow, tail: u32, request: &str) -> String {
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
        Ok(logs) => {
            // Fit one post: keep the end.
            let text = logs.text.replace("```", "'''");
            let clipped = clip_tail(&text, 12000);
            let mut out = render(
                Lang::En,
                "container.logs",
                &[
                    ("lines", tail.to_string()),
                    ("name", row.name.clone()),
                    ("output", clipped),
                ],
            );
            if logs.slow {
                out.push('\n');
                out.push_str(&render(
                    Lang::En,
                    "container.logs_slow",
                    &[("seconds", crate::podman::LOG_TIME.as_secs().to_string())],
                ));
            } else if logs.cut || text.chars().count() > 12000 {
                out.push('\n');
                out.push_str(&render(Lang::En, "container.logs_cut", &[]));
            }
            out
        }
        Err(e) => crate::error::internal(
            "command.failed_here",
            request,
            &app.cfg.mattermost.contact,
            &e,
        )
        .arg("command", "/container")
        .arg("sub", "logs")
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
