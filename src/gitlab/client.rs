//! The GitLab API client: the `gitlab` crate's typed endpoints over shisa's
//! own reqwest client (the crate's `AsyncClient` trait), with the admin token
//! from the configuration, timeouts and bounded retries. A client made with
//! `for_user` sends `Sudo: <that user>` on every call, so GitLab itself
//! enforces the user's rights: shisa never reads a repository for someone
//! who could not read it themselves.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gitlab::api::{ApiError, AsyncClient, AsyncQuery, RestClient};

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("GitLab cannot be reached: {0}")]
    Http(#[from] reqwest::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("bad URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(u64),
}

#[derive(Clone)]
pub struct GitlabApi {
    http: reqwest::Client,
    base: url::Url,
    token: std::sync::Arc<Secret>,
    sudo: Option<String>,
    retries: u32,
    timeout: Duration,
}

impl std::fmt::Debug for GitlabApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitlabApi")
            .field("base", &self.base.as_str())
            .field("sudo", &self.sudo)
            .finish_non_exhaustive()
    }
}

impl GitlabApi {
    pub fn new(url: &str, token: Secret, timeout: Duration) -> anyhow::Result<GitlabApi> {
        let base = url::Url::parse(&format!("{}/api/v4/", url.trim_end_matches('/')))?;
        Ok(GitlabApi {
            // Never followed: a redirect would carry PRIVATE-TOKEN and Sudo to another host.
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base,
            token: std::sync::Arc::new(token),
            sudo: None,
            retries: 2,
            timeout,
        })
    }
}

impl RestClient for GitlabApi {
    type Error = ClientError;

    fn rest_endpoint(&self, endpoint: &str) -> Result<url::Url, ApiError<Self::Error>> {
        self.base
            .join(endpoint)
            .map_err(|e| ApiError::client(ClientError::Url(e)))
    }
}

#[async_trait]
impl AsyncClient for GitlabApi {
    async fn rest_async(
        &self,
        request: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<http::Response<Bytes>, ApiError<Self::Error>> {
        let req = request
            .body(body)
            .map_err(|e| ApiError::client(ClientError::Request(e)))?;
        let (parts, body) = req.into_parts();
        // Only reads are retried: a POST that timed out may have been applied.
        let idempotent = matches!(parts.method, http::Method::GET | http::Method::HEAD);
        let mut attempt = 0;
        loop {
            let mut r = self
                .http
                .request(parts.method.clone(), parts.uri.to_string())
                .headers(parts.headers.clone())
                .header("PRIVATE-TOKEN", self.token.expose())
                .body(body.clone());
            if let Some(s) = &self.sudo {
                r = r.header("Sudo", s);
            }
            let result = r.send().await;
            let retry = match &result {
                Ok(resp) => resp.status().is_server_error(),
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if retry && idempotent && attempt < self.retries {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
                continue;
            }
            let resp = result.map_err(|e| ApiError::client(ClientError::Http(e)))?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ApiError::client(ClientError::Http(e)))?;
            return out
                .body(bytes)
                .map_err(|e| ApiError::client(ClientError::Request(e)));
        }
    }
}

/// What shisa reads of a project (as the user it asks for).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProjectInfo {
    pub id: u64,
    pub path_with_namespace: String,
    #[serde(default)]
    pub web_url: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub permissions: Option<Permissions>,
}

