//! The durable queue's items, typed. A task is stored as its kind (the serde tag), its
//! payload (the variant's fields as JSON) and the version of that shape; the worker
//! decodes it once, so no handler reads a payload by string.
//!
//! Version 1 is the shape every row had before tasks were typed (the migration that
//! added the `version` column marks those rows 1); a change of a variant's fields adds a
//! version and an upgrade in [`Task::decode`].

use serde::{Deserialize, Serialize};

use crate::store::queue::{OwnedTask, QueuedTask, ReplyTarget};

/// The shape this build writes.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload")]
pub enum Task {
    /// `/container info`: the blades and the queue, answered by a worker.
    #[serde(rename = "container.info")]
    Info {},
    /// Create and start a recorded container.
    #[serde(rename = "container.run")]
    Run(ContainerTask),
    #[serde(rename = "container.stop")]
    Stop(ContainerTask),
    #[serde(rename = "container.start")]
    Start(ContainerTask),
    #[serde(rename = "container.rm")]
    Remove(ContainerTask),
    #[serde(rename = "container.exec")]
    Exec(ContainerTask),
    /// Convert an image to SIF for its user.
    #[serde(rename = "container.sif")]
    Sif { image: String, typed: String },
    /// Submit a Slurm job (SIF first).
    #[serde(rename = "job.submit")]
    SubmitJob {
        request: super::job_submit::Request,
        #[serde(default)]
        notes: Vec<String>,
    },
    /// A verified GitLab webhook delivery.
    #[serde(rename = "gitlab.event")]
    GitlabEvent {
        event: String,
        body: serde_json::Value,
    },
    /// Build an image from a recorded build row.
    #[serde(rename = "build.run")]
    Build { build: i64 },
}

/// Which workers take a task: quick container actions never wait behind a build or a SIF
/// conversion (up to half an hour each), nor behind Slurm submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// run, stop, start, rm, exec, info.
    Quick,
    /// Builds, SIF conversions, GitLab events (a course's apply builds and pulls).
    Slow,
    /// Slurm submissions (each may convert a SIF first).
    Slurm,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Quick, Lane::Slow, Lane::Slurm];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Quick => "quick",
            Lane::Slow => "slow",
            Lane::Slurm => "slurm",
        }
    }

    /// Its wake-up bell in `App::wake`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a container task is about, and who asked.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerTask {
    /// The container's row id (a run's is filled in by the store, in the same transaction).
    #[serde(default)]
    pub container: i64,
    /// Who asked (`shisa` for the service itself).
    #[serde(default)]
    pub actor: String,
    /// `exec`'s command (version 1 rows of other commands hold `null`).
    #[serde(default, deserialize_with = "null_is_empty")]
    pub cmd: Vec<String>,
    /// Asked by staff (an instructor or admin) for someone else: tell the owner.
    #[serde(default)]
    pub staff: bool,
    /// A stop because the GPU lifetime ran out.
    #[serde(default)]
    pub expired: bool,
    /// A stop because the Slurm allocation holding the GPUs ended.
    #[serde(default)]
    pub allocation_ended: bool,
    /// Reclaimed by shisa: why (`stale`, `lifetime`, `idle`; see `containers::reclaim`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reclaimed: String,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// A stored task that cannot be decoded: a kind or shape this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("task {kind} (version {version}) cannot be read: {why}")]
pub struct Undecodable {
    pub kind: String,
    pub version: u32,
    pub why: String,
}

impl Task {
    pub fn lane(&self) -> Lane {
        match self {
            Task::Sif { .. } | Task::GitlabEvent { .. } | Task::Build { .. } => Lane::Slow,
            Task::SubmitJob { .. } => Lane::Slurm,
            Task::Info {}
            | Task::Run(_)
            | Task::Stop(_)
            | Task::Start(_)
            | Task::Remove(_)
            | Task::Exec(_) => Lane::Quick,
        }
    }

    /// The stored kind (the serde tag).
    pub fn kind(&self) -> String {
        self.split().0
    }

