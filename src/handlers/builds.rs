//! Git-driven builds: GitLab events from the durable queue, `/container build
//! enable|disable|status|run`, and the build job itself (fetch the archive
//! as the project's owner, build on a blade, push, report).

use std::sync::Arc;

use crate::access::{authorize, Action, Resource, ResourceRef};
use crate::app::App;
use crate::commands::BuildAction;
use crate::gitlab::client::{self};
use crate::identity::Account;
use crate::messages::{render, Lang, UserError};
use crate::store::gitlab::ProjectRow;
use crate::work::builds::*;
use crate::work::runners;

/// `/container build enable|disable|status|run PROJECT [REF]`.
pub async fn handle(
    app: &Arc<App>,
    caller: &Account,
    command: &BuildAction,
) -> anyhow::Result<Result<String, UserError>> {
    let action = command.name();
    let (project, runner, git_ref) = match command {
        BuildAction::Status => return Ok(Ok(status(app, caller).await?)),
        BuildAction::Enable { project, runner } => (project, *runner, None),
        BuildAction::Disable { project } => (project, false, None),
        BuildAction::Run { project, git_ref } => (project, false, git_ref.clone()),
    };
    let api = match gitlab(app) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let Some(path) = project.as_deref() else {
        return Ok(Err(
            UserError::new("build.project_missing").arg("action", action)
        ));
    };
    // As the caller's own GitLab user: GitLab answers 404 for a project they cannot see.
    let gitlab_user = match gitlab_user_of(app, api, caller).await {
        Ok(Some(u)) => u,
        Ok(None) => return Ok(Err(UserError::new("build.no_gitlab_account"))),
        Err(e) => {
            return Ok(Err(UserError::new("build.project_unreachable")
                .arg("project", path)
                .arg("reason", e.to_string())))
        }
    };
    let as_user = api.for_user(&gitlab_user);
    let info = match as_user.project(path).await {
        Ok(i) => i,
        Err(e) => {
            return Ok(Err(UserError::new("build.project_unreachable")
                .arg("project", path)
                .arg("reason", client::explain(&e))))
        }
    };
    match command {
        BuildAction::Enable { .. } => {
            if info.access_level() < 40 {
                return Ok(Err(UserError::new("build.not_maintainer")
                    .arg("project", &info.path_with_namespace)));
            }
            let g = app.cfg.gitlab.as_ref().expect("gitlab is configured");
            let url = g
                .hook_url
                .clone()
                .unwrap_or_else(|| format!("{}/hooks/gitlab", app.cfg.public_url()));
            // The project's own secret: a maintainer can read a hook's token (by pointing the
            // hook elsewhere and testing it), so no token is ever shared between projects.
            let mut raw = [0u8; 24];
            getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
            let token = format!("shisa-hook_{}", hex::encode(raw));
            let old = app.store.gitlab_project(info.id).await?;
            if old.as_ref().is_some_and(|o| o.mode == "course") {
                return Ok(Err(UserError::new("build.project_is_course")
                    .arg("project", &info.path_with_namespace)));
            }
            let (hook_id, new_secret) = match old.as_ref().and_then(|o| o.hook_id) {
                Some(h) => (h, None),
                None => match as_user
                    .create_hook(info.id, &url, &token, client::HookEvents::Builds)
                    .await
                {
                    Ok(h) => (h.id, Some(token)),
                    Err(e) => {
                        return Ok(Err(UserError::new("build.project_unreachable")
                            .arg("project", &info.path_with_namespace)
                            .arg("reason", client::explain(&e))))
                    }
                },
            };
            // With --runner: the project's own GitLab runner (created as the maintainer).
            let (mode, runner_id, runner_token) = if runner {
                let existing = old
                    .as_ref()
                    .filter(|o| o.runner_id.is_some() && o.broken.is_none());
                match existing {
                    Some(o) => ("runner", o.runner_id, o.runner_token.clone()),
                    None => {
                        match runners::create(app, as_user.as_ref(), info.id, &caller.uid).await {
                            Ok((id, sealed)) => ("runner", Some(id), Some(sealed)),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                }
            } else {
                ("direct", None, None)
            };
            app.store
                .enable_project(ProjectRow {
                    project_id: info.id,
                    path: info.path_with_namespace.clone(),
                    owner: caller.uid.clone(),
                    hook_id: Some(hook_id),
                    gitlab_user: gitlab_user.clone(),
                    mode: mode.into(),
                    runner_id,
                    runner_token,
                    broken: None,
                })
                .await?;
            if let Some(secret) = new_secret {
                let sealed = crate::sealing::seal_text(&app.state_key, &secret)?;
                app.store.set_hook_secret(info.id, &sealed).await?;
            }
            if mode == "runner" {
                return Ok(Ok(render(
                    Lang::En,
                    "build.enabled_runner",
                    &[
                        ("project", info.path_with_namespace.clone()),
                        (
                            "image",
                            image_name(app, &caller.uid, &info.path_with_namespace, "SHA"),
                        ),
                        ("url", app.cfg.public_url()),
                    ],
                )));
            }
            Ok(Ok(render(
                Lang::En,
                "build.enabled",
                &[
                    ("project", info.path_with_namespace.clone()),
                    (
                        "image",
                        image_name(app, &caller.uid, &info.path_with_namespace, "SHA"),
                    ),
                ],
            )))
        }
        BuildAction::Disable { .. } => {
            let Some(p) = app.store.gitlab_project(info.id).await? else {
                return Ok(Err(UserError::new("build.not_enabled_here")
                    .arg("project", &info.path_with_namespace)));
            };
            if !may_change(app, caller, &p, Action::Delete) {
                return Ok(Err(UserError::new("build.not_enabled_here")
                    .arg("project", &info.path_with_namespace)));
            }
            if p.mode == "runner" {
                runners::delete(app, as_user.as_ref(), &p).await;
            }
            if let Some(h) = p.hook_id {
                if let Err(e) = as_user.delete_hook(info.id, h).await {
                    tracing::warn!(error = %client::explain(&e), "could not delete the project hook");
                }
            }
            app.store.disable_project(info.id).await?;
            Ok(Ok(render(
                Lang::En,
                "build.disabled",
                &[("project", info.path_with_namespace)],
            )))
        }
        _ => {
            // run: only the project's shisa owner (or an admin) builds into its namespace;
            // anyone else is told it is not enabled, as for anything not theirs.
            let p = match app.store.gitlab_project(info.id).await? {
                Some(p) if may_change(app, caller, &p, Action::Modify) => p,
                _ => {
                    return Ok(Err(UserError::new("build.not_enabled_here")
                        .arg("project", &info.path_with_namespace)))
                }
            };
            let git_ref = git_ref
                .or(info.default_branch.clone())
                .unwrap_or_else(|| "main".into());
            let id = queue_build(app, &p, &git_ref, &git_ref, "command").await?;
            Ok(Ok(render(
                Lang::En,
                "build.queued",
                &[
                    ("project", p.path),
                    ("id", id.to_string()),
                    ("ref", git_ref),
                ],
            )))
        }
    }
}

/// May `caller` change this enabled project (build it, disable it)?
fn may_change(app: &App, caller: &Account, p: &ProjectRow, action: Action) -> bool {
    let r = ResourceRef {
        kind: "project",
        name: &p.path,
        owner: &p.owner,
        shared_with: &[],
        owner_groups: &[],
    };
    authorize(caller, action, &Resource::Owned(r), &app.cfg.courses).allowed()
}

async fn status(app: &App, caller: &Account) -> anyhow::Result<String> {
    let rows = app.store.builds_of(&caller.uid, 10).await?;
    if rows.is_empty() {
        return Ok(render(Lang::En, "build.none", &[]));
    }
    let mut t =
        String::from("| build | project | commit | state | image |\n|---|---|---|---|---|\n");
    for b in rows {
        t.push_str(&format!(
            "| {} | {} | `{}` | {} | {} |\n",
            b.id,
            b.path,
            b.sha.chars().take(8).collect::<String>(),
            b.state,
            b.image.map(|i| format!("`{i}`")).unwrap_or_default()
        ));
    }
    Ok(t)
}
