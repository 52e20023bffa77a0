//! `/container info`: ask every blade's Podman for its version and counts.
//! Queued, because a blade can be slow or down.

use std::sync::Arc;

use crate::app::App;
use crate::messages::{render, Lang};

use super::TaskError;

pub async fn run(app: &Arc<App>) -> Result<String, TaskError> {
    let mut lines = vec![render(Lang::En, "info.header", &[])];
    for (blade, client) in &app.blades {
        match client.info().await {
            Ok(i) => lines.push(render(
                Lang::En,
                "info.blade_up",
                &[
                    ("blade", blade.name.clone()),
                    ("version", i.version),
                    ("containers", i.containers.to_string()),
                    ("images", i.images.to_string()),
                ],
            )),
            Err(e) => {
                tracing::warn!(blade = %blade.name, error = %e, "blade did not answer /container info");
                lines.push(render(
                    Lang::En,
                    "info.blade_down",
                    &[("blade", blade.name.clone())],
                ))
            }
        }
    }
    Ok(lines.join("\n"))
}
