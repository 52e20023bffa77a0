//! `/container images|share|unshare|rmi|token`: the registry from chat.

use std::sync::Arc;

use crate::access::{authorize, Action, Resource, ResourceRef};
use crate::app::App;
use crate::commands::{ContainerCommand, TokenAction};
use crate::containers::fmt_size;
use crate::identity::Account;
use crate::messages::{render, Lang, UserError};

use super::containers::Handled;

fn reply(request: &str, text: String, outcome: &'static str, resource: Option<String>) -> Handled {
    Handled {
        reply: crate::mattermost::Reply::new(request, text, true),
        outcome,
        resource,
    }
}

fn rejected(request: &str, e: UserError) -> Handled {
    reply(request, e.to_string(), "rejected", None)
}

/// `myimg`, `myimg:1`, `alice/myimg:1` → (repository, tag).
fn repo_and_tag(raw: &str, caller: &str) -> Result<(String, String), UserError> {
    let bad = || UserError::new("image.invalid").arg("image", raw);
    let (path, tag) = match raw.rfind(':') {
        Some(i) if !raw[i..].contains('/') => (&raw[..i], &raw[i + 1..]),
        _ => (raw, "latest"),
    };
    if !crate::images::valid_tag(tag) {
        return Err(bad());
    }
    let repo = if path.contains('/') {
        path.to_string()
    } else {
        format!("{caller}/{path}")
    };
    if !crate::registry::scope::valid_repository(&repo) || repo.split('/').count() != 2 {
        return Err(bad());
    }
    Ok((repo, tag.to_string()))
}

