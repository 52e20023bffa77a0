//! GitLab events and image builds, done by a worker: pushes queue builds, a build
//! runs `podman build` on a blade and pushes, pipelines record CI builds.

use std::sync::Arc;

use gitlab::api::projects::repository::commits::CommitStatusState;

use crate::app::App;
use crate::gitlab::client::{self, Gitlab};
use crate::gitlab::hooks::{self, Hook, Push};
use crate::identity::Account;
use crate::images;
use crate::messages::{render, Lang, UserError};
use crate::store::gitlab::{BuildRow, ProjectRow};
use crate::work::tasks::Task;

use super::TaskError;

pub fn gitlab(app: &App) -> Result<&dyn Gitlab, UserError> {
    app.gitlab.as_deref().ok_or_else(|| {
        UserError::new("build.no_gitlab").arg("contact", &app.cfg.mattermost.contact)
    })
}

/// The department account behind a GitLab user id, by the configured linking.
pub async fn account_of_gitlab_user(
    app: &App,
    api: &dyn Gitlab,
    id: u64,
) -> anyhow::Result<Option<Account>> {
    let u = match api.user(id).await {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(gitlab_user = id, error = %client::explain(&e), "GitLab user not found");
            return Ok(None);
        }
    };
    let uid = if app
        .cfg
        .gitlab
        .as_ref()
        .is_some_and(|g| g.link_by == "username")
    {
        Some(u.username.clone())
    } else {
        u.ldap_uid()
    };
    match uid {
        Some(uid) => Ok(app.directory.lookup(&uid).await?),
        None => Ok(None),
    }
}

/// The GitLab user who is `account`: the reverse of `account_of_gitlab_user`, by the same
/// linking, and what every call made for the account acts as (`Sudo:` with the GitLab user
/// id, never the department uid taken for a GitLab user name). None: no GitLab user is linked.
pub async fn gitlab_user_of(
    app: &App,
    api: &dyn Gitlab,
    account: &Account,
) -> anyhow::Result<Option<String>> {
    let Some(g) = app.cfg.gitlab.as_ref() else {
        return Ok(None);
    };
    if g.link_by == "username" {
        return Ok(Some(account.uid.clone()));
    }
    let dn = match (&account.dn, &g.ldap_people_base) {
        (Some(dn), _) => dn.clone(),
        (None, Some(base)) => format!("uid={},{base}", account.uid),
        (None, None) => return Ok(None),
    };
    let found = api
        .users_by_identity(&g.ldap_provider, &normalize_dn(&dn))
        .await
        .map_err(|e| anyhow::anyhow!("{}", client::explain(&e)))?;
    // The identity must name this account by the rule webhooks use.
    Ok(found
        .into_iter()
        .find(|u| u.ldap_uid().as_deref() == Some(account.uid.as_str()))
        .map(|u| u.id.to_string()))
}

/// A DN as GitLab stores an LDAP identity's: lowercase, no spaces around `,` and `=`.
pub fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// A stored GitLab delivery, taken from the queue.
pub async fn event(
    app: &Arc<App>,
    name: &str,
    body: &serde_json::Value,
) -> Result<String, TaskError> {
    let body = serde_json::to_vec(body).map_err(|e| TaskError::Retry(e.into()))?;
    let hook = hooks::parse(name, &body).map_err(|e| {
        tracing::warn!(error = %e, "stored GitLab event no longer parses");
        TaskError::Gone
    })?;
    match hook {
        Hook::Push(p) => on_push(app, &p).await.map(|_| String::new()),
        Hook::Pipeline(p) => on_pipeline(app, &p).await.map(|_| String::new()),
        Hook::Job(j) => super::runners::on_job(app, &j).await.map(|_| String::new()),
        Hook::MergeRequest(mr) => super::courses::on_merge_request(app, &mr)
            .await
            .map(|_| String::new()),
        Hook::Note(n) => super::courses::on_note(app, &n)
            .await
            .map(|_| String::new()),
        other => {
            tracing::info!(kind = other.kind(), "GitLab event recorded");
            Ok(String::new())
        }
    }
}

