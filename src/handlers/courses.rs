//! `/course list|run|status|ps|enable|disable`: the students' and instructors' side of
//! course environments. Who may see or use a course is decided by the one authorisation
//! function, with the course's groups (from its applied course file) as who it is shared with.

use std::sync::Arc;

use crate::access::{authorize, Action, Decision, Resource, ResourceRef};
use crate::app::App;
use crate::commands::typed::CourseCommand;
use crate::courses::{self, Course};
use crate::gitlab::client::{self, HookEvents};
use crate::identity::Account;
use crate::mattermost::Reply;
use crate::messages::{render, Lang, UserError};
use crate::store::courses::CourseVersion;
use crate::store::gitlab::ProjectRow;
use crate::store::queue::ReplyTarget;
use crate::work::builds::{gitlab, gitlab_user_of};

use super::containers::{Handled, Planned};

fn answer(request: &str, text: String, outcome: &'static str, resource: Option<String>) -> Handled {
    Handled {
        reply: Reply::new(request, text, true),
        outcome,
        resource,
    }
}

fn refused(request: &str, e: UserError, resource: Option<String>) -> Handled {
    answer(request, e.to_string(), "denied", resource)
}

/// The groups a course is shared with for `action`: using it (students and instructors)
/// or viewing its state (instructors).
fn decide(caller: &Account, c: &Course, action: Action, app: &App) -> Decision {
    let groups: Vec<String> = match action {
        Action::Use => c.students.iter().chain(&c.instructors).cloned().collect(),
        _ => c.instructors.clone(),
    };
    authorize(
        caller,
        action,
        &Resource::Owned(ResourceRef {
            kind: "course",
            name: &c.id,
            owner: "",
            shared_with: &groups,
            owner_groups: &[],
        }),
        &app.cfg.courses,
    )
}

/// The current version of a course and its file, if the caller may know of it.
async fn find(
    app: &App,
    caller: &Account,
    id: &str,
) -> anyhow::Result<Option<(CourseVersion, Course)>> {
    let Some(v) = app.store.current_course(id).await? else {
        return Ok(None);
    };
    let Ok(c) = courses::parse(&v.file) else {
        return Ok(None);
    };
    // Anyone in it (or an admin) may know it exists.
    if decide(caller, &c, Action::Use, app).allowed() {
        Ok(Some((v, c)))
    } else {
        Ok(None)
    }
}

pub async fn handle(
    app: &Arc<App>,
    caller: &Account,
    command: CourseCommand,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    match command {
        CourseCommand::List { all } => list(app, caller, all, request).await,
        CourseCommand::Run { course } => run(app, caller, &course, target, request).await,
        CourseCommand::Status { course } => status(app, caller, &course, request).await,
        CourseCommand::Ps { course } => ps(app, caller, &course, request).await,
        CourseCommand::Enable { project } => enable(app, caller, &project, request).await,
        CourseCommand::Disable { project } => disable(app, caller, &project, request).await,
    }
}

async fn list(
    app: &Arc<App>,
    caller: &Account,
    all: bool,
    request: &str,
) -> anyhow::Result<Handled> {
    if all
        && !authorize(
            caller,
            Action::List,
            &Resource::AllCourses,
            &app.cfg.courses,
        )
        .allowed()
    {
        return Ok(refused(
            request,
            UserError::new("course.list_all_admins"),
            None,
        ));
    }
    let now = app.now();
    let mut rows = Vec::new();
    for v in app.store.current_courses().await? {
        let Ok(c) = courses::parse(&v.file) else {
            continue;
        };
        let d = decide(caller, &c, Action::Use, app);
        if !(d == Decision::Shared || (all && d.allowed())) {
            continue;
        }
        let next = c
            .next_lecture(now)
            .map(|s| {
                format!(
                    "{} ({})",
                    courses::schedule::label(&s, &c.timezone),
                    c.timezone
                )
            })
            .unwrap_or_else(|| "—".into());
        rows.push(format!(
            "| `{}` | {} | {} | {} |",
            c.id, c.title, next, v.version
        ));
    }
    if rows.is_empty() {
        return Ok(answer(
            request,
            render(Lang::En, "course.list_empty", &[]),
            "ok",
            None,
        ));
    }
    let t = format!(
        "{}\n{}\n\n{}",
        render(Lang::En, "course.list_header", &[]),
        rows.join("\n"),
        render(Lang::En, "course.list_hint", &[])
    );
    Ok(answer(request, t, "ok", None))
}

