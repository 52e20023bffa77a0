//! The blade health loop: checks every blade, reconciles at start, when a blade comes
//! back and periodically; starts the SSH tunnels to remote blades.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::blades::Health;

use super::{reconcile, tunnels};

/// Check every blade once; returns the names that came up.
pub async fn check_all(app: &Arc<App>) -> Vec<String> {
    let mut came_up = Vec::new();
    for (b, client) in &app.blades {
        let h = match client.info().await {
            Ok(i) => Health {
                up: true,
                version: i.version,
                last_error: String::new(),
            },
            Err(e) => Health {
                up: false,
                version: String::new(),
                last_error: e.to_string(),
            },
        };
        let up = h.up;
        if app.health.set(&b.name, h.clone()) {
            if up {
                tracing::info!(blade = %b.name, "blade is up");
                came_up.push(b.name.clone());
            } else {
                tracing::warn!(blade = %b.name, error = %h.last_error, "blade is down");
            }
        }
    }
    came_up
}

pub fn spawn(
    app: Arc<App>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = tunnels::spawn_tunnels(&app, shutdown.clone());
    let a = app.clone();
    let mut sd = shutdown.clone();
    handles.push(tokio::spawn(async move {
        let every = Duration::from_secs(a.cfg.reconcile.health_seconds.max(1));
        let recon_every = Duration::from_secs(a.cfg.reconcile.interval_seconds.max(1));
        let mut last_recon = tokio::time::Instant::now();
        let mut first = true;
        loop {
            let came_up = check_all(&a).await;
            // At start, when a blade comes back, and periodically: reconcile.
            if first || !came_up.is_empty() || last_recon.elapsed() >= recon_every {
                for (b, _) in &a.blades {
                    if a.health.get(&b.name).up
                        && (first
                            || came_up.contains(&b.name)
                            || last_recon.elapsed() >= recon_every)
                    {
                        if let Err(e) = reconcile::blade(&a, &b.name).await {
                            tracing::error!(blade = %b.name, error = %e, "reconciliation failed");
                        }
                    }
                }
                if first || last_recon.elapsed() >= recon_every {
                    last_recon = tokio::time::Instant::now();
                }
                first = false;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = sd.wait_for(|v| *v) => return,
            }
        }
    }));
    handles
}
