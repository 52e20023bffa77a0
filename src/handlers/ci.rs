//! The CI token service: a GitLab CI job trades its own identity (its
//! `CI_JOB_TOKEN`, checked with GitLab's `GET /api/v4/job`) for a registry
//! credential that works for minutes and only for pushing its project's
//! image, `OWNER/SLUG`. No long-lived secret is ever stored in a project.

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

pub async fn exchange(app: &Arc<App>, job_token: Option<&str>) -> Result<CiGrant, CiRefusal> {
    let (Some(g), Some(reg)) = (app.cfg.gitlab.as_ref(), app.registry.as_ref()) else {
        return Err(CiRefusal::Unavailable(
            "this shisa has no GitLab or no registry configured".into(),
        ));
    };
    let Some(token) = job_token.filter(|t| !t.is_empty() && t.len() < 4096) else {
        return Err(CiRefusal::Unauthorized(
            "send the job's CI_JOB_TOKEN in a JOB-TOKEN header".into(),
        ));
    };
    let job = match client::current_job(
        &g.url,
        token,
        std::time::Duration::from_secs(g.timeout_seconds),
    )
    .await
    {
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
