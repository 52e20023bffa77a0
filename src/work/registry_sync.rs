//! Registry sync: the image table compared with the registry and repaired, periodically.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::registry::client::Manifest;
use crate::registry::owner_of;
use crate::store::images::ImageRow;

/// Compare the image table with the registry and repair it. Returns (added or changed, removed).
pub async fn sync(app: &Arc<App>) -> anyhow::Result<(usize, usize)> {
    let Some(reg) = app.registry.as_ref() else {
        return Ok((0, 0));
    };
    let c = reg.client();
    // A tag recorded (by its push notification) after the catalog walk began is not missing
    // from the registry, only from this walk: it stays. Deleting it under-counted quotas.
    let started = crate::store::now();
    let mut seen = std::collections::HashSet::new();
    let mut changed = 0;
    for repo in c.catalog().await? {
        let Some(owner) = owner_of(&repo) else {
            continue;
        };
        for tag in c.tags(&repo).await? {
            let Some(Manifest { digest, size, .. }) = c.manifest(&repo, &tag).await? else {
                continue;
            };
            seen.insert((repo.clone(), tag.clone()));
            let known = app.store.image(&repo, &tag).await?;
            if known
                .as_ref()
                .is_none_or(|k| k.digest != digest || k.size != size)
            {
                let pushed_at = known.map(|k| k.pushed_at).unwrap_or_else(crate::store::now);
                app.store
                    .upsert_image(ImageRow {
                        repository: repo.clone(),
                        tag,
                        owner: owner.clone(),
                        digest,
                        size,
                        pushed_at,
                    })
                    .await?;
                changed += 1;
            }
        }
    }
    let mut removed = 0;
    for i in app.store.all_images().await? {
        if !seen.contains(&(i.repository.clone(), i.tag.clone())) && i.pushed_at < started {
            app.store.delete_image_tag(&i.repository, &i.tag).await?;
            removed += 1;
        }
    }
    if changed + removed > 0 {
        tracing::info!(changed, removed, "registry sync repaired the image table");
        app.metrics
            .incr_labeled("registry_sync_repairs", "kind=\"all\"");
    }
    Ok((changed, removed))
}

/// Uploads still in no image after the grace: if an image of the owner's holds the layer
/// (its push notification was lost), it counts with the image; otherwise it is an abandoned
/// or hostile upload, unlinked from the registry so it stops counting. Returns how many went.
pub async fn prune_uploads(app: &Arc<App>) -> anyhow::Result<usize> {
    let Some(reg) = app.registry.as_ref() else {
        return Ok(0);
    };
    let c = reg.client();
    let before = crate::store::now() - reg.cfg.upload_grace_seconds as i64;
    let stale = app.store.stale_uploads(before).await?;
    let mut held: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    let mut removed = 0;
    for (repo, digest, owner) in stale {
        if !held.contains_key(&owner) {
            let mut blobs = std::collections::HashSet::new();
            for i in app.store.all_images().await? {
                if i.owner == owner {
                    if let Some(m) = c.manifest(&i.repository, &i.digest).await? {
                        blobs.extend(m.blobs);
                    }
                }
            }
            held.insert(owner.clone(), blobs);
        }
        if !held[&owner].contains(&digest) {
            c.delete_blob(&repo, &digest).await?;
            removed += 1;
        }
        app.store.forget_upload(&repo, &digest).await?;
    }
    if removed > 0 {
        tracing::info!(removed, "removed uploads that no image holds");
        app.metrics
            .incr_labeled("registry_sync_repairs", "kind=\"upload\"");
    }
    Ok(removed)
}

pub fn spawn_sync(
    app: Arc<App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = Duration::from_secs(app.registry.as_ref()?.cfg.sync_seconds);
    Some(tokio::spawn(async move {
        loop {
            if let Err(e) = sync(&app).await {
                tracing::warn!(error = %e, "registry sync failed");
            }
            if let Err(e) = prune_uploads(&app).await {
                tracing::warn!(error = %e, "pruning loose registry uploads failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }))
}
