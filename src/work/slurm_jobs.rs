//! Tracking Slurm jobs: one batched `squeue` for every job not yet ended
//! (jittered, every `slurm.poll_seconds`), state kept in SQLite so it survives
//! restarts, and one message to the owner when a job ends. A Slurm error is
//! transient: it never marks a job failed. Without accounting storage a
//! finished job leaves Slurm's view after MinJobAge; then the exit code the
//! job script wrote in the job directory tells how it ended.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::messages::{render, Lang};
use crate::store::jobs::JobRow;
use crate::work::tasks::{ContainerTask, Task};

pub fn spawn(
    app: Arc<App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(sl) = app.cfg.slurm.clone() else {
        return Vec::new();
    };
    vec![tokio::spawn(async move {
        let base = sl.poll_seconds * 1000;
        loop {
            // Jitter (up to a fifth of the period) so many shisas never poll Slurm in step.
            let jitter = (uuid::Uuid::new_v4().as_u128() % (base as u128 / 5 + 1)) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(base + jitter)) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            if let Err(e) = poll_once(&app).await {
                tracing::warn!(error = %e, "polling Slurm");
            }
            if sl.gpu_containers {
                if let Err(e) = holders_once(&app).await {
                    tracing::warn!(error = %e, "checking GPU allocations");
                }
            }
        }
    })]
}

/// One round: update every open job; handle the ends. Returns how many ended.
pub async fn poll_once(app: &Arc<App>) -> anyhow::Result<usize> {
    let Some(sched) = app.scheduler.clone() else {
        return Ok(0);
    };
    let open = app.store.open_jobs().await?;
    if open.is_empty() {
        return Ok(0);
    }
    let ids: Vec<u64> = open.iter().map(|j| j.slurm_id).collect();
    let states = match sched.states(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Slurm did not answer; job states unchanged");
            return Ok(0);
        }
    };
    let mut ended = 0;
    for j in open {
        match states.get(&j.slurm_id) {
            Some(st) if !st.finished() => {
                if st.state != j.state || st.reason != j.reason || st.start_time != j.start_time {
                    app.store.update_job(j.slurm_id, st).await?;
                }
            }
            Some(st) => {
                app.store.update_job(j.slurm_id, st).await?;
                if end(app, &j, &st.state, st.exit_code).await? {
                    ended += 1;
                }
            }
            None => {
                if end(app, &j, "", None).await? {
                    ended += 1;
                }
            }
        }
    }
    Ok(ended)
}

