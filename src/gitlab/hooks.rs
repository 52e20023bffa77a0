//! GitLab webhook payloads: our own serde types for the events shisa uses
//! (Push, Tag Push, Merge Request, Note, Pipeline, Job), per GitLab's
//! webhook_events documentation and the payloads in tests/fixtures/gitlab.
//! Only the fields shisa reads are typed; unknown fields are ignored, so a
//! newer GitLab adding fields never breaks the receiver.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Project {
    pub id: u64,
    #[serde(default)]
    pub path_with_namespace: String,
    #[serde(default)]
    pub web_url: String,
    #[serde(default)]
    pub default_branch: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Commit {
    pub id: String,
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub modified: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

/// Push Hook and Tag Push Hook (and their System Hook forms).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Push {
    pub before: String,
    pub after: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub checkout_sha: Option<String>,
    pub user_id: u64,
    #[serde(default)]
    pub user_username: Option<String>,
    pub project_id: u64,
    pub project: Project,
    #[serde(default)]
    pub commits: Vec<Commit>,
    #[serde(default)]
    pub total_commits_count: u64,
}

impl Push {
    /// The commit the push leaves the ref at (all zeros when the ref was deleted).
    pub fn head(&self) -> &str {
        self.checkout_sha.as_deref().unwrap_or(&self.after)
    }

    pub fn deleted(&self) -> bool {
        self.after.bytes().all(|b| b == b'0')
    }

