//! Per-project GitLab runners, started only when there is work: `build
//! enable --runner` creates a project runner through the API (locked to the
//! project, tagged `shisa`) and keeps its token sealed at rest; a Job Hook
//! with a pending job starts one runner container on a blade (one job, then it
//! exits), in its own user namespace, under the owner's limits, with a
//! generated `config.toml` mounted read-only, and never the blade's Podman
//! socket. `build disable` deletes the runner on both sides.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::gitlab::client::{self, Gitlab};
use crate::gitlab::hooks;
use crate::messages::{render, Lang, UserError};
use crate::store::gitlab::ProjectRow;

use super::TaskError;

/// The label on runner containers (never `shisa.managed`: they are not users' containers).
pub const LABEL: &str = "shisa.runner";

fn key(app: &App) -> anyhow::Result<[u8; 32]> {
    let g = app
        .cfg
        .gitlab
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no gitlab"))?;
    crate::sealing::key(&g.runner_key_file)
}

pub use crate::sealing::{open, seal};

/// A FIFO only the runner's root (`owner` on the host) may open.
fn make_fifo(path: &std::path::Path, owner: u32) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(owner), Some(owner))?;
    }
    Ok(())
}

/// Write `bytes` to the FIFO once its reader has opened it, then close it (the reader gets
/// end of file). Any later reader finds no writer: nothing more is ever written.
pub fn hand_over(path: &std::path::Path, bytes: &[u8], within: Duration) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let until = std::time::Instant::now() + within;
    loop {
        // Non-blocking: ENXIO while nobody has it open for reading.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(bytes)?;
                return Ok(());
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO) && std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Create the project's runner (as the maintainer enabling it) and seal its token.
pub async fn create(
    app: &App,
    as_user: &dyn Gitlab,
    project: u64,
    owner: &str,
) -> Result<(u64, Vec<u8>), UserError> {
    let description = format!("shisa: {owner}'s builds, started on demand");
    let (id, token) = as_user
        .create_runner(project, &description)
        .await
        .map_err(|e| {
            UserError::new("build.project_unreachable")
                .arg("project", project.to_string())
                .arg("reason", client::explain(&e))
        })?;
    let sealed = key(app)
        .and_then(|k| seal(&k, &token))
        .map_err(|e| build_failed(app, &e))?;
    Ok((id, sealed))
}

/// Setting up a project's runner failed on our side: a fresh reference in the log.
fn build_failed(app: &App, e: &dyn std::fmt::Display) -> UserError {
    let reference = format!("runner-{}", uuid::Uuid::new_v4().simple());
    crate::error::internal(
        "command.failed_here",
        &reference,
        &app.cfg.mattermost.contact,
        e,
    )
    .arg("command", "/container")
    .arg("sub", "build")
}

/// The runner containers of this installation (a blade may be shared).
fn ours(app: &App, list: Vec<crate::podman::Listed>) -> Vec<crate::podman::Listed> {
    list.into_iter()
        .filter(|x| !crate::containers::is_other_instance(x.labels.as_ref(), &app.instance))
        .collect()
}

/// Delete the runner in GitLab and any runner container on the blades.
pub async fn delete(app: &App, as_user: &dyn Gitlab, p: &ProjectRow) {
    if let Some(id) = p.runner_id {
        if let Err(e) = as_user.delete_runner(id).await {
            tracing::warn!(runner = id, error = %client::explain(&e), "could not delete the runner in GitLab");
        }
    }
    for (_, c) in &app.blades {
        if let Ok(list) = c.list_labelled(&format!("{LABEL}={}", p.project_id)).await {
            for x in ours(app, list) {
                let _ = c.remove(&x.id, true).await;
            }
        }
    }
}

/// The runner's `config.toml`: one runner, one job at a time, shell executor.
pub fn config_toml(gitlab_url: &str, name: &str, token: &str) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    format!(
        "concurrent = 1\ncheck_interval = 3\n\n[[runners]]\n  name = {}\n  url = {}\n  token = {}\n  executor = \"shell\"\n  limit = 1\n",
        q(name),
        q(gitlab_url),
        q(token)
    )
}

fn project_lock(project: u64) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(project)
        .or_default()
        .clone()
}

