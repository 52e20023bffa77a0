//! Converting images to SIF for a user (queued), the signed download links.

use std::sync::Arc;

use hmac::{KeyInit, Mac};

use crate::app::App;
use crate::images;
use crate::messages::{render, Lang, UserError};
use crate::store::queue::QueuedTask;
use crate::work::containers::registry_repository;

use super::TaskError;

/// An image was unshared: every reader who got its SIF files through it and may no longer
/// use it (by the one authorisation rule: shares with users, groups or all) loses them,
/// unless another claim (their own image with the same content, another share) keeps them.
pub async fn revoke_sif_readers(app: &App, repo: &str) -> anyhow::Result<()> {
    let Some(reg) = app.registry.as_ref() else {
        return Ok(());
    };
    let owner = repo.split('/').next().unwrap_or_default();
    for reader in app.store.sif_claimants(repo).await? {
        if reader == owner {
            continue;
        }
        let entitled = match app.directory.lookup(&reader).await? {
            Some(acc) => match images::resolve_with(
                &format!("{}/{repo}:latest", reg.cfg.host),
                &reader,
                &app.cfg.images.allow,
                Some(reg.cfg.host.as_str()),
            ) {
                Ok(img) => super::containers::may_use_image(app, &acc, &img).await?,
                Err(_) => false,
            },
            None => false,
        };
        if entitled {
            continue;
        }
        for (file, uids) in app
            .store
            .drop_sif_claims(repo, Some(&reader), owner)
            .await?
        {
            let uids: std::collections::BTreeSet<u32> = uids.into_iter().collect();
            if let Err(e) = crate::sif::acl::set_readers(std::path::Path::new(&file), &uids) {
                tracing::warn!(error = %e, file = %file, "cannot rewrite a SIF's readers");
            }
        }
    }
    Ok(())
}

/// A repository's last image was removed: its SIF files go too, unless another claim (the
/// same content in another image) or a job that holds one keeps them; those keep only the
/// readers still entitled.
pub async fn forget_repository(app: &App, repo: &str) -> anyhow::Result<()> {
    let store_dir = app.cfg.sif.store_dir.clone().unwrap_or_default();
    for (file, uids, pinned) in app.store.drop_repo_sif_claims(repo).await? {
        let path = std::path::PathBuf::from(&file);
        if uids.is_empty() && !pinned {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            crate::sif::store::remove(&app.store, &store_dir, &name).await?;
        } else if !uids.is_empty() {
            let uids: std::collections::BTreeSet<u32> = uids.into_iter().collect();
            let _ = crate::sif::acl::set_readers(&path, &uids);
        }
    }
    Ok(())
}

/// `alice/app:1` → `app_1.sif`: the owner's friendly name for an image.
pub fn friendly_name(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let s: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{s}.sif")
}

/// A converted image as its owner sees it.
pub struct Ensured {
    /// The content file (by image id), what jobs use and pin.
    pub content: std::path::PathBuf,
    pub file: String,
    /// The owner's friendly name for it, as the cluster sees it.
    pub cluster_link: std::path::PathBuf,
    /// The content file as the cluster sees it.
    pub cluster_content: std::path::PathBuf,
    pub size: u64,
    pub how: String,
}

pub async fn run(
    app: &Arc<App>,
    job: &QueuedTask,
    reference: &str,
    typed: &str,
) -> Result<String, TaskError> {
    let e = ensure(app, job, reference, typed).await?;
    let url = download_url(app, &job.owner, e.file.clone())
        .await
        .map_err(TaskError::Retry)?;
    Ok(render(
        Lang::En,
        "sif.ready",
        &[
            ("image", typed.to_string()),
            ("path", e.cluster_link.display().to_string()),
            ("size", crate::containers::fmt_size(e.size)),
            ("how", e.how),
            ("url", url),
            ("minutes", (app.cfg.sif.link_ttl_seconds / 60).to_string()),
        ],
    ))
}

