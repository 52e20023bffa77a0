//! The department registry: shisa is its token server (`GET /registry/token`),
//! receives its notifications (`POST /hooks/registry`), keeps the image
//! table in step with it (notifications, repaired by a periodic sync), and
//! holds the personal registry tokens.

pub mod client;
pub mod jwt;
pub mod scope;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config;

/// Most keys the login failure map holds.
pub const MAX_FAILURE_KEYS: usize = 2048;

pub struct Registry {
    pub cfg: config::Registry,
    pub signer: Arc<jwt::TokenSigner>,
    /// The registry's API (the HTTP client, or a test's fake).
    pub api: Arc<dyn client::RegistryApi>,
    pub(crate) failures: Mutex<HashMap<String, Vec<Instant>>>,
    pub(crate) quota_told: Mutex<HashMap<String, Instant>>,
    /// Short-lived pull credentials shisa hands to a blade's Podman: secret → (uid, repository, until).
    pub(crate) pulls: Mutex<HashMap<String, (String, String, Instant, bool)>>,
}

impl Registry {
    pub fn new(cfg: &config::Registry) -> anyhow::Result<Registry> {
        jwt::ensure_keys(&cfg.key_file, &cfg.cert_file)?;
        let signer = Arc::new(jwt::TokenSigner::load(&cfg.key_file, &cfg.cert_file)?);
        let api = Arc::new(client::Client {
            cfg: cfg.clone(),
            signer: signer.clone(),
            http: client::http(),
        });
        Ok(Registry {
            signer,
            api,
            cfg: cfg.clone(),
            failures: Default::default(),
            quota_told: Default::default(),
            pulls: Default::default(),
        })
    }

    pub fn client(&self) -> &dyn client::RegistryApi {
        self.api.as_ref()
    }

    /// Too many failed logins for this account or this address in the last minute?
    /// Password guesses are slowed per account and client address (5 failures a minute),
    /// and per client address across accounts (20): a correct password from anywhere else,
    /// and any token, are never held up by someone else's failures.
    pub fn limited(&self, user: &str, address: std::net::IpAddr) -> bool {
        let mut f = self.failures.lock().unwrap();
        let now = Instant::now();
        let mut over = |k: String, max: usize| match f.get_mut(&k) {
            Some(v) => {
                v.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
                v.len() >= max
            }
            None => false,
        };
        over(format!("pw:{user}@{address}"), 5) || over(format!("ip:{address}"), 20)
    }

    pub fn failed(&self, user: &str, address: std::net::IpAddr) {
        let mut f = self.failures.lock().unwrap();
        let now = Instant::now();
        // Bounded whatever names are tried: expired entries go first, then the oldest.
        if f.len() >= MAX_FAILURE_KEYS {
            f.retain(|_, v| {
                v.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
                !v.is_empty()
            });
            while f.len() >= MAX_FAILURE_KEYS {
                let oldest = f
                    .iter()
                    .min_by_key(|(_, v)| v.last().copied())
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => f.remove(&k),
                    None => break,
                };
            }
        }
        for k in [format!("pw:{user}@{address}"), format!("ip:{address}")] {
            let v = f.entry(k).or_default();
            v.push(now);
            // A key needs no more than its limit's worth of recent failures.
            if v.len() > 20 {
                v.remove(0);
            }
        }
    }

    /// Keys held in the failure map (for tests and /metrics).
    pub fn failure_keys(&self) -> usize {
        self.failures.lock().unwrap().len()
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

/// The name shisa uses for itself in the registry: it pushes course images (`courses/ID`),
/// which no user owns, with credentials it makes for one repository at a time.
pub const SERVICE: &str = "shisa";

/// shisa as the authorisation function sees it: staff on the registry (each credential is
/// still limited to its one repository).
pub fn service_account() -> crate::identity::Account {
    crate::identity::Account {
        uid: SERVICE.into(),
        uid_number: 0,
        gid_number: 0,
        home: std::path::PathBuf::new(),
        mail: String::new(),
        display_name: "shisa".into(),
        groups: Vec::new(),
        role: crate::identity::Role::Admin,
        dn: None,
    }
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
