//! `/job`: batch jobs on Slurm in the user's SIF image. `submit` checks and
//! queues (acknowledged at once); the queued job converts the image if
//! needed, writes the job directory and script as the owner, and submits
//! with sbatch as the owner. `ps`, `logs`, `cancel` only ever see the
//! caller's own jobs: another user's job id answers "no job ID".

use std::path::Path;
use std::sync::Arc;

use crate::access::{authorize, Action, Resource, ResourceRef};
use crate::app::App;
use crate::commands::typed::{JobCommand, SubmitArgs};
use crate::identity::Account;
use crate::messages::{render, Lang, UserError};
use crate::store::jobs::JobRow;
use crate::store::queue::ReplyTarget;
use crate::work::{self, tasks::Task};

use super::containers::Handled;
use crate::work::job_submit::*;

fn reply(request: &str, text: String, outcome: &'static str) -> Handled {
    Handled {
        reply: crate::mattermost::Reply::new(request, text, true),
        outcome,
        resource: None,
    }
}

pub async fn handle(
    app: &Arc<App>,
    caller: &Account,
    command: JobCommand,
    target: ReplyTarget,
    request_id: &str,
) -> anyhow::Result<Handled> {
    let Some(sched) = app.scheduler.clone() else {
        return Ok(reply(
            request_id,
            UserError::new("job.no_slurm")
                .arg("contact", &app.cfg.mattermost.contact)
                .to_string(),
            "unavailable",
        ));
    };
    let (id, logs_tail) = match command {
        JobCommand::Submit(args) => {
            return submit(app, caller, &args, sched, target, request_id).await
        }
        JobCommand::Ps(listing) => {
            let owners = match super::listed_owners(app, caller, &listing, "/job").await? {
                Ok(o) => o,
                Err(e) => return Ok(reply(request_id, e.to_string(), "denied")),
            };
            let mut rows = Vec::new();
            for o in &owners {
                rows.extend(app.store.jobs_of(o, listing.all).await?);
            }
            rows.sort_by_key(|j| std::cmp::Reverse(j.slurm_id));
            return Ok(reply(request_id, ps_table(&rows), "ok"));
        }
        JobCommand::Logs { job, tail, .. } => (job, Some(tail.unwrap_or(100))),
        JobCommand::Cancel { job, .. } => (job, None),
        JobCommand::Templates | JobCommand::Whoami => {
            return Ok(reply(
                request_id,
                UserError::new("command.not_available")
                    .arg("command", "/job")
                    .arg("sub", "?")
                    .to_string(),
                "unavailable",
            ))
        }
    };
    let id = id.as_str();
    // One answer for "does not exist" and "not yours", so ids reveal nothing.
    let row = match id.parse::<u64>() {
        Ok(n) => app.store.job(n).await?,
        Err(_) => None,
    };
    let row = match row {
        Some(j) => {
            let owner_groups = super::owner_groups(app, caller, &j.owner).await;
            let action = if logs_tail.is_some() {
                Action::View
            } else {
                Action::Modify
            };
            let d = authorize(
                caller,
                action,
                &Resource::Owned(ResourceRef {
                    kind: "job",
                    name: id,
                    owner: &j.owner,
                    shared_with: &[],
                    owner_groups: &owner_groups,
                }),
                &app.cfg.courses,
            );
            d.allowed().then_some(j)
        }
        None => None,
    };
    let Some(row) = row else {
        return Ok(reply(
            request_id,
            UserError::new("job.not_found").arg("id", id).to_string(),
            "rejected",
        ));
    };
    if let Some(n) = logs_tail {
        let owner = if row.owner == caller.uid {
            caller.clone()
        } else {
            match app.directory.lookup(&row.owner).await.ok().flatten() {
                Some(a) => a,
                None => {
                    return Ok(reply(
                        request_id,
                        UserError::new("job.not_found").arg("id", id).to_string(),
                        "rejected",
                    ))
                }
            }
        };
        let text = match read_as(&owner, &Path::new(&row.dir).join("output.log"), n).await {
            Ok(t) if t.trim().is_empty() => {
                render(Lang::En, "job.log_empty", &[("id", id.to_string())])
            }
            Ok(t) => format!("```\n{}\n```", t.trim_end()),
            Err(e) => render(
                Lang::En,
                "job.log_unreadable",
                &[("id", id.to_string()), ("reason", e)],
            ),
        };
        return Ok(reply(request_id, text, "ok"));
    }
    if row.done {
        return Ok(reply(
            request_id,
            render(
                Lang::En,
                "job.already_ended",
                &[("id", id.to_string()), ("state", row.state)],
            ),
            "ok",
        ));
    }
    match sched.cancel(row.slurm_id).await {
        Ok(()) => Ok(reply(
            request_id,
            render(Lang::En, "job.cancelled", &[("id", id.to_string())]),
            "ok",
        )),
        Err(crate::slurm::SlurmError::Refused(e)) => Ok(reply(
            request_id,
            UserError::new("job.slurm_refused")
                .arg("reason", e)
                .to_string(),
            "failed",
        )),
        Err(e) => {
            tracing::warn!(request = request_id, error = %e, "scancel failed");
            Ok(reply(
                request_id,
                UserError::new("job.slurm_down").to_string(),
                "failed",
            ))
        }
    }
}