/// Convert `reference` for `job.owner` (once per image), grant them (and the image's owner and
/// sharers) read access, and link it under their name.
pub async fn ensure(
    app: &Arc<App>,
    job: &QueuedTask,
    reference: &str,
    typed: &str,
) -> Result<Ensured, TaskError> {
    let (reference, typed) = (reference.to_string(), typed.to_string());
    // The conversion reads the image's mounted root filesystem, so it runs on a blade on this machine.
    let Some((blade, client)) = app.blades.iter().find(|(b, _)| b.ssh.is_none()) else {
        return Err(TaskError::User(
            UserError::new("sif.no_local_blade").arg("contact", &app.cfg.mattermost.contact),
        ));
    };
    let present = client
        .image_exists(&reference)
        .await
        .map_err(|e| TaskError::Retry(e.into()))?;
    if !present {
        match (app.registry.as_ref(), registry_repository(app, &reference)) {
            (Some(reg), Some(repo)) => {
                let cred = reg.pull_credential(&job.owner, &repo);
                if let Err(e) = client
                    .pull(&reference, &job.owner, &cred, !reg.cfg.insecure)
                    .await
                {
                    return Err(match e {
                        crate::podman::PodmanError::Unreachable { .. } => {
                            TaskError::Retry(e.into())
                        }
                        e => TaskError::User(sif_failed(app, job, &e)),
                    });
                }
            }
            _ => {
                return Err(TaskError::User(
                    UserError::new("image.not_found").arg("image", &typed),
                ))
            }
        }
    }
    let store = app.cfg.sif.store_dir.clone().unwrap_or_default();
    let tmp = app.cfg.sif.tmp_dir.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    let mut opts = crate::sif::convert::Options::new(
        &app.cfg.sif.compression,
        crate::sif::convert::Writer::configured(&app.cfg.sif),
    );
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    opts.progress = Some(tx);
    let reporter = tokio::spawn(report_progress(app.clone(), job.clone(), typed.clone(), rx));
    let converted =
        crate::sif::convert::convert(client.as_ref(), &reference, &store, &tmp, &opts).await;
    reporter.abort();
    let c = converted.map_err(|e| TaskError::User(sif_failed(app, job, &e)))?;
    // Readable by the one asking (authorised when the request came in), the image's owner and
    // those it is shared with; nobody else.
    let mut readers = vec![job.owner.clone()];
    if let Ok(img) = images::resolve_with(
        &typed,
        &job.owner,
        &app.cfg.images.allow,
        app.registry.as_ref().map(|r| r.cfg.host.as_str()),
    ) {
        if let images::Source::User(o) = &img.source {
            readers.push(o.clone());
        }
    }
    if let Some(repo) = registry_repository(app, &reference) {
        readers.extend(
            app.store
                .shared_with_of(&repo)
                .await
                .map_err(TaskError::Retry)?,
        );
    }
    let mut uids = Vec::new();
    let mut me = None;
    let mut claims = Vec::new();
    for r in readers {
        if let Ok(Some(a)) = app.directory.lookup(&r).await {
            uids.push(a.uid_number);
            claims.push((r.clone(), a.uid_number));
            if r == job.owner {
                me = Some(a);
            }
        }
    }
    let repo = registry_repository(app, &reference).unwrap_or_default();
    app.store
        .add_sif_readers(&c.path.display().to_string(), &repo, claims)
        .await
        .map_err(TaskError::Retry)?;
    crate::sif::acl::grant_read(&c.path, uids).map_err(|e| TaskError::Retry(e.into()))?;
    // The owner's name for it: a link to the content file, replaced atomically, in a
    // directory only they can list.
    let dir = store.join(&job.owner);
    std::fs::create_dir_all(&dir).map_err(|e| TaskError::Retry(e.into()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o711));
        if let Some(a) = &me {
            if unsafe { libc::geteuid() } == 0 {
                std::os::unix::fs::chown(&dir, Some(a.uid_number), Some(a.gid_number))
                    .map_err(|e| TaskError::Retry(e.into()))?;
            }
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| TaskError::Retry(e.into()))?;
    }
    let name = friendly_name(&reference);
    let link = dir.join(&name);
    let tmp_link = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let content = c
        .path
        .file_name()
        .map(|f| format!("../{}", f.to_string_lossy()))
        .unwrap_or_default();
    std::os::unix::fs::symlink(&content, &tmp_link).map_err(|e| TaskError::Retry(e.into()))?;
    std::fs::rename(&tmp_link, &link).map_err(|e| TaskError::Retry(e.into()))?;
    let size = std::fs::metadata(&c.path).map(|m| m.len()).unwrap_or(0);
    let file = c
        .path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    app.store
        .sif_touch(&file, size)
        .await
        .map_err(TaskError::Retry)?;
    let configured = app.cfg.sif.max_bytes.as_ref().map(|m| m.bytes);
    if let Some(max) = crate::sif::store::bound(&store, configured) {
        match crate::sif::store::evict(&app.store, &store, max, &file).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(?gone, "evicted least recently used SIF files")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "SIF eviction failed"),
        }
    }
    let cluster_root = app.cfg.sif.cluster_path.clone().unwrap_or(store.clone());
    let how = if c.cached {
        "already converted".to_string()
    } else {
        format!(
            "converted on `{}` in {:.1} s",
            blade.name,
            started.elapsed().as_secs_f64()
        )
    };
    Ok(Ensured {
        cluster_link: cluster_root.join(&job.owner).join(&name),
        cluster_content: cluster_root.join(&file),
        content: c.path.clone(),
        file,
        size,
        how,
    })
}

