//! Workers for the durable queue. Each claims a job, runs it, delivers the
//! answer and records the outcome. On shutdown a job still running after the
//! grace period is put back, to be resumed by the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::mattermost::Reply;
use crate::messages::{render, Lang};
use crate::store::audit::NewAudit;
use crate::store::queue::{Outcome, QueuedTask};
use crate::work::tasks::Task;
use crate::work::{self, TaskError};

pub fn spawn(app: Arc<App>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..app.cfg.queue.workers)
        .map(|n| {
            let app = app.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { worker(n, app, shutdown).await })
        })
        .collect()
}

async fn worker(n: usize, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let grace = Duration::from_secs(app.cfg.server.shutdown_grace_seconds);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let job = match app.store.claim().await {
            Ok(Some(j)) => j,
            Ok(None) => {
                tokio::select! {
                    _ = app.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!(worker = n, error = %e, "cannot claim from the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let id = job.id;
        let mut sd = shutdown.clone();
        let finished = tokio::select! {
            _ = process(&app, job) => true,
            _ = async { let _ = sd.wait_for(|v| *v).await; tokio::time::sleep(grace).await } => false,
        };
        if !finished {
            tracing::warn!(
                job = id,
                "shutdown: job did not finish within the grace period; re-queued"
            );
            if let Err(e) = app.store.release(id).await {
                tracing::error!(job = id, error = %e, "could not re-queue; it will be recovered at the next start");
            }
        }
    }
}

async fn execute(app: &Arc<App>, job: &QueuedTask) -> Result<String, TaskError> {
    let task = Task::decode(job).map_err(|e| TaskError::Retry(e.into()))?;
    match task {
        Task::Info {} => work::info::run(app).await,
        Task::Sif { image, typed } => work::sif::run(app, job, &image, &typed).await,
        Task::SubmitJob { request, notes } => {
            work::job_submit::submit_job(app, job, request, notes).await
        }
        Task::GitlabEvent { event, body } => work::builds::event(app, &event, &body).await,
        Task::Build { build } => work::builds::run(app, build).await,
        Task::Run(t) => work::containers::run_job(app, job, &t).await,
        Task::Stop(t) => work::containers::stop_job(app, job, &t).await,
        Task::Start(t) => work::containers::start_job(app, job, &t).await,
        Task::Remove(t) => work::containers::rm_job(app, job, &t).await,
        Task::Exec(t) => work::containers::exec_job(app, job, &t).await,
    }
}

pub async fn process(app: &Arc<App>, job: QueuedTask) {
    use tracing::Instrument;
    let span = tracing::info_span!("job", id = job.id, kind = %job.kind, request = %job.request_id);
    process_in_span(app, job).instrument(span).await
}

async fn process_in_span(app: &Arc<App>, job: QueuedTask) {
    // Each claim counts an attempt, and so does a restart that finds the job cut off:
    // work that kills the service every time it runs stops after its attempts.
    let result = if job.attempts > job.max_attempts {
        Err(TaskError::Retry(anyhow::anyhow!(
            "interrupted by a restart on each of its {} attempts; not run again",
            job.max_attempts
        )))
    } else {
        execute(app, &job).await
    };
    let (text, outcome, audit_outcome, error) = match result {
        Ok(text) => (Some(text), Outcome::Done, "ok", None),
        Err(TaskError::Gone) => (None, Outcome::Done, "gone", None),
        Err(TaskError::User(e)) => {
            let t = e.to_string();
            (Some(t.clone()), Outcome::Failed, "failed", Some(t))
        }
        Err(TaskError::Retry(e)) if job.attempts < job.max_attempts => {
            let delay = 2i64.pow(job.attempts.min(6));
            tracing::warn!(error = %e, attempt = job.attempts, delay, "job failed; retrying");
            if let Err(e) = app.store.retry_later(job.id, &e.to_string(), delay).await {
                tracing::error!(error = %e, "could not schedule the retry");
            }
            return;
        }
        Err(TaskError::Retry(e)) => {
            tracing::error!(error = %e, "job failed for the last time");
            let target = job.reply.clone().unwrap_or_default();
            let t = render(
                Lang::En,
                "command.gave_up",
                &[
                    ("command", target.command.clone()),
                    ("sub", target.sub.clone()),
                    ("request", job.request_id.clone()),
                    ("attempts", job.attempts.min(job.max_attempts).to_string()),
                    ("contact", app.cfg.mattermost.contact.clone()),
                ],
            );
            (Some(t), Outcome::Failed, "failed", Some(e.to_string()))
        }
    };
    if let (Some(text), Some(target)) = (text, &job.reply) {
        let reply = Reply::new(&job.request_id, text, true);
        match app.notifier.reply(target, &reply).await {
            Ok(how) => tracing::info!(?how, "answer delivered"),
            Err(e) => tracing::error!(error = %e, "answer could not be delivered"),
        }
    }
    if let Err(e) = app.store.finish(job.id, outcome, error.as_deref()).await {
        tracing::error!(error = %e, "could not record the job's end");
    }
    let action = job.kind.clone();
    let _ = app
        .store
        .audit(NewAudit {
            request_id: Some(&job.request_id),
            actor: &job.owner,
            role: "",
            action: &action,
            resource: None,
            outcome: audit_outcome,
            detail: error.as_deref(),
        })
        .await;
}