pub async fn on_push(app: &Arc<App>, p: &Push) -> Result<(), TaskError> {
    let Some(g) = app.cfg.gitlab.as_ref() else {
        return Err(TaskError::Gone);
    };
    let api = app.gitlab.as_deref().ok_or(TaskError::Gone)?;
    if p.deleted() {
        return Ok(());
    }
    let files: Vec<&str> = g.build_files.iter().map(String::as_str).collect();
    if !p.touches(&files) {
        return Ok(());
    }
    let Some(pusher) = account_of_gitlab_user(app, api, p.user_id)
        .await
        .map_err(TaskError::Retry)?
    else {
        tracing::info!(gitlab_user = p.user_id, project = %p.project.path_with_namespace, "push by a GitLab user with no department account: ignored");
        return Ok(());
    };
    let Some(project) = app
        .store
        .gitlab_project(p.project_id)
        .await
        .map_err(TaskError::Retry)?
    else {
        if app
            .store
            .first_notice(p.project_id)
            .await
            .map_err(TaskError::Retry)?
        {
            let text = render(
                Lang::En,
                "build.not_enabled",
                &[("project", p.project.path_with_namespace.clone())],
            );
            app.notifier
                .notice(
                    &pusher.uid,
                    &text,
                    serde_json::json!({"shisa": {"notice": "build_not_enabled"}}),
                )
                .await;
        }
        return Ok(());
    };
    // A course project builds on merge (work::courses), never on a push.
    if project.mode == "course" {
        return Ok(());
    }
    queue_build(app, &project, p.head(), &p.git_ref, "push")
        .await
        .map_err(TaskError::Retry)?;
    Ok(())
}

pub async fn queue_build(
    app: &Arc<App>,
    project: &ProjectRow,
    sha: &str,
    git_ref: &str,
    trigger: &str,
) -> anyhow::Result<i64> {
    let owner = project.owner.clone();
    let max = app.cfg.queue.max_attempts;
    let id = app
        .store
        .new_build(
            BuildRow {
                id: 0,
                project_id: project.project_id,
                path: project.path.clone(),
                owner: project.owner.clone(),
                sha: sha.to_string(),
                git_ref: git_ref.to_string(),
                trigger: trigger.to_string(),
                state: "queued".into(),
                image: None,
                digest: None,
                size: None,
                blade: None,
                detail: None,
                created_at: 0,
                finished_at: None,
            },
            move |id| Task::Build { build: id }.owned(&owner, &format!("build-{id}"), None, max),
        )
        .await?;
    super::wake(app);
    Ok(id)
}

/// `REGISTRY/OWNER/SLUG:TAG`, or `localhost/OWNER/SLUG:TAG` with no registry.
pub fn image_name(app: &App, owner: &str, path: &str, tag: &str) -> String {
    let host = app
        .registry
        .as_ref()
        .map(|r| r.cfg.host.clone())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{owner}/{}:{tag}", crate::builds::slug(path))
}

/// The build job.
pub async fn run(app: &Arc<App>, id: i64) -> Result<String, TaskError> {
    let g = app.cfg.gitlab.as_ref().ok_or(TaskError::Gone)?;
    let api = app.gitlab.as_deref().ok_or(TaskError::Gone)?;
    let b = app
        .store
        .build(id)
        .await
        .map_err(TaskError::Retry)?
        .ok_or(TaskError::Gone)?;
    // `running` too: a restart re-queues the job of a build it interrupted.
    if !matches!(b.state.as_str(), "queued" | "running") {
        return Err(TaskError::Gone);
    }
    let project = app
        .store
        .gitlab_project(b.project_id)
        .await
        .map_err(TaskError::Retry)?
        .ok_or(TaskError::Gone)?;
    // A blade on this machine: the build context is read from local disk.
    let Some((blade, _)) = app.blades.iter().find(|(bl, _)| bl.ssh.is_none()) else {
        return Err(TaskError::Retry(anyhow::anyhow!(
            "no blade is up for builds"
        )));
    };
    // One build per project at a time: wait while another runs (a newer push supersedes this one meanwhile).
    loop {
        if app
            .store
            .start_build(id, &blade.name)
            .await
            .map_err(TaskError::Retry)?
        {
            break;
        }
        match app.store.build(id).await.map_err(TaskError::Retry)? {
            Some(x) if matches!(x.state.as_str(), "queued" | "running") => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await
            }
            _ => return Err(TaskError::Gone),
        }
    }
    let as_owner = api.for_user(&project.gitlab_user);
    let _ = as_owner
        .commit_status(
            b.project_id,
            &b.sha,
            "shisa/image",
            CommitStatusState::Running,
            "building the image",
            None,
        )
        .await;
    let result = build_one(app, g, as_owner.as_ref(), blade, &b).await;
    report(app, g, as_owner.as_ref(), &b, result)
        .await
        .map_err(TaskError::Retry)?;
    Ok(String::new())
}