async fn end(app: &Arc<App>, j: &JobRow, state: &str, code: Option<i32>) -> anyhow::Result<bool> {
    let Some(account) = app.directory.lookup(&j.owner).await? else {
        return app
            .store
            .close_job(
                j.slurm_id,
                if state.is_empty() { "ENDED" } else { state },
                code,
            )
            .await;
    };
    let dir = Path::new(&j.dir);
    // What the job script recorded wins over Slurm's view (which may be gone).
    let written = crate::work::job_submit::read_as(&account, &dir.join("exit-code"), 1)
        .await
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let code = written.or(code);
    let state = match (state, code) {
        ("", Some(0)) => "COMPLETED",
        ("", Some(_)) => "FAILED",
        ("", None) => "ENDED",
        (s, _) => s,
    };
    if !app.store.close_job(j.slurm_id, state, code).await? {
        return Ok(false);
    }
    let log = crate::work::job_submit::read_as(&account, &dir.join("output.log"), 15)
        .await
        .unwrap_or_else(|e| format!("(the output cannot be read: {e})"));
    let row = app
        .store
        .job(j.slurm_id)
        .await?
        .unwrap_or_else(|| j.clone());
    let ran = match crate::work::job_submit::elapsed(&row) {
        e if e.is_empty() => "—".to_string(),
        e => e,
    };
    let text = render(
        Lang::En,
        "job.ended",
        &[
            ("id", j.slurm_id.to_string()),
            ("name", j.name.clone()),
            ("state", state.to_string()),
            (
                "code",
                code.map(|c| c.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            ),
            ("elapsed", ran),
            ("log", log.trim_end().to_string()),
        ],
    );
    app.notifier
        .notice(
            &j.owner,
            &text,
            serde_json::json!({"shisa": {"job": j.slurm_id}}),
        )
        .await;
    Ok(true)
}

/// GPU containers on Slurm nodes: start waiting ones whose allocation began,
/// stop running ones whose allocation ended (time limit, cancelled), and tell
/// their owners. Returns how many were stopped.
pub async fn holders_once(app: &Arc<App>) -> anyhow::Result<usize> {
    let Some(sched) = app.scheduler.clone() else {
        return Ok(0);
    };
    for b in &app.cfg.blades {
        crate::work::containers::promote_waiting(app, &b.name).await;
    }
    let holders = app.store.gpu_holders().await?;
    if holders.is_empty() {
        return Ok(0);
    }
    let ids: Vec<u64> = holders.iter().map(|h| h.1).collect();
    let Ok(states) = sched.states(&ids).await else {
        return Ok(0); // Slurm not answering: change nothing
    };
    let mut stopped = 0;
    for (cid, hid) in holders {
        let alive = states.get(&hid).is_some_and(|s| !s.finished());
        if alive {
            continue;
        }
        let Some(row) = app.store.container(cid).await? else {
            continue;
        };
        if row.state != "running" {
            continue;
        }
        let target = crate::store::queue::ReplyTarget::to_user(&row.owner, "/container", "stop");
        let task = Task::Stop(ContainerTask {
            container: cid,
            actor: "shisa".into(),
            allocation_ended: true,
            ..Default::default()
        });
        app.store
            .enqueue(task.owned(
                &row.owner,
                &format!("allocation-ended-{cid}-{hid}"),
                Some(target),
                app.cfg.queue.max_attempts,
            ))
            .await?;
        // So the next round does not queue it twice.
        app.store.take_gpu_holder(cid).await?;
        super::wake(app);
        stopped += 1;
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::slurm::{JobState, Scheduler, SlurmError, Submit};

    /// Slurm as the poller sees it, scripted: down, or these states.
    struct Scripted(Mutex<Option<HashMap<u64, JobState>>>);

    #[async_trait]
    impl Scheduler for Scripted {
        async fn submit(&self, _: &Submit) -> Result<u64, SlurmError> {
            Err(SlurmError::Down("scripted".into()))
        }
        async fn states(&self, _: &[u64]) -> Result<HashMap<u64, JobState>, SlurmError> {
            self.0
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| SlurmError::Down("Unable to contact slurm controller".into()))
        }
        async fn cancel(&self, _: u64) -> Result<(), SlurmError> {
            Ok(())
        }
        async fn node_gpus(&self, _: &str) -> Result<(u32, u32), SlurmError> {
            Ok((0, 0))
        }
        async fn ping(&self) -> Result<(), SlurmError> {
            Ok(())
        }
        async fn find(&self, _: &str) -> Result<Option<(u64, String)>, SlurmError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_slurm_outage_never_fails_a_job_and_the_end_is_told_once() {
        let dir = tempfile::tempdir().unwrap();
        let users = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo-users.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n[mattermost]\ntokens = [\"t\"]\nlinking = \"username\"\ncontact = \"admins\"\n[directory]\nsource = \"static\"\nusers_file = {:?}\n[[blades]]\nname = \"local\"\npodman_socket = \"/nonexistent.sock\"\naddress = \"127.0.0.1\"\n[slurm]\n",
            dir.path().join("data").display().to_string(),
            users.display().to_string()
        );
        let cfg = crate::config::Config::from_str(&text, &dir.path().join("shisa.toml")).unwrap();
        let mut app = App::new(cfg).unwrap();
        let script = Arc::new(Scripted(Mutex::new(None)));
        Arc::get_mut(&mut app).unwrap().scheduler = Some(script.clone());
        app.store
            .insert_job(JobRow {
                slurm_id: 42,
                owner: "alice".into(),
                name: "train".into(),
                image: "tools:1".into(),
                sif: "x.sif".into(),
                dir: dir.path().join("nowhere").display().to_string(),
                gpus: String::new(),
                state: "RUNNING".into(),
                reason: String::new(),
                exit_code: None,
                submitted_at: 0,
                start_time: 0,
                end_time: 0,
                node: String::new(),
                done: false,
            })
            .await
            .unwrap();
        // Slurm does not answer: nothing changes, however often we ask.
        for _ in 0..3 {
            assert_eq!(poll_once(&app).await.unwrap(), 0);
        }
        let j = app.store.job(42).await.unwrap().unwrap();
        assert_eq!((j.state.as_str(), j.done), ("RUNNING", false));
        // It answers: the job ended with exit code 3; its owner is told once.
        let ended = JobState {
            state: "FAILED".into(),
            exit_code: Some(3),
            start_time: 100,
            end_time: 160,
            ..Default::default()
        };
        *script.0.lock().unwrap() = Some(HashMap::from([(42, ended)]));
        assert_eq!(poll_once(&app).await.unwrap(), 1);
        assert_eq!(poll_once(&app).await.unwrap(), 0, "no open job left");
        let j = app.store.job(42).await.unwrap().unwrap();
        assert_eq!(
            (j.state.as_str(), j.exit_code, j.done),
            ("FAILED", Some(3), true)
        );
        let dm = app.store.outbox_take("alice").unwrap();
        assert_eq!(dm.len(), 1);
        assert!(
            dm[0].message.contains("exit code 3") && dm[0].message.contains("0:01:00"),
            "{}",
            dm[0].message
        );
        let pins: i64 = app
            .store
            .with(|c| c.query_row("SELECT COUNT(*) FROM sif_pins", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(pins, 0, "its SIF is released");
    }
}
