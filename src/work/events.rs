//! Watching the blades: containers that die on their own (exit, out of
//! memory) are recorded and their owners told; GPU containers past their
//! lifetime are stopped.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::app::App;
use crate::containers::{fmt_size, MANAGED_LABEL};
use crate::messages::{render, Lang};
use crate::work::tasks::{ContainerTask, Task};

pub fn spawn(
    app: Arc<App>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for (blade, _) in app.blades.clone() {
        let app = app.clone();
        let mut sd = shutdown.clone();
        handles.push(tokio::spawn(async move {
            tokio::select! {
                _ = watch_blade(&app, &blade.name) => {}
                _ = sd.wait_for(|v| *v) => {}
            }
        }));
    }
    let app2 = app.clone();
    let mut sd = shutdown.clone();
    handles.push(tokio::spawn(async move {
        tokio::select! {
            _ = expiry_loop(&app2) => {}
            _ = sd.wait_for(|v| *v) => {}
        }
    }));
    handles
}

async fn watch_blade(app: &Arc<App>, blade: &str) {
    loop {
        let Some(client) = app.podman(blade) else {
            return;
        };
        match client.died_events(MANAGED_LABEL).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    if let Err(e) = on_died(app, blade, &ev.id, ev.exit_code).await {
                        tracing::error!(error = %e, blade, "handling a died event");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, blade, "event stream unavailable"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A container stopped without shisa asking: record it, free its GPUs, tell its owner.
pub async fn on_died(
    app: &Arc<App>,
    blade: &str,
    podman_id: &str,
    exit_code: Option<i32>,
) -> anyhow::Result<()> {
    let Some(row) = app.store.container_by_podman_id(blade, podman_id).await? else {
        return Ok(());
    };
    if row.state != "running" {
        return Ok(()); // stopping, removing, or a start that failed: shisa's own doing
    }
    let client = app
        .podman(blade)
        .ok_or_else(|| anyhow::anyhow!("no blade {blade}"))?;
    let st = client.inspect(podman_id).await?;
    if st.as_ref().is_some_and(|s| s.running) {
        return Ok(()); // restarted already
    }
    let code = st.as_ref().map(|s| s.exit_code).or(exit_code);
    let oom = st.as_ref().is_some_and(|s| s.oom_killed);
    super::containers::mark_stopped(app, row.id, code, oom).await?;
    app.allocator.release(row.id).await?;
    crate::work::containers::promote_waiting(app, blade).await;
    let tail = client
        .logs(podman_id, 10)
        .await
        .unwrap_or_default()
        .text
        .replace("```", "'''");
    // Podman reports OOMKilled only where conmon can see the cgroup's OOM events
    // (not on cgroup v1 hybrid hosts); a SIGKILL nobody asked for is then the tell.
    let oom_text = if oom {
        render(
            Lang::En,
            "container.died_oom",
            &[("memory", fmt_size(row.memory))],
        )
    } else if code == Some(137) {
        render(
            Lang::En,
            "container.died_sigkill",
            &[("memory", fmt_size(row.memory))],
        )
    } else {
        String::new()
    };
    let text = render(
        Lang::En,
        "container.died",
        &[
            ("name", row.name.clone()),
            ("blade", blade.to_string()),
            (
                "code",
                code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            ),
            ("oom", oom_text),
            ("tail", tail.trim_end().to_string()),
        ],
    );
    app.notifier
        .direct(
            &row.owner,
            None,
            &text,
            &serde_json::json!({"shisa": {"notice": "container_died", "container": row.name}}),
        )
        .await?;
    Ok(())
}

async fn expiry_loop(app: &Arc<App>) {
    loop {
        tokio::time::sleep(Duration::from_secs(app.cfg.containers.sweep_seconds.max(1))).await;
        if let Err(e) = stop_expired(app).await {
            tracing::error!(error = %e, "stopping expired containers");
        }
    }
}

/// Queue a stop for every GPU container past its lifetime; its owner is told by DM.
pub async fn stop_expired(app: &Arc<App>) -> anyhow::Result<usize> {
    let rows = app.store.expired_containers().await?;
    for r in &rows {
        let task = Task::Stop(ContainerTask {
            container: r.id,
            actor: "shisa".into(),
            expired: true,
            ..Default::default()
        });
        // Its deadline stays (a restart does not renew GPU time).
        super::containers::queue_for_service(app, r, task, "/container", "expire").await?;
    }
    if !rows.is_empty() {
        super::wake(app);
    }
    Ok(rows.len())
}
