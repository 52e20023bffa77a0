//! In-process test implementations of the outside services' traits, assembled into a
//! real shisa through `Opts::services` (the rest stays real), and the tests that need
//! exactly such a service: a Podman that refuses in its own words, a directory that is
//! down, a Mattermost that records, a registry and a GitLab that answer from a table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shisa::app::Services;
use shisa::gitlab::client::{CiJob, Gitlab, GitlabError, HookInfo, ProjectInfo, UserInfo};
use shisa::identity::{Account, Directory, DirectoryError};
use shisa::mattermost::client::{Chat, MmUser, PostError};
use shisa::mattermost::Reply;
use shisa::podman::{
    BladeInfo, ContainerState, DiedEvents, ExecRequest, ExecResult, ImageInfo, Listed, Podman,
    PodmanError,
};
use shisa::registry::client::RegistryApi;

use crate::harness::{free_port, registry, Opts, Stack};

/// A blade whose Podman answers health checks and has every image, but refuses to create
/// containers with a message full of its machine's internals.
pub struct RefusingPodman;

const INTERNALS: &str = "crun: mount `/var/lib/containers/storage/overlay/l/SECRET` to rootfs: permission denied (blade7.internal)";

#[async_trait]
impl Podman for RefusingPodman {
    async fn image_exists(&self, _: &str) -> Result<bool, PodmanError> {
        Ok(true)
    }
    async fn create(&self, _: &serde_json::Value) -> Result<String, PodmanError> {
        Err(PodmanError::Api {
            status: 500,
            message: INTERNALS.into(),
        })
    }
    async fn start(&self, _: &str) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn stop(&self, _: &str, _: u64) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn remove(&self, _: &str, _: bool) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn inspect(&self, _: &str) -> Result<Option<ContainerState>, PodmanError> {
        Ok(None)
    }
    async fn logs(&self, _: &str, _: u32) -> Result<shisa::podman::Logs, PodmanError> {
        Ok(Default::default())
    }
    async fn exec(&self, _: &str, _: &ExecRequest<'_>) -> Result<ExecResult, PodmanError> {
        Err(PodmanError::Api {
            status: 500,
            message: INTERNALS.into(),
        })
    }
    async fn list_labelled(&self, _: &str) -> Result<Vec<Listed>, PodmanError> {
        Ok(Vec::new())
    }
    async fn died_events(&self, _: &str) -> Result<DiedEvents, PodmanError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }
    async fn pull(&self, _: &str, _: &str, _: &str, _: bool) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn image_inspect(&self, _: &str) -> Result<ImageInfo, PodmanError> {
        Err(PodmanError::Api {
            status: 404,
            message: INTERNALS.into(),
        })
    }
    async fn mount(&self, _: &str) -> Result<String, PodmanError> {
        Err(PodmanError::Api {
            status: 500,
            message: INTERNALS.into(),
        })
    }
    async fn unmount(&self, _: &str) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn ensure_network(&self, _: &str, _: &str, _: &str) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn ensure_isolated_network(
        &self,
        _: &str,
        _: &str,
        _: &serde_json::Value,
    ) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn remove_network(&self, _: &str) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn cpu_nanos(&self, _: &str) -> Result<Option<u64>, PodmanError> {
        Ok(None)
    }
    async fn list_images(&self) -> Result<Vec<shisa::podman::BladeImage>, PodmanError> {
        Ok(Vec::new())
    }
    async fn remove_image(&self, _: &str) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn readdress(&self, _: &str, _: &str, _: &str) -> Result<(), PodmanError> {
        Ok(())
    }
    async fn info(&self) -> Result<BladeInfo, PodmanError> {
        Ok(BladeInfo {
            version: "4.3.1".into(),
            containers: 0,
            images: 1,
        })
    }
}

/// A directory that cannot be reached.
pub struct DownDirectory;

#[async_trait]
impl Directory for DownDirectory {
    async fn lookup(&self, _: &str) -> Result<Option<Account>, DirectoryError> {
        Err(DirectoryError::Unavailable(
            "connect ldaps://ldap.internal:636: timed out".into(),
        ))
    }
    async fn members(&self, _: &str) -> Result<Vec<String>, DirectoryError> {
        Err(DirectoryError::Unavailable("timed out".into()))
    }
    async fn verify_password(&self, _: &str, _: &str) -> Result<bool, DirectoryError> {
        Err(DirectoryError::Unavailable("timed out".into()))
    }
}

