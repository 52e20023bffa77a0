//! The department registry: shisa is its token server (`GET /registry/token`),
//! receives its notifications (`POST /hooks/registry`), keeps the image
//! table in step with it (notifications, repaired by a periodic sync), and
//! holds the personal registry tokens.

pub mod client;
pub mod jwt;
pub mod scope;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::config;
use crate::identity::Account;
use crate::store::audit::NewAudit;
use crate::store::images::ImageRow;

pub struct Registry {
    pub cfg: config::Registry,
    pub signer: jwt::TokenSigner,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
    quota_told: Mutex<HashMap<String, Instant>>,
    /// Short-lived pull credentials shisa hands to a blade's Podman: secret → (uid, repository, until).
    pulls: Mutex<HashMap<String, (String, String, Instant, bool)>>,
}

impl Registry {
    pub fn new(cfg: &config::Registry) -> anyhow::Result<Registry> {
        jwt::ensure_keys(&cfg.key_file, &cfg.cert_file)?;
        Ok(Registry {
            signer: jwt::TokenSigner::load(&cfg.key_file, &cfg.cert_file)?,
            cfg: cfg.clone(),
            failures: Default::default(),
            quota_told: Default::default(),
            pulls: Default::default(),
        })
    }

    pub fn client(&self) -> client::Client<'_> {
        client::Client {
            reg: self,
            http: client::http(),
        }
    }

    /// Too many failed logins for this account or this address in the last minute?
    fn limited(&self, keys: &[String]) -> bool {
        let mut f = self.failures.lock().unwrap();
        let now = Instant::now();
        keys.iter().any(|k| {
            let v = f.entry(k.clone()).or_default();
            v.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
            v.len() >= if k.starts_with("ip:") { 20 } else { 5 }
        })
    }

    fn failed(&self, keys: &[String]) {
        let mut f = self.failures.lock().unwrap();
        for k in keys {
            f.entry(k.clone()).or_default().push(Instant::now());
        }
    }

    /// A short-lived credential for a blade's Podman to pull one repository as `uid`.
    pub fn pull_credential(&self, uid: &str, repository: &str) -> String {
        self.ephemeral(uid, repository, false, 120)
    }

    /// A short-lived credential to push one repository as `uid` (a build's result).
    pub fn push_credential(&self, uid: &str, repository: &str) -> String {
        self.ephemeral(uid, repository, true, 600)
    }

    /// The same, valid for `seconds` (the CI token service's).
    pub fn push_credential_for(&self, uid: &str, repository: &str, seconds: u64) -> String {
        self.ephemeral(uid, repository, true, seconds)
    }

    fn ephemeral(&self, uid: &str, repository: &str, push: bool, seconds: u64) -> String {
        let secret = format!("shisa-pull_{}", uuid::Uuid::new_v4().simple());
        let mut p = self.pulls.lock().unwrap();
        p.retain(|_, v| v.2 > Instant::now());
        p.insert(
            secret.clone(),
            (
                uid.to_string(),
                repository.to_string(),
                Instant::now() + Duration::from_secs(seconds),
                push,
            ),
        );
        secret
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new personal token: (id, the password to show once).
pub async fn new_personal_token(app: &App, owner: &str) -> anyhow::Result<(i64, String)> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let secret = hex::encode(raw);
    let id = app
        .store
        .new_registry_token(owner, &hash_secret(&secret))
        .await?;
    Ok((id, format!("shisa_{id}_{secret}")))
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
    let keys = vec![format!("user:{user}"), format!("ip:{address}")];
    if reg.limited(&keys) {
        return Err(TokenError::Limited);
    }
    let fail = |why| {
        reg.failed(&keys);
        Err(TokenError::Unauthorized(why))
    };
    if password.is_empty() || !crate::commands::values::valid_account(user) {
        return fail("wrong user name or password");
    }
    // An ephemeral pull credential (only for its one repository).
    if password.starts_with("shisa-pull_") {
        let entry = reg.pulls.lock().unwrap().get(password).cloned();
        return match entry {
            Some((uid, repo, until, push)) if uid == user && until > Instant::now() => {
                match app.directory.lookup(user).await {
                    Ok(Some(a)) => Ok((a, Some((repo, push)))),
                    _ => fail("unknown user"),
                }
            }
            _ => fail("wrong user name or password"),
        };
    }
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
    let limit = crate::containers::size_of(&app.cfg.limits_for(account.role).registry_bytes);
    let usage = app.store.registry_usage(&account.uid).await.unwrap_or(0);
    let over_quota = usage >= limit;
    let mut access = Vec::new();
    for s in &scopes {
        let (kind, name) = match s {
            scope::Scope::Repository { name, .. } => ("repository", name.clone()),
            scope::Scope::Catalog => ("registry", "catalog".to_string()),
        };
        let mut granted = if let Some((repo, may_push)) = &only_repo {
            // An ephemeral credential: its one repository, pull (and push for a build's
            // own result, within the owner's namespace and quota), nothing else.
            match s {
                scope::Scope::Repository { name, actions } if name == repo => actions
                    .iter()
                    .filter(|a| {
                        *a == "pull"
                            || (*a == "push"
                                && *may_push
                                && !over_quota
                                && owner_of(repo).as_deref() == Some(account.uid.as_str()))
                    })
                    .cloned()
                    .collect(),
                _ => vec![],
            }
        } else {
            let shared = match s {
                scope::Scope::Repository { name, .. } => is_shared_with(app, name, &account).await,
                _ => false,
            };
            scope::grant(&account, s, &scope::Facts { shared, over_quota })
        };
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

/// Is `repository` shared with this account (by name, group or `all`)?
pub async fn is_shared_with(app: &App, repository: &str, a: &Account) -> bool {
    let Ok(with) = app.store.shared_with_of(repository).await else {
        return false;
    };
    with.iter()
        .any(|g| g == "all" || *g == a.uid || a.in_group(g))
}

pub fn rfc3339(t: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm); no date crate needed for one format.
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The owner of a repository: its first component, unless reserved (`library` stays `library`).
pub fn owner_of(repository: &str) -> Option<String> {
    let first = repository.split('/').next()?;
    if !repository.contains('/') {
        return None;
    }
    if first == "library" || scope::may_own(first) {
        Some(first.to_string())
    } else {
        None
    }
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
                let (digest, size) = match reg.client().manifest(repo, tag).await {
                    Ok(Some(x)) => x,
                    _ => (target["digest"].as_str().unwrap_or_default().to_string(), 0),
                };
                app.store
                    .upsert_image(ImageRow {
                        repository: repo.into(),
                        tag: tag.into(),
                        owner,
                        digest,
                        size,
                        pushed_at: crate::store::now(),
                    })
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
                applied += 1;
            }
            _ => {}
        }
    }
    Ok(applied)
}