/// A Job Hook: a pending job of a runner project starts that project's runner, once.
pub async fn on_job(app: &Arc<App>, j: &hooks::Job) -> Result<(), TaskError> {
    if j.build_status != "pending" {
        return Ok(());
    }
    let Some(p) = app
        .store
        .gitlab_project(j.project_id)
        .await
        .map_err(TaskError::Retry)?
    else {
        return Ok(());
    };
    start(app, &p, j.build_id).await
}

/// Start the project's runner unless one is up (one at a time per project, however many
/// hooks arrive together).
pub async fn start(app: &Arc<App>, p: &ProjectRow, for_job: u64) -> Result<(), TaskError> {
    let Some(g) = app.cfg.gitlab.as_ref() else {
        return Err(TaskError::Gone);
    };
    if p.mode != "runner" || p.broken.is_some() {
        return Ok(());
    }
    let lock = project_lock(p.project_id);
    let _one = lock.lock().await;
    let Some((blade, client)) = app.blades.iter().find(|(b, _)| b.ssh.is_none()) else {
        return Err(TaskError::Retry(anyhow::anyhow!(
            "no blade on this machine for runners"
        )));
    };
    let label = format!("{LABEL}={}", p.project_id);
    let existing = ours(
        app,
        client
            .list_labelled(&label)
            .await
            .map_err(|e| TaskError::Retry(e.into()))?,
    );
    if existing
        .iter()
        .any(|c| c.state == "running" || c.state == "created")
    {
        return Ok(()); // its runner is already up; it takes the next job
    }
    for x in existing {
        let _ = client.remove(&x.id, true).await;
    }
    let token = match (key(app), p.runner_token.as_ref()) {
        (Ok(k), Some(s)) => open(&k, s).map_err(TaskError::Retry)?,
        _ => {
            return Err(TaskError::Retry(anyhow::anyhow!(
                "no runner token for project {}",
                p.project_id
            )))
        }
    };
    // A token GitLab no longer knows: the project is broken until re-enabled, and its owner is told.
    // GitLab asks runners for a system id ("s_" and 12 hex digits): one per project here.
    let system_id = format!("s_{:012x}", p.project_id);
    let api = app.gitlab.as_deref().ok_or(TaskError::Gone)?;
    if let Err(e) = api.verify_runner(&token, &system_id).await {
        let why = client::explain(&e);
        if why.contains("not allowed") || why.contains("does not exist") {
            app.store
                .mark_project_broken(p.project_id, &why)
                .await
                .map_err(TaskError::Retry)?;
            let text = render(
                Lang::En,
                "build.runner_broken",
                &[("project", p.path.clone())],
            );
            app.notifier
                .notice(
                    &p.owner,
                    &text,
                    serde_json::json!({"shisa": {"notice": "runner_broken"}}),
                )
                .await;
            return Ok(());
        }
        return Err(TaskError::Retry(anyhow::anyhow!(why)));
    }
    let owner = app
        .directory
        .lookup(&p.owner)
        .await
        .map_err(|e| TaskError::Retry(e.into()))?
        .ok_or(TaskError::Gone)?;
    let limits = app.cfg.limits_for(owner.role);
    let name = format!("shisa-runner-{}", p.project_id);
    let dir: PathBuf = app
        .cfg
        .data_dir
        .join("runners")
        .join(p.project_id.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| TaskError::Retry(e.into()))?;
    // The config (with the runner token) is handed over through a FIFO, read once: the
    // runner's `run-single --runner` loads its config file once, at start (gitlab-runner's
    // commands/single.go HandleArgs), before it asks GitLab for a job; the CI job then runs as
    // the same user inside, and a file would still be there for it to read.
    // Handovers that never happened (a runner that did not start) leave their FIFO behind.
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("config") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let conf = dir.join(format!("config-{}.toml", uuid::Uuid::new_v4().simple()));
    make_fifo(&conf, g.runner_uid_base).map_err(TaskError::Retry)?;
    let memory = limits.max_memory.bytes;
    let spec = serde_json::json!({
        "name": format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        "image": g.runner_image,
        "labels": {LABEL: p.project_id.to_string(), "shisa.runner.owner": p.owner, crate::containers::INSTANCE_LABEL: app.instance},
        "command": ["gitlab-runner", "run-single", "--config", "/etc/gitlab-runner/config.toml", "--runner", name, "--max-builds", "1", "--wait-timeout", "600"],
        "mounts": [{"destination": "/etc/gitlab-runner/config.toml", "type": "bind", "source": conf, "options": ["ro", "nosuid", "nodev"]}],
        "idmappings": {
            "uidmap": [{"container_id": 0, "host_id": g.runner_uid_base, "size": 65536}],
            "gidmap": [{"container_id": 0, "host_id": g.runner_uid_base, "size": 65536}]
        },
        "userns": {"nsmode": "private"},
        "no_new_privileges": true,
        "resource_limits": {
            "memory": {"limit": memory, "swap": memory},
            "cpu": {"quota": (limits.max_cpus * 100_000.0) as i64, "period": 100000},
            "pids": {"limit": 4096}
        },
        "remove": true
    });
    let id = client
        .create(&spec)
        .await
        .map_err(|e| TaskError::Retry(e.into()))?;
    client
        .start(&id)
        .await
        .map_err(|e| TaskError::Retry(e.into()))?;
    let text = config_toml(&g.url, &name, &token);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = hand_over(&conf, text.as_bytes(), Duration::from_secs(60)) {
            tracing::warn!(error = %e, "the runner did not read its config");
        }
        let _ = std::fs::remove_file(&conf);
    });
    tracing::info!(project = p.project_id, blade = %blade.name, job = for_job, "runner started for a pending job");
    Ok(())
}