/// A Mattermost that records what shisa sends it.
#[derive(Default)]
pub struct RecordingChat {
    pub posts: Mutex<Vec<(String, String)>>,
    pub dms: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl Chat for RecordingChat {
    fn has_bot(&self) -> bool {
        true
    }
    async fn post_response_url(&self, url: &str, reply: &Reply) -> Result<(), PostError> {
        self.posts
            .lock()
            .unwrap()
            .push((url.to_string(), reply.text.clone()));
        Ok(())
    }
    async fn get_user(&self, user_id: &str) -> anyhow::Result<MmUser> {
        anyhow::bail!("no Mattermost user {user_id} here")
    }
    async fn direct_message(
        &self,
        user_id: &str,
        text: &str,
        _: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.dms
            .lock()
            .unwrap()
            .push((user_id.to_string(), text.to_string()));
        Ok(())
    }
}

/// A registry that holds exactly the repositories and tags of its table.
pub struct TableRegistry {
    /// repository → (tag, digest, size)
    pub table: HashMap<String, Vec<(String, String, u64)>>,
}

#[async_trait]
impl RegistryApi for TableRegistry {
    async fn catalog(&self) -> anyhow::Result<Vec<String>> {
        let mut v: Vec<_> = self.table.keys().cloned().collect();
        v.sort();
        Ok(v)
    }
    async fn tags(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .table
            .get(name)
            .map(|t| t.iter().map(|x| x.0.clone()).collect())
            .unwrap_or_default())
    }
    async fn manifest(
        &self,
        name: &str,
        reference: &str,
    ) -> anyhow::Result<Option<shisa::registry::client::Manifest>> {
        Ok(self
            .table
            .get(name)
            .and_then(|t| t.iter().find(|x| x.0 == reference))
            .map(|x| shisa::registry::client::Manifest {
                digest: x.1.clone(),
                size: x.2,
                blobs: Vec::new(),
            }))
    }
    async fn delete_manifest(&self, _: &str, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn delete_blob(&self, _: &str, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn tag(&self, _: &str, _: &str, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A GitLab that knows one project, whose maintainer is `maintainer`, and records hooks.
pub struct OneProjectGitlab {
    pub project: (u64, String),
    pub maintainer: String,
    pub acting_as: Option<String>,
    pub hooks: Arc<Mutex<Vec<(u64, String)>>>,
}

fn not_found() -> GitlabError {
    GitlabError::GitlabService {
        status: http::StatusCode::NOT_FOUND,
        data: Vec::new(),
    }
}

#[async_trait]
impl Gitlab for OneProjectGitlab {
    fn for_user(&self, user: &str) -> Arc<dyn Gitlab> {
        Arc::new(OneProjectGitlab {
            project: self.project.clone(),
            maintainer: self.maintainer.clone(),
            acting_as: Some(user.to_string()),
            hooks: self.hooks.clone(),
        })
    }
    async fn create_runner(&self, _: u64, _: &str) -> Result<(u64, String), GitlabError> {
        Err(not_found())
    }
    async fn delete_runner(&self, _: u64) -> Result<(), GitlabError> {
        Ok(())
    }
    async fn verify_runner(&self, _: &str, _: &str) -> Result<(), GitlabError> {
        Err(not_found())
    }
    async fn pending_jobs(&self, _: u64) -> Result<Vec<u64>, GitlabError> {
        Ok(Vec::new())
    }
    async fn current_job(&self, _: &str) -> anyhow::Result<Option<CiJob>> {
        Ok(None)
    }
    async fn project(&self, path_or_id: &str) -> Result<ProjectInfo, GitlabError> {
        let (id, path) = &self.project;
        // Sudo by the maintainer's GitLab id.
        let visible = self.acting_as.as_deref() == Some("1");
        if !visible || (path_or_id != path && path_or_id != id.to_string()) {
            return Err(not_found());
        }
        Ok(serde_json::from_value(serde_json::json!({
            "id": id, "path_with_namespace": path, "default_branch": "main",
            "permissions": {"project_access": {"access_level": 40}, "group_access": null}
        }))
        .unwrap())
    }
    async fn user(&self, id: u64) -> Result<UserInfo, GitlabError> {
        Ok(
            serde_json::from_value(serde_json::json!({"id": id, "username": self.maintainer}))
                .unwrap(),
        )
    }
    async fn users_by_identity(
        &self,
        provider: &str,
        extern_uid: &str,
    ) -> Result<Vec<UserInfo>, GitlabError> {
        // Everyone has a GitLab user; the maintainer's id is 1.
        let uid = extern_uid
            .split(',')
            .next()
            .and_then(|r| r.strip_prefix("uid="))
            .unwrap_or_default();
        let id = if uid == self.maintainer { 1 } else { 2 };
        Ok(vec![serde_json::from_value(serde_json::json!({
            "id": id, "username": format!("gl-{uid}"),
            "identities": [{"provider": provider, "extern_uid": extern_uid}]
        }))
        .unwrap()])
    }
    async fn archive(&self, _: u64, _: &str, _: u64) -> Result<Vec<u8>, GitlabError> {
        Err(not_found())
    }
    async fn create_hook(
        &self,
        project: u64,
        url: &str,
        _: &str,
        _: shisa::gitlab::client::HookEvents,
    ) -> Result<HookInfo, GitlabError> {
        let mut h = self.hooks.lock().unwrap();
        h.push((project, url.to_string()));
        Ok(HookInfo { id: h.len() as u64 })
    }
    async fn delete_hook(&self, _: u64, _: u64) -> Result<(), GitlabError> {
        Ok(())
    }
    async fn commit_status(
        &self,
        _: u64,
        _: &str,
        _: &str,
        _: gitlab::api::projects::repository::commits::CommitStatusState,
        _: &str,
        _: Option<&str>,
    ) -> Result<(), GitlabError> {
        Ok(())
    }
    async fn raw_file(&self, _: u64, _: &str, _: &str) -> Result<Option<Vec<u8>>, GitlabError> {
        Ok(None)
    }
    async fn create_mr_note(&self, _: u64, _: u64, _: &str) -> Result<u64, GitlabError> {
        Err(not_found())
    }
    async fn edit_mr_note(&self, _: u64, _: u64, _: u64, _: &str) -> Result<(), GitlabError> {
        Err(not_found())
    }
}

fn one_fake_blade() -> String {
    "[[blades]]\nname = \"f1\"\npodman_socket = \"/nonexistent/podman.sock\"\naddress = \"127.0.0.1\"\nport_range = [63400, 63409]\n".into()
}

#[tokio::test]
async fn a_podman_refusal_reaches_the_student_as_a_reference_not_its_words() {
    let s = Stack::start(Opts {
        blades: Some(one_fake_blade()),
        services: Services {
            podman: Some(Arc::new(|_| Arc::new(RefusingPodman) as Arc<dyn Podman>)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let t = s
        .say(
            "alice",
            "/container run --name w localhost/busybox -- sleep 60",
        )
        .await;
    assert!(t.contains("could not start on our side"), "{t}");
    assert!(t.contains("reference"), "{t}");
    for leak in [
        "/var/lib",
        "SECRET",
        "crun",
        "blade7.internal",
        "permission denied",
    ] {
        assert!(!t.contains(leak), "{leak} in: {t}");
    }
    // Nothing was left recorded or leased.
    assert!(s
        .store()
        .container_by_name("alice", "w")
        .await
        .unwrap()
        .is_none());
    s.stop().await;
}

#[tokio::test]
async fn a_directory_that_is_down_is_said_so_without_its_error() {
    let s = Stack::start(Opts {
        services: Services {
            directory: Some(Arc::new(DownDirectory)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let t = s.say("alice", "/container ps").await;
    assert!(t.contains("cannot reach the department directory"), "{t}");
    assert!(
        !t.contains("ldap.internal") && !t.contains("timed out"),
        "{t}"
    );
    s.stop().await;
}

#[tokio::test]
async fn queued_answers_go_to_mattermost_through_its_client() {
    let chat = Arc::new(RecordingChat::default());
    let s = Stack::start(Opts {
        podman: true,
        services: Services {
            chat: Some(chat.clone()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // The acknowledgement comes back on the HTTP answer; the final one through `Chat`.
    let r = s.chat("alice", "/container info").await;
    assert!(r[0].text.contains("Working on `/container info`"), "{r:?}");
    let mut answered = None;
    for _ in 0..100 {
        if let Some(p) = chat.posts.lock().unwrap().last().cloned() {
            answered = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (url, text) = answered.expect("the final answer was posted");
    assert!(url.starts_with("http"), "{url}");
    assert!(text.contains("`local`: up"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn registry_sync_repairs_the_image_table_from_the_registry_api() {
    let port = free_port();
    let reg = registry(port);
    let table = TableRegistry {
        table: HashMap::from([(
            "alice/app".to_string(),
            vec![(
                "1".to_string(),
                "sha256:".to_string() + &"ab".repeat(32),
                1234,
            )],
        )]),
    };
    let s = Stack::start(Opts {
        listen_port: Some(port),
        extra: reg.toml.clone(),
        services: Services {
            registry_api: Some(Arc::new(table)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = s.store().all_images().await.unwrap();
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 1, "{:?}", rows.len());
    assert_eq!(
        (
            rows[0].repository.as_str(),
            rows[0].tag.as_str(),
            rows[0].owner.as_str(),
            rows[0].size
        ),
        ("alice/app", "1", "alice", 1234)
    );
    s.stop().await;
}

#[tokio::test]
async fn build_enable_talks_to_gitlab_as_the_user() {
    let port = free_port();
    let reg = registry(port);
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let g = OneProjectGitlab {
        project: (7, "alice/MyModel".into()),
        maintainer: "alice".into(),
        acting_as: None,
        hooks: hooks.clone(),
    };
    let s = Stack::start(Opts {
        listen_port: Some(port),
        extra: format!(
            "{}\n[gitlab]\nurl = \"http://gitlab.invalid\"\napi_token = \"t\"\nwebhook_tokens = [\"hook-secret\"]\nldap_people_base = \"ou=people,dc=example,dc=edu\"\n",
            reg.toml
        ),
        services: Services {
            gitlab: Some(Arc::new(g)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // bob cannot see the project (GitLab says 404 to him): nothing is installed.
    let t = s.say("bob", "/container build enable alice/MyModel").await;
    assert!(t.contains("cannot use the GitLab project"), "{t}");
    assert!(hooks.lock().unwrap().is_empty());
    let t = s
        .say("alice", "/container build enable alice/MyModel")
        .await;
    assert!(t.contains("Builds are on for `alice/MyModel`"), "{t}");
    assert_eq!(hooks.lock().unwrap().len(), 1);
    assert_eq!(hooks.lock().unwrap()[0].0, 7);
    s.stop().await;
}