pub(super) async fn run(
    app: &Arc<App>,
    caller: &Account,
    id: &str,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    let resource = Some(format!("course:{id}"));
    let not_found = || UserError::new("course.not_found").arg("course", id);
    let Some(v) = app.store.current_course(id).await? else {
        return Ok(refused(request, not_found(), resource));
    };
    let Ok(c) = courses::parse(&v.file) else {
        return Ok(refused(request, not_found(), resource));
    };
    if !decide(caller, &c, Action::Use, app).allowed() {
        return Ok(refused(
            request,
            UserError::new("course.not_member")
                .arg("course", id)
                .arg("groups", c.students.join(", ")),
            resource,
        ));
    }
    if let Err(e) =
        crate::containers::check_home(caller, &app.cfg.home_base, &app.cfg.mattermost.contact)
    {
        return Ok(refused(request, e, resource));
    }
    let e = &c.environment;
    let mut env = std::collections::BTreeMap::new();
    for (k, val) in &e.env {
        env.insert(k.clone(), crate::sealing::seal_text(&app.state_key, val)?);
    }
    let pullable = crate::work::containers::registry_repository(app, &v.image).is_some();
    super::containers::place_and_insert(
        app,
        caller,
        Planned {
            name: c.id.clone(),
            image: v.image.clone(),
            raw_image: format!("course {}", c.id),
            cpus_milli: (e.cpus * 1000.0) as u32,
            memory: e.memory,
            gpus: e.gpus,
            ports: e.ports.iter().map(|p| (*p, "tcp".to_string())).collect(),
            env,
            command: e.command.clone(),
            private: false,
            ip: false,
            pullable,
            course: Some((c.id.clone(), c.max_containers)),
        },
        target,
        request,
    )
    .await
}

/// The image of a course's current version, for a member (`/job submit --course`).
pub(super) async fn image_for(
    app: &Arc<App>,
    caller: &Account,
    id: &str,
) -> anyhow::Result<Result<String, UserError>> {
    let Some(v) = app.store.current_course(id).await? else {
        return Ok(Err(UserError::new("course.not_found").arg("course", id)));
    };
    let Ok(c) = courses::parse(&v.file) else {
        return Ok(Err(UserError::new("course.not_found").arg("course", id)));
    };
    if !decide(caller, &c, Action::Use, app).allowed() {
        return Ok(Err(UserError::new("course.not_member")
            .arg("course", id)
            .arg("groups", c.students.join(", "))));
    }
    Ok(Ok(v.image))
}

/// A course for its instructors' views (`status`, `ps`): the refusal when the caller is not
/// one of them (not found, when they may not know it exists).
async fn for_staff(
    app: &App,
    caller: &Account,
    id: &str,
    request: &str,
) -> anyhow::Result<Result<(CourseVersion, Course), Handled>> {
    let resource = Some(format!("course:{id}"));
    let Some((v, c)) = find(app, caller, id).await? else {
        return Ok(Err(refused(
            request,
            UserError::new("course.not_found").arg("course", id),
            resource,
        )));
    };
    if !decide(caller, &c, Action::View, app).allowed() {
        return Ok(Err(refused(
            request,
            UserError::new("course.instructors_only").arg("course", id),
            resource,
        )));
    }
    Ok(Ok((v, c)))
}

async fn status(
    app: &Arc<App>,
    caller: &Account,
    id: &str,
    request: &str,
) -> anyhow::Result<Handled> {
    let resource = Some(format!("course:{id}"));
    let (v, c) = match for_staff(app, caller, id, request).await? {
        Ok(x) => x,
        Err(h) => return Ok(h),
    };
    let blades = app.store.course_blades(&c.id).await?;
    let drained = app.store.drained().await?;
    let mut lines = Vec::new();
    for (b, _) in &app.blades {
        if drained.contains(&b.name) {
            lines.push(format!(
                "| `{}` | {} |",
                b.name,
                render(Lang::En, "course.blade_drained", &[])
            ));
            continue;
        }
        let ready = blades
            .iter()
            .any(|(n, d, _)| n == &b.name && *d == v.digest);
        lines.push(format!(
            "| `{}` | {} |",
            b.name,
            render(
                Lang::En,
                if ready {
                    "course.blade_ready"
                } else {
                    "course.blade_not_ready"
                },
                &[]
            )
        ));
    }
    let seats = app.store.course_containers(&c.id).await?;
    let running = seats.iter().filter(|r| r.state == "running").count();
    // Asked for and not started yet: the course's queue.
    let queued = seats.iter().filter(|r| r.state == "pending").count();
    let next = crate::courses::plan::next_lecture_line(&c, app.now());
    let t = render(
        Lang::En,
        "course.status",
        &[
            ("course", c.id.clone()),
            ("title", c.title.clone()),
            ("version", v.version.to_string()),
            ("digest", v.digest.clone()),
            ("image", v.image.clone()),
            ("blades", lines.join("\n")),
            ("running", running.to_string()),
            ("queued", queued.to_string()),
            ("seats", seats.len().to_string()),
            ("max", c.max_containers.to_string()),
            ("next", next),
        ],
    );
    Ok(answer(request, t, "ok", resource))
}

async fn ps(app: &Arc<App>, caller: &Account, id: &str, request: &str) -> anyhow::Result<Handled> {
    let resource = Some(format!("course:{id}"));
    let (_, c) = match for_staff(app, caller, id, request).await? {
        Ok(x) => x,
        Err(h) => return Ok(h),
    };
    let rows = app.store.course_containers(&c.id).await?;
    if rows.is_empty() {
        return Ok(answer(
            request,
            render(Lang::En, "course.ps_empty", &[("course", c.id.clone())]),
            "ok",
            resource,
        ));
    }
    let mut t = render(Lang::En, "course.ps_header", &[]) + "\n";
    for r in rows {
        t.push_str(&format!(
            "| {} | `{}` | {} | `{}` |\n",
            r.owner, r.name, r.state, r.blade
        ));
    }
    Ok(answer(request, t, "ok", resource))
}

