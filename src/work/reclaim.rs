//! Taking back what nobody uses (issue "reclaim and fair queues"): stopped containers
//! after `remove_stopped_after`, running ones after `max_lifetime` or `idle_after` without
//! CPU or GPU use, each warned first by DM with the one command that prevents it
//! (`/container extend`); pool addresses of stopped containers; runs that waited
//! `max_wait` for room; and on each blade, images nobody ran for `prune_images_after`.
//! The decisions are `containers::reclaim`'s; this module samples, tells and acts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::containers::reclaim::{self, Reason, Step};
use crate::messages::{render, Lang};
use crate::store::audit::NewAudit;
use crate::store::containers::ContainerRow;
use crate::values::human_duration;
use crate::work::tasks::{ContainerTask, Task};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub warned: usize,
    pub stopped: usize,
    pub removed: usize,
    pub gave_up: usize,
    pub addresses: usize,
}

/// What one prune of a blade did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pruned {
    pub images: usize,
    pub bytes: u64,
}

pub fn spawn(
    app: Arc<App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_prune = 0i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(app.cfg.reclaim.check_seconds.max(1))) => {}
                _ = shutdown.changed() => return,
            }
            match sweep(&app).await {
                Ok(r) if r != Report::default() => tracing::info!(?r, "reclaim sweep"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reclaim sweep"),
            }
            let now = app.now();
            if now - last_prune >= app.cfg.reclaim.prune_seconds as i64 {
                last_prune = now;
                for (blade, _) in &app.blades {
                    if !app.health.get(&blade.name).up {
                        continue;
                    }
                    match prune_images(&app, &blade.name).await {
                        Ok(p) => {
                            tracing::info!(blade = %blade.name, images = p.images, bytes = p.bytes, "image prune")
                        }
                        Err(e) => tracing::warn!(blade = %blade.name, error = %e, "image prune"),
                    }
                }
            }
        }
    })
}

async fn audit(app: &App, row: &ContainerRow, action: &str, detail: &str) {
    let _ = app
        .store
        .audit(NewAudit {
            request_id: None,
            actor: "shisa",
            role: "service",
            action,
            resource: Some(&format!("container:{}/{}", row.owner, row.name)),
            outcome: "ok",
            detail: Some(detail),
        })
        .await;
}

/// One sweep: usage samples, warnings, stops and removals, waits that gave up, addresses.
pub async fn sweep(app: &Arc<App>) -> anyhow::Result<Report> {
    let now = app.now();
    let cfg = &app.cfg.reclaim;
    let mut report = Report::default();
    let mut roles = HashMap::new();
    for mut row in app.store.reclaimable().await? {
        if row.state == "running" {
            sample(app, &mut row, now).await;
        }
        let role = match roles.get(&row.owner) {
            Some(r) => *r,
            None => {
                // The directory is down: decide nothing about this owner this round.
                let Ok(r) = super::containers::role_of(app, &row.owner).await else {
                    continue;
                };
                roles.insert(row.owner.clone(), r);
                r
            }
        };
        let limits = app.cfg.limits_for(role);
        match reclaim::step(&row, &limits, cfg, now) {
            Step::Nothing => {}
            Step::Warn { due, keep_until } => {
                let key = match due.reason {
                    Reason::Stale => "reclaim.warn_remove",
                    Reason::Lifetime => "reclaim.warn_lifetime",
                    Reason::Idle => "reclaim.warn_idle",
                };
                let text = render(
                    Lang::En,
                    key,
                    &[
                        ("name", row.name.clone()),
                        ("left", human_duration(due.at - now)),
                        (
                            "after",
                            human_duration(match due.reason {
                                Reason::Stale => limits.remove_stopped_after.secs as i64,
                                Reason::Lifetime => limits.max_lifetime.secs as i64,
                                Reason::Idle => limits.idle_after.secs as i64,
                            }),
                        ),
                        ("max", limits.max_extend.to_string()),
                    ],
                );
                app.notifier
                    .notice(
                        &row.owner,
                        &text,
                        serde_json::json!({"shisa": {"notice": "reclaim_warning", "container": row.name, "reason": due.reason.as_str()}}),
                    )
                    .await;
                app.store
                    .set_warned(row.id, &due.mark(), keep_until)
                    .await?;
                audit(app, &row, "container.reclaim_warning", due.reason.as_str()).await;
                report.warned += 1;
            }
            Step::Act(due) => {
                let t = ContainerTask {
                    container: row.id,
                    actor: "shisa".into(),
                    reclaimed: due.reason.as_str().into(),
                    ..Default::default()
                };
                let task = if due.reason.removes() {
                    Task::Remove(t)
                } else {
                    Task::Stop(t)
                };
                super::containers::queue_for_service(app, &row, task, "/container", "reclaim")
                    .await?;
                audit(app, &row, "container.reclaim", due.reason.as_str()).await;
                app.metrics
                    .incr_labeled("reclaimed", &format!("reason=\"{}\"", due.reason.as_str()));
                if due.reason.removes() {
                    report.removed += 1;
                } else {
                    report.stopped += 1;
                }
            }
        }
    }
    // Runs that waited too long for room.
    for w in app
        .store
        .waits_older_than(now - cfg.max_wait.secs as i64)
        .await?
    {
        super::containers::discard(app, &w).await;
        let text = render(
            Lang::En,
            "container.wait_gave_up",
            &[
                ("name", w.name.clone()),
                ("blade", w.blade.clone()),
                ("max_wait", cfg.max_wait.to_string()),
            ],
        );
        app.notifier
            .notice(
                &w.owner,
                &text,
                serde_json::json!({"shisa": {"notice": "wait_gave_up", "container": w.name}}),
            )
            .await;
        audit(app, &w, "container.wait_gave_up", "max_wait").await;
        app.metrics.incr_labeled("reclaimed", "reason=\"wait\"");
        report.gave_up += 1;
    }
    if let Some(after) = &cfg.release_address_after {
        report.addresses = app
            .store
            .release_stopped_ips(now - after.secs as i64)
            .await?;
    }
    // A promotion missed (a crash between a stop and its promotion) is made up here.
    for (b, _) in &app.blades {
        super::containers::promote_waiting(app, &b.name).await;
    }
    if report.stopped + report.removed > 0 {
        super::wake(app);
    }
    Ok(report)
}

