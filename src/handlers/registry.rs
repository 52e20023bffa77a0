//! The registry's token service and its notifications endpoint: who may pull and push
//! what, personal tokens, quotas.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::registry::client::Manifest;
use crate::registry::{jwt, rfc3339, scope};

use crate::app::App;
use crate::identity::Account;
use crate::registry::{hash_secret, owner_of, Registry};
use crate::store::audit::NewAudit;
use crate::store::images::ImageRow;

/// A new personal token: (id, the password to show once).
/// A personal token for `owner` (the role's lifetime, within its count): (id, secret), or
/// `Err(held)` when they already hold the most they may.
pub async fn new_personal_token(
    app: &App,
    owner: &Account,
) -> anyhow::Result<Result<(i64, String), u32>> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let secret = hex::encode(raw);
    let limits = app.cfg.limits_for(owner.role);
    Ok(app
        .store
        .new_registry_token(
            &owner.uid,
            &hash_secret(&secret),
            limits.registry_token_lifetime.secs,
            limits.max_registry_tokens,
        )
        .await?
        .map(|id| (id, format!("shisa_{id}_{secret}"))))
}

#[derive(Debug)]
pub enum TokenError {
    /// 401: who are you?
    Unauthorized(&'static str),
    /// 429: too many failures.
    Limited,
    /// 400: the request itself is wrong.
    BadRequest(String),
}

pub struct TokenRequest {
    pub authorization: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub address: IpAddr,
}

pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: String,
}

async fn authenticate(
    app: &Arc<App>,
    reg: &Registry,
    user: &str,
    password: &str,
    address: IpAddr,
) -> Result<(Account, Option<(String, bool)>), TokenError> {
    // Tokens (shisa's own short-lived credentials, personal tokens) are random: guessing one
    // is hopeless, so they are never rate limited and never held up by others' failures.
    let refuse = |why| Err(TokenError::Unauthorized(why));
    if password.is_empty() || !crate::values::valid_account(user) {
        return refuse("wrong user name or password");
    }
    // An ephemeral pull credential (only for its one repository).
    if password.starts_with("shisa-pull_") {
        let entry = reg.pulls.lock().unwrap().get(password).cloned();
        return match entry {
            Some((uid, repo, until, push)) if uid == user && until > Instant::now() => {
                // shisa itself (course images): its credential names one repository.
                if uid == crate::registry::SERVICE {
                    return Ok((crate::registry::service_account(), Some((repo, push))));
                }
                match app.directory.lookup(user).await {
                    Ok(Some(a)) => Ok((a, Some((repo, push)))),
                    _ => refuse("unknown user"),
                }
            }
            _ => refuse("wrong user name or password"),
        };
    }
    let is_token = password.starts_with("shisa_");
    // Password guesses: slowed for this account from this address (and from this address).
    if !is_token && reg.limited(user, address) {
        return Err(TokenError::Limited);
    }
    let fail = |why| {
        if !is_token {
            reg.failed(user, address);
        }
        Err(TokenError::Unauthorized(why))
    };
    let ok = if let Some(rest) = password.strip_prefix("shisa_") {
        // A personal token: shisa_ID_SECRET, compared by hash in constant time.
        let (id, secret) = rest.split_once('_').unwrap_or(("", ""));
        match id.parse::<i64>().ok() {
            Some(id) => match app.store.registry_token(id).await {
                Ok(Some((owner, hash)))
                    if owner == user
                        && crate::config::Secret::new(hash.clone())
                            .matches(&hash_secret(secret)) =>
                {
                    let _ = app.store.touch_registry_token(id).await;
                    true
                }
                _ => false,
            },
            None => false,
        }
    } else {
        app.directory
            .verify_password(user, password)
            .await
            .map_err(|_| TokenError::Unauthorized("the directory is not answering; try again"))?
    };
    if !ok {
        return fail("wrong user name or password");
    }
    match app.directory.lookup(user).await {
        Ok(Some(a)) => Ok((a, None)),
        _ => fail("unknown user"),
    }
}