async fn enable(
    app: &Arc<App>,
    caller: &Account,
    path: &str,
    request: &str,
) -> anyhow::Result<Handled> {
    let resource = Some(format!("gitlab:{path}"));
    if !authorize(
        caller,
        Action::Administer,
        &Resource::CourseSetup,
        &app.cfg.courses,
    )
    .allowed()
    {
        return Ok(refused(
            request,
            UserError::new("course.not_instructor"),
            resource,
        ));
    }
    let api = match gitlab(app) {
        Ok(a) => a,
        Err(e) => return Ok(refused(request, e, resource)),
    };
    let gitlab_user = match gitlab_user_of(app, api, caller).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Ok(refused(
                request,
                UserError::new("build.no_gitlab_account"),
                resource,
            ))
        }
        Err(e) => {
            return Ok(refused(
                request,
                UserError::new("build.project_unreachable")
                    .arg("project", path)
                    .arg("reason", e.to_string()),
                resource,
            ))
        }
    };
    let as_user = api.for_user(&gitlab_user);
    let info = match as_user.project(path).await {
        Ok(i) => i,
        Err(e) => {
            return Ok(refused(
                request,
                UserError::new("build.project_unreachable")
                    .arg("project", path)
                    .arg("reason", client::explain(&e)),
                resource,
            ))
        }
    };
    if info.access_level() < 40 {
        return Ok(refused(
            request,
            UserError::new("build.not_maintainer").arg("project", &info.path_with_namespace),
            resource,
        ));
    }
    let old = app.store.gitlab_project(info.id).await?;
    if old.as_ref().is_some_and(|o| o.mode != "course") {
        return Ok(refused(
            request,
            UserError::new("course.project_builds").arg("project", &info.path_with_namespace),
            resource,
        ));
    }
    let g = app.cfg.gitlab.as_ref().expect("gitlab is configured");
    let url = g
        .hook_url
        .clone()
        .unwrap_or_else(|| format!("{}/hooks/gitlab", app.cfg.public_url()));
    let (hook_id, secret) = match old.as_ref().and_then(|o| o.hook_id) {
        Some(h) => (h, None),
        None => {
            // The project's own secret, never shared with another project.
            let mut raw = [0u8; 24];
            getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
            let token = format!("shisa-hook_{}", hex::encode(raw));
            match as_user
                .create_hook(info.id, &url, &token, HookEvents::Course)
                .await
            {
                Ok(h) => (h.id, Some(token)),
                Err(e) => {
                    return Ok(refused(
                        request,
                        UserError::new("build.project_unreachable")
                            .arg("project", &info.path_with_namespace)
                            .arg("reason", client::explain(&e)),
                        resource,
                    ))
                }
            }
        }
    };
    app.store
        .enable_project(ProjectRow {
            project_id: info.id,
            path: info.path_with_namespace.clone(),
            owner: caller.uid.clone(),
            hook_id: Some(hook_id),
            gitlab_user,
            mode: "course".into(),
            runner_id: None,
            runner_token: None,
            broken: None,
        })
        .await?;
    if let Some(secret) = secret {
        let sealed = crate::sealing::seal_text(&app.state_key, &secret)?;
        app.store.set_hook_secret(info.id, &sealed).await?;
    }
    Ok(answer(
        request,
        render(
            Lang::En,
            "course.enabled",
            &[
                ("project", info.path_with_namespace.clone()),
                ("file", courses::COURSE_FILE.to_string()),
            ],
        ),
        "ok",
        resource,
    ))
}

async fn disable(
    app: &Arc<App>,
    caller: &Account,
    path: &str,
    request: &str,
) -> anyhow::Result<Handled> {
    let resource = Some(format!("gitlab:{path}"));
    let not_enabled = || UserError::new("course.not_enabled").arg("project", path);
    let projects = app.store.course_projects().await?;
    let Some(p) = projects
        .into_iter()
        .find(|p| p.path == path || p.project_id.to_string() == path)
    else {
        return Ok(refused(request, not_enabled(), resource));
    };
    let d = authorize(
        caller,
        Action::Delete,
        &Resource::Owned(ResourceRef {
            kind: "course_project",
            name: &p.path,
            owner: &p.owner,
            shared_with: &[],
            owner_groups: &[],
        }),
        &app.cfg.courses,
    );
    if !d.allowed() {
        return Ok(refused(request, not_enabled(), resource));
    }
    if let (Ok(api), Some(h)) = (gitlab(app), p.hook_id) {
        if let Err(e) = api
            .for_user(&p.gitlab_user)
            .delete_hook(p.project_id, h)
            .await
        {
            tracing::warn!(error = %client::explain(&e), "could not delete the course hook");
        }
    }
    app.store.disable_project(p.project_id).await?;
    Ok(answer(
        request,
        render(Lang::En, "course.disabled", &[("project", p.path.clone())]),
        "ok",
        resource,
    ))
}
