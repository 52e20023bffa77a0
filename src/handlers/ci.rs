//! The CI token service: a GitLab CI job trades its own identity for a
//! registry credential that works for minutes and only for pushing its
//! project's image, `OWNER/SLUG`. The identity is either its `CI_JOB_TOKEN`
//! (checked with GitLab's `GET /api/v4/job`) or an `id_tokens` JWT with
//! audience `shisa` (RS256, checked against GitLab's published keys, its
//! issuer and expiry). No long-lived secret is ever stored in a project.

use std::sync::Arc;

use crate::app::App;
use crate::gitlab::client;

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct CiGrant {
    pub registry: String,
    pub repository: String,
    pub image: String,
    pub username: String,
    pub password: String,
    pub expires_in: u64,
}

#[derive(Debug, PartialEq)]
pub enum CiRefusal {
    /// No identity, or one GitLab does not vouch for: 401.
    Unauthorized(String),
    /// A real job, but not one shisa builds for: 403.
    Forbidden(String),
    /// shisa cannot answer now (GitLab down, no registry): 503.
    Unavailable(String),
}

/// How long the push credential works: enough for a build, not for a leak to matter.
pub const CI_TOKEN_SECONDS: u64 = 600;

/// The claims of a GitLab `id_tokens` JWT that shisa uses.
#[derive(Debug, serde::Deserialize)]
struct IdClaims {
    project_id: String,
    user_login: String,
    job_id: String,
    #[serde(default)]
    sha: String,
    #[serde(rename = "ref", default)]
    git_ref: String,
}

type KeyCache = Option<(std::time::Instant, String, jsonwebtoken::jwk::JwkSet)>;

/// GitLab's signing keys (`/oauth/discovery/keys`), fetched again when a token names a key
/// we do not have (rotation), at most once a minute.
async fn gitlab_keys(
    g: &crate::config::Gitlab,
    kid: &str,
) -> Result<jsonwebtoken::jwk::JwkSet, CiRefusal> {
    static CACHE: std::sync::Mutex<KeyCache> = std::sync::Mutex::new(None);
    if let Some((at, url, set)) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        if *url == g.url
            && (set.find(kid).is_some() || at.elapsed() < std::time::Duration::from_secs(60))
        {
            return Ok(set.clone());
        }
    }
    let set: jsonwebtoken::jwk::JwkSet = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(g.timeout_seconds))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| CiRefusal::Unavailable(e.to_string()))?
        .get(format!("{}/oauth/discovery/keys", g.url))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| CiRefusal::Unavailable(format!("GitLab's keys cannot be fetched: {e}")))?
        .json()
        .await
        .map_err(|e| CiRefusal::Unavailable(format!("GitLab's keys are not a JWK set: {e}")))?;
    *CACHE.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((std::time::Instant::now(), g.url.clone(), set.clone()));
    Ok(set)
}

/// Check an `id_tokens` JWT: RS256 by one of GitLab's published keys, issuer GitLab,
/// audience `shisa`, not expired. Gives the job it vouches for.
async fn verify_id_token(g: &crate::config::Gitlab, jwt: &str) -> Result<client::CiJob, CiRefusal> {
    let bad = |why: String| CiRefusal::Unauthorized(format!("the ID token does not verify: {why}"));
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| bad(e.to_string()))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(bad("GitLab signs ID tokens with RS256".into()));
    }
    let kid = header.kid.unwrap_or_default();
    let keys = gitlab_keys(g, &kid).await?;
    let jwk = keys
        .find(&kid)
        .ok_or_else(|| bad("signed by a key GitLab does not publish".into()))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["shisa"]);
    v.set_issuer(&[g.url.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    let c = jsonwebtoken::decode::<IdClaims>(jwt, &key, &v)
        .map_err(|e| bad(e.to_string()))?
        .claims;
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| bad("project_id and job_id must be numbers".into()))
    };
    Ok(client::CiJob {
        id: num(&c.job_id)?,
        status: "running".into(),
        pipeline: client::CiPipeline {
            project_id: num(&c.project_id)?,
            sha: c.sha,
            git_ref: c.git_ref,
        },
        user: client::CiUser {
            id: 0,
            username: c.user_login,
        },
    })
}