/// The one results path for direct builds and CI pipelines: record the image,
/// set the commit status, start the SIF conversion if on, and tell the owner.
pub async fn report(
    app: &Arc<App>,
    g: &crate::config::Gitlab,
    as_owner: &dyn Gitlab,
    b: &BuildRow,
    result: Result<(String, String, u64), String>,
) -> anyhow::Result<()> {
    let id = b.id;
    let owner_text = match result {
        Ok((image, digest, size)) => {
            app.store
                .finish_build(
                    id,
                    "succeeded",
                    Some(&image),
                    Some(&digest),
                    Some(size as i64),
                    "",
                )
                .await?;
            let _ = as_owner
                .commit_status(
                    b.project_id,
                    &b.sha,
                    "shisa/image",
                    CommitStatusState::Success,
                    &format!("{image} {digest}"),
                    None,
                )
                .await;
            let typed = image
                .split_once('/')
                .map(|x| x.1.to_string())
                .unwrap_or(image.clone());
            if g.convert_sif {
                let target =
                    crate::store::queue::ReplyTarget::to_user(&b.owner, "/container", "sif");
                let _ = super::enqueue(
                    app,
                    Task::Sif {
                        image: image.clone(),
                        typed: typed.clone(),
                    },
                    &b.owner,
                    &format!("build-{id}-sif"),
                    Some(target),
                )
                .await;
            }
            render(
                Lang::En,
                "build.succeeded",
                &[
                    ("project", b.path.clone()),
                    ("sha", b.sha.chars().take(8).collect()),
                    ("image", image.clone()),
                    ("digest", digest),
                    ("size", crate::containers::fmt_size(size)),
                    ("run", typed),
                ],
            )
        }
        Err(log) => {
            app.store
                .finish_build(id, "failed", None, None, None, &log)
                .await?;
            let _ = as_owner
                .commit_status(
                    b.project_id,
                    &b.sha,
                    "shisa/image",
                    CommitStatusState::Failed,
                    "the image build failed",
                    None,
                )
                .await;
            render(
                Lang::En,
                "build.failed",
                &[
                    ("project", b.path.clone()),
                    ("sha", b.sha.chars().take(8).collect()),
                    ("log", log),
                ],
            )
        }
    };
    app.notifier
        .notice(
            &b.owner,
            &owner_text,
            serde_json::json!({"shisa": {"build": id}}),
        )
        .await;
    Ok(())
}

/// A Pipeline Hook of a project shisa builds through CI: when the pipeline ends, the
/// CI builds of its commit get the same results as direct builds.
pub async fn on_pipeline(app: &Arc<App>, p: &hooks::Pipeline) -> Result<(), TaskError> {
    let (Some(g), Some(api)) = (app.cfg.gitlab.as_ref(), app.gitlab.as_ref()) else {
        return Err(TaskError::Gone);
    };
    let state = p.object_attributes.status.as_str();
    if !matches!(state, "success" | "failed" | "canceled") {
        return Ok(());
    }
    let Some(project) = app
        .store
        .gitlab_project(p.project.id)
        .await
        .map_err(TaskError::Retry)?
    else {
        return Ok(());
    };
    let builds = app
        .store
        .running_ci_builds(p.project.id, &p.object_attributes.sha)
        .await
        .map_err(TaskError::Retry)?;
    let as_owner = api.for_user(&project.gitlab_user);
    for b in builds {
        let result = if state == "success" {
            let short: String = b.sha.chars().take(8).collect();
            match record_pushed(app, &b, &short, true).await {
                Ok(Some(found)) => Ok(found),
                Ok(None) => Err(format!(
                    "the pipeline succeeded but pushed no `{}/{}:{}` to the registry",
                    b.owner,
                    crate::builds::slug(&b.path),
                    b.sha.chars().take(8).collect::<String>()
                )),
                Err(e) => return Err(TaskError::Retry(e)),
            }
        } else {
            Err(format!(
                "pipeline {} {state}; see it in GitLab",
                p.object_attributes.id
            ))
        };
        report(app, g, as_owner.as_ref(), &b, result)
            .await
            .map_err(TaskError::Retry)?;
    }
    Ok(())
}

