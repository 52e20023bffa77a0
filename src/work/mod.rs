//! Work done after the answer: the durable queue's tasks and the background loops
//! (reconciliation, blade health, the event watch, the Slurm poll, registry sync, CI
//! runners). It calls the domain and the adapters, never the handlers.

pub mod builds;
pub mod containers;
pub mod courses;
pub mod events;
pub mod health;
pub mod info;
pub mod job_submit;
pub mod reclaim;
pub mod reconcile;
pub mod registry_sync;
pub mod runners;
pub mod sif;
pub mod slurm_jobs;
pub mod tasks;
pub mod tunnels;
pub mod workers;

use crate::messages::UserError;

/// How a queued task ended badly.
#[derive(Debug)]
pub enum TaskError {
    /// The user's request cannot be done; tell them why. Not retried.
    User(UserError),
    /// Something outside broke (a blade, the network); try again later.
    Retry(anyhow::Error),
    /// What the job was about no longer exists (removed meanwhile): done, nobody to tell.
    Gone,
}

impl From<UserError> for TaskError {
    fn from(e: UserError) -> Self {
        TaskError::User(e)
    }
}

/// Queue a task and wake a worker: the one place work is queued outside a transaction.
/// (`store::containers` and `store::gitlab` queue a task inside theirs, from
/// [`tasks::Task::owned`]; their callers then call [`wake`].)
pub async fn enqueue(
    app: &crate::app::App,
    task: tasks::Task,
    owner: &str,
    request_id: &str,
    reply: Option<crate::store::queue::ReplyTarget>,
) -> anyhow::Result<i64> {
    let id = app
        .store
        .enqueue(task.owned(owner, request_id, reply, app.cfg.queue.max_attempts))
        .await?;
    wake(app);
    Ok(id)
}

/// Wake an idle worker of each lane: a task was queued (a worker woken for nothing
/// looks once and sleeps again).
pub fn wake(app: &crate::app::App) {
    for bell in &app.wake {
        bell.notify_one();
    }
}
