//! Reconciliation: compare what a blade runs (shisa-labelled containers) with
//! the database, and repair the difference. Runs at start, when a blade comes
//! back, and periodically. Work still queued or running is left to its job.

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::App;
use crate::containers::{is_other_instance, MANAGED_LABEL};
use crate::messages::{render, Lang};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Rows whose container vanished outside shisa: removed, leases released.
    pub removed_outside: u32,
    /// Rows that said running but the container had stopped.
    pub exited: u32,
    /// Rows left half-done by a crash (no job to finish them): cleaned up.
    pub abandoned: u32,
    /// Labelled containers the database does not know.
    pub unknown: u32,
    /// Of those, removed (with `reconcile.remove_unknown`).
    pub unknown_removed: u32,
}

pub async fn blade(app: &Arc<App>, blade: &str) -> anyhow::Result<Report> {
    let client = app
        .podman(blade)
        .ok_or_else(|| anyhow::anyhow!("no blade {blade}"))?;
    // Another installation's containers on a shared blade are its business.
    let listed: Vec<_> = client
        .list_labelled(MANAGED_LABEL)
        .await?
        .into_iter()
        .filter(|l| !is_other_instance(l.labels.as_ref(), &app.instance))
        .collect();
    let by_id: HashMap<&str, &crate::podman::Listed> =
        listed.iter().map(|l| (l.id.as_str(), l)).collect();
    let by_name: HashMap<String, &crate::podman::Listed> = listed
        .iter()
        .flat_map(|l| {
            l.names
                .iter()
                .map(move |n| (n.trim_start_matches('/').to_string(), l))
        })
        .collect();
    // A pool container restarted outside shisa has a new, open port on the pool's bridge.
    if let Some(b) = app.cfg.blades.iter().find(|b| b.name == blade) {
        super::containers::isolate_pool_ports(b);
    }
    let rows = app.store.containers_on(blade).await?;
    let mut rep = Report::default();
    let mut known = std::collections::HashSet::new();
    for row in &rows {
        let found = row
            .podman_id
            .as_deref()
            .and_then(|id| by_id.get(id))
            .or_else(|| by_name.get(&row.podman_name))
            .copied();
        if let Some(l) = found {
            known.insert(l.id.clone());
        }
        if app.store.has_open_job(row.id).await? {
            continue; // its job will finish or undo it
        }
        match (row.state.as_str(), found) {
            ("waiting", _) => {}
            ("pending", f) | ("removing", f) => {
                if let Some(l) = f {
                    let _ = client.remove(&l.id, true).await;
                }
                app.allocator.release(row.id).await?;
                app.store.delete_container(row.id).await?;
                rep.abandoned += 1;
                app.metrics.incr_labeled(
                    "reconcile_repairs",
                    &format!("blade=\"{blade}\",kind=\"abandoned\""),
                );
            }
            (_, None) => {
                app.allocator.release(row.id).await?;
                app.store.delete_container(row.id).await?;
                rep.removed_outside += 1;
                app.metrics.incr_labeled(
                    "reconcile_repairs",
                    &format!("blade=\"{blade}\",kind=\"removed_outside\""),
                );
                let t = render(
                    Lang::En,
                    "container.removed_outside",
                    &[("name", row.name.clone()), ("blade", blade.to_string())],
                );
                app.notifier
                    .notice(
                        &row.owner,
                        &t,
                        serde_json::json!({"shisa": {"notice": "removed_outside"}}),
                    )
                    .await;
            }
            ("running", Some(l)) if l.state != "running" => {
                // Died while nobody was watching (shisa down, events missed).
                crate::work::events::on_died(app, blade, &l.id, None).await?;
                rep.exited += 1;
                app.metrics.incr_labeled(
                    "reconcile_repairs",
                    &format!("blade=\"{blade}\",kind=\"exited\""),
                );
            }
            ("stopping", Some(l)) if l.state != "running" => {
                super::containers::mark_stopped(app, row.id, None, false).await?;
                app.allocator.release(row.id).await?;
                rep.exited += 1;
            }
            ("exited", Some(l)) if l.state == "running" => {
                // Started behind shisa's back: it holds no GPU lease, so it must not run with GPUs.
                if row.gpus > 0 {
                    let _ = client.stop(&l.id, app.cfg.containers.stop_timeout).await;
                } else {
                    app.store.mark_running(row.id, None).await?;
                }
            }
            _ => {}
        }
    }
    for l in &listed {
        if known.contains(&l.id) {
            continue;
        }
        // Labelled for another blade entry sharing this Podman? Then it is that blade's business.
        let lb = l
            .labels
            .as_ref()
            .and_then(|m| m.get("shisa.blade"))
            .map(String::as_str);
        if lb.is_some_and(|x| x != blade) {
            continue;
        }
        rep.unknown += 1;
        app.metrics
            .incr_labeled("reconcile_unknown", &format!("blade=\"{blade}\""));
        tracing::warn!(blade, id = %l.id, names = ?l.names, "a shisa-labelled container the database does not know");
        if app.cfg.reconcile.remove_unknown {
            client.remove(&l.id, true).await?;
            rep.unknown_removed += 1;
        }
    }
    if rep != Report::default() {
        tracing::info!(blade, ?rep, "reconciled");
        crate::work::containers::promote_waiting(app, blade).await;
    }
    Ok(rep)
}