/// A repository at one commit, unpacked for a build: the directory lives as long as this.
pub struct Checkout {
    _work: tempfile::TempDir,
    /// The repository's top directory.
    pub top: std::path::PathBuf,
}

/// Fetch the repository at `sha` as `as_user` and unpack it, within `limits`' caps.
pub async fn checkout(
    app: &App,
    as_user: &dyn Gitlab,
    project: u64,
    sha: &str,
    limits: &crate::config::Limits,
) -> Result<Checkout, String> {
    let archive = as_user
        .archive(project, sha, limits.max_build_archive.bytes)
        .await
        .map_err(|e| match e {
            gitlab::api::ApiError::Client {
                source: client::ClientError::TooLarge(_),
            } => render(
                Lang::En,
                "build.archive_too_large",
                &[("limit", limits.max_build_archive.to_string())],
            ),
            e => format!(
                "cannot fetch the repository at {}: {}",
                sha,
                client::explain(&e)
            ),
        })?;
    let work = tempfile::Builder::new()
        .prefix("shisa-build-")
        .tempdir_in(&app.cfg.data_dir)
        .map_err(|e| e.to_string())?;
    let dir = work.path().to_path_buf();
    let max_unpacked = limits.max_build_unpacked.bytes;
    let top = tokio::task::spawn_blocking(move || unpack(&archive, &dir, max_unpacked))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| match e {
            Unpack::TooLarge => render(
                Lang::En,
                "build.unpacked_too_large",
                &[("limit", crate::containers::fmt_size(max_unpacked))],
            ),
            Unpack::Bad(s) => s,
        })?;
    Ok(Checkout { _work: work, top })
}

/// One build in `store_owner`'s build store, with the bases `account` may use: the
/// Containerfile `file` in `top`, tagged `tags` in the store.
pub struct InStore<'a> {
    pub id: i64,
    pub store_owner: &'a str,
    pub account: &'a Account,
    pub blade: &'a crate::config::Blade,
    pub top: &'a std::path::Path,
    pub file: &'a std::path::Path,
    pub tags: Vec<String>,
    pub limits: &'a crate::config::Limits,
}

/// A built image's store, held (one build of its owner's at a time) until this is dropped:
/// push from it first.
pub struct Held {
    pub store: crate::builds::Store,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// Build in the store (bases checked and brought in first).
pub async fn build_in_store(
    app: &Arc<App>,
    g: &crate::config::Gitlab,
    b: InStore<'_>,
) -> Result<Held, String> {
    let text = std::fs::read_to_string(b.file)
        .map_err(|e| format!("cannot read {}: {e}", b.file.display()))?;
    let registry_host = app.registry.as_ref().map(|r| r.cfg.host.as_str());
    let store = crate::builds::Store::of(
        &g.build_store,
        b.store_owner,
        g.build_containers_conf.as_deref(),
    )?;
    // One build of an owner's at a time: the store may be cleared before a build.
    let held_lock = owner_lock(b.store_owner).lock_owned().await;
    let uid = b.account.uid.as_str();
    // What the store holds must still be the owner's to use (a base shared earlier may have
    // been unshared since): otherwise it starts afresh.
    let held = store.images().await.map_err(|e| e.to_string())?;
    let mut stale = false;
    'check: for (_, names) in &held {
        for n in names {
            // The store's own results (a course's `courses/ID:…`) are its owner's.
            if b.tags.iter().any(|t| t == n) {
                continue;
            }
            let usable = match images::resolve_with(n, uid, &app.cfg.images.allow, registry_host) {
                Ok(img) => super::containers::may_use_image(app, b.account, &img)
                    .await
                    .map_err(|e| e.to_string())?,
                Err(_) => false,
            };
            if !usable {
                stale = true;
                break 'check;
            }
        }
    }
    if stale {
        tracing::info!(owner = %b.store_owner, "the build store held an image its owner may no longer use: cleared");
        store.clear().await.map_err(|e| e.to_string())?;
    }
    // The bases this Containerfile names, each checked and then put in the store. This
    // reading of the file is only for a clear answer: the store is what keeps a build from
    // anything else, however buildah reads the file.
    for base in crate::builds::base_images(&text)? {
        let img = images::resolve_with(&base, uid, &app.cfg.images.allow, registry_host)
            .map_err(|e| format!("cannot build from `{base}`: {e}"))?;
        if !super::containers::may_use_image(app, b.account, &img)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "cannot build from `{base}`: it is not yours and not shared with you"
            ));
        }
        bring_base(app, &store, b.blade, uid, &img.reference)
            .await
            .map_err(|e| format!("cannot build from `{base}`: {e}"))?;
    }
    let built = crate::builds::build(&crate::builds::BuildSpec {
        id: b.id,
        instance: &app.instance,
        store: &store,
        context: b.top,
        file: b.file,
        tags: b.tags.clone(),
        uid_base: g.build_uid_base,
        uid_count: g.build_uid_count,
        memory_bytes: b.limits.max_memory.bytes,
        cpus: b.limits.max_cpus,
        timeout: std::time::Duration::from_secs(g.build_timeout_seconds),
    })
    .await
    .map_err(|e| e.to_string())?;
    if !built.ok {
        return Err(built.log_tail);
    }
    Ok(Held {
        store,
        _held: held_lock,
    })
}

