//! `/container sif IMAGE`: convert an image to a SIF for Slurm (once per
//! image digest), link it under the owner's name, and hand out a download link.

use std::sync::Arc;

use crate::app::App;
use crate::identity::Account;
use crate::images;
use crate::messages::UserError;
use crate::store::queue::ReplyTarget;

use super::containers::Handled;
pub use crate::work::sif::*;

pub async fn handle(
    app: &Arc<App>,
    caller: &Account,
    raw: &str,
    target: ReplyTarget,
    request: &str,
) -> anyhow::Result<Handled> {
    let registry_host = app.registry.as_ref().map(|r| r.cfg.host.as_str());
    let reject = |e: UserError| Handled {
        reply: crate::mattermost::Reply::new(request, e.to_string(), true),
        outcome: "rejected",
        resource: None,
    };
    let image = match images::resolve_with(raw, &caller.uid, &app.cfg.images.allow, registry_host) {
        Ok(i) => i,
        Err(e) => return Ok(reject(e.arg("contact", &app.cfg.mattermost.contact))),
    };
    if !super::containers::may_use_image(app, caller, &image).await? {
        return Ok(reject(UserError::new("image.not_found").arg("image", raw)));
    }
    crate::work::enqueue(
        app,
        crate::work::tasks::Task::Sif {
            image: image.reference.clone(),
            typed: raw.to_string(),
        },
        &caller.uid,
        request,
        Some(target),
    )
    .await?;
    let t = crate::messages::Message::new("command.accepted")
        .arg("command", "/container")
        .arg("sub", "sif")
        .arg("request", request);
    Ok(Handled {
        reply: crate::mattermost::Reply::new(request, t.to_string(), false),
        outcome: "queued",
        resource: Some(format!("image:{}", image.reference)),
    })
}