pub async fn key(app: &App) -> anyhow::Result<Vec<u8>> {
    Ok(app.store.service_secret("sif_link_key").await?.into_bytes())
}

/// Progress for long conversions: a note after 30 s, then every 2 minutes (the
/// response_url allows 5 posts, so at most two notes go there).
pub async fn report_progress(
    app: Arc<App>,
    job: QueuedTask,
    image: String,
    rx: tokio::sync::watch::Receiver<u64>,
) {
    let Some(target) = job.reply.clone() else {
        return;
    };
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_secs(30);
    for _ in 0..2 {
        tokio::time::sleep(wait).await;
        wait = std::time::Duration::from_secs(120);
        let text = render(
            Lang::En,
            "sif.progress",
            &[
                ("image", image.clone()),
                ("size", crate::containers::fmt_size(*rx.borrow())),
                ("seconds", started.elapsed().as_secs().to_string()),
            ],
        );
        let reply = crate::mattermost::Reply::new(&job.request_id, text, false);
        if let Err(e) = app.notifier.reply(&target, &reply).await {
            tracing::warn!(error = %e, "SIF progress note");
        }
    }
}

/// The signed message: the file (its name is the image digest), the user it was given to, the expiry.
pub fn sign(key: &[u8], file: &str, user: &str, exp: i64) -> String {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(format!("{file}\n{user}\n{exp}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

pub async fn download_url(app: &App, user: &str, file: String) -> anyhow::Result<String> {
    let exp = crate::store::now() + app.cfg.sif.link_ttl_seconds as i64;
    let sig = sign(&key(app).await?, &file, user, exp);
    Ok(format!(
        "{}/sif/{file}?user={user}&exp={exp}&sig={sig}",
        app.cfg.public_url()
    ))
}

/// Check a download link; the file's path if it is good.
pub async fn verify(
    app: &App,
    file: &str,
    user: &str,
    exp: i64,
    sig: &str,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let valid_name = file.len() < 120
        && file.ends_with(".sif")
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !file.starts_with('.');
    // Never more than 15 minutes ahead, whatever a link claims (the signature covers exp too).
    if !valid_name || exp < crate::store::now() || exp > crate::store::now() + 900 {
        return Ok(None);
    }
    let want = sign(&key(app).await?, file, user, exp);
    if !crate::config::Secret::new(want).matches(sig) {
        return Ok(None);
    }
    let p = app.cfg.sif.store_dir.clone().unwrap_or_default().join(file);
    if !p.is_file() {
        return Ok(None);
    }
    // Still a reader of it: a link given before the image was unshared stops working then.
    let Some(acc) = app.directory.lookup(user).await? else {
        return Ok(None);
    };
    let readers = crate::sif::acl::readers(&p).unwrap_or_default();
    Ok(readers.contains(&acc.uid_number).then_some(p))
}

/// A conversion that failed on our side: the reference, not the detail.
fn sif_failed(app: &App, job: &QueuedTask, e: &dyn std::fmt::Display) -> UserError {
    crate::error::internal(
        "command.failed_here",
        &job.request_id,
        &app.cfg.mattermost.contact,
        e,
    )
    .arg("command", "/container")
    .arg("sub", "sif")
}