async fn submit(
    app: &Arc<App>,
    caller: &Account,
    args: &SubmitArgs,
    sched: Arc<dyn crate::slurm::Scheduler>,
    target: ReplyTarget,
    request_id: &str,
) -> anyhow::Result<Handled> {
    // A course's environment: its image as applied, for its members only.
    let with_course;
    let args = match &args.course {
        Some(id) => {
            if args.image.is_some() || args.template.is_some() {
                return Ok(reply(
                    request_id,
                    UserError::new("course.job_one_image").to_string(),
                    "rejected",
                ));
            }
            match super::courses::image_for(app, caller, id).await? {
                Ok(image) => {
                    with_course = SubmitArgs {
                        image: Some(image),
                        ..args.clone()
                    };
                    &with_course
                }
                Err(e) => return Ok(reply(request_id, e.to_string(), "rejected")),
            }
        }
        None => args,
    };
    let (req, notes, image) = match request(app, caller, args) {
        Ok(x) => x,
        Err(e) => return Ok(reply(request_id, e.to_string(), "rejected")),
    };
    if !super::containers::may_use_image(app, caller, &image).await? {
        return Ok(reply(
            request_id,
            UserError::new("image.not_found")
                .arg("image", &req.typed)
                .to_string(),
            "rejected",
        ));
    }
    if args.dry_run {
        let sl = app.cfg.slurm.as_ref().expect("slurm is configured");
        let dir = caller.home.join(&sl.jobs_dir).join("ID");
        let sif = app
            .cfg
            .sif
            .cluster_path
            .clone()
            .unwrap_or(app.cfg.sif.store_dir.clone().unwrap_or_default())
            .join(&caller.uid)
            .join(super::sif::friendly_name(&req.image));
        let script =
            job_script(app, &req, &caller.home, &dir, &sif).map_err(|e| anyhow::anyhow!(e))?;
        let submit = req.submit(caller, &dir, String::new(), String::new());
        let text = render(
            Lang::En,
            "job.dry_run",
            &[
                ("args", submit.args().join(" ")),
                ("script", script),
                ("notes", notes.join("; ")),
            ],
        );
        return Ok(reply(request_id, text, "dry-run"));
    }
    // Slurm down: say so now, queue nothing.
    if let Err(e) = sched.ping().await {
        tracing::warn!(request = request_id, error = %e, "Slurm did not answer a ping");
        let e = UserError::new("job.slurm_down");
        return Ok(reply(request_id, e.to_string(), "unavailable"));
    }
    let max = app.cfg.limits_for(caller.role).max_jobs;
    let task = Task::SubmitJob {
        request: req.clone(),
        notes,
    }
    .owned(
        &caller.uid,
        request_id,
        Some(target),
        app.cfg.queue.max_attempts,
    );
    if let Err(held) = app.store.enqueue_job_capped(task, max).await? {
        let e = UserError::new("job.too_many").arg("held", held.to_string());
        return Ok(reply(request_id, e.to_string(), "rejected"));
    }
    work::wake(app);
    let ack = crate::messages::Message::new("command.accepted")
        .arg("command", "/job")
        .arg("sub", "submit")
        .arg("request", request_id);
    Ok(Handled {
        reply: crate::mattermost::Reply::new(request_id, ack.to_string(), false),
        outcome: "queued",
        resource: Some(format!("image:{}", req.image)),
    })
}

fn ps_table(rows: &[JobRow]) -> String {
    if rows.is_empty() {
        return render(Lang::En, "job.none", &[]);
    }
    let mut t = String::from(
        "| id | name | state | reason / start | elapsed | GPUs |\n|---|---|---|---|---|---|\n",
    );
    for j in rows {
        let why = if j.state == "PENDING" {
            let start = if j.start_time > 0 {
                format!(", est. start {}", crate::registry::rfc3339(j.start_time))
            } else {
                String::new()
            };
            format!("{}{start}", j.reason)
        } else {
            String::new()
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            j.slurm_id,
            j.name,
            j.state,
            why,
            elapsed(j),
            j.gpus
        ));
    }
    t
}
