//! GitLab: the receiver on every fixture, and builds end to end against a
//! protocol-faithful fake GitLab (in-process; only the endpoints shisa uses,
//! shaped by shared/docs/protocols.md §1–3 and the fixtures), real Podman and
//! a real registry.

use shisa::gitlab::client::Gitlab as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use hmac::{KeyInit, Mac};

use crate::harness::{free_port, podman_cli, registry, Opts, Stack};

pub const ADMIN: &str = "glpat-test-admin";
pub(crate) const HOOK_TOKEN: &str = "hook-secret";

#[derive(Clone)]
pub struct FakeProject {
    pub id: u64,
    pub path: String,
    /// username → access level (30 Developer, 40 Maintainer).
    pub members: HashMap<String, u32>,
    /// sha → tar.gz of the tree (one top directory, as GitLab makes it).
    pub archives: HashMap<String, Vec<u8>>,
}

#[derive(Default)]
pub struct FakeState {
    /// (id, GitLab user name).
    pub users: Vec<(u64, String)>,
    /// The department uid a GitLab user's LDAP identity names (`uid=…,ou=people,…`), when
    /// not their user name; `None`: the user has no LDAP identity.
    pub identities: HashMap<u64, Option<String>>,
    pub projects: Vec<FakeProject>,
    pub hooks: Vec<(u64, u64, String)>,
    /// (project, sha, state, name, description)
    pub statuses: Vec<(u64, String, String, String, String)>,
    /// Every Sudo header seen, with the path.
    pub sudo_log: Vec<(String, String)>,
    /// CI_JOB_TOKEN → (job id, project id, username, status, sha).
    pub job_tokens: HashMap<String, (u64, u64, String, String, String)>,
    /// CI_JOB_TOKEN → the job's ref, when not `main`.
    pub job_refs: HashMap<String, String>,
    /// Runners: id → (project, token, tags).
    pub runners: HashMap<u64, (u64, String, String)>,
    /// Pending CI jobs by project.
    pub pending: HashMap<u64, Vec<u64>>,
    /// What `/oauth/discovery/keys` publishes (the keys that sign `id_tokens`).
    pub jwks: serde_json::Value,
    /// `GET /projects/:id` answers 302 to this URL (a GitLab that redirects elsewhere).
    pub redirect_projects: Option<String>,
    /// The secret token each project's hook was created with.
    pub hook_tokens: HashMap<u64, String>,
    /// The parameters each project's hook was created with (which events it sends).
    pub hook_params: HashMap<u64, HashMap<String, String>>,
    /// Repository files: (project, ref or sha) → path → content.
    pub files: HashMap<(u64, String), HashMap<String, String>>,
    /// Merge request comments, in order.
    pub notes: Vec<FakeNote>,
}

#[derive(Clone, Debug)]
pub struct FakeNote {
    pub project: u64,
    pub iid: u64,
    pub id: u64,
    pub body: String,
    pub author: String,
    /// How many times it was edited.
    pub edits: u32,
}

/// A parameter of a request body, form-encoded or JSON (the crate sends either).
fn body_param(body: &str, key: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| match &v[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
        .or_else(|| {
            serde_html_form::from_str::<HashMap<String, String>>(body)
                .ok()
                .and_then(|m| m.get(key).cloned())
        })
}

/// `GET /projects/:id/repository/files/:path/raw?ref=`, as a member (GL-FILES).
async fn raw_file(
    State(s): S,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let st = s.lock().unwrap();
    let who = match acting(&st, &h, "files") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let (p, _) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    let git_ref = q.get("ref").cloned().unwrap_or_else(|| "main".into());
    let path = percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .to_string();
    match st.files.get(&(p.id, git_ref)).and_then(|f| f.get(&path)) {
        Some(content) => (StatusCode::OK, content.clone()).into_response(),
        None => gl_error(StatusCode::NOT_FOUND, "404 File Not Found"),
    }
}

/// `POST /projects/:id/merge_requests/:iid/notes` (Reporter and up may comment).
async fn create_note(
    State(s): S,
    Path((id, iid)): Path<(String, u64)>,
    h: HeaderMap,
    body: String,
) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "notes") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let (p, level) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    if level < 20 {
        return gl_error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let Some(text) = body_param(&body, "body") else {
        return gl_error(StatusCode::BAD_REQUEST, "400 body is missing");
    };
    let note_id = 5000 + st.notes.len() as u64;
    st.notes.push(FakeNote {
        project: p.id,
        iid,
        id: note_id,
        body: text.clone(),
        author: who.unwrap_or_else(|| "root".into()),
        edits: 0,
    });
    (
        StatusCode::CREATED,
        Json(serde_json::json!({"id": note_id, "body": text, "noteable_iid": iid, "noteable_type": "MergeRequest"})),
    )
        .into_response()
}

/// `PUT /projects/:id/merge_requests/:iid/notes/:note_id`: only its author edits a note.
async fn edit_note(
    State(s): S,
    Path((id, iid, note_id)): Path<(String, u64, u64)>,
    h: HeaderMap,
    body: String,
) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "notes") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let (p, _) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    let Some(text) = body_param(&body, "body") else {
        return gl_error(StatusCode::BAD_REQUEST, "400 body is missing");
    };
    let author = who.unwrap_or_else(|| "root".into());
    match st
        .notes
        .iter_mut()
        .find(|n| n.project == p.id && n.iid == iid && n.id == note_id)
    {
        Some(n) if n.author == author => {
            n.body = text;
            n.edits += 1;
            Json(serde_json::json!({"id": note_id})).into_response()
        }
        Some(_) => gl_error(StatusCode::FORBIDDEN, "403 Forbidden"),
        None => gl_error(StatusCode::NOT_FOUND, "404 Note Not Found"),
    }
}

#[derive(Clone)]
pub struct FakeGitlab {
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
}

fn gl_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({"message": msg}))).into_response()
}

type S = State<Arc<Mutex<FakeState>>>;

/// The acting user: the admin token is required; `Sudo` names whom it acts as.
/// Why the fake refuses: a status and GitLab's message.
type Refusal = (StatusCode, &'static str);

fn acting(st: &FakeState, h: &HeaderMap, path: &str) -> Result<Option<String>, Refusal> {
    if h.get("private-token").and_then(|v| v.to_str().ok()) != Some(ADMIN) {
        return Err((StatusCode::UNAUTHORIZED, "401 Unauthorized"));
    }
    match h.get("sudo").and_then(|v| v.to_str().ok()) {
        None => Ok(None),
        Some(u) => {
            let _ = path;
            // GitLab takes a user name or an id; either way the call acts as that user.
            match st
                .users
                .iter()
                .find(|(id, n)| n == u || id.to_string() == u)
            {
                Some((_, n)) => Ok(Some(n.clone())),
                None => Err((StatusCode::FORBIDDEN, "403 Forbidden - User not found")),
            }
        }
    }
}

/// The project as `user` sees it: 404 when they are not a member (GitLab hides private projects).
fn visible(st: &FakeState, id: &str, user: &Option<String>) -> Result<(FakeProject, u32), Refusal> {
    let p = st
        .projects
        .iter()
        .find(|p| p.id.to_string() == id || p.path == id)
        .cloned()
        .ok_or((StatusCode::NOT_FOUND, "404 Project Not Found"))?;
    let level = match user {
        None => 50,
        Some(u) => *p
            .members
            .get(u)
            .ok_or((StatusCode::NOT_FOUND, "404 Project Not Found"))?,
    };
    Ok((p, level))
}

async fn get_project(State(s): S, Path(id): Path<String>, h: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    if let Some(to) = &st.redirect_projects {
        return (StatusCode::FOUND, [("location", to.clone())]).into_response();
    }
    let who = match acting(&st, &h, "project") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    if let Some(w) = &who {
        st.sudo_log.push((w.clone(), format!("projects/{id}")));
    }
    match visible(&st, &id, &who) {
        Ok((p, level)) => Json(serde_json::json!({
            "id": p.id, "path_with_namespace": p.path, "web_url": format!("http://gitlab.test/{}", p.path),
            "default_branch": "main",
            "permissions": {"project_access": {"access_level": level}, "group_access": null}
        }))
        .into_response(),
        Err((c, m)) => gl_error(c, m),
    }
}

/// A user as the admin API shows them: the LDAP identity GitLab recorded at sign-in.
fn user_json(st: &FakeState, id: u64, name: &str) -> serde_json::Value {
    let identities = match st.identities.get(&id) {
        Some(None) => serde_json::json!([]),
        Some(Some(uid)) => {
            serde_json::json!([{"provider": "ldapmain", "extern_uid": format!("uid={uid},ou=people,dc=example,dc=edu")}])
        }
        None => {
            serde_json::json!([{"provider": "ldapmain", "extern_uid": format!("uid={name},ou=people,dc=example,dc=edu")}])
        }
    };
    serde_json::json!({"id": id, "username": name, "identities": identities})
}

async fn get_user(State(s): S, Path(id): Path<String>, h: HeaderMap) -> Response {
    let st = s.lock().unwrap();
    if let Err((c, m)) = acting(&st, &h, "user") {
        return gl_error(c, m);
    }
    match st.users.iter().find(|(i, _)| i.to_string() == id) {
        Some((i, n)) => Json(user_json(&st, *i, n)).into_response(),
        None => gl_error(StatusCode::NOT_FOUND, "404 User Not Found"),
    }
}

/// `GET /users?extern_uid=&provider=`: admins only (as GitLab: others get no identity filter).
async fn list_users(
    State(s): S,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let st = s.lock().unwrap();
    match acting(&st, &h, "users") {
        Ok(None) => {}
        Ok(Some(_)) => return gl_error(StatusCode::FORBIDDEN, "403 Forbidden"),
        Err((c, m)) => return gl_error(c, m),
    }
    let (Some(uid), Some(provider)) = (q.get("extern_uid"), q.get("provider")) else {
        return gl_error(StatusCode::BAD_REQUEST, "400 extern_uid and provider");
    };
    let found: Vec<serde_json::Value> = st
        .users
        .iter()
        .map(|(i, n)| user_json(&st, *i, n))
        .filter(|u| {
            u["identities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["provider"] == provider.as_str() && x["extern_uid"] == uid.as_str())
        })
        .collect();
    Json(found).into_response()
}

async fn create_hook(State(s): S, Path(id): Path<String>, h: HeaderMap, body: String) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "hooks") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let (p, level) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    if level < 40 {
        return gl_error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    // The crate sends form or JSON parameters; keep the URL either way.
    let url = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["url"].as_str().map(str::to_string))
        .or_else(|| {
            serde_html_form::from_str::<HashMap<String, String>>(&body)
                .ok()
                .and_then(|m| m.get("url").cloned())
        })
        .unwrap_or_default();
    let token = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .or_else(|| {
            serde_html_form::from_str::<HashMap<String, String>>(&body)
                .ok()
                .and_then(|m| m.get("token").cloned())
        })
        .unwrap_or_default();
    st.hook_tokens.insert(p.id, token);
    let params: HashMap<String, String> = [
        "push_events",
        "merge_requests_events",
        "note_events",
        "pipeline_events",
        "job_events",
    ]
    .iter()
    .filter_map(|k| body_param(&body, k).map(|v| (k.to_string(), v)))
    .collect();
    st.hook_params.insert(p.id, params);
    let hid = 900 + st.hooks.len() as u64;
    st.hooks.push((p.id, hid, url));
    (StatusCode::CREATED, Json(serde_json::json!({"id": hid}))).into_response()
}