/// Keep GitLab, the database and the blades in agreement: a runner project with pending
/// jobs and no runner gets one (a runner takes one job and exits, so a second pending job
/// is picked up here); runner containers of projects no longer in runner mode go.
pub async fn reconcile(app: &Arc<App>) -> anyhow::Result<()> {
    let Some(api) = app.gitlab.as_ref() else {
        return Ok(());
    };
    let projects = app.store.runner_projects().await?;
    let mut busy = std::collections::HashSet::new();
    for (_, c) in &app.blades {
        if let Ok(list) = c.list_labelled(LABEL).await {
            for x in ours(app, list) {
                let id = x
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL))
                    .and_then(|v| v.parse::<u64>().ok());
                match id {
                    Some(id) if projects.contains(&id) => {
                        if x.state == "running" || x.state == "created" {
                            busy.insert(id);
                        }
                    }
                    _ => {
                        let _ = c.remove(&x.id, true).await;
                    }
                }
            }
        }
    }
    // A project whose runner is up needs no look at GitLab: that runner takes the next job.
    for id in projects.into_iter().filter(|id| !busy.contains(id)) {
        let Some(p) = app.store.gitlab_project(id).await? else {
            continue;
        };
        if p.broken.is_some() {
            continue;
        }
        match api.for_user(&p.gitlab_user).pending_jobs(id).await {
            Ok(jobs) => {
                if let Some(j) = jobs.first() {
                    if let Err(e) = start(app, &p, *j).await {
                        tracing::warn!(project = id, error = ?e, "could not start a runner");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(project = id, error = %client::explain(&e), "cannot list pending jobs")
            }
        }
    }
    Ok(())
}

pub fn spawn(
    app: Arc<App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(g) = app.cfg.gitlab.as_ref() else {
        return Vec::new();
    };
    let every = std::time::Duration::from_secs(g.runner_reconcile_seconds);
    vec![tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            if let Err(e) = reconcile(&app).await {
                tracing::warn!(error = %e, "reconciling runners");
            }
        }
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_key() {
        let k = [7u8; 32];
        let s = seal(&k, "glrt-abc").unwrap();
        assert!(
            !s.windows(8).any(|w| w == b"glrt-abc"),
            "not stored in clear"
        );
        assert_eq!(open(&k, &s).unwrap(), "glrt-abc");
        assert!(open(&[8u8; 32], &s).is_err());
        assert!(open(&k, &s[..5]).is_err());
    }

    #[test]
    fn config_is_quoted() {
        let c = config_toml("https://gitlab.test", "shisa-runner-7", "glrt-\"x");
        assert!(c.contains("token = \"glrt-\\\"x\"") && c.contains("concurrent = 1"));
    }
}