/// The job a request's identity belongs to: an ID token if given, else the job token.
async fn job_of(
    g: &crate::config::Gitlab,
    api: &dyn client::Gitlab,
    job_token: Option<&str>,
    id_token: Option<&str>,
) -> Result<client::CiJob, CiRefusal> {
    if let Some(jwt) = id_token.filter(|t| !t.is_empty() && t.len() < 16384) {
        return verify_id_token(g, jwt).await;
    }
    let Some(token) = job_token.filter(|t| !t.is_empty() && t.len() < 4096) else {
        return Err(CiRefusal::Unauthorized(
            "send the job's CI_JOB_TOKEN in a JOB-TOKEN header, or an ID token (aud: shisa) as Authorization: Bearer".into(),
        ));
    };
    let job = match api.current_job(token).await {
        Ok(Some(j)) => j,
        Ok(None) => {
            return Err(CiRefusal::Unauthorized(
                "GitLab does not know this job token".into(),
            ))
        }
        Err(e) => {
            return Err(CiRefusal::Unavailable(format!(
                "GitLab cannot be asked now: {e}"
            )))
        }
    };
    if job.status != "running" {
        return Err(CiRefusal::Unauthorized(format!(
            "job {} is {}, not running",
            job.id, job.status
        )));
    }
    Ok(job)
}

pub async fn exchange(
    app: &Arc<App>,
    job_token: Option<&str>,
    id_token: Option<&str>,
) -> Result<CiGrant, CiRefusal> {
    let (Some(g), Some(reg)) = (app.cfg.gitlab.as_ref(), app.registry.as_ref()) else {
        return Err(CiRefusal::Unavailable(
            "this shisa has no GitLab or no registry configured".into(),
        ));
    };
    let api = app
        .gitlab
        .as_deref()
        .ok_or_else(|| CiRefusal::Unavailable("this shisa has no GitLab configured".into()))?;
    let job = job_of(g, api, job_token, id_token).await?;
    let project = match app.store.gitlab_project(job.pipeline.project_id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(CiRefusal::Forbidden(format!(
                "project {} is not enabled for shisa builds; a maintainer runs `/container build enable PROJECT --runner`",
                job.pipeline.project_id
            )))
        }
        Err(e) => return Err(CiRefusal::Unavailable(e.to_string())),
    };
    // The template pushes the owner's `latest`: only the project's default branch may.
    let default_branch = match api.project(&project.project_id.to_string()).await {
        Ok(p) => p.default_branch,
        Err(e) => return Err(CiRefusal::Unavailable(crate::gitlab::client::explain(&e))),
    };
    if default_branch.as_deref() != Some(job.pipeline.git_ref.as_str()) {
        return Err(CiRefusal::Forbidden(format!(
            "only the project's default branch ({}) builds its image with shisa's CI template; this job runs on `{}`",
            default_branch.as_deref().unwrap_or("none set"),
            job.pipeline.git_ref
        )));
    }
    let repository = format!("{}/{}", project.owner, crate::builds::slug(&project.path));
    let password = reg.push_credential_for(&project.owner, &repository, CI_TOKEN_SECONDS);
    let detail = format!("started by {} in job {}", job.user.username, job.id);
    if let Err(e) = app
        .store
        .record_ci_build(
            project.project_id,
            &project.path,
            &project.owner,
            &job.pipeline.sha,
            &job.pipeline.git_ref,
            &detail,
        )
        .await
    {
        tracing::warn!(error = %e, "could not record the CI build");
    }
    let _ = app
        .store
        .audit(crate::store::audit::NewAudit {
            request_id: None,
            actor: &format!("gitlab:{}", job.user.username),
            role: "ci",
            action: "ci.token",
            resource: Some(&format!("image:{repository}")),
            outcome: "ok",
            detail: Some(&detail),
        })
        .await;
    Ok(CiGrant {
        registry: reg.cfg.host.clone(),
        image: format!("{}/{repository}", reg.cfg.host),
        repository,
        username: project.owner.clone(),
        password,
        expires_in: CI_TOKEN_SECONDS,
    })
}