async fn delete_hook(State(s): S, Path((id, hid)): Path<(String, u64)>, h: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "hooks") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    if let Err((c, m)) = visible(&st, &id, &who) {
        return gl_error(c, m);
    }
    st.hooks.retain(|(_, h2, _)| *h2 != hid);
    StatusCode::NO_CONTENT.into_response()
}

async fn archive(
    State(s): S,
    Path(id): Path<String>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "archive") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    if let Some(w) = &who {
        st.sudo_log
            .push((w.clone(), format!("projects/{id}/repository/archive")));
    }
    let (p, _) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    match q.get("sha").and_then(|sha| p.archives.get(sha)) {
        Some(b) => b.clone().into_response(),
        None => gl_error(StatusCode::NOT_FOUND, "404 Commit Not Found"),
    }
}

async fn status(
    State(s): S,
    Path((id, sha)): Path<(String, String)>,
    h: HeaderMap,
    body: String,
) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "statuses") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let (p, level) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    if level < 30 {
        return gl_error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let v: HashMap<String, String> = serde_html_form::from_str(&body)
        .ok()
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .map(|v| {
                    v.as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
        })
        .unwrap_or_default();
    let state = v.get("state").cloned().unwrap_or_default();
    if ![
        "pending", "running", "success", "failed", "canceled", "skipped",
    ]
    .contains(&state.as_str())
    {
        return gl_error(StatusCode::BAD_REQUEST, "state is missing or invalid");
    }
    st.statuses.push((
        p.id,
        sha,
        state,
        v.get("name").cloned().unwrap_or_else(|| "default".into()),
        v.get("description").cloned().unwrap_or_default(),
    ));
    (StatusCode::CREATED, Json(serde_json::json!({"id": 1}))).into_response()
}

/// `GET /job` with `JOB-TOKEN`: the job the token belongs to (GitLab's Jobs API).
async fn current_job(State(s): S, h: HeaderMap) -> Response {
    let st = s.lock().unwrap();
    let token = h
        .get("job-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some((id, project, user, status, sha)) = st.job_tokens.get(&token).cloned() else {
        return gl_error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    };
    let git_ref = st
        .job_refs
        .get(&token)
        .cloned()
        .unwrap_or_else(|| "main".into());
    Json(serde_json::json!({
        "id": id, "status": status, "stage": "build", "name": "shisa-container-image", "ref": git_ref,
        "pipeline": {"id": 1, "project_id": project, "ref": git_ref, "sha": sha, "status": "running"},
        "user": {"id": 1, "username": user}
    }))
    .into_response()
}

fn form_or_json(body: &str) -> HashMap<String, String> {
    serde_html_form::from_str::<Vec<(String, String)>>(body)
        .ok()
        .map(|v| {
            let mut m: HashMap<String, String> = HashMap::new();
            for (k, x) in v {
                m.entry(k.trim_end_matches("[]").to_string())
                    .and_modify(|e| {
                        e.push(',');
                        e.push_str(&x);
                    })
                    .or_insert(x);
            }
            m
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .map(|o| {
                    o.into_iter()
                        .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or(v.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        })
}

/// `POST /user/runners` (GitLab 15.10+): a project runner; Owner or Maintainer of the project.
async fn create_runner(State(s): S, h: HeaderMap, body: String) -> Response {
    let mut st = s.lock().unwrap();
    let who = match acting(&st, &h, "runners") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let f = form_or_json(&body);
    if f.get("runner_type").map(String::as_str) != Some("project_type") {
        return gl_error(
            StatusCode::BAD_REQUEST,
            "runner_type is missing or not project_type",
        );
    }
    let project = f.get("project_id").cloned().unwrap_or_default();
    let (p, level) = match visible(&st, &project, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    if level < 40 {
        return gl_error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let id = 9000 + st.runners.len() as u64;
    let token = format!("glrt-fake{id}");
    st.runners.insert(
        id,
        (
            p.id,
            token.clone(),
            f.get("tag_list").cloned().unwrap_or_default(),
        ),
    );
    (
        StatusCode::CREATED,
        Json(serde_json::json!({"id": id, "token": token, "token_expires_at": null})),
    )
        .into_response()
}

async fn delete_runner(State(s): S, Path(id): Path<u64>, h: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    if let Err((c, m)) = acting(&st, &h, "runners") {
        return gl_error(c, m);
    }
    match st.runners.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => gl_error(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

/// `POST /runners/verify`: 200 for a token GitLab knows, 403 otherwise.
async fn verify_runner(State(s): S, body: String) -> Response {
    let st = s.lock().unwrap();
    let token = form_or_json(&body)
        .get("token")
        .cloned()
        .unwrap_or_default();
    if st.runners.values().any(|r| r.1 == token) {
        (
            StatusCode::OK,
            Json(serde_json::json!({"id": 1, "token": token})),
        )
            .into_response()
    } else {
        gl_error(StatusCode::FORBIDDEN, "403 Forbidden")
    }
}

/// `GET /projects/:id/jobs?scope[]=pending`, as the project's member.
async fn project_jobs(
    State(s): S,
    Path(id): Path<String>,
    h: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let st = s.lock().unwrap();
    let who = match acting(&st, &h, "jobs") {
        Ok(w) => w,
        Err((c, m)) => return gl_error(c, m),
    };
    let (p, _) = match visible(&st, &id, &who) {
        Ok(x) => x,
        Err((c, m)) => return gl_error(c, m),
    };
    let q = uri.query().unwrap_or_default().replace("%5B%5D", "[]");
    let jobs: Vec<serde_json::Value> = if q.contains("scope[]=pending") {
        st.pending
            .get(&p.id)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|j| serde_json::json!({"id": j, "status": "pending"}))
            .collect()
    } else {
        Vec::new()
    };
    Json(jobs).into_response()
}

async fn discovery_keys(State(s): S) -> Response {
    Json(s.lock().unwrap().jwks.clone()).into_response()
}

/// An RSA key made with openssl: (private PEM, its JWK with `kid`).
fn rsa_key(dir: &std::path::Path, kid: &str) -> (Vec<u8>, serde_json::Value) {
    let pem = dir.join(format!("{kid}.pem"));
    assert!(std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success());
    let m = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let hex_n = String::from_utf8(m.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n: Vec<u8> = (0..hex_n.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_n[i..i + 2], 16).unwrap())
        .collect();
    let jwk = serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n), "e": "AQAB"});
    (std::fs::read(&pem).unwrap(), jwk)
}

impl FakeGitlab {
    pub async fn start(state: FakeState) -> FakeGitlab {
        let state = Arc::new(Mutex::new(state));
        let app = Router::new()
            .route("/api/v4/projects/{id}", get(get_project))
            .route("/api/v4/users/{id}", get(get_user))
            .route("/api/v4/users", get(list_users))
            .route("/api/v4/job", get(current_job))
            .route("/api/v4/user/runners", post(create_runner))
            .route("/api/v4/runners/{id}", delete(delete_runner))
            .route("/api/v4/runners/verify", post(verify_runner))
            .route("/api/v4/projects/{id}/jobs", get(project_jobs))
            .route("/oauth/discovery/keys", get(discovery_keys))
            .route("/api/v4/projects/{id}/hooks", post(create_hook))
            .route("/api/v4/projects/{id}/hooks/{hid}", delete(delete_hook))
            .route(
                "/api/v4/projects/{id}/repository/archive.tar.gz",
                get(archive),
            )
            .route("/api/v4/projects/{id}/statuses/{sha}", post(status))
            .route(
                "/api/v4/projects/{id}/repository/files/{path}/raw",
                get(raw_file),
            )
            .route(
                "/api/v4/projects/{id}/merge_requests/{iid}/notes",
                post(create_note),
            )
            .route(
                "/api/v4/projects/{id}/merge_requests/{iid}/notes/{note}",
                axum::routing::put(edit_note),
            )
            .with_state(state.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        FakeGitlab { url, state }
    }
}

/// A GitLab-style archive: `NAME-SHA/` holding `files`.
pub fn tar_gz(top: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (p, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("{top}/{p}"), content.as_bytes())
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

pub fn whsec() -> (String, Vec<u8>) {
    let key = vec![42u8; 32];
    (
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&key)
        ),
        key,
    )
}

pub(crate) fn gitlab_toml(url: &str, timeout: u64) -> String {
    format!(
        "[gitlab]\nurl = {url:?}\napi_token = {ADMIN:?}\nwebhook_tokens = [\"old-secret\", {HOOK_TOKEN:?}]\nsigning_keys = [{:?}]\nlink_by = \"extern_uid\"\nldap_people_base = \"ou=people,dc=example,dc=edu\"\nbuild_timeout_seconds = {timeout}\nbuild_containers_conf = {:?}\n",
        whsec().0,
        crate::harness::podman().parent().unwrap().join("containers.conf")
    )
}

/// The `podman` command line on an owner's build store in a stack.
fn build_store_cli(s: &Stack, owner: &str) -> std::process::Command {
    let d = s.data_dir.join("build-stores").join(owner);
    let mut c = std::process::Command::new("podman");
    c.env(
        "CONTAINERS_CONF",
        crate::harness::podman()
            .parent()
            .unwrap()
            .join("containers.conf"),
    )
    .arg("--root")
    .arg(d.join("storage"))
    .arg("--runroot")
    .arg(shisa::builds::Store { dir: d, conf: None }.runroot());
    c
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gitlab")
            .join(name),
    )
    .unwrap()
}

/// A delivery as GitLab sends it for a project shisa enabled: the project's own secret in
/// place of the global `HOOK_TOKEN` (what GitLab was given when the hook was created; read
/// here from the stack's database and key, as shisa keeps it).
pub(crate) async fn deliver(
    s: &Stack,
    event: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, String) {
    let project = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["project"]["id"].as_u64().or(v["project_id"].as_u64()));
    let own = match project {
        Some(id) => project_hook_token(s, id).await,
        None => None,
    };
    let headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(k, v)| {
            match (
                &own,
                k.eq_ignore_ascii_case("X-Gitlab-Token") && v == HOOK_TOKEN,
            ) {
                (Some(t), true) => (*k, t.clone()),
                _ => (*k, v.clone()),
            }
        })
        .collect();
    deliver_as_is(s, event, body, &headers).await
}