/// Compare the image table with the registry and repair it. Returns (added or changed, removed).
pub async fn sync(app: &Arc<App>) -> anyhow::Result<(usize, usize)> {
    let Some(reg) = app.registry.as_ref() else {
        return Ok((0, 0));
    };
    let c = reg.client();
    let mut seen = std::collections::HashSet::new();
    let mut changed = 0;
    for repo in c.catalog().await? {
        let Some(owner) = owner_of(&repo) else {
            continue;
        };
        for tag in c.tags(&repo).await? {
            let Some((digest, size)) = c.manifest(&repo, &tag).await? else {
                continue;
            };
            seen.insert((repo.clone(), tag.clone()));
            let known = app.store.image(&repo, &tag).await?;
            if known
                .as_ref()
                .is_none_or(|k| k.digest != digest || k.size != size)
            {
                let pushed_at = known.map(|k| k.pushed_at).unwrap_or_else(crate::store::now);
                app.store
                    .upsert_image(ImageRow {
                        repository: repo.clone(),
                        tag,
                        owner: owner.clone(),
                        digest,
                        size,
                        pushed_at,
                    })
                    .await?;
                changed += 1;
            }
        }
    }
    let mut removed = 0;
    for i in app.store.all_images().await? {
        if !seen.contains(&(i.repository.clone(), i.tag.clone())) {
            app.store.delete_image_tag(&i.repository, &i.tag).await?;
            removed += 1;
        }
    }
    if changed + removed > 0 {
        tracing::info!(changed, removed, "registry sync repaired the image table");
        app.metrics
            .incr_labeled("registry_sync_repairs", "kind=\"all\"");
    }
    Ok((changed, removed))
}

pub fn spawn_sync(
    app: Arc<App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = Duration::from_secs(app.registry.as_ref()?.cfg.sync_seconds);
    Some(tokio::spawn(async move {
        loop {
            if let Err(e) = sync(&app).await {
                tracing::warn!(error = %e, "registry sync failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::owner_of("alice/app").as_deref(), Some("alice"));
        assert_eq!(super::owner_of("library/x").as_deref(), Some("library"));
        assert_eq!(super::owner_of("shisa/x"), None);
        assert_eq!(super::owner_of("x"), None);
    }
}