pub async fn issue(app: &Arc<App>, req: TokenRequest) -> Result<Issued, TokenError> {
    let reg = app
        .registry
        .as_ref()
        .ok_or(TokenError::BadRequest("no registry is configured".into()))?;
    if let Some(s) = &req.service {
        if s != &reg.cfg.service {
            return Err(TokenError::BadRequest(format!(
                "this token service is for `{}`",
                reg.cfg.service
            )));
        }
    }
    let Some(auth) = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
    else {
        return Err(TokenError::Unauthorized(
            "log in with your department account",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| TokenError::Unauthorized("malformed credentials"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| TokenError::Unauthorized("malformed credentials"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or(TokenError::Unauthorized("malformed credentials"))?;
    let mut scopes = Vec::new();
    for s in &req.scopes {
        if s.len() > 1024 {
            return Err(TokenError::BadRequest("scope too long".into()));
        }
        scopes.extend(scope::parse(s).map_err(TokenError::BadRequest)?);
    }
    if scopes.len() > 16 {
        return Err(TokenError::BadRequest("too many scopes".into()));
    }
    let (account, only_repo) = authenticate(app, reg, user, password, req.address).await?;
    let limit = app.cfg.limits_for(account.role).registry_bytes.bytes;
    let usage = app.store.registry_usage(&account.uid).await.unwrap_or(0);
    let over_quota = usage >= limit;
    let mut access = Vec::new();
    for s in &scopes {
        let (kind, name) = match s {
            scope::Scope::Repository { name, .. } => ("repository", name.clone()),
            scope::Scope::Catalog => ("registry", "catalog".to_string()),
        };
        let shared_with = match s {
            // A course's images: shared with its students and instructors.
            scope::Scope::Repository { name, .. } if name.starts_with("courses/") => {
                crate::work::courses::groups_of_repository(app, name).await
            }
            scope::Scope::Repository { name, .. } => {
                app.store.shared_with_of(name).await.unwrap_or_default()
            }
            scope::Scope::Catalog => Vec::new(),
        };
        let mut granted =
            crate::access::registry_grant(&account, s, &shared_with, over_quota, &app.cfg.courses);
        if let Some((repo, may_push)) = &only_repo {
            // An ephemeral credential: its one repository; pull, and push only for a
            // build's own result.
            let its_repo = matches!(s, scope::Scope::Repository { name, .. } if name == repo);
            granted.retain(|a| its_repo && (a == "pull" || (a == "push" && *may_push)));
        }
        granted.sort();
        granted.dedup();
        if let scope::Scope::Repository { name, actions } = s {
            let asked_push = actions.iter().any(|a| a == "push");
            let denied: Vec<&String> = actions.iter().filter(|a| !granted.contains(a)).collect();
            if !denied.is_empty() {
                let detail = format!("asked {actions:?}, granted {granted:?}");
                let _ = app
                    .store
                    .audit(NewAudit {
                        request_id: None,
                        actor: &account.uid,
                        role: account.role.as_str(),
                        action: "registry.token",
                        resource: Some(&format!("repository:{name}")),
                        outcome: "denied",
                        detail: Some(&detail),
                    })
                    .await;
                if asked_push && over_quota && name.split('/').next() == Some(account.uid.as_str())
                {
                    tell_over_quota(app, reg, &account, usage, limit).await;
                }
            }
        }
        if !granted.is_empty() {
            access.push(jwt::Access {
                kind: kind.into(),
                name,
                actions: granted,
            });
        }
    }
    let ttl = reg.cfg.token_ttl_seconds;
    let token = reg.signer.issue(
        &reg.cfg.issuer,
        &reg.cfg.service,
        &account.uid,
        &access,
        ttl,
    );
    Ok(Issued {
        token,
        expires_in: ttl,
        issued_at: rfc3339(crate::store::now()),
    })
}

async fn tell_over_quota(app: &Arc<App>, reg: &Registry, a: &Account, usage: u64, limit: u64) {
    {
        let mut told = reg.quota_told.lock().unwrap();
        if told
            .get(&a.uid)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3600))
        {
            return;
        }
        told.insert(a.uid.clone(), Instant::now());
    }
    let t = crate::messages::render(
        crate::messages::Lang::En,
        "registry.over_quota",
        &[
            ("usage", crate::containers::fmt_size(usage)),
            ("limit", crate::containers::fmt_size(limit)),
        ],
    );
    app.notifier
        .notice(
            &a.uid,
            &t,
            serde_json::json!({"shisa": {"notice": "registry_quota"}}),
        )
        .await;
}

/// `sha256:` and 64 hex digits (what the registry computes; anything else is not recorded).
fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Apply the registry's notification envelope (distribution `notifications`).
pub async fn notifications(app: &Arc<App>, body: &[u8]) -> Result<usize, String> {
    let reg = app.registry.as_ref().ok_or("no registry configured")?;
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let events = v["events"].as_array().ok_or("no `events` array")?;
    let mut applied = 0;
    for e in events {
        let id = e["id"].as_str().unwrap_or_default();
        let action = e["action"].as_str().unwrap_or_default();
        let target = &e["target"];
        let repo = target["repository"].as_str().unwrap_or_default();
        if id.is_empty() || !scope::valid_repository(repo) {
            continue;
        }
        let media = target["mediaType"].as_str().unwrap_or_default();
        let is_manifest = media.contains("manifest") || media.contains("index");
        match action {
            "push" if is_manifest => {
                let Some(tag) = target["tag"]
                    .as_str()
                    .filter(|t| crate::images::valid_tag(t))
                else {
                    continue;
                };
                let Some(owner) = owner_of(repo) else {
                    continue;
                };
                if !app
                    .store
                    .first_registry_event(id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    continue; // a replay
                }
                // Sizes come from the manifest: the event carries only the manifest's own size.
                // By the event's digest: the registry may send the event before the tag
                // resolves (then a look-up by tag finds nothing and the size was lost).
                let event_digest = target["digest"].as_str().unwrap_or_default().to_string();
                let by_digest = if event_digest.is_empty() {
                    None
                } else {
                    reg.client()
                        .manifest(repo, &event_digest)
                        .await
                        .ok()
                        .flatten()
                };
                // One read of the manifest gives its size and the layers it holds (which
                // count with the image now, not as loose uploads).
                let Manifest {
                    digest,
                    size,
                    blobs,
                } = match by_digest {
                    Some(m) => m,
                    None => match reg.client().manifest(repo, tag).await {
                        Ok(Some(m)) => m,
                        _ => Manifest {
                            digest: event_digest,
                            ..Default::default()
                        },
                    },
                };
                app.store
                    .upsert_image(ImageRow {
                        repository: repo.into(),
                        tag: tag.into(),
                        owner: owner.clone(),
                        digest,
                        size,
                        pushed_at: crate::store::now(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                app.store
                    .claim_uploads(&owner, blobs)
                    .await
                    .map_err(|e| e.to_string())?;
                applied += 1;
            }
            // A layer uploaded (or mounted from another repository): it counts against the
            // owner's quota at once, so one huge upload without a manifest cannot hide.
            "push" | "mount" if !is_manifest => {
                let (Some(digest), Some(owner)) = (
                    target["digest"].as_str().filter(|d| valid_digest(d)),
                    owner_of(repo),
                ) else {
                    continue;
                };
                let size = target["size"]
                    .as_u64()
                    .or_else(|| target["length"].as_u64())
                    .unwrap_or(0);
                if !app
                    .store
                    .first_registry_event(id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    continue;
                }
                app.store
                    .record_upload(repo, digest, &owner, size)
                    .await
                    .map_err(|e| e.to_string())?;
                applied += 1;
            }
            "delete" => {
                let Some(digest) = target["digest"].as_str() else {
                    continue;
                };
                if !app
                    .store
                    .first_registry_event(id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    continue;
                }
                app.store
                    .delete_image_digest(repo, digest)
                    .await
                    .map_err(|e| e.to_string())?;
                app.store
                    .forget_upload(repo, digest)
                    .await
                    .map_err(|e| e.to_string())?;
                applied += 1;
            }
            _ => {}
        }
    }
    Ok(applied)
}