/// The text values of a repeatable flag.
fn age(t: i64) -> String {
    let s = (crate::store::now() - t).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub async fn handle(
    app: &Arc<App>,
    caller: &Account,
    command: ContainerCommand,
    request: &str,
) -> anyhow::Result<Handled> {
    use ContainerCommand as C;
    let Some(reg) = app.registry.as_ref() else {
        return Ok(rejected(
            request,
            UserError::new("registry.not_configured").arg("contact", &app.cfg.mattermost.contact),
        ));
    };
    match &command {
        C::Token(t) => token(app, caller, t, request).await,
        C::Images {
            shared,
            library,
            user,
        } => {
            let (title, rows) = if *shared {
                // One read of the image table, not one per shared repository.
                let repos: std::collections::HashSet<String> = app
                    .store
                    .shared_repositories(&caller.uid, &caller.groups)
                    .await?
                    .into_iter()
                    .collect();
                let v: Vec<_> = app
                    .store
                    .all_images()
                    .await?
                    .into_iter()
                    .filter(|i| repos.contains(&i.repository))
                    .collect();
                ("Images shared with you", v)
            } else if *library {
                ("The library", app.store.images_of("library").await?)
            } else {
                let owner = match super::owner_named(app, caller, user.as_deref()) {
                    Ok(o) => o,
                    Err(e) => return Ok(rejected(request, e)),
                };
                ("Your images", app.store.images_of(&owner).await?)
            };
            let mut out = format!("**{title}** (registry `{}`)\n\n| image | tag | size | age | shared with | description |\n|---|---|---|---|---|---|\n", reg.cfg.host);
            for i in &rows {
                let with = app.store.shared_with_of(&i.repository).await?;
                let desc = app
                    .store
                    .description(&i.repository)
                    .await?
                    .unwrap_or_default()
                    .replace('|', "/");
                out.push_str(&format!(
                    "| `{}` | `{}` | {} | {} | {} | {} |\n",
                    i.repository,
                    i.tag,
                    fmt_size(i.size),
                    age(i.pushed_at),
                    if with.is_empty() {
                        "-".to_string()
                    } else {
                        with.join(", ")
                    },
                    desc
                ));
            }
            if rows.is_empty() {
                out.push_str("| (none) | | | | | |\n");
            }
            if !*shared && !*library {
                let usage = app.store.registry_usage(&caller.uid).await?;
                let limit = app.cfg.limits_for(caller.role).registry_bytes.bytes;
                out.push_str(&format!(
                    "\nRegistry use: {} of {}.",
                    fmt_size(usage),
                    fmt_size(limit)
                ));
            }
            Ok(reply(request, out, "ok", None))
        }
        C::Share { image, .. } | C::Unshare { image, .. } | C::Rmi { image, .. } => {
            let raw = image.as_str();
            let (repo, tag) = match repo_and_tag(raw, &caller.uid) {
                Ok(x) => x,
                Err(e) => return Ok(rejected(request, e)),
            };
            let owner = repo.split('/').next().unwrap_or_default().to_string();
            let res = Some(format!("image:{repo}"));
            let not_found = || UserError::new("image.not_found").arg("image", raw);
            if !app.store.repository_exists(&repo).await? {
                return Ok(rejected(request, not_found()));
            }
            let shared = app.store.shared_with_of(&repo).await?;
            let action = if matches!(command, C::Rmi { .. }) {
                Action::Delete
            } else {
                Action::Modify
            };
            let d = authorize(
                caller,
                action,
                &Resource::Owned(ResourceRef {
                    kind: "image",
                    name: &repo,
                    owner: &owner,
                    shared_with: &shared,
                    owner_groups: &[],
                }),
                &app.cfg.courses,
            );
            if !d.allowed() {
                return Ok(rejected(
                    request,
                    if d == crate::access::Decision::Forbidden {
                        UserError::new("image.only_owner").arg("image", raw)
                    } else {
                        not_found()
                    },
                ));
            }
            match &command {
                C::Share {
                    with, description, ..
                } => {
                    let mut with = with.clone();
                    if with.is_empty() {
                        with.push("all".into());
                    }
                    for w in &with {
                        let known = w == "all"
                            || app.directory.lookup(w).await.ok().flatten().is_some()
                            || !app
                                .directory
                                .members(w)
                                .await
                                .unwrap_or_default()
                                .is_empty();
                        if !known {
                            return Ok(rejected(
                                request,
                                UserError::new("image.unknown_grantee").arg("who", w),
                            ));
                        }
                    }
                    for w in &with {
                        app.store.share(&repo, &owner, w).await?;
                    }
                    if let Some(d) = description {
                        app.store.set_description(&repo, d).await?;
                    }
                    let all = app.store.shared_with_of(&repo).await?;
                    Ok(reply(
                        request,
                        render(
                            Lang::En,
                            "image.shared",
                            &[("image", repo), ("with", all.join(", "))],
                        ),
                        "ok",
                        res,
                    ))
                }
                C::Unshare { with, .. } => {
                    if with.is_empty() {
                        app.store.unshare(&repo, None).await?;
                    }
                    for w in with.iter() {
                        app.store.unshare(&repo, Some(w)).await?;
                    }
                    crate::work::sif::revoke_sif_readers(app, &repo).await?;
                    let left = app.store.shared_with_of(&repo).await?;
                    let left = if left.is_empty() {
                        "nobody".to_string()
                    } else {
                        left.join(", ")
                    };
                    Ok(reply(
                        request,
                        render(
                            Lang::En,
                            "image.unshared",
                            &[("image", repo), ("with", left)],
                        ),
                        "ok",
                        res,
                    ))
                }
                _ => {
                    let Some(img) = app.store.image(&repo, &tag).await? else {
                        return Ok(rejected(
                            request,
                            UserError::new("image.not_found").arg("image", format!("{repo}:{tag}")),
                        ));
                    };
                    let c = reg.client();
                    // Delete by the digest the registry reports now (2.8 deletes only by digest).
                    let digest = match c.manifest(&repo, &tag).await {
                        Ok(Some(m)) => m.digest,
                        Ok(None) => img.digest.clone(),
                        Err(e) => return Err(e),
                    };
                    let tags: Vec<String> = app
                        .store
                        .images_of(&owner)
                        .await?
                        .into_iter()
                        .filter(|i| i.repository == repo && i.digest == digest)
                        .map(|i| i.tag)
                        .collect();
                    c.delete_manifest(&repo, &digest).await?;
                    app.store.delete_image_digest(&repo, &digest).await?;
                    // The repository's last image: its SIF files go with it.
                    let left = app
                        .store
                        .images_of(&owner)
                        .await?
                        .into_iter()
                        .any(|i| i.repository == repo);
                    if !left {
                        crate::work::sif::forget_repository(app, &repo).await?;
                    }
                    Ok(reply(
                        request,
                        render(
                            Lang::En,
                            "image.removed",
                            &[("image", repo), ("tags", tags.join(", "))],
                        ),
                        "ok",
                        res,
                    ))
                }
            }
        }
        _ => Ok(rejected(
            request,
            UserError::new("command.not_available")
                .arg("command", "/container")
                .arg("sub", "?"),
        )),
    }
}

async fn token(
    app: &Arc<App>,
    caller: &Account,
    action: &TokenAction,
    request: &str,
) -> anyhow::Result<Handled> {
    let host = app
        .registry
        .as_ref()
        .map(|r| r.cfg.host.clone())
        .unwrap_or_default();
    match action {
        TokenAction::New => {
            let (id, secret) =
                match crate::handlers::registry::new_personal_token(app, caller).await? {
                    Ok(x) => x,
                    Err(held) => {
                        return Ok(rejected(
                            request,
                            UserError::new("token.too_many").arg("held", held.to_string()),
                        ))
                    }
                };
            let lifetime = app.cfg.limits_for(caller.role).registry_token_lifetime;
            // Shown once, only to the caller (ephemeral); only its hash is kept.
            let t = render(
                Lang::En,
                "token.new",
                &[
                    ("id", id.to_string()),
                    ("host", host),
                    ("user", caller.uid.clone()),
                    ("secret", secret),
                    ("lifetime", lifetime.to_string()),
                ],
            );
            Ok(reply(
                request,
                t,
                "ok",
                Some(format!("registry-token:{id}")),
            ))
        }
        TokenAction::Revoke { id } => {
            let Some(id) = id.as_deref().and_then(|s| s.parse::<i64>().ok()) else {
                return Ok(rejected(request, UserError::new("token.which")));
            };
            if app.store.revoke_registry_token(&caller.uid, id).await? {
                Ok(reply(
                    request,
                    render(Lang::En, "token.revoked", &[("id", id.to_string())]),
                    "ok",
                    Some(format!("registry-token:{id}")),
                ))
            } else {
                Ok(rejected(
                    request,
                    UserError::new("token.unknown").arg("id", id.to_string()),
                ))
            }
        }
        TokenAction::List => {
            let rows = app.store.registry_tokens_of(&caller.uid).await?;
            if rows.is_empty() {
                return Ok(reply(
                    request,
                    render(Lang::En, "token.none", &[]),
                    "ok",
                    None,
                ));
            }
            let mut out = String::from("| id | created | last used | state |\n|---|---|---|---|\n");
            let now = crate::store::now();
            for r in rows {
                let state = match (r.revoked_at, r.expires_at) {
                    (Some(_), _) => "revoked".to_string(),
                    (None, Some(e)) if e <= now => "expired".to_string(),
                    (None, Some(e)) => format!("active, expires in {}", age(now - (e - now))),
                    (None, None) => "active".to_string(),
                };
                out.push_str(&format!(
                    "| {} | {} ago | {} | {state} |\n",
                    r.id,
                    age(r.created_at),
                    r.last_used
                        .map(|t| format!("{} ago", age(t)))
                        .unwrap_or_else(|| "never".into()),
                ));
            }
            Ok(reply(request, out, "ok", None))
        }
    }
}