/// Fetch, unpack, build, push: (image, digest, size) or the log lines that say why not.
pub async fn build_one(
    app: &Arc<App>,
    g: &crate::config::Gitlab,
    as_owner: &dyn Gitlab,
    blade: &crate::config::Blade,
    b: &BuildRow,
) -> Result<(String, String, u64), String> {
    let owner = app
        .directory
        .lookup(&b.owner)
        .await
        .ok()
        .flatten()
        .ok_or("the owner's account is gone")?;
    let limits = app.cfg.limits_for(owner.role);
    let co = checkout(app, as_owner, b.project_id, &b.sha, &limits).await?;
    let top = co.top.clone();
    let file = g
        .build_files
        .iter()
        .map(|f| top.join(f))
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .ok_or_else(|| {
            format!(
                "no {} at the top of the repository",
                g.build_files.join(" or ")
            )
        })?;
    let default_branch = as_owner
        .project(&b.project_id.to_string())
        .await
        .ok()
        .and_then(|p| p.default_branch);
    let (primary, latest) = crate::builds::tags_for(&b.git_ref, &b.sha, default_branch.as_deref());
    let tag_sha = image_name(app, &b.owner, &b.path, &primary);
    let tag_latest = image_name(app, &b.owner, &b.path, "latest");
    let mut tags = vec![tag_sha.clone()];
    if latest {
        tags.push(tag_latest.clone());
    }
    let held = build_in_store(
        app,
        g,
        InStore {
            id: b.id,
            store_owner: &b.owner,
            account: &owner,
            blade,
            top: &top,
            file: &file,
            tags: tags.clone(),
            limits: &limits,
        },
    )
    .await?;
    let store = &held.store;
    if let Some(reg) = app.registry.as_ref() {
        let repo = format!("{}/{}", b.owner, crate::builds::slug(&b.path));
        for t in &tags {
            let cred = reg.push_credential(&b.owner, &repo);
            store
                .push(t, &b.owner, &cred, !reg.cfg.insecure)
                .await
                .map_err(|e| e.to_string())?;
        }
        // The digest is the registry's; the image is recorded now, not only when its notification comes.
        if let Ok(Some(found)) = record_pushed(app, b, &primary, latest).await {
            return Ok(found);
        }
    }
    // No registry (or it cannot say yet): the image goes to the blade, as the blade has it.
    for t in &tags {
        store
            .copy_to(&blade.podman_socket, t)
            .await
            .map_err(|e| e.to_string())?;
    }
    let (_, client) = super::containers::blade_of(app, &blade.name).map_err(|e| e.to_string())?;
    let local = client
        .image_inspect(&tag_sha)
        .await
        .map_err(|e| e.to_string())?;
    let id = format!("sha256:{}", local.id.trim_start_matches("sha256:"));
    Ok((tag_sha, id, local.size))
}

/// The lock that keeps an owner's builds one at a time (their store may be cleared).
fn owner_lock(owner: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(owner.to_string())
        .or_default()
        .clone()
}

