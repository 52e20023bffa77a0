//! Workers for the durable queue. Each claims a task, runs it, delivers the
//! answer and records the outcome. On shutdown a task still running after the
//! grace period is put back, to be resumed by the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::mattermost::Reply;
use crate::messages::{render, Lang};
use crate::store::audit::NewAudit;
use crate::store::queue::{Outcome, QueuedTask};
use crate::work::tasks::{Lane, Task};
use crate::work::{self, TaskError};

/// Each lane's workers (`[queue]`).
pub fn spawn(app: Arc<App>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let q = &app.cfg.queue;
    let mut handles = Vec::new();
    for (lane, count) in [
        (Lane::Quick, q.quick_workers),
        (Lane::Slow, q.slow_workers),
        (Lane::Slurm, q.slurm_workers),
    ] {
        for n in 0..count {
            let app = app.clone();
            let shutdown = shutdown.clone();
            handles.push(tokio::spawn(
                async move { worker(lane, n, app, shutdown).await },
            ));
        }
    }
    handles
}

async fn worker(lane: Lane, n: usize, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let grace = Duration::from_secs(app.cfg.server.shutdown_grace_seconds);
    let bell = &app.wake[lane.index()];
    loop {
        if *shutdown.borrow() {
            break;
        }
        let task = match app
            .store
            .claim(lane.as_str(), app.cfg.queue.per_blade)
            .await
        {
            Ok(Some((j, waited))) => {
                app.metrics
                    .observe("queue_wait_seconds", lane.as_str(), waited as f64);
                // More may be ready (a batch, or one held back by its blade): let a
                // sleeping colleague look too.
                bell.notify_one();
                j
            }
            Ok(None) => {
                tokio::select! {
                    _ = bell.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!(lane = lane.as_str(), worker = n, error = %e, "cannot claim from the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let id = task.id;
        let mut sd = shutdown.clone();
        let finished = tokio::select! {
            _ = process(&app, task) => true,
            _ = async { let _ = sd.wait_for(|v| *v).await; tokio::time::sleep(grace).await } => false,
        };
        // A blade's slot is free again: a task held back for it may go now.
        bell.notify_one();
        if !finished {
            tracing::warn!(
                task = id,
                "shutdown: task did not finish within the grace period; re-queued"
            );
            if let Err(e) = app.store.release(id).await {
                tracing::error!(task = id, error = %e, "could not re-queue; it will be recovered at the next start");
            }
        }
    }
}

async fn execute(app: &Arc<App>, row: &QueuedTask) -> Result<String, TaskError> {
    let task = Task::decode(row).map_err(|e| TaskError::Retry(e.into()))?;
    match task {
        Task::Info {} => work::info::run(app).await,
        Task::Sif { image, typed } => work::sif::run(app, row, &image, &typed).await,
        Task::SubmitJob { request, notes } => {
            work::job_submit::submit_job(app, row, request, notes).await
        }
        Task::GitlabEvent { event, body } => work::builds::event(app, &event, &body).await,
        Task::Build { build } => work::builds::run(app, build).await,
        Task::Run(t) => work::containers::run(app, row, &t).await,
        Task::Stop(t) => work::containers::stop(app, row, &t).await,
        Task::Start(t) => work::containers::start(app, row, &t).await,
        Task::Remove(t) => work::containers::remove(app, row, &t).await,
        Task::Exec(t) => work::containers::exec(app, row, &t).await,
    }
}

pub async fn process(app: &Arc<App>, task: QueuedTask) {
    use tracing::Instrument;
    let span =
        tracing::info_span!("task", id = task.id, kind = %task.kind, request = %task.request_id);
    process_in_span(app, task).instrument(span).await
}

async fn process_in_span(app: &Arc<App>, task: QueuedTask) {
    // Each claim counts an attempt, and so does a restart that finds the task cut off:
    // work that kills the service every time it runs stops after its attempts.
    let result = if task.attempts > task.max_attempts {
        Err(TaskError::Retry(anyhow::anyhow!(
            "interrupted by a restart on each of its {} attempts; not run again",
            task.max_attempts
        )))
    } else {
        execute(app, &task).await
    };
    let (text, outcome, audit_outcome, error) = match result {
        Ok(text) => (Some(text), Outcome::Done, "ok", None),
        Err(TaskError::Gone) => (None, Outcome::Done, "gone", None),
        Err(TaskError::User(e)) => {
            let t = e.to_string();
            (Some(t.clone()), Outcome::Failed, "failed", Some(t))
        }
        Err(TaskError::Retry(e)) if task.attempts < task.max_attempts => {
            let delay = 2i64.pow(task.attempts.min(6));
            tracing::warn!(error = %e, attempt = task.attempts, delay, "task failed; retrying");
            if let Err(e) = app.store.retry_later(task.id, &e.to_string(), delay).await {
                tracing::error!(error = %e, "could not schedule the retry");
            }
            return;
        }
        Err(TaskError::Retry(e)) => {
            tracing::error!(error = %e, "task failed for the last time");
            let target = task.reply.clone().unwrap_or_default();
            let t = render(
                Lang::En,
                "command.gave_up",
                &[
                    ("command", target.command.clone()),
                    ("sub", target.sub.clone()),
                    ("request", task.request_id.clone()),
                    ("attempts", task.attempts.min(task.max_attempts).to_string()),
                    ("contact", app.cfg.mattermost.contact.clone()),
                ],
            );
            (Some(t), Outcome::Failed, "failed", Some(e.to_string()))
        }
    };
    // Recorded as ended before the answer goes out: a kill between the two then loses at
    // most the moment it takes to send, where the other order answers twice (the restart
    // runs the task again and says it is done) whenever the kill lands after the user
    // already has the answer.
    if let Err(e) = app.store.finish(task.id, outcome, error.as_deref()).await {
        tracing::error!(error = %e, "could not record the task's end");
    }
    if let (Some(text), Some(target)) = (text, &task.reply) {
        let reply = Reply::new(&task.request_id, text, true);
        match app.notifier.reply(target, &reply).await {
            Ok(how) => tracing::info!(?how, "answer delivered"),
            Err(e) => tracing::error!(error = %e, "answer could not be delivered"),
        }
    }
    let action = task.kind.clone();
    let _ = app
        .store
        .audit(NewAudit {
            request_id: Some(&task.request_id),
            actor: &task.owner,
            role: "",
            action: &action,
            resource: None,
            outcome: audit_outcome,
            detail: error.as_deref(),
        })
        .await;
}