/// Sample a running container's use (recorded, and in `row`); it counts as active when its
/// CPU use since the last sample is at least `idle_cpu_percent` of one CPU, or a GPU of its
/// is busy.
async fn sample(app: &Arc<App>, row: &mut ContainerRow, now: i64) {
    let (Some(pid), Ok((blade, client))) =
        (&row.podman_id, super::containers::blade_of(app, &row.blade))
    else {
        return;
    };
    let gpus = app.store.gpus_of(row.id).await.unwrap_or_default();
    let s = match app.usage.sample(blade, client, pid, &gpus).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, container = row.id, "no usage sample");
            return;
        }
    };
    let cpu_active = match (row.sampled_at, row.cpu_seen, s.cpu_nanos) {
        (Some(t), Some(cpu), Some(now_cpu)) => !reclaim::was_idle(
            cpu as u64,
            now_cpu,
            now - t,
            app.cfg.reclaim.idle_cpu_percent,
        ),
        _ => false,
    };
    let active = cpu_active || s.gpu_busy == Some(true);
    if let Err(e) = app
        .store
        .record_sample(row.id, now, s.cpu_nanos, active)
        .await
    {
        tracing::warn!(error = %e, "usage sample not recorded");
        return;
    }
    row.sampled_at = Some(now);
    if let Some(c) = s.cpu_nanos {
        row.cpu_seen = Some(c as i64);
    }
    if active {
        row.active_at = Some(now);
    }
}

/// Remove the images on a blade that no container uses and nobody ran for
/// `prune_images_after`; never a course's current image.
pub async fn prune_images(app: &Arc<App>, blade: &str) -> anyhow::Result<Pruned> {
    let (_, client) = super::containers::blade_of(app, blade)?;
    let now = app.now();
    let after = app.cfg.reclaim.prune_images_after.secs as i64;
    let (used, held) = app.store.blade_image_use(blade).await?;
    let courses = app.store.current_course_images().await?;
    let mut out = Pruned::default();
    for img in client.list_images().await? {
        let names = img.names.clone().unwrap_or_default();
        let kept = |n: &String| held.contains(n) || courses.contains(n);
        if img.containers > 0 || names.iter().any(kept) {
            continue;
        }
        // A course image pulled by digest is listed under its repository's name only.
        if courses.iter().any(|c| {
            c.split_once('@').is_some_and(|(repo, _)| {
                names
                    .iter()
                    .any(|n| n.starts_with(&format!("{repo}:")) || n == repo)
            })
        }) {
            continue;
        }
        let last = names
            .iter()
            .filter_map(|n| used.get(n).copied())
            .max()
            .unwrap_or(img.created);
        if now - last < after {
            continue;
        }
        match client.remove_image(&img.id).await {
            Ok(()) => {
                out.images += 1;
                out.bytes += img.size;
                for n in &names {
                    let _ = app.store.forget_blade_image(blade, n).await;
                }
                tracing::info!(blade, image = ?names, bytes = img.size, "pruned an image nobody ran");
            }
            // In use after all (a container made meanwhile): kept.
            Err(e) => tracing::debug!(blade, error = %e, "image kept"),
        }
    }
    app.metrics.add_labeled(
        "pruned_images",
        &format!("blade=\"{}\"", crate::metrics::esc(blade)),
        out.images as u64,
    );
    app.metrics.add_labeled(
        "pruned_bytes",
        &format!("blade=\"{}\"", crate::metrics::esc(blade)),
        out.bytes,
    );
    Ok(out)
}