/// Put a checked base image in the owner's build store: from the department registry with
/// the owner's own credential (the registry decides again), or copied from the blade (an
/// administrator's image), unless the store already holds the same image.
async fn bring_base(
    app: &App,
    store: &crate::builds::Store,
    blade: &crate::config::Blade,
    owner: &str,
    reference: &str,
) -> anyhow::Result<()> {
    if let (Some(reg), Some(repo)) = (
        app.registry.as_ref(),
        super::containers::registry_repository(app, reference),
    ) {
        let cred = reg.pull_credential(owner, &repo);
        return store
            .pull(reference, owner, &cred, !reg.cfg.insecure)
            .await
            .map_err(|_| anyhow::anyhow!("the registry has no such image for you"));
    }
    let (_, client) = super::containers::blade_of(app, &blade.name)?;
    let on_blade = client
        .image_inspect(reference)
        .await
        .map_err(|_| anyhow::anyhow!("no such image on the build blade"))?;
    let want = on_blade.id.trim_start_matches("sha256:").to_string();
    if store
        .image_id(reference)
        .await
        .is_some_and(|id| id.trim_start_matches("sha256:") == want)
    {
        return Ok(());
    }
    store.load_from(&blade.podman_socket, reference).await
}

/// A build's image as the registry has it (`OWNER/SLUG:PRIMARY`): recorded, with `latest`
/// when the build writes it; (image, digest, size), or None if it is not there.
pub async fn record_pushed(
    app: &App,
    b: &BuildRow,
    primary: &str,
    latest: bool,
) -> anyhow::Result<Option<(String, String, u64)>> {
    let Some(reg) = app.registry.as_ref() else {
        return Ok(None);
    };
    let repo = format!("{}/{}", b.owner, crate::builds::slug(&b.path));
    let Some(crate::registry::client::Manifest { digest, size, .. }) =
        reg.client().manifest(&repo, primary).await?
    else {
        return Ok(None);
    };
    let tags: &[&str] = if latest {
        &[primary, "latest"]
    } else {
        &[primary]
    };
    for tag in tags {
        app.store
            .upsert_image(crate::store::images::ImageRow {
                repository: repo.clone(),
                tag: tag.to_string(),
                owner: b.owner.clone(),
                digest: digest.clone(),
                size,
                pushed_at: crate::store::now(),
            })
            .await?;
    }
    Ok(Some((
        format!("{}/{repo}:{primary}", reg.cfg.host),
        digest,
        size,
    )))
}

/// Unpack a GitLab archive (one top directory) safely: the tar crate refuses
/// entries that would land outside the target (`..`, absolute paths), and we
/// refuse device nodes outright.
/// Why an archive was not unpacked.
#[derive(Debug)]
pub enum Unpack {
    /// More than the limit would be written (a small `.tar.gz` can hold a huge tree).
    TooLarge,
    Bad(String),
}

pub fn unpack(
    archive: &[u8],
    dir: &std::path::Path,
    max_bytes: u64,
) -> Result<std::path::PathBuf, Unpack> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut t = tar::Archive::new(gz);
    t.set_preserve_permissions(false);
    t.set_unpack_xattrs(false);
    let bad = |e: std::io::Error| Unpack::Bad(format!("the archive is unreadable: {e}"));
    let mut written: u64 = 0;
    for e in t.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        let kind = e.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            continue;
        }
        // Counted before writing: the entry's size is what unpacking it writes.
        written = written.saturating_add(e.header().size().unwrap_or(u64::MAX));
        if written > max_bytes {
            return Err(Unpack::TooLarge);
        }
        e.unpack_in(dir)
            .map_err(|e| Unpack::Bad(format!("cannot unpack the archive: {e}")))?;
    }
    let mut tops = std::fs::read_dir(dir)
        .map_err(|e| Unpack::Bad(e.to_string()))?
        .flatten()
        .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
        .map(|d| d.path());
    tops.next()
        .ok_or(Unpack::Bad("the archive is empty".into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_as_gitlab_stores_them() {
        assert_eq!(
            super::normalize_dn("UID=Carol, OU=People,dc=Example , dc=edu"),
            "uid=carol,ou=people,dc=example,dc=edu"
        );
    }
}