#[derive(Debug, Clone, serde::Deserialize, Default)]
pub struct Permissions {
    pub project_access: Option<Access>,
    pub group_access: Option<Access>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Access {
    pub access_level: u32,
}

impl ProjectInfo {
    /// The user's access level (40 = Maintainer, 50 = Owner).
    pub fn access_level(&self) -> u32 {
        let p = self.permissions.clone().unwrap_or_default();
        p.project_access
            .map(|a| a.access_level)
            .max(p.group_access.map(|a| a.access_level))
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct UserInfo {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub identities: Vec<Identity>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Identity {
    pub provider: String,
    pub extern_uid: String,
}

impl UserInfo {
    /// The department account of an LDAP identity: the value of the first RDN of
    /// its DN (`uid=alice,ou=people,…` → `alice`).
    pub fn ldap_uid(&self) -> Option<String> {
        self.identities
            .iter()
            .filter(|i| i.provider.starts_with("ldap"))
            .find_map(|i| {
                let first = i.extern_uid.split(',').next()?;
                let (k, v) = first.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("uid") && !v.trim().is_empty())
                    .then(|| v.trim().to_string())
            })
    }
}

/// A GitLab answer in words for a user: 404 means "not found or not yours".
pub fn explain(e: &ApiError<ClientError>) -> String {
    let status = match e {
        ApiError::GitlabService { status, .. } | ApiError::GitlabWithStatus { status, .. } => {
            Some(status.as_u16())
        }
        _ => None,
    };
    match (status, e) {
        (Some(404), _) => "GitLab says it does not exist or you cannot see it".into(),
        (Some(403), _) => "GitLab says you are not allowed to".into(),
        (_, ApiError::GitlabWithStatus { status, msg }) => {
            format!("GitLab answered {status}: {msg}")
        }
        (Some(s), _) => format!("GitLab answered {s}"),
        (None, other) => format!("{other}"),
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct HookInfo {
    pub id: u64,
}

/// The job a `CI_JOB_TOKEN` belongs to (`GET /api/v4/job` with `JOB-TOKEN`), or None when
/// GitLab does not know the token (401/403/404). Plain reqwest: this call must carry only the
/// job's token, never the admin token the typed client adds.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CiJob {
    pub id: u64,
    #[serde(default)]
    pub status: String,
    pub pipeline: CiPipeline,
    pub user: CiUser,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct CiPipeline {
    pub project_id: u64,
    #[serde(default)]
    pub sha: String,
    #[serde(rename = "ref", default)]
    pub git_ref: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct CiUser {
    pub id: u64,
    pub username: String,
}

/// An error of the GitLab API, as the `gitlab` crate reports it.
pub type GitlabError = ApiError<ClientError>;

/// GitLab as shisa uses it: the API client here, or a test's fake.
#[async_trait]
pub trait Gitlab: Send + Sync {
    /// The same API acting as `user` (a GitLab username or numeric id): `Sudo`.
    fn for_user(&self, user: &str) -> Arc<dyn Gitlab>;
    /// Create the project's runner (as its maintainer): its id and token.
    async fn create_runner(
        &self,
        project: u64,
        description: &str,
    ) -> Result<(u64, String), GitlabError>;
    async fn delete_runner(&self, runner: u64) -> Result<(), GitlabError>;
    /// Does GitLab still know this runner token?
    async fn verify_runner(&self, token: &str, system_id: &str) -> Result<(), GitlabError>;
    /// The pending CI jobs of a project.
    async fn pending_jobs(&self, project: u64) -> Result<Vec<u64>, GitlabError>;
    /// The job a `CI_JOB_TOKEN` belongs to (`GET /api/v4/job` with `JOB-TOKEN`), or None when
    /// GitLab does not know the token (401/403/404). This call carries only the job's token,
    /// never the admin token.
    async fn current_job(&self, job_token: &str) -> anyhow::Result<Option<CiJob>>;
    async fn project(&self, path_or_id: &str) -> Result<ProjectInfo, ApiError<ClientError>>;
    async fn user(&self, id: u64) -> Result<UserInfo, ApiError<ClientError>>;
    /// The users with this identity (`GET /users?extern_uid=&provider=`, admin only).
    async fn users_by_identity(
        &self,
        provider: &str,
        extern_uid: &str,
    ) -> Result<Vec<UserInfo>, ApiError<ClientError>>;
    /// The repository at `sha` as a `.tar.gz`, refused as `TooLarge` past `max` bytes (read
    /// as it comes, never whole first).
    async fn archive(
        &self,
        project: u64,
        sha: &str,
        max: u64,
    ) -> Result<Vec<u8>, ApiError<ClientError>>;
    /// The project's hook to shisa: push, pipeline and job events for builds; merge request,
    /// note and push events for a course.
    async fn create_hook(
        &self,
        project: u64,
        url: &str,
        token: &str,
        events: HookEvents,
    ) -> Result<HookInfo, ApiError<ClientError>>;
    async fn delete_hook(&self, project: u64, hook: u64) -> Result<(), ApiError<ClientError>>;
    /// A commit status named `name` (`shisa/image`, `shisa/course`).
    async fn commit_status(
        &self,
        project: u64,
        sha: &str,
        name: &str,
        state: gitlab::api::projects::repository::commits::CommitStatusState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), ApiError<ClientError>>;
    /// A file of the repository at `git_ref`; None when it does not exist there.
    async fn raw_file(
        &self,
        project: u64,
        path: &str,
        git_ref: &str,
    ) -> Result<Option<Vec<u8>>, ApiError<ClientError>>;
    /// A comment on a merge request: its id.
    async fn create_mr_note(
        &self,
        project: u64,
        iid: u64,
        body: &str,
    ) -> Result<u64, ApiError<ClientError>>;
    async fn edit_mr_note(
        &self,
        project: u64,
        iid: u64,
        note: u64,
        body: &str,
    ) -> Result<(), ApiError<ClientError>>;
}

/// Which events a project's hook sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvents {
    Builds,
    Course,
}

#[async_trait]
impl Gitlab for GitlabApi {
    fn for_user(&self, user: &str) -> Arc<dyn Gitlab> {
        Arc::new(GitlabApi {
            sudo: Some(user.to_string()),
            ..self.clone()
        })
    }

    async fn create_runner(
        &self,
        project: u64,
        description: &str,
    ) -> Result<(u64, String), GitlabError> {
        #[derive(serde::Deserialize)]
        struct Created {
            id: u64,
            token: String,
        }
        let ep = gitlab::api::users::CreateRunner::builder()
            .project(project)
            .tag("shisa")
            .locked(true)
            .run_untagged(false)
            .description(description)
            .build()
            .expect("project is set");
        let c: Created = ep.query_async(self).await?;
        Ok((c.id, c.token))
    }

    async fn delete_runner(&self, runner: u64) -> Result<(), GitlabError> {
        let ep = gitlab::api::runners::DeleteRunner::builder()
            .runner(runner)
            .build()
            .expect("runner is set");
        gitlab::api::ignore(ep).query_async(self).await
    }

    async fn verify_runner(&self, token: &str, system_id: &str) -> Result<(), GitlabError> {
        let ep = gitlab::api::runners::VerifyRunner::builder()
            .token(token)
            .system_id(system_id)
            .build()
            .expect("token is set");
        gitlab::api::ignore(ep).query_async(self).await
    }

    async fn pending_jobs(&self, project: u64) -> Result<Vec<u64>, GitlabError> {
        #[derive(serde::Deserialize)]
        struct Pending {
            id: u64,
        }
        let ep = gitlab::api::projects::jobs::Jobs::builder()
            .project(project)
            .scope(gitlab::api::projects::jobs::JobScope::Pending)
            .build()
            .expect("project is set");
        let jobs: Vec<Pending> = ep.query_async(self).await?;
        Ok(jobs.into_iter().map(|j| j.id).collect())
    }

    async fn current_job(&self, job_token: &str) -> anyhow::Result<Option<CiJob>> {
        let base_url = self
            .base
            .as_str()
            .trim_end_matches('/')
            .trim_end_matches("/api/v4");
        let timeout = self.timeout;
        let r = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?
            .get(format!("{}/api/v4/job", base_url.trim_end_matches('/')))
            .header("JOB-TOKEN", job_token)
            .send()
            .await?;
        if matches!(r.status().as_u16(), 401 | 403 | 404) {
            return Ok(None);
        }
        Ok(Some(r.error_for_status()?.json().await?))
    }

    async fn project(&self, path_or_id: &str) -> Result<ProjectInfo, ApiError<ClientError>> {
        let ep = gitlab::api::projects::Project::builder()
            .project(path_or_id)
            .build()
            .expect("project is set");
        ep.query_async(self).await
    }

    async fn user(&self, id: u64) -> Result<UserInfo, ApiError<ClientError>> {
        let ep = gitlab::api::users::User::builder()
            .user(id)
            .build()
            .expect("user is set");
        ep.query_async(self).await
    }

    async fn users_by_identity(
        &self,
        provider: &str,
        extern_uid: &str,
    ) -> Result<Vec<UserInfo>, ApiError<ClientError>> {
        let ep = gitlab::api::users::Users::builder()
            .external_provider(
                gitlab::api::users::ExternalProvider::builder()
                    .uid(extern_uid)
                    .name(provider)
                    .build()
                    .expect("uid and name are set"),
            )
            .build()
            .expect("the provider is set");
        // As the admin token itself: this lookup decides whom later calls act as.
        let admin = GitlabApi {
            sudo: None,
            ..self.clone()
        };
        ep.query_async(&admin).await
    }

    async fn archive(
        &self,
        project: u64,
        sha: &str,
        max: u64,
    ) -> Result<Vec<u8>, ApiError<ClientError>> {
        use futures_util::StreamExt;
        // Streamed with a cap (the API client's path reads a whole answer into memory).
        let mut url = self
            .base
            .join(&format!("projects/{project}/repository/archive.tar.gz"))
            .map_err(|e| ApiError::client(ClientError::Url(e)))?;
        url.query_pairs_mut().append_pair("sha", sha);
        let mut r = self
            .http
            .get(url)
            .header("PRIVATE-TOKEN", self.token.expose());
        if let Some(s) = &self.sudo {
            r = r.header("Sudo", s);
        }
        let resp = r
            .send()
            .await
            .map_err(|e| ApiError::client(ClientError::Http(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(ApiError::GitlabWithStatus { status, msg });
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(ApiError::client(ClientError::TooLarge(max)));
        }
        let mut out = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| ApiError::client(ClientError::Http(e)))?;
            if out.len() as u64 + chunk.len() as u64 > max {
                return Err(ApiError::client(ClientError::TooLarge(max)));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn create_hook(
        &self,
        project: u64,
        url: &str,
        token: &str,
        events: HookEvents,
    ) -> Result<HookInfo, ApiError<ClientError>> {
        let course = events == HookEvents::Course;
        let ep = gitlab::api::projects::hooks::CreateHook::builder()
            .project(project)
            .url(url)
            .token(token)
            .push_events(true)
            .pipeline_events(!course)
            .job_events(!course)
            .merge_requests_events(course)
            .note_events(course)
            .enable_ssl_verification(true)
            .build()
            .expect("project and url are set");
        ep.query_async(self).await
    }

    async fn delete_hook(&self, project: u64, hook: u64) -> Result<(), ApiError<ClientError>> {
        let ep = gitlab::api::projects::hooks::DeleteHook::builder()
            .project(project)
            .hook_id(hook)
            .build()
            .expect("project and hook are set");
        gitlab::api::ignore(ep).query_async(self).await
    }

    async fn commit_status(
        &self,
        project: u64,
        sha: &str,
        name: &str,
        state: gitlab::api::projects::repository::commits::CommitStatusState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), ApiError<ClientError>> {
        let mut b = gitlab::api::projects::repository::commits::CreateCommitStatus::builder();
        b.project(project)
            .commit(sha)
            .state(state)
            .name(name)
            .description(description.chars().take(250).collect::<String>());
        if let Some(u) = target_url {
            b.target_url(u);
        }
        let ep = b.build().expect("project, commit and state are set");
        gitlab::api::ignore(ep).query_async(self).await
    }

    async fn raw_file(
        &self,
        project: u64,
        path: &str,
        git_ref: &str,
    ) -> Result<Option<Vec<u8>>, ApiError<ClientError>> {
        let ep = gitlab::api::projects::repository::files::FileRaw::builder()
            .project(project)
            .file_path(path)
            .ref_(git_ref)
            .build()
            .expect("project and path are set");
        match gitlab::api::raw(ep).query_async(self).await {
            Ok(b) => Ok(Some(b)),
            Err(ApiError::GitlabWithStatus { status, .. }) if status.as_u16() == 404 => Ok(None),
            Err(ApiError::GitlabService { status, .. }) if status.as_u16() == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_mr_note(
        &self,
        project: u64,
        iid: u64,
        body: &str,
    ) -> Result<u64, ApiError<ClientError>> {
        #[derive(serde::Deserialize)]
        struct Created {
            id: u64,
        }
        let ep = gitlab::api::projects::merge_requests::notes::CreateMergeRequestNote::builder()
            .project(project)
            .merge_request(iid)
            .body(body)
            .build()
            .expect("project, merge request and body are set");
        let c: Created = ep.query_async(self).await?;
        Ok(c.id)
    }

    async fn edit_mr_note(
        &self,
        project: u64,
        iid: u64,
        note: u64,
        body: &str,
    ) -> Result<(), ApiError<ClientError>> {
        let ep = gitlab::api::projects::merge_requests::notes::EditMergeRequestNote::builder()
            .project(project)
            .merge_request(iid)
            .note(note)
            .body(body)
            .build()
            .expect("project, merge request, note and body are set");
        gitlab::api::ignore(ep).query_async(self).await
    }
}