    fn split(&self) -> (String, serde_json::Value) {
        // Serialising a derived enum of plain data cannot fail.
        let v = serde_json::to_value(self).unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let payload = v
            .get("payload")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        (kind, payload)
    }

    pub fn decode(row: &QueuedTask) -> Result<Task, Undecodable> {
        let bad = |why: String| Undecodable {
            kind: row.kind.clone(),
            version: row.version,
            why,
        };
        if row.version > VERSION {
            return Err(bad(format!(
                "written by a newer shisa (this one reads up to version {VERSION})"
            )));
        }
        let v = serde_json::json!({"kind": row.kind, "payload": row.payload});
        serde_json::from_value(v).map_err(|e| bad(e.to_string()))
    }

    /// The row to store, for `Store::enqueue_tx` and friends.
    pub fn owned(
        &self,
        owner: &str,
        request_id: &str,
        reply: Option<ReplyTarget>,
        max_attempts: u32,
    ) -> OwnedTask {
        let (kind, payload) = self.split();
        OwnedTask {
            kind,
            payload,
            version: VERSION,
            owner: owner.to_string(),
            request_id: request_id.to_string(),
            reply,
            max_attempts,
            lane: self.lane().as_str().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, payload: serde_json::Value, version: u32) -> QueuedTask {
        QueuedTask {
            id: 1,
            kind: kind.into(),
            payload,
            version,
            owner: "alice".into(),
            request_id: "r".into(),
            reply: None,
            attempts: 1,
            max_attempts: 3,
        }
    }

    #[test]
    fn round_trip() {
        let tasks = [
            Task::Info {},
            Task::Run(ContainerTask {
                container: 7,
                ..Default::default()
            }),
            Task::Exec(ContainerTask {
                container: 3,
                actor: "alice".into(),
                cmd: vec!["ls".into(), "-l".into()],
                ..Default::default()
            }),
            Task::Sif {
                image: "r/alice/x:1".into(),
                typed: "x:1".into(),
            },
            Task::Build { build: 4 },
            Task::GitlabEvent {
                event: "Push Hook".into(),
                body: serde_json::json!({"a": 1}),
            },
        ];
        for t in tasks {
            let o = t.owned("alice", "r", None, 3);
            let back = Task::decode(&row(&o.kind, o.payload, o.version)).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn rows_from_before_typed_tasks_decode() {
        // Exactly what version 1 rows hold (as the handlers wrote them before).
        let cases: [(&str, serde_json::Value); 7] = [
            ("container.run", serde_json::json!({"container": 5})),
            (
                "container.stop",
                serde_json::json!({"container": 5, "actor": "shisa", "expired": true}),
            ),
            (
                "container.exec",
                serde_json::json!({"container": 5, "actor": "bob", "cmd": ["ls"], "staff": false}),
            ),
            (
                "container.start",
                serde_json::json!({"container": 5, "actor": "bob", "cmd": null, "staff": true}),
            ),
            ("container.info", serde_json::json!({})),
            ("build.run", serde_json::json!({"build": 9})),
            (
                "container.sif",
                serde_json::json!({"image": "a", "typed": "b"}),
            ),
        ];
        for (k, p) in cases.clone() {
            let t = Task::decode(&row(k, p.clone(), 1)).unwrap();
            assert_eq!(t.kind(), k);
        }
        let t = Task::decode(&row("container.stop", cases[1].1.clone(), 1)).unwrap();
        assert!(matches!(
            t,
            Task::Stop(ContainerTask {
                container: 5,
                expired: true,
                ..
            })
        ));
    }

    #[test]
    fn unknown_kinds_and_newer_versions_are_refused() {
        assert!(Task::decode(&row("container.fly", serde_json::json!({}), 1)).is_err());
        assert!(Task::decode(&row("build.run", serde_json::json!({"build": "x"}), 1)).is_err());
        let e = Task::decode(&row("build.run", serde_json::json!({"build": 1}), 2)).unwrap_err();
        assert!(e.to_string().contains("newer shisa"), "{e}");
    }
}
