//! GitLab deliveries (deduplicated), enabled projects and builds.

use rusqlite::{params, OptionalExtension};

use super::queue::{enqueue_tx, OwnedTask};
use super::{now, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectRow {
    pub project_id: u64,
    pub path: String,
    pub owner: String,
    pub hook_id: Option<u64>,
    pub gitlab_user: String,
    pub mode: String,
    pub runner_id: Option<u64>,
    /// Sealed; `crate::work::runners::open_token` opens it.
    pub runner_token: Option<Vec<u8>>,
    pub broken: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildRow {
    pub id: i64,
    pub project_id: u64,
    pub path: String,
    pub owner: String,
    pub sha: String,
    pub git_ref: String,
    pub trigger: String,
    pub state: String,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub size: Option<i64>,
    pub blade: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

fn build_row(r: &rusqlite::Row) -> rusqlite::Result<BuildRow> {
    Ok(BuildRow {
        id: r.get(0)?,
        project_id: r.get::<_, i64>(1)? as u64,
        path: r.get(2)?,
        owner: r.get(3)?,
        sha: r.get(4)?,
        git_ref: r.get(5)?,
        trigger: r.get(6)?,
        state: r.get(7)?,
        image: r.get(8)?,
        digest: r.get(9)?,
        size: r.get(10)?,
        blade: r.get(11)?,
        detail: r.get(12)?,
        created_at: r.get(13)?,
        finished_at: r.get(14)?,
    })
}

const BUILD_COLS: &str = "id, project_id, path, owner, sha, git_ref, trigger, state, image, digest, size, blade, detail, created_at, finished_at";

impl Store {
    /// The project's own webhook secret, sealed (None: its hook has the global token).
    pub async fn set_hook_secret(&self, project_id: u64, sealed: &str) -> anyhow::Result<()> {
        let v = sealed.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE gitlab_projects SET hook_secret = ?2 WHERE project_id = ?1",
                rusqlite::params![project_id as i64, v],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn hook_secret(&self, project_id: u64) -> anyhow::Result<Option<String>> {
        self.call(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT hook_secret FROM gitlab_projects WHERE project_id = ?1",
                [project_id as i64],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
        })
        .await
    }

    /// Record a delivery and queue its processing, once per key: false when seen before.
    pub async fn accept_delivery(
        &self,
        key: &str,
        kind: &str,
        job: OwnedTask,
    ) -> anyhow::Result<bool> {
        let (k, kd) = (key.to_string(), kind.to_string());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO gitlab_deliveries(key, kind, received) VALUES (?1, ?2, ?3)",
                params![k, kd, now()],
            )?;
            if n == 1 {
                enqueue_tx(&tx, &job)?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn gitlab_project(&self, project_id: u64) -> anyhow::Result<Option<ProjectRow>> {
        self.call(move |c| {
            c.query_row(
                "SELECT project_id, path, owner, hook_id, mode, gitlab_user, runner_id, runner_token, broken FROM gitlab_projects WHERE project_id = ?1",
                [project_id as i64],
                |r| {
                    Ok(ProjectRow {
                        project_id: r.get::<_, i64>(0)? as u64,
                        path: r.get(1)?,
                        owner: r.get(2)?,
                        hook_id: r.get::<_, Option<i64>>(3)?.map(|h| h as u64),
                        mode: r.get(4)?,
                        gitlab_user: r.get(5)?,
                        runner_id: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                        runner_token: r.get(7)?,
                        broken: r.get(8)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    pub async fn enable_project(&self, p: ProjectRow) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO gitlab_projects(project_id, path, owner, hook_id, mode, enabled_at, gitlab_user, runner_id, runner_token, broken) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)
                 ON CONFLICT(project_id) DO UPDATE SET path = excluded.path, owner = excluded.owner, hook_id = excluded.hook_id, mode = excluded.mode, gitlab_user = excluded.gitlab_user, runner_id = excluded.runner_id, runner_token = excluded.runner_token, broken = excluded.broken",
                params![p.project_id as i64, p.path, p.owner, p.hook_id.map(|h| h as i64), p.mode, now(), p.gitlab_user, p.runner_id.map(|v| v as i64), p.runner_token, p.broken],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn disable_project(&self, project_id: u64) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM gitlab_projects WHERE project_id = ?1",
                [project_id as i64],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn mark_project_broken(&self, project_id: u64, why: &str) -> anyhow::Result<()> {
        let w = why.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE gitlab_projects SET broken = ?2 WHERE project_id = ?1",
                params![project_id as i64, w],
            )
        })
        .await?;
        Ok(())
    }

    /// Projects built by their own runner.
    pub async fn runner_projects(&self) -> anyhow::Result<Vec<u64>> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT project_id FROM gitlab_projects WHERE mode = 'runner'")?;
            let v = st
                .query_map([], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v.into_iter().map(|x| x as u64).collect())
        })
        .await
    }

    /// True the first time only: whether to tell someone how to enable this project.
    pub async fn first_notice(&self, project_id: u64) -> anyhow::Result<bool> {
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO gitlab_notices(project_id, at) VALUES (?1, ?2)",
                params![project_id as i64, now()],
            )
        })
        .await
        .map(|n| n == 1)
    }

    /// A new build; queued builds of the same project it replaces are marked superseded.
    pub async fn new_build(
        &self,
        b: BuildRow,
        job: impl FnOnce(i64) -> OwnedTask + Send + 'static,
    ) -> anyhow::Result<i64> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE builds SET state = 'superseded', finished_at = ?2 WHERE project_id = ?1 AND state = 'queued'",
                params![b.project_id as i64, now()],
            )?;
            tx.execute(
                "INSERT INTO builds(project_id, path, owner, sha, git_ref, trigger, state, created_at) VALUES (?1,?2,?3,?4,?5,?6,'queued',?7)",
                params![b.project_id as i64, b.path, b.owner, b.sha, b.git_ref, b.trigger, now()],
            )?;
            let id = tx.last_insert_rowid();
            enqueue_tx(&tx, &job(id))?;
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    pub async fn build(&self, id: i64) -> anyhow::Result<Option<BuildRow>> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {BUILD_COLS} FROM builds WHERE id = ?1"),
                [id],
                build_row,
            )
            .optional()
        })
        .await
    }

    /// Start a queued build (or resume one a restart interrupted) unless another build of
    /// its project is running: false means wait.
    pub async fn start_build(&self, id: i64, blade: &str) -> anyhow::Result<bool> {
        let b = blade.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE builds SET state = 'running', blade = ?2, started_at = ?3 WHERE id = ?1 AND state IN ('queued', 'running')
                 AND NOT EXISTS (SELECT 1 FROM builds o WHERE o.project_id = builds.project_id AND o.state = 'running' AND o.id != builds.id)",
                params![id, b, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn finish_build(
        &self,
        id: i64,
        state: &str,
        image: Option<&str>,
        digest: Option<&str>,
        size: Option<i64>,
        detail: &str,
    ) -> anyhow::Result<()> {
        let v = (
            state.to_string(),
            image.map(str::to_string),
            digest.map(str::to_string),
            size,
            detail.to_string(),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE builds SET state = ?2, image = ?3, digest = ?4, size = ?5, detail = ?6, finished_at = ?7 WHERE id = ?1",
                params![id, v.0, v.1, v.2, v.3, v.4, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// A build a CI job runs (recorded when it asks for its push token), once per job.
    pub async fn record_ci_build(
        &self,
        project_id: u64,
        path: &str,
        owner: &str,
        sha: &str,
        git_ref: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let v = (
            path.to_string(),
            owner.to_string(),
            sha.to_string(),
            git_ref.to_string(),
            detail.to_string(),
        );
        self.call(move |c| {
            let seen: i64 = c.query_row(
                "SELECT COUNT(*) FROM builds WHERE project_id = ?1 AND trigger = 'ci' AND detail = ?2",
                params![project_id as i64, v.4],
                |r| r.get(0),
            )?;
            if seen == 0 {
                c.execute(
                    "INSERT INTO builds(project_id, path, owner, sha, git_ref, trigger, state, detail, created_at, started_at) VALUES (?1,?2,?3,?4,?5,'ci','running',?6,?7,?7)",
                    params![project_id as i64, v.0, v.1, v.2, v.3, v.4, now()],
                )?;
            }
            Ok(())
        })
        .await
    }

    pub async fn running_ci_builds(
        &self,
        project_id: u64,
        sha: &str,
    ) -> anyhow::Result<Vec<BuildRow>> {
        let sh = sha.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {BUILD_COLS} FROM builds WHERE project_id = ?1 AND sha = ?2 AND trigger = 'ci' AND state = 'running'"
            ))?;
            let v = st.query_map(params![project_id as i64, sh], build_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    pub async fn builds_of(&self, owner: &str, limit: u32) -> anyhow::Result<Vec<BuildRow>> {
        let o = owner.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {BUILD_COLS} FROM builds WHERE owner = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let v = st
                .query_map(params![o, limit], build_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(project: u64, sha: &str) -> BuildRow {
        BuildRow {
            id: 0,
            project_id: project,
            path: "alice/app".into(),
            owner: "alice".into(),
            sha: sha.into(),
            git_ref: "refs/heads/main".into(),
            trigger: "push".into(),
            state: "queued".into(),
            image: None,
            digest: None,
            size: None,
            blade: None,
            detail: None,
            created_at: 0,
            finished_at: None,
        }
    }

    fn job(id: i64) -> OwnedTask {
        OwnedTask {
            kind: "build.run".into(),
            payload: serde_json::json!({"build": id}),
            version: 1,
            owner: "alice".into(),
            request_id: format!("build-{id}"),
            reply: None,
            max_attempts: 3,
            lane: "slow".into(),
        }
    }

    #[tokio::test]
    async fn one_build_per_project_and_newer_pushes_supersede_queued_ones() {
        let s = Store::open_in_memory().unwrap();
        let a = s.new_build(row(1, "a"), job).await.unwrap();
        assert!(s.start_build(a, "local").await.unwrap());
        let b = s.new_build(row(1, "b"), job).await.unwrap();
        let other = s.new_build(row(2, "x"), job).await.unwrap();
        // Another project's build starts at once; b waits for a.
        assert!(s.start_build(other, "local").await.unwrap());
        assert!(!s.start_build(b, "local").await.unwrap());
        // A newer push while b waits: b is superseded, c queued; a (running) is untouched.
        let c = s.new_build(row(1, "c"), job).await.unwrap();
        assert_eq!(s.build(b).await.unwrap().unwrap().state, "superseded");
        assert_eq!(s.build(a).await.unwrap().unwrap().state, "running");
        assert!(!s.start_build(c, "local").await.unwrap());
        s.finish_build(a, "succeeded", None, None, None, "")
            .await
            .unwrap();
        assert!(s.start_build(c, "local").await.unwrap());
        // A restart re-queues the job of a running build: it may start (resume) again.
        assert!(s.start_build(c, "local").await.unwrap());
        let queued: i64 = s
            .with(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM queue WHERE kind = 'build.run'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(
            queued, 4,
            "each build was queued with its job, in one transaction"
        );
    }
}
