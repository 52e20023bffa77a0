//! Workers for the durable queue. Each claims a job, runs it, delivers the
//! answer and records the outcome. On shutdown a job still running after the
//! grace period is put back, to be resumed by the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::handlers::{self, JobError};
use crate::mattermost::Reply;
use crate::messages::{render, Lang};
use crate::store::audit::NewAudit;
use crate::store::queue::{Outcome, QueuedJob};

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

async fn execute(app: &Arc<App>, job: &QueuedJob) -> Result<String, JobError> {
    match job.kind.as_str() {
        handlers::info::KIND => handlers::info::run(app, job).await,
        handlers::sif::KIND => handlers::sif::run(app, job).await,
        handlers::jobs::SUBMIT => handlers::jobs::submit_job(app, job).await,
        handlers::builds::EVENT => handlers::builds::event(app, job).await,
        handlers::builds::BUILD => handlers::builds::run(app, job).await,
        handlers::containers::RUN => handlers::containers::run_job(app, job).await,
        handlers::containers::STOP => handlers::containers::stop_job(app, job).await,
        handlers::containers::START => handlers::containers::start_job(app, job).await,
        handlers::containers::RM => handlers::containers::rm_job(app, job).await,
        handlers::containers::EXEC => handlers::containers::exec_job(app, job).await,
        other => Err(JobError::Retry(anyhow::anyhow!(
            "no handler for job kind {other}"
        ))),
    }
}

pub async fn process(app: &Arc<App>, job: QueuedJob) {
    use tracing::Instrument;
    let span = tracing::info_span!("job", id = job.id, kind = %job.kind, request = %job.request_id);
    process_in_span(app, job).instrument(span).await
}

async fn process_in_span(app: &Arc<App>, job: QueuedJob) {
    // Each claim counts an attempt, and so does a restart that finds the job cut off:
    // work that kills the service every time it runs stops after its attempts.
    let result = if job.attempts > job.max_attempts {
        Err(JobError::Retry(anyhow::anyhow!(
            "interrupted by a restart on each of its {} attempts; not run again",
            job.max_attempts
        )))
    } else {
        execute(app, &job).await
    };
    let (text, outcome, audit_outcome, error) = match result {
        Ok(text) => (Some(text), Outcome::Done, "ok", None),
        Err(JobError::Gone) => (None, Outcome::Done, "gone", None),
        Err(JobError::User(e)) => {
            let t = e.to_string();
            (Some(t.clone()), Outcome::Failed, "failed", Some(t))
        }
        Err(JobError::Retry(e)) if job.attempts < job.max_attempts => {
            let delay = 2i64.pow(job.attempts.min(6));
            tracing::warn!(error = %e, attempt = job.attempts, delay, "job failed; retrying");
            if let Err(e) = app.store.retry_later(job.id, &e.to_string(), delay).await {
                tracing::error!(error = %e, "could not schedule the retry");
            }
            return;
        }
        Err(JobError::Retry(e)) => {
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
