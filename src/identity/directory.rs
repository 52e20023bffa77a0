//! The department directory: LDAP in production, the static users file in
//! the embedded default, both behind one type with a short cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ldap::LdapDirectory;
use super::users_file::UsersFile;
use super::{Account, Role};
use crate::config::{self, Roles};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

enum Source {
    Static { file: UsersFile },
    Ldap(Box<LdapDirectory>),
}

pub struct Directory {
    source: Source,
    roles: Roles,
    data_dir: PathBuf,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<Account>)>>,
}

impl Directory {
    pub fn from_config(cfg: &config::Config) -> Result<Directory, String> {
        let (source, ttl) = match &cfg.directory {
            config::Directory::Static {
                users_file,
                cache_seconds,
            } => (
                Source::Static {
                    file: UsersFile::load(users_file)?,
                },
                *cache_seconds,
            ),
            config::Directory::Ldap {
                ldap,
                cache_seconds,
            } => (
                Source::Ldap(Box::new(LdapDirectory::new(ldap))),
                *cache_seconds,
            ),
        };
        Ok(Directory {
            source,
            roles: cfg.roles.clone(),
            data_dir: cfg.data_dir.clone(),
            ttl: Duration::from_secs(ttl),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Look an account up by its name. `Ok(None)`: no such account.
    pub async fn lookup(&self, uid: &str) -> Result<Option<Account>, DirectoryError> {
        if !crate::values::valid_account(uid) {
            return Ok(None);
        }
        if let Some((at, acc)) = self.cache.lock().unwrap().get(uid) {
            if at.elapsed() < self.ttl {
                return Ok(acc.clone());
            }
        }
        let found = match &self.source {
            Source::Static { file } => file.user(uid).map(|u| {
                let groups = file.groups_of(uid);
                Account {
                    uid: u.uid.clone(),
                    uid_number: u.uid_number,
                    gid_number: u.gid_number,
                    home: file.home_of(u, &self.data_dir),
                    mail: u.mail.clone(),
                    display_name: u.name.clone(),
                    role: Role::from_groups(&groups, &self.roles),
                    groups,
                }
            }),
            Source::Ldap(l) => l.lookup(uid, &self.roles).await?,
        };
        self.cache
            .lock()
            .unwrap()
            .insert(uid.to_string(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// The members of a group (for instructors' views).
    pub async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
        match &self.source {
            Source::Static { file } => Ok(file
                .groups
                .iter()
                .filter(|g| g.name == group)
                .flat_map(|g| g.members.clone())
                .collect()),
            Source::Ldap(l) => l.members(group).await,
        }
    }

    /// Check a password (registry logins). Empty passwords are always refused:
    /// to LDAP an empty password is an anonymous bind, which "succeeds".
    pub async fn verify_password(&self, uid: &str, password: &str) -> Result<bool, DirectoryError> {
        if password.is_empty() || !crate::values::valid_account(uid) {
            return Ok(false);
        }
        match &self.source {
            Source::Static { file } => Ok(file
                .user(uid)
                .and_then(|u| u.demo_password.as_deref())
                .is_some_and(|p| crate::config::Secret::new(p).matches(password))),
            Source::Ldap(l) => l.verify_password(uid, password).await,
        }
    }
}
