//! The department directory: LDAP in production, the static users file in the embedded
//! default and the demo, both behind the [`Directory`] trait, with a short cache in front.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::ldap::LdapDirectory;
use super::users_file::UsersFile;
use super::{Account, Role};
use crate::config::{self, Roles};

pub use super::{Directory, DirectoryError};

/// The directory `[directory]` configures, cached for `cache_seconds`.
pub fn from_config(cfg: &config::Config) -> Result<Arc<dyn Directory>, String> {
    let (source, ttl): (Box<dyn Directory>, u64) = match &cfg.directory {
        config::Directory::Static {
            users_file,
            cache_seconds,
        } => (
            Box::new(StaticDirectory {
                file: UsersFile::load(users_file)?,
                roles: cfg.roles.clone(),
                data_dir: cfg.data_dir.clone(),
            }),
            *cache_seconds,
        ),
        config::Directory::Ldap {
            ldap,
            cache_seconds,
        } => (
            Box::new(LdapDirectory::new(ldap, cfg.roles.clone())),
            *cache_seconds,
        ),
    };
    Ok(Arc::new(Cached {
        source,
        ttl: Duration::from_secs(ttl),
        cache: Mutex::new(HashMap::new()),
    }))
}

/// The static users file as a directory (demo passwords for registry logins).
pub struct StaticDirectory {
    pub file: UsersFile,
    pub roles: Roles,
    pub data_dir: PathBuf,
}

#[async_trait]
impl Directory for StaticDirectory {
    async fn lookup(&self, uid: &str) -> Result<Option<Account>, DirectoryError> {
        Ok(self.file.user(uid).map(|u| {
            let groups = self.file.groups_of(uid);
            Account {
                uid: u.uid.clone(),
                uid_number: u.uid_number,
                gid_number: u.gid_number,
                home: self.file.home_of(u, &self.data_dir),
                mail: u.mail.clone(),
                display_name: u.name.clone(),
                role: Role::from_groups(&groups, &self.roles),
                groups,
                dn: None,
            }
        }))
    }

    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(self
            .file
            .groups
            .iter()
            .filter(|g| g.name == group)
            .flat_map(|g| g.members.clone())
            .collect())
    }

    async fn verify_password(&self, uid: &str, password: &str) -> Result<bool, DirectoryError> {
        Ok(self
            .file
            .user(uid)
            .and_then(|u| u.demo_password.as_deref())
            .is_some_and(|p| crate::config::Secret::new(p).matches(password)))
    }
}

/// Any directory with a short cache of look-ups, and the checks every source needs.
pub struct Cached {
    source: Box<dyn Directory>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<Account>)>>,
}

#[async_trait]
impl Directory for Cached {
    async fn lookup(&self, uid: &str) -> Result<Option<Account>, DirectoryError> {
        if !crate::values::valid_account(uid) {
            return Ok(None);
        }
        if let Some((at, acc)) = self.cache.lock().unwrap().get(uid) {
            if at.elapsed() < self.ttl {
                return Ok(acc.clone());
            }
        }
        let found = self.source.lookup(uid).await?;
        self.cache
            .lock()
            .unwrap()
            .insert(uid.to_string(), (Instant::now(), found.clone()));
        Ok(found)
    }

    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
        self.source.members(group).await
    }

    /// Empty passwords are always refused: to LDAP an empty password is an anonymous
    /// bind, which "succeeds".
    async fn verify_password(&self, uid: &str, password: &str) -> Result<bool, DirectoryError> {
        if password.is_empty() || !crate::values::valid_account(uid) {
            return Ok(false);
        }
        self.source.verify_password(uid, password).await
    }
}