    /// Whether any listed commit touched a build file. GitLab lists at most 20
    /// commits; with more, we cannot tell, so we assume yes.
    pub fn touches(&self, files: &[&str]) -> bool {
        if self.total_commits_count as usize > self.commits.len() {
            return true;
        }
        self.commits.iter().any(|c| {
            c.added
                .iter()
                .chain(c.modified.iter())
                .any(|p| files.iter().any(|f| p == f))
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct User {
    pub id: u64,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MergeRequestAttributes {
    pub id: u64,
    pub iid: u64,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub source_branch: String,
    #[serde(default)]
    pub target_branch: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub last_commit: Option<LastCommit>,
    /// Set on a merged MR unless it was fast-forwarded.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LastCommit {
    pub id: String,
}

/// The merge request a Note Hook's comment is on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NotedMergeRequest {
    pub iid: u64,
    #[serde(default)]
    pub target_branch: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub last_commit: Option<LastCommit>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MergeRequest {
    pub user: User,
    pub project: Project,
    pub object_attributes: MergeRequestAttributes,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NoteAttributes {
    pub id: u64,
    pub note: String,
    pub noteable_type: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Note {
    pub user: User,
    pub project: Project,
    pub object_attributes: NoteAttributes,
    #[serde(default)]
    pub merge_request: Option<NotedMergeRequest>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PipelineAttributes {
    pub id: u64,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    pub status: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Pipeline {
    pub user: User,
    pub project: Project,
    pub object_attributes: PipelineAttributes,
}

/// Job Hook: `object_kind` is `build`, and `commit.id` is the pipeline id (protocols.md §1.3).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Job {
    pub build_id: u64,
    pub build_name: String,
    pub build_status: String,
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub pipeline_id: u64,
    pub project_id: u64,
    pub user: User,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Hook {
    Push(Push),
    TagPush(Push),
    MergeRequest(MergeRequest),
    Note(Note),
    Pipeline(Pipeline),
    Job(Job),
    /// A kind shisa does not act on (answered 200 and ignored).
    Other(String),
}

impl Hook {
    pub fn kind(&self) -> &str {
        match self {
            Hook::Push(_) => "push",
            Hook::TagPush(_) => "tag_push",
            Hook::MergeRequest(_) => "merge_request",
            Hook::Note(_) => "note",
            Hook::Pipeline(_) => "pipeline",
            Hook::Job(_) => "build",
            Hook::Other(k) => k,
        }
    }
}

/// A body that is not the JSON its event promises: the JSON path and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at `{path}`: {message}")]
pub struct ParseError {
    pub path: String,
    pub message: String,
}

fn typed<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| ParseError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Parse a delivery by its `X-Gitlab-Event` header. System hooks
/// (`System Hook`) say what they are in the body's `event_name`
/// (push and tag_push) or `object_kind`.
pub fn parse(event: &str, body: &[u8]) -> Result<Hook, ParseError> {
    let kind = if event == "System Hook" {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            event_name: Option<String>,
            #[serde(default)]
            object_kind: Option<String>,
        }
        let p: Probe = typed(body)?;
        p.event_name.or(p.object_kind).unwrap_or_default()
    } else {
        match event {
            "Push Hook" => "push",
            "Tag Push Hook" => "tag_push",
            "Merge Request Hook" => "merge_request",
            "Note Hook" => "note",
            "Pipeline Hook" => "pipeline",
            "Job Hook" => "build",
            other => {
                // Still has to be JSON: a malformed body is a 400 whatever its kind.
                typed::<serde::de::IgnoredAny>(body)?;
                return Ok(Hook::Other(other.to_string()));
            }
        }
        .to_string()
    };
    Ok(match kind.as_str() {
        "push" => Hook::Push(typed(body)?),
        "tag_push" => Hook::TagPush(typed(body)?),
        "merge_request" => Hook::MergeRequest(typed(body)?),
        "note" => Hook::Note(typed(body)?),
        "pipeline" => Hook::Pipeline(typed(body)?),
        "build" => Hook::Job(typed(body)?),
        other => {
            typed::<serde::de::IgnoredAny>(body)?;
            Hook::Other(other.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gitlab")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn every_fixture_parses_as_its_event() {
        let cases = [
            ("push.json", "Push Hook", "push"),
            ("tag_push.json", "Tag Push Hook", "tag_push"),
            ("merge_request.json", "Merge Request Hook", "merge_request"),
            ("note_merge_request.json", "Note Hook", "note"),
            ("pipeline.json", "Pipeline Hook", "pipeline"),
            ("job.json", "Job Hook", "build"),
            ("deployment.json", "Deployment Hook", "Deployment Hook"),
        ];
        for (f, event, kind) in cases {
            let h = parse(event, &fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(h.kind(), kind, "{f}");
        }
        let Hook::Push(p) = parse("Push Hook", &fixture("push.json")).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                p.user_id,
                p.project.path_with_namespace.as_str(),
                p.commits.len()
            ),
            (4, "mike/diaspora", 2)
        );
        let Hook::Job(j) = parse("Job Hook", &fixture("job.json")).unwrap() else {
            panic!()
        };
        assert_eq!(
            (j.build_id, j.build_status.as_str(), j.pipeline_id),
            (1977, "created", 2366)
        );
    }

    #[test]
    fn system_hooks_say_their_kind_in_the_body() {
        assert_eq!(
            parse("System Hook", &fixture("push.json")).unwrap().kind(),
            "push"
        );
        assert_eq!(
            parse("System Hook", &fixture("tag_push.json"))
                .unwrap()
                .kind(),
            "tag_push"
        );
        assert_eq!(
            parse("System Hook", br#"{"event_name":"project_create"}"#).unwrap(),
            Hook::Other("project_create".into())
        );
    }

    #[test]
    fn malformed_bodies_name_the_json_path() {
        let e = parse(
            "Push Hook",
            br#"{"before":"a","after":"b","ref":"r","user_id":"four"}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "user_id");
        let e = parse("Push Hook", b"{not json").unwrap_err();
        assert!(!e.message.is_empty());
        assert!(parse("Wiki Page Hook", b"[1,").is_err());
        // The verbatim doc example is invalid JSON (comments, trailing comma): refused, not panicked on.
        assert!(parse("Job Hook", &fixture("job.doc-verbatim.jsonc")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(event in "\\PC{0,20}", body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..200)) {
            let _ = parse(&event, &body);
        }
    }
}