/// The secret shisa installed in a project's hook, if it has one of its own.
async fn project_hook_token(s: &Stack, project: u64) -> Option<String> {
    let sealed = s.store().hook_secret(project).await.ok().flatten()?;
    let key = shisa::sealing::key(&s.data_dir.join("state.key")).ok()?;
    shisa::sealing::open_text(&key, &sealed).ok()
}

/// A delivery with exactly these headers.
async fn deliver_as_is(
    s: &Stack,
    event: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .post(s.url("/hooks/gitlab"))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", event)
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let resp = r.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

fn deliveries(s: &Stack) -> i64 {
    s.store()
        .with(|c| c.query_row("SELECT COUNT(*) FROM gitlab_deliveries", [], |r| r.get(0)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_on_every_fixture() {
    let fake = FakeGitlab::start(FakeState::default()).await;
    let s = Stack::start(Opts {
        extra: gitlab_toml(&fake.url, 120),
        ..Default::default()
    })
    .await;
    let tok = |k: &str| {
        vec![
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    let mut n = 0;
    for (f, event) in [
        ("push.json", "Push Hook"),
        ("tag_push.json", "Tag Push Hook"),
        ("merge_request.json", "Merge Request Hook"),
        ("note_merge_request.json", "Note Hook"),
        ("pipeline.json", "Pipeline Hook"),
        ("job.json", "Job Hook"),
    ] {
        let (code, body) = deliver(&s, event, fixture(f), &tok(f)).await;
        assert_eq!((code, body.contains("queued")), (200, true), "{f}: {body}");
        n += 1;
        assert_eq!(deliveries(&s), n, "{f} stored");
    }
    // A kind shisa does not use: 200, nothing stored.
    let (code, body) = deliver(
        &s,
        "Deployment Hook",
        fixture("deployment.json"),
        &tok("dep"),
    )
    .await;
    assert_eq!((code, body.contains("ignored")), (200, true));
    assert_eq!(deliveries(&s), n);
    // Replayed (same Idempotency-Key, as GitLab's "Resend" does): 200, processed once.
    let (code, body) = deliver(&s, "Push Hook", fixture("push.json"), &tok("push.json")).await;
    assert_eq!((code, body.contains("duplicate")), (200, true), "{body}");
    assert_eq!(deliveries(&s), n);
    // The old token still works during rotation; a wrong or missing one: 401, nothing stored.
    let (code, _) = deliver(
        &s,
        "Push Hook",
        fixture("push.json"),
        &[
            ("X-Gitlab-Token", "old-secret".into()),
            ("Idempotency-Key", "rot".into()),
        ],
    )
    .await;
    assert_eq!(code, 200);
    n += 1;
    for h in [vec![("X-Gitlab-Token", "hook-secreT".to_string())], vec![]] {
        let (code, _) = deliver(&s, "Push Hook", fixture("push.json"), &h).await;
        assert_eq!(code, 401);
    }
    assert_eq!(deliveries(&s), n);
    // A System Hook push (admin-wide hooks): understood by event_name.
    let (code, body) = deliver(&s, "System Hook", fixture("push.json"), &tok("sys")).await;
    assert_eq!((code, body.contains("queued")), (200, true), "{body}");
    n += 1;
    // Signed deliveries: good, tampered body, stale timestamp.
    let (_, key) = whsec();
    let now = shisa::store::now();
    let signed = |id: &str, ts: i64, body: &[u8]| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        m.update(format!("{id}.{ts}.").as_bytes());
        m.update(body);
        vec![
            ("webhook-id", id.to_string()),
            ("Idempotency-Key", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            (
                "webhook-signature",
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
                ),
            ),
        ]
    };
    let body = fixture("pipeline.json");
    let (code, _) = deliver(
        &s,
        "Pipeline Hook",
        body.clone(),
        &signed("sig-1", now, &body),
    )
    .await;
    assert_eq!(code, 200);
    n += 1;
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let (code, _) = deliver(&s, "Pipeline Hook", tampered, &signed("sig-2", now, &body)).await;
    assert_eq!(code, 401, "tampered body");
    let (code, _) = deliver(
        &s,
        "Pipeline Hook",
        body.clone(),
        &signed("sig-3", now - 3600, &body),
    )
    .await;
    assert_eq!(code, 401, "stale signature");
    assert_eq!(deliveries(&s), n);
    // A captured signed delivery replayed with another (unsigned) Idempotency-Key: a duplicate.
    let mut replay = signed("sig-1", now, &body);
    replay.retain(|(k, _)| *k != "Idempotency-Key");
    replay.push(("Idempotency-Key", "fresh-looking-key".to_string()));
    let (code, reply) = deliver(&s, "Pipeline Hook", body.clone(), &replay).await;
    assert_eq!((code, reply.contains("duplicate")), (200, true), "{reply}");
    assert_eq!(deliveries(&s), n);
    // Malformed JSON: 400 naming the JSON path; oversize: 413.
    let (code, body) = deliver(
        &s,
        "Push Hook",
        br#"{"before":"a","after":"b","ref":"r","user_id":"x"}"#.to_vec(),
        &tok("bad"),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("user_id"), "{body}");
    let big = vec![b' '; 26 * 1024 * 1024];
    let (code, _) = deliver(&s, "Push Hook", big, &tok("big")).await;
    assert_eq!(code, 413);
    assert_eq!(deliveries(&s), n);
    s.stop().await;
}

#[tokio::test]
async fn the_fake_gitlab_refuses_a_sudo_user_without_access() {
    let mut members = HashMap::new();
    members.insert("alice".to_string(), 40);
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![FakeProject {
            id: 7,
            path: "alice/mymodel".into(),
            members,
            archives: HashMap::new(),
        }],
        ..Default::default()
    })
    .await;
    let api = shisa::gitlab::client::GitlabApi::new(
        &fake.url,
        shisa::config::Secret::new(ADMIN),
        Duration::from_secs(5),
    )
    .unwrap();
    let p = api
        .for_user("alice")
        .project("alice/mymodel")
        .await
        .unwrap();
    assert_eq!((p.id, p.access_level()), (7, 40));
    let e = api
        .for_user("bob")
        .project("alice/mymodel")
        .await
        .unwrap_err();
    assert!(
        shisa::gitlab::client::explain(&e).contains("does not exist or you cannot see it"),
        "{e}"
    );
    let e = api
        .for_user("bob")
        .archive(7, "abc", 1 << 20)
        .await
        .unwrap_err();
    assert!(shisa::gitlab::client::explain(&e).contains("cannot see it"));
    let u = api.user(101).await.unwrap();
    assert_eq!(u.ldap_uid().as_deref(), Some("alice"));
    let bad = shisa::gitlab::client::GitlabApi::new(
        &fake.url,
        shisa::config::Secret::new("nope"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(bad.project("alice/mymodel").await.is_err());
}

/// bob's private image on the shared blade (`localhost/bob/bob-thesis:latest`): its id.
pub(crate) fn bob_private_image() -> String {
    crate::harness::test_images();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM localhost/busybox:latest\nRUN echo bob-private > /secret\n",
    )
    .unwrap();
    let out = podman_cli()
        .args([
            "build",
            "-q",
            "--network=none",
            "-t",
            "localhost/bob/bob-thesis:latest",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("sha256:")
        .to_string()
}

pub(crate) fn push_body(project: u64, path: &str, user: u64, sha: &str, file: &str) -> Vec<u8> {
    serde_json::json!({
        "object_kind": "push", "event_name": "push",
        "before": "0000000000000000000000000000000000000001", "after": sha, "ref": "refs/heads/main",
        "checkout_sha": sha, "user_id": user, "user_username": "x", "project_id": project,
        "project": {"id": project, "path_with_namespace": path, "web_url": format!("http://gitlab.test/{path}")},
        "commits": [{"id": sha, "message": "m", "added": [], "modified": [file], "removed": []}],
        "total_commits_count": 1
    })
    .to_string()
    .into_bytes()
}

fn build_rows(s: &Stack) -> Vec<(String, String, String, i64, i64, String)> {
    s.store()
        .with(|c| {
            let mut st = c.prepare("SELECT owner, sha, state, COALESCE(started_at, 0), COALESCE(finished_at, 0), COALESCE(image, detail, '') FROM builds ORDER BY id")?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .unwrap()
}

async fn wait_builds(s: &Stack, done: usize) -> Vec<(String, String, String, i64, i64, String)> {
    for _ in 0..900 {
        let rows = build_rows(s);
        if rows
            .iter()
            .filter(|r| matches!(r.2.as_str(), "succeeded" | "failed"))
            .count()
            >= done
        {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("builds did not finish: {:?}", build_rows(s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_builds_an_image_into_the_registry() {
    crate::harness::test_images();
    let sha_a = "a1a1a1a1b2b2b2b2c3c3c3c3d4d4d4d4e5e5e5e5";
    let sha_f = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0";
    let sha_b = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
    let sha_slow = "5105105105105105105105105105105105105105";
    let sha_steal = "5ea15ea15ea15ea15ea15ea15ea15ea15ea15ea1";
    let mut alice_p = FakeProject {
        id: 7,
        path: "alice/MyModel".into(),
        members: HashMap::from([("alice".to_string(), 40)]),
        archives: HashMap::new(),
    };
    alice_p.archives.insert(
        sha_a.into(),
        tar_gz(&format!("mymodel-{sha_a}"), &[
            ("Containerfile", "FROM localhost/busybox:latest\nRUN id -u > /etc/build-uid && cat /proc/self/uid_map > /etc/build-map && sleep 4\nCMD [\"cat\", \"/etc/build-uid\"]\n"),
            ("README.md", "hello\n"),
        ]),
    );
    alice_p.archives.insert(
        sha_f.into(),
        tar_gz(
            &format!("mymodel-{sha_f}"),
            &[(
                "Containerfile",
                "FROM localhost/busybox:latest\nRUN echo about to fail && exit 3\n",
            )],
        ),
    );
    // bob's image is on the blade (pulled for his containers): alice may not build from it.
    alice_p.archives.insert(
        sha_steal.into(),
        tar_gz(
            &format!("mymodel-{sha_steal}"),
            &[("Containerfile", "FROM localhost/busybox:latest AS ok\nFROM localhost/bob/tools:1\nCOPY --from=ok /bin/sh /x\n")],
        ),
    );
    // bob's private image is on the blade too; none of these may reach it.
    let bob_private = bob_private_image();
    let sneaky = [
        ("a0000000", "FROM bob-thesis:latest\nRUN cat /secret\n".to_string()),
        ("a0000001", format!("FROM {}\nRUN cat /secret\n", &bob_private[..12])),
        ("a0000002", "FROM localhost/busybox:latest\nRUN --mount=type=bind,from=localhost/bob/bob-thesis:latest,target=/m cat /m/secret\n".to_string()),
        ("a0000003", "# escape=`\nFROM localhost/busybox:latest AS ok\nCOPY `\n  --from=localhost/bob/bob-thesis:latest /secret /secret\nRUN cat /secret\n".to_string()),
    ];
    for (sha, cf) in &sneaky {
        alice_p.archives.insert(
            format!("{sha}{}", "0".repeat(32)),
            tar_gz(&format!("mymodel-{sha}"), &[("Containerfile", cf)]),
        );
    }
    alice_p.archives.insert(
        sha_slow.into(),
        tar_gz(
            &format!("mymodel-{sha_slow}"),
            &[(
                "Containerfile",
                "FROM localhost/busybox:latest\nRUN sleep 3600\n",
            )],
        ),
    );
    let mut bob_p = FakeProject {
        id: 8,
        path: "bob/tool".into(),
        members: HashMap::from([("bob".to_string(), 40)]),
        archives: HashMap::new(),
    };
    bob_p.archives.insert(
        sha_b.into(),
        tar_gz(
            &format!("tool-{sha_b}"),
            &[("Dockerfile", "FROM localhost/busybox:latest\nRUN sleep 4\n")],
        ),
    );
    let other = FakeProject {
        id: 9,
        path: "bob/other".into(),
        members: HashMap::from([("bob".to_string(), 40)]),
        archives: HashMap::new(),
    };
    let fake = FakeGitlab::start(FakeState {
        users: vec![
            (101, "alice".into()),
            (102, "bob".into()),
            (104, "stranger".into()),
        ],
        projects: vec![alice_p, bob_p, other],
        ..Default::default()
    })
    .await;
    let port = free_port();
    let reg = registry(port);
    let s = Stack::start(Opts {
        podman: true,
        listen_port: Some(port),
        extra: format!(
            "{}\n{}convert_sif = true\n[queue]\nslow_workers = 4\n",
            reg.toml,
            gitlab_toml(&fake.url, 15)
        ),
        ..Default::default()
    })
    .await;
    // Enabling: only a maintainer who can see the project.
    let t = s.say("bob", "/container build enable alice/MyModel").await;
    assert!(t.contains("cannot use the GitLab project"), "{t}");
    let t = s
        .say("alice", "/container build enable alice/MyModel")
        .await;
    assert!(
        t.contains("Builds are on for `alice/MyModel`") && t.contains("alice/alice-mymodel:SHA"),
        "{t}"
    );
    assert_eq!(
        fake.state.lock().unwrap().hooks.len(),
        1,
        "a project webhook was installed"
    );
    assert!(s
        .say("bob", "/container build enable bob/tool")
        .await
        .contains("Builds are on"));
    // Two users' pushes, back to back: their builds overlap.
    let tok = |k: &str| {
        vec![
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    let (code, _) = deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/MyModel", 101, sha_a, "Containerfile"),
        &tok("p1"),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = deliver(
        &s,
        "Push Hook",
        push_body(8, "bob/tool", 102, sha_b, "Dockerfile"),
        &tok("p2"),
    )
    .await;
    assert_eq!(code, 200);
    let rows = wait_builds(&s, 2).await;
    let a = rows.iter().find(|r| r.1 == sha_a).unwrap().clone();
    let b = rows.iter().find(|r| r.1 == sha_b).unwrap().clone();
    assert_eq!(
        (a.2.as_str(), b.2.as_str()),
        ("succeeded", "succeeded"),
        "{rows:?}"
    );
    assert!(
        a.3 < b.4 && b.3 < a.4,
        "the two builds ran at the same time: {rows:?}"
    );
    let image = format!("127.0.0.1:{}/alice/alice-mymodel:a1a1a1a1", reg.port);
    assert_eq!(a.5, image);
    // Root inside the build, not on the host: the RUN saw uid 0, mapped to the unprivileged range.
    let out = build_store_cli(&s, "alice")
        .args([
            "run",
            "--rm",
            &image,
            "cat",
            "/etc/build-uid",
            "/etc/build-map",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    assert_eq!(words.next(), Some("0"), "id -u in the build: {text}");
    assert_eq!(
        words.collect::<Vec<_>>(),
        vec!["0", "200000", "65536"],
        "root inside is host uid 200000: {text}"
    );
    // In the registry (recorded from its own notifications), on the commit, and in alice's messages.
    let mut in_registry = false;
    for _ in 0..100 {
        let store = s.store();
        if store
            .image("alice/alice-mymodel", "a1a1a1a1")
            .await
            .unwrap()
            .is_some()
            && store
                .image("alice/alice-mymodel", "latest")
                .await
                .unwrap()
                .is_some()
        {
            in_registry = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_registry, "both tags reached the registry");
    {
        let st = fake.state.lock().unwrap();
        let mine: Vec<_> = st
            .statuses
            .iter()
            .filter(|x| x.1 == sha_a)
            .map(|x| (x.2.clone(), x.3.clone()))
            .collect();
        assert_eq!(
            mine.last().unwrap(),
            &("success".to_string(), "shisa/image".to_string()),
            "{mine:?}"
        );
        // Every call for a build was made as its owner.
        assert!(st
            .sudo_log
            .iter()
            .any(|(u, p)| u == "alice" && p.contains("archive")));
        assert!(!st
            .sudo_log
            .iter()
            .any(|(u, p)| u != "alice" && p.contains("projects/7")));
    }
    let dm = s.dm_containing("alice", "is ready").await;
    assert!(
        dm.contains(&image)
            && dm.contains("/container run alice/alice-mymodel:a1a1a1a1")
            && dm.contains("sha256:"),
        "{dm}"
    );
    // A failing Containerfile: a failure message with the log's last lines, a failed status.
    deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/MyModel", 101, sha_f, "Containerfile"),
        &tok("p3"),
    )
    .await;
    let rows = wait_builds(&s, 3).await;
    assert_eq!(rows.iter().find(|r| r.1 == sha_f).unwrap().2, "failed");
    let dm = s.dm_containing("alice", "about to fail").await;
    assert!(dm.contains("failed"), "{dm:?}");
    // Building FROM someone else's image that happens to be on the blade: refused.
    deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/MyModel", 101, sha_steal, "Containerfile"),
        &tok("p3b"),
    )
    .await;
    let rows = wait_builds(&s, 4).await;
    let steal = rows.iter().find(|r| r.1 == sha_steal).unwrap();
    assert_eq!(steal.2, "failed");
    assert!(
        steal.5.contains("localhost/bob/tools:1") && steal.5.contains("not shared with you"),
        "{steal:?}"
    );
    s.dm_containing("alice", "not shared with you").await;
    // Short names, id prefixes, `RUN --mount=…,from=` and an `# escape=` directive: the
    // build sees only alice's store, so each fails without reading bob's image.
    for (i, (sha, _)) in sneaky.iter().enumerate() {
        deliver(
            &s,
            "Push Hook",
            push_body(
                7,
                "alice/MyModel",
                101,
                &format!("{sha}{}", "0".repeat(32)),
                "Containerfile",
            ),
            &tok(&format!("sneak{i}")),
        )
        .await;
        let rows = wait_builds(&s, 5 + i).await;
        let r = rows.iter().find(|r| r.1.starts_with(sha)).unwrap();
        assert_eq!(r.2, "failed", "{sha}: {r:?}");
        assert!(!r.5.contains("bob-private"), "{sha}: {r:?}");
        assert!(
            r.5.contains("no such image")
                || r.5.contains("image not known")
                || r.5.contains("no stage or image found")
                || r.5.contains("not found"),
            "{sha}: {r:?}"
        );
    }
    let held = build_store_cli(&s, "alice")
        .args(["images", "--all", "--format", "{{.ID}} {{.Repository}}"])
        .output()
        .unwrap();
    let held = String::from_utf8_lossy(&held.stdout).to_string();
    assert!(
        !held.contains("bob") && !held.contains(&bob_private[..12]),
        "alice's build store: {held}"
    );
    assert!(fake
        .state
        .lock()
        .unwrap()
        .statuses
        .iter()
        .any(|x| x.1 == sha_f && x.2 == "failed"));
    // A push by a GitLab user with no department account: ignored. A push to a project
    // that is not enabled: one message to the pusher explaining how.
    deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/MyModel", 104, sha_a, "Containerfile"),
        &tok("p4"),
    )
    .await;
    deliver(
        &s,
        "Push Hook",
        push_body(9, "bob/other", 102, sha_b, "Containerfile"),
        &tok("p5"),
    )
    .await;
    deliver(
        &s,
        "Push Hook",
        push_body(9, "bob/other", 102, sha_b, "Containerfile"),
        &tok("p6"),
    )
    .await;
    let mut dm = vec![s.dm_containing("bob", "bob/other").await];
    tokio::time::sleep(Duration::from_millis(500)).await;
    dm.extend(
        s.store()
            .outbox_take("bob")
            .unwrap()
            .into_iter()
            .map(|m| m.message),
    );
    assert_eq!(
        dm.iter()
            .filter(|m| m.contains("/container build enable bob/other"))
            .count(),
        1,
        "{dm:?}"
    );
    assert_eq!(
        build_rows(&s).len(),
        8,
        "no build for the stranger or the project that is not enabled"
    );
    // A build that runs too long is stopped on the blade, not just abandoned.
    deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/MyModel", 101, sha_slow, "Containerfile"),
        &tok("p7"),
    )
    .await;
    let rows = wait_builds(&s, 9).await;
    let slow = rows.iter().find(|r| r.1 == sha_slow).unwrap();
    assert_eq!(slow.2, "failed");
    assert!(slow.5.contains("longer than its limit"), "{slow:?}");
    let mut clean = false;
    // Only this stack's build counts: its cgroup names the instance (another test's or the
    // host's `sleep 3600` is not ours).
    let cgroup = format!("shisabuild{}x", s.store().instance_id().unwrap());
    for _ in 0..50 {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "sleep 3600"])
            .output()
            .unwrap();
        let ours: Vec<&str> = std::str::from_utf8(&ps.stdout)
            .unwrap()
            .split_whitespace()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&cgroup))
            })
            .collect();
        let ext = build_store_cli(&s, "alice")
            .args([
                "ps",
                "-a",
                "--external",
                "--format",
                "{{.Names}} {{.Image}}",
            ])
            .output()
            .unwrap();
        let ext = String::from_utf8_lossy(&ext.stdout).to_string();
        if ours.is_empty() && !ext.contains("working-container") {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        clean,
        "no build process or working container is left behind"
    );
    // With convert_sif on, each image also becomes a SIF for Slurm, and alice is told where.
    let sif = s.data_dir.join("sif/alice/alice-mymodel_a1a1a1a1.sif");
    for _ in 0..150 {
        if sif.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sif.exists(), "the build's SIF");
    // Status and disabling.
    let t = s.say("alice", "/container build status").await;
    assert!(
        t.contains("alice/MyModel") && t.contains("succeeded") && t.contains("failed"),
        "{t}"
    );
    assert!(s
        .say("alice", "/container build disable alice/MyModel")
        .await
        .contains("Builds are off"));
    assert_eq!(
        fake.state.lock().unwrap().hooks.len(),
        1,
        "only bob's hook is left"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ci_template_pushes_with_a_short_lived_credential_from_its_job_token() {
    crate::harness::test_images();
    let mut job_tokens = HashMap::new();
    job_tokens.insert(
        "job-token-alice".to_string(),
        (
            555,
            7,
            "alice".to_string(),
            "running".to_string(),
            "c1c1c1c1".to_string(),
        ),
    );
    job_tokens.insert(
        "job-token-done".to_string(),
        (
            556,
            7,
            "alice".to_string(),
            "success".to_string(),
            "c1c1c1c1".to_string(),
        ),
    );
    // A teammate's feature branch of alice's project: its pipeline may not push `latest`.
    job_tokens.insert(
        "job-token-branch".to_string(),
        (
            558,
            7,
            "bob".to_string(),
            "running".to_string(),
            "e3e3e3e3".to_string(),
        ),
    );
    job_tokens.insert(
        "job-token-other".to_string(),
        (
            557,
            9,
            "bob".to_string(),
            "running".to_string(),
            "d2d2d2d2".to_string(),
        ),
    );
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![
            FakeProject {
                id: 7,
                path: "alice/MyModel".into(),
                members: HashMap::from([("alice".to_string(), 40)]),
                archives: HashMap::new(),
            },
            FakeProject {
                id: 9,
                path: "bob/other".into(),
                members: HashMap::from([("bob".to_string(), 40)]),
                archives: HashMap::new(),
            },
        ],
        job_tokens,
        job_refs: HashMap::from([("job-token-branch".to_string(), "feature".to_string())]),
        ..Default::default()
    })
    .await;
    let port = free_port();
    let reg = registry(port);
    let s = Stack::start(Opts {
        podman: true,
        listen_port: Some(port),
        extra: format!("{}\n{}", reg.toml, gitlab_toml(&fake.url, 120)),
        ..Default::default()
    })
    .await;
    assert!(s
        .say("alice", "/container build enable alice/MyModel")
        .await
        .contains("Builds are on"));
    // Tokens GitLab does not vouch for, jobs that are over, projects shisa does not build: nothing.
    let post = |token: Option<&str>| {
        let mut r = reqwest::Client::new().post(s.url("/ci/token"));
        if let Some(t) = token {
            r = r.header("JOB-TOKEN", t);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("forged")).await.unwrap().status(), 401);
    assert_eq!(post(Some("job-token-done")).await.unwrap().status(), 401);
    assert_eq!(post(Some("job-token-other")).await.unwrap().status(), 403);
    let r = post(Some("job-token-branch")).await.unwrap();
    assert_eq!(r.status(), 403);
    let why = r.text().await.unwrap();
    assert!(
        why.contains("default branch") && why.contains("`feature`"),
        "{why}"
    );
    // An id_tokens JWT (aud shisa) signed by a key GitLab publishes works too; one with
    // another audience, expired, from another issuer or signed by another key does not.
    let keys = tempfile::tempdir().unwrap();
    let (pem, jwk) = rsa_key(keys.path(), "k1");
    let (other_pem, _) = rsa_key(keys.path(), "k1-impostor");
    fake.state.lock().unwrap().jwks = serde_json::json!({"keys": [jwk]});
    let now = shisa::store::now();
    let jwt = |pem: &[u8], aud: &str, iss: &str, exp: i64, project: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &serde_json::json!({"iss": iss, "aud": aud, "exp": exp, "iat": now, "nbf": now,
                "sub": "project_path:alice/MyModel:ref_type:branch:ref:main",
                "project_id": project, "project_path": "alice/MyModel", "user_login": "alice",
                "job_id": "777", "sha": "e1e1e1e1", "ref": "main"}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        )
        .unwrap()
    };
    let bearer = |t: String| {
        reqwest::Client::new()
            .post(s.url("/ci/token"))
            .header("Authorization", format!("Bearer {t}"))
            .send()
    };
    let ok = bearer(jwt(&pem, "shisa", &fake.url, now + 300, "7"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let g: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(g["repository"], "alice/alice-mymodel");
    for (t, why) in [
        (jwt(&pem, "other", &fake.url, now + 300, "7"), "audience"),
        (jwt(&pem, "shisa", &fake.url, now - 3600, "7"), "expired"),
        (
            jwt(&pem, "shisa", "https://elsewhere.example", now + 300, "7"),
            "issuer",
        ),
        (jwt(&other_pem, "shisa", &fake.url, now + 300, "7"), "key"),
        ("not.a.jwt".to_string(), "garbage"),
    ] {
        assert_eq!(bearer(t).await.unwrap().status(), 401, "{why}");
    }
    assert_eq!(
        bearer(jwt(&pem, "shisa", &fake.url, now + 300, "9"))
            .await
            .unwrap()
            .status(),
        403,
        "a project shisa does not build"
    );
    // A real job's token: a credential for alice/alice-mymodel, for ten minutes.
    let g: serde_json::Value = post(Some("job-token-alice"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(g["repository"], "alice/alice-mymodel");
    assert_eq!(g["expires_in"], 600);
    // It pushes only that repository: the registry's token service grants nothing else with it.
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("alice:{}", g["password"].as_str().unwrap()));
    let scope = |repo: &str| {
        reqwest::Client::new()
            .get(s.url(&format!(
                "/registry/token?service=shisa-registry&scope=repository:{repo}:pull,push"
            )))
            .header("Authorization", format!("Basic {basic}"))
            .send()
    };
    let granted = |v: serde_json::Value| -> Vec<String> {
        let t = v["token"].as_str().unwrap_or_default();
        let payload = t.split('.').nth(1).unwrap_or_default();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        claims["access"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mine = granted(
        scope("alice/alice-mymodel")
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    assert!(mine.contains(&"push".to_string()), "{mine:?}");
    let other = granted(
        scope("alice/other")
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default(),
    );
    assert!(!other.contains(&"push".to_string()), "{other:?}");
    // The template, validated as YAML, its script run for real: the same commands a job runs.
    let yaml: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("ci-templates/container-image.gitlab-ci.yml"),
        )
        .unwrap(),
    )
    .unwrap();
    let job = &yaml["shisa-container-image"];
    assert_eq!(job["tags"][0], "shisa");
    let script: Vec<String> = job["script"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let ctx = tempfile::tempdir_in(crate::harness::run_root()).unwrap();
    std::fs::write(
        ctx.path().join("Containerfile"),
        "FROM localhost/busybox:latest\nRUN echo built-by-ci > /etc/ci\n",
    )
    .unwrap();
    let sock = crate::harness::podman();
    let pdir = sock.parent().unwrap();
    let storage = ctx.path().join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            pdir.join("root").display().to_string(),
            pdir.join("runroot").display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script.join("\n"))
        .current_dir(ctx.path())
        .env_clear();
    for (k, v) in yaml["variables"].as_mapping().unwrap() {
        cmd.env(k.as_str().unwrap(), v.as_str().unwrap());
    }
    let out = cmd
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", ctx.path())
        .env("REGISTRY_AUTH_FILE", ctx.path().join("auth.json"))
        .env("CONTAINERS_CONF", pdir.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", &storage)
        .env("SHISA_URL", format!("http://127.0.0.1:{port}"))
        .env("SHISA_TLS_VERIFY", "false")
        .env("CI_JOB_TOKEN", "job-token-alice")
        .env("CI_COMMIT_SHORT_SHA", "c1c1c1c1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "pushed 127.0.0.1:{}/alice/alice-mymodel:c1c1c1c1",
            reg.port
        )),
        "{text}"
    );
    let mut seen = false;
    for _ in 0..100 {
        if s.store()
            .image("alice/alice-mymodel", "c1c1c1c1")
            .await
            .unwrap()
            .is_some()
            && s.store()
                .image("alice/alice-mymodel", "latest")
                .await
                .unwrap()
                .is_some()
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "both tags are in the registry");
    // The build records who started it.
    let t = s.say("alice", "/container build status").await;
    assert!(
        t.contains("alice/MyModel") && t.contains("c1c1c1c1") && t.contains("running"),
        "{t}"
    );
    let detail: String = s
        .store()
        .with(|c| {
            c.query_row(
                "SELECT detail FROM builds WHERE trigger = 'ci' AND sha = 'c1c1c1c1'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(detail, "started by alice in job 555");
    // The pipeline's end feeds the same results path as direct builds.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("pipeline.json")).unwrap();
    v["project"]["id"] = 7.into();
    v["object_attributes"]["sha"] = "c1c1c1c1".into();
    v["object_attributes"]["status"] = "success".into();
    let (code, _) = deliver(
        &s,
        "Pipeline Hook",
        serde_json::to_vec(&v).unwrap(),
        &[
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", "pipe-1".to_string()),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let ready = s.dm_containing("alice", "is ready").await;
    assert!(
        ready.contains(&format!(
            "127.0.0.1:{}/alice/alice-mymodel:c1c1c1c1",
            reg.port
        )) && ready.contains("sha256:"),
        "{ready}"
    );
    assert!(s
        .say("alice", "/container build status")
        .await
        .contains("succeeded"));
    assert!(fake
        .state
        .lock()
        .unwrap()
        .statuses
        .iter()
        .any(|x| x.1 == "c1c1c1c1" && x.2 == "success"));
    // The id_tokens job's pipeline (e1e1e1e1) is cancelled: its build ends failed.
    v["object_attributes"]["sha"] = "e1e1e1e1".into();
    v["object_attributes"]["status"] = "canceled".into();
    let (code, _) = deliver(
        &s,
        "Pipeline Hook",
        serde_json::to_vec(&v).unwrap(),
        &[
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", "pipe-2".to_string()),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let failed = s.dm_containing("alice", "e1e1e1e1").await;
    assert!(failed.contains("canceled"), "{failed}");
    s.stop().await;
}

fn runner_containers(project: u64) -> Vec<serde_json::Value> {
    let out = podman_cli()
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=shisa.runner={project}"),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_job_starts_exactly_one_runner_of_the_project() {
    crate::harness::test_images();
    // No gitlab-runner image can be pulled here: a stand-in with the same entry point that
    // shows what it was given.
    let ctx = tempfile::tempdir_in(crate::harness::run_root()).unwrap();
    std::fs::write(
        ctx.path().join("gitlab-runner"),
        // As `run-single --runner`: the config is read once at start, then the job runs as the
        // same user and tries to read it again.
        "#!/bin/sh\necho \"args: $*\"\necho \"uid: $(id -u)\"\ncat /proc/self/uid_map\ncat /etc/gitlab-runner/config.toml\necho \"job read: $(timeout 2 cat /etc/gitlab-runner/config.toml 2>/dev/null | grep -c glrt) token lines\"\nsleep 60\n",
    )
    .unwrap();
    std::fs::write(
        ctx.path().join("Containerfile"),
        "FROM localhost/busybox:latest\nCOPY gitlab-runner /usr/bin/gitlab-runner\nRUN chmod 755 /usr/bin/gitlab-runner\n",
    )
    .unwrap();
    let b = podman_cli()
        .args(["build", "-q", "-t", "localhost/gitlab-runner-standin:1"])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![FakeProject {
            id: 7,
            path: "alice/MyModel".into(),
            members: HashMap::from([("alice".to_string(), 40), ("bob".to_string(), 30)]),
            archives: HashMap::new(),
        }],
        ..Default::default()
    })
    .await;
    let s = Stack::start(Opts {
        podman: true,
        extra: format!(
            "{}runner_image = \"localhost/gitlab-runner-standin:1\"\nrunner_reconcile_seconds = 1\n",
            gitlab_toml(&fake.url, 120)
        ),
        ..Default::default()
    })
    .await;
    // Only a maintainer can give a project a runner.
    assert!(s
        .say("bob", "/container build enable alice/MyModel --runner")
        .await
        .contains("Maintainer"));
    let t = s
        .say("alice", "/container build enable alice/MyModel --runner")
        .await;
    assert!(
        t.contains("its own GitLab runner")
            && t.contains("/ci-templates/container-image.gitlab-ci.yml"),
        "{t}"
    );
    let (runner_id, token) = {
        let st = fake.state.lock().unwrap();
        assert_eq!(st.runners.len(), 1, "one runner created");
        let (id, (project, token, tags)) = st.runners.iter().next().unwrap();
        assert_eq!(
            (*project, tags.as_str()),
            (7, "shisa"),
            "locked to its project, tagged"
        );
        (*id, token.clone())
    };
    // The token is sealed at rest: not in the database in clear.
    let raw: Vec<u8> = s
        .store()
        .with(|c| {
            c.query_row(
                "SELECT runner_token FROM gitlab_projects WHERE project_id = 7",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
    // The template is served, pointing at this shisa.
    let tpl = reqwest::get(s.url("/ci-templates/container-image.gitlab-ci.yml"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        tpl.contains(&format!("SHISA_URL: \"{}\"", s.url(""))),
        "{tpl}"
    );
    // Job Hooks: a pending job starts exactly one runner container, however many arrive.
    let job_hook = |n: u64, status: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&fixture("job.json")).unwrap();
        v["project_id"] = 7.into();
        v["build_id"] = n.into();
        v["build_status"] = status.into();
        serde_json::to_vec(&v).unwrap()
    };
    let tok = |k: &str| {
        vec![
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    fake.state.lock().unwrap().pending.insert(7, vec![1, 2]);
    deliver(&s, "Job Hook", job_hook(1, "created"), &tok("j0")).await;
    deliver(&s, "Job Hook", job_hook(1, "pending"), &tok("j1")).await;
    deliver(&s, "Job Hook", job_hook(2, "pending"), &tok("j2")).await;
    for _ in 0..100 {
        if runner_containers(7).iter().any(|c| c["State"] == "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = runner_containers(7);
    assert_eq!(running.len(), 1, "exactly one runner: {running:?}");
    let id = running[0]["Id"].as_str().unwrap().to_string();
    let ins: serde_json::Value =
        serde_json::from_slice(&podman_cli().args(["inspect", &id]).output().unwrap().stdout)
            .unwrap();
    let ins = &ins[0];
    let cmd: Vec<String> = ins["Config"]["Cmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        &cmd[..2],
        &["gitlab-runner".to_string(), "run-single".to_string()],
        "{cmd:?}"
    );
    assert!(
        cmd.windows(2)
            .any(|w| w[0] == "--max-builds" && w[1] == "1"),
        "one job, then exit: {cmd:?}"
    );
    let mounts = ins["Mounts"].to_string();
    assert!(
        mounts.contains("/etc/gitlab-runner/config.toml") && !mounts.contains("podman.sock"),
        "{mounts}"
    );
    assert_eq!(
        ins["HostConfig"]["Memory"].as_u64(),
        Some(16 * 1024 * 1024 * 1024),
        "the owner's memory limit"
    );
    assert_eq!(
        (
            ins["HostConfig"]["CpuQuota"].as_i64(),
            ins["HostConfig"]["CpuPeriod"].as_u64()
        ),
        (Some(400_000), Some(100_000)),
        "the owner's 4 CPUs"
    );
    let mut logs = String::new();
    for _ in 0..100 {
        let o = podman_cli().args(["logs", &id]).output().unwrap();
        logs = String::from_utf8_lossy(&o.stdout).to_string();
        if logs.contains("job read:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logs.contains("uid: 0") && logs.contains("300000"),
        "root inside, an unprivileged range outside: {logs}"
    );
    assert!(
        logs.contains(&format!("token = \"{token}\"")) && logs.contains("executor = \"shell\""),
        "{logs}"
    );
    // The runner read its config once; the CI job it runs cannot read it again.
    assert!(logs.contains("job read: 0 token lines"), "{logs}");
    // The runner takes job 1 and exits; job 2 is still pending: reconciliation starts the next
    // runner (and still only one).
    fake.state.lock().unwrap().pending.insert(7, vec![2]);
    assert!(podman_cli()
        .args(["rm", "-f", &id])
        .output()
        .unwrap()
        .status
        .success());
    for _ in 0..100 {
        if runner_containers(7)
            .iter()
            .any(|c| c["State"] == "running" && c["Id"] != id.as_str())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let next = runner_containers(7);
    assert_eq!(next.len(), 1, "one runner for the pending job: {next:?}");
    assert_ne!(next[0]["Id"].as_str(), Some(id.as_str()));
    fake.state.lock().unwrap().pending.clear();
    // Disabling deletes the runner on both sides.
    assert!(s
        .say("alice", "/container build disable alice/MyModel")
        .await
        .contains("Builds are off"));
    assert!(!fake.state.lock().unwrap().runners.contains_key(&runner_id));
    for _ in 0..50 {
        if runner_containers(7).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(runner_containers(7).is_empty(), "no runner container left");
    // A runner whose token GitLab forgot: the project is marked broken and its owner told.
    assert!(s
        .say("alice", "/container build enable alice/MyModel --runner")
        .await
        .contains("its own GitLab runner"));
    fake.state.lock().unwrap().runners.clear();
    deliver(&s, "Job Hook", job_hook(3, "pending"), &tok("j3")).await;
    s.dm_containing("alice", "no longer works").await;
    assert!(runner_containers(7).is_empty());
    s.stop().await;
}

#[tokio::test]
async fn build_run_on_another_users_project_is_refused_and_audited() {
    // bob is a developer of alice's project: GitLab shows it to him, but its shisa builds
    // are alice's and go to her namespace.
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![FakeProject {
            id: 7,
            path: "alice/MyModel".into(),
            members: HashMap::from([("alice".to_string(), 40), ("bob".to_string(), 30)]),
            archives: HashMap::new(),
        }],
        ..Default::default()
    })
    .await;
    let port = free_port();
    let reg = registry(port);
    let s = Stack::start(Opts {
        listen_port: Some(port),
        extra: format!("{}\n{}", reg.toml, gitlab_toml(&fake.url, 15)),
        ..Default::default()
    })
    .await;
    assert!(s
        .say("alice", "/container build enable alice/MyModel")
        .await
        .contains("Builds are on"));
    let not_yours = "`alice/MyModel` has no shisa builds to change (or they are not yours)";
    for cmd in [
        "/container build run alice/MyModel",
        "/container build run alice/MyModel evil-branch",
        "/container build disable alice/MyModel",
    ] {
        let t = s.say("bob", cmd).await;
        assert!(t.contains(not_yours), "{cmd}: {t}");
    }
    assert!(s.store().builds_of("alice", 10).await.unwrap().is_empty());
    assert!(s.store().builds_of("bob", 10).await.unwrap().is_empty());
    let denied: Vec<_> = s
        .store()
        .audit_entries(Some("bob"))
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "container.build" && e.outcome == "denied")
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied
        .iter()
        .all(|e| e.resource.as_deref() == Some("gitlab:alice/MyModel")
            && e.detail.as_deref() == Some("build.not_enabled_here")));
    s.stop().await;
}

/// Only the default branch writes the owner's `latest`: a push to another branch builds
/// `BRANCH-SHORTSHA` and leaves `latest` where it was.
#[tokio::test]
async fn a_branch_push_never_replaces_latest() {
    crate::harness::test_images();
    let sha_main = "1a1a1a1a2b2b2b2b3c3c3c3c4d4d4d4d5e5e5e5e";
    let sha_branch = "9f9f9f9f8e8e8e8e7d7d7d7d6c6c6c6c5b5b5b5b";
    let mut p = FakeProject {
        id: 7,
        path: "alice/MyModel".into(),
        members: HashMap::from([("alice".to_string(), 40), ("bob".to_string(), 30)]),
        archives: HashMap::new(),
    };
    // Different images, so `latest` tells whose it is.
    for (sha, cmd) in [(sha_main, "true"), (sha_branch, "sh")] {
        p.archives.insert(
            sha.into(),
            tar_gz(
                &format!("mymodel-{sha}"),
                &[(
                    "Containerfile",
                    &format!("FROM localhost/busybox:latest\nCMD [\"{cmd}\"]\n"),
                )],
            ),
        );
    }
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![p],
        ..Default::default()
    })
    .await;
    let port = free_port();
    let reg = registry(port);
    let s = Stack::start(Opts {
        podman: true,
        listen_port: Some(port),
        extra: format!("{}\n{}", reg.toml, gitlab_toml(&fake.url, 60)),
        ..Default::default()
    })
    .await;
    assert!(s
        .say("alice", "/container build enable alice/MyModel")
        .await
        .contains("Builds are on"));
    let tok = |k: &str| {
        vec![
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/MyModel", 101, sha_main, "Containerfile"),
        &tok("m1"),
    )
    .await;
    let rows = wait_builds(&s, 1).await;
    assert_eq!(rows[0].2, "succeeded", "{rows:?}");
    // A teammate pushes a branch.
    let mut body: serde_json::Value = serde_json::from_slice(&push_body(
        7,
        "alice/MyModel",
        102,
        sha_branch,
        "Containerfile",
    ))
    .unwrap();
    body["ref"] = serde_json::json!("refs/heads/feature/x");
    deliver(
        &s,
        "Push Hook",
        serde_json::to_vec(&body).unwrap(),
        &tok("b1"),
    )
    .await;
    let rows = wait_builds(&s, 2).await;
    let branch = rows.iter().find(|r| r.1 == sha_branch).unwrap();
    assert_eq!(branch.2, "succeeded", "{rows:?}");
    assert!(
        branch.5.ends_with("alice/alice-mymodel:feature-x-9f9f9f9f"),
        "{branch:?}"
    );
    let tags: HashMap<String, String> = s
        .store()
        .all_images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.tag, i.digest))
        .collect();
    assert!(tags.contains_key("feature-x-9f9f9f9f"), "{tags:?}");
    assert!(tags.contains_key("latest"), "{tags:?}");
    assert_eq!(
        tags.get("latest"),
        tags.get("1a1a1a1a"),
        "latest is still main's: {tags:?}"
    );
    assert_ne!(
        tags.get("latest"),
        tags.get("feature-x-9f9f9f9f"),
        "{tags:?}"
    );
    s.stop().await;
}

/// shisa acts as the GitLab user whose LDAP identity is the department account, never as a
/// GitLab user who merely has the account's name.
#[tokio::test]
async fn gitlab_calls_act_as_the_linked_gitlab_user_not_a_same_named_one() {
    let fake = FakeGitlab::start(FakeState {
        // carol signs in to GitLab as `csato`; another person's GitLab user is named `carol`.
        users: vec![(105, "csato".into()), (106, "carol".into())],
        identities: HashMap::from([(105, Some("carol".to_string())), (106, None)]),
        projects: vec![
            FakeProject {
                id: 11,
                path: "csato/thesis".into(),
                members: HashMap::from([("csato".to_string(), 40)]),
                archives: HashMap::new(),
            },
            FakeProject {
                id: 12,
                path: "carol/lab".into(),
                members: HashMap::from([("carol".to_string(), 40)]),
                archives: HashMap::new(),
            },
        ],
        ..Default::default()
    })
    .await;
    let port = free_port();
    let reg = registry(port);
    let s = Stack::start(Opts {
        listen_port: Some(port),
        extra: format!("{}\n{}", reg.toml, gitlab_toml(&fake.url, 15)),
        ..Default::default()
    })
    .await;
    let t = s.say("carol", "/container build enable csato/thesis").await;
    assert!(t.contains("Builds are on for `csato/thesis`"), "{t}");
    let t = s.say("carol", "/container build enable carol/lab").await;
    assert!(t.contains("cannot use the GitLab project"), "{t}");
    // bob has no GitLab user at all.
    let t = s.say("bob", "/container build enable csato/thesis").await;
    assert!(t.contains("no GitLab account linked"), "{t}");
    {
        let st = fake.state.lock().unwrap();
        assert!(
            st.sudo_log.iter().all(|(u, _)| u == "csato"),
            "every call for carol acted as csato: {:?}",
            st.sudo_log
        );
        assert_eq!(st.hooks.len(), 1);
    }
    let row = s.store().gitlab_project(11).await.unwrap().unwrap();
    assert_eq!(
        (row.owner.as_str(), row.gitlab_user.as_str()),
        ("carol", "105")
    );
    s.stop().await;
}

/// A GitLab answer that redirects elsewhere is not followed: the admin token and `Sudo` never
/// reach another host.
#[tokio::test]
async fn gitlab_redirects_are_not_followed_with_credentials() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = seen.clone();
    let app = Router::new().fallback(move |h: HeaderMap| {
        let rec = rec.clone();
        async move {
            let mut names: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            names.sort();
            rec.lock().unwrap().push(names.join(","));
            "{}"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere = format!("http://{}/api/v4/projects/7", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into())],
        projects: vec![FakeProject {
            id: 7,
            path: "alice/MyModel".into(),
            members: HashMap::from([("alice".to_string(), 40)]),
            archives: HashMap::new(),
        }],
        redirect_projects: Some(elsewhere),
        ..Default::default()
    })
    .await;
    let s = Stack::start(Opts {
        extra: gitlab_toml(&fake.url, 5),
        ..Default::default()
    })
    .await;
    let t = s
        .say("alice", "/container build enable alice/MyModel")
        .await;
    assert!(t.contains("cannot use the GitLab project"), "{t}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the other host: {:?}",
        seen.lock().unwrap()
    );
    s.stop().await;
}

/// A build's repository is bounded as GitLab sends it and as it unpacks (a small `.tar.gz`
/// can hold a huge tree): each refused early, with the limit in the message.
#[tokio::test]
async fn build_archives_are_bounded_as_sent_and_unpacked() {
    let sha = "ab0ab0ab0ab0ab0ab0ab0ab0ab0ab0ab0ab0ab0a";
    // Incompressible enough: 200 000 characters from a small generator.
    let mut x: u32 = 12345;
    let noise: String = (0..200_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            char::from(b'!' + ((x >> 16) % 90) as u8)
        })
        .collect();
    let zeros = "0".repeat(3_000_000);
    let project = |id: u64, path: &str, file: &str| {
        let mut p = FakeProject {
            id,
            path: path.into(),
            members: HashMap::from([("alice".to_string(), 40)]),
            archives: HashMap::new(),
        };
        p.archives.insert(
            sha.into(),
            tar_gz(
                "top",
                &[
                    ("Containerfile", "FROM localhost/busybox:latest\n"),
                    ("data.txt", file),
                ],
            ),
        );
        p
    };
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into())],
        projects: vec![
            project(7, "alice/noisy", &noise),
            project(8, "alice/bomb", &zeros),
        ],
        ..Default::default()
    })
    .await;
    let s = Stack::start(Opts {
        podman: true,
        extra: format!(
            "{}[limits.student]\nmax_build_archive = \"64K\"\nmax_build_unpacked = \"1M\"\n",
            gitlab_toml(&fake.url, 30)
        ),
        ..Default::default()
    })
    .await;
    for p in ["alice/noisy", "alice/bomb"] {
        assert!(s
            .say("alice", &format!("/container build enable {p}"))
            .await
            .contains("Builds are on"));
    }
    let tok = |k: &str| {
        vec![
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    deliver(
        &s,
        "Push Hook",
        push_body(7, "alice/noisy", 101, sha, "Containerfile"),
        &tok("n"),
    )
    .await;
    deliver(
        &s,
        "Push Hook",
        push_body(8, "alice/bomb", 101, sha, "Containerfile"),
        &tok("b"),
    )
    .await;
    let rows = wait_builds(&s, 2).await;
    assert!(rows.iter().all(|r| r.2 == "failed"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.5.contains("larger than your limit of 64K")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r
            .5
            .contains("Unpacked, the repository is larger than your limit of 1.0 MB")
            || r.5
                .contains("Unpacked, the repository is larger than your limit")),
        "{rows:?}"
    );
    s.stop().await;
}

/// Each project's hook has its own secret: the global token (which a maintainer can read out
/// of an old hook) no longer delivers for it, nor does one project's secret for another.
#[tokio::test]
async fn each_projects_hook_has_its_own_secret() {
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![
            FakeProject {
                id: 7,
                path: "alice/MyModel".into(),
                members: HashMap::from([("alice".to_string(), 40)]),
                archives: HashMap::new(),
            },
            FakeProject {
                id: 8,
                path: "bob/tool".into(),
                members: HashMap::from([("bob".to_string(), 40)]),
                archives: HashMap::new(),
            },
        ],
        ..Default::default()
    })
    .await;
    let s = Stack::start(Opts {
        extra: gitlab_toml(&fake.url, 5),
        ..Default::default()
    })
    .await;
    for (u, p) in [("alice", "alice/MyModel"), ("bob", "bob/tool")] {
        assert!(s
            .say(u, &format!("/container build enable {p}"))
            .await
            .contains("Builds are on"));
    }
    let (t7, t8) = {
        let st = fake.state.lock().unwrap();
        (st.hook_tokens[&7].clone(), st.hook_tokens[&8].clone())
    };
    assert!(t7 != t8 && t7 != HOOK_TOKEN, "its own secret");
    assert_eq!(
        project_hook_token(&s, 7).await.as_deref(),
        Some(t7.as_str())
    );
    let sha = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";
    let body = || push_body(7, "alice/MyModel", 101, sha, "README.md");
    let with = |t: &str, k: &str| {
        vec![
            ("X-Gitlab-Token", t.to_string()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    let (code, _) = deliver_as_is(&s, "Push Hook", body(), &with(HOOK_TOKEN, "g")).await;
    assert_eq!(code, 401, "the global token");
    let (code, _) = deliver_as_is(&s, "Push Hook", body(), &with(&t8, "o")).await;
    assert_eq!(code, 401, "another project's secret");
    let (code, _) = deliver_as_is(&s, "Push Hook", body(), &with(&t7, "own")).await;
    assert_eq!(code, 200, "its own");
    // A project shisa has no secret for (none enabled): the global token, as before.
    let (code, _) = deliver_as_is(
        &s,
        "Push Hook",
        push_body(9, "carol/x", 101, sha, "README.md"),
        &with(HOOK_TOKEN, "legacy"),
    )
    .await;
    assert_eq!(code, 200);
    s.stop().await;
}
