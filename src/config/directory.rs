//! `[directory]`: LDAP or the static users file.

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryRaw {
    pub source: DirectorySource,
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    #[serde(default)]
    pub ldap: Option<LdapRaw>,
    #[serde(default = "default_cache")]
    pub cache_seconds: u64,
}

pub(super) fn default_cache() -> u64 {
    60
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectorySource {
    Static,
    Ldap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapRaw {
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// Accept any certificate (test directories only).
    #[serde(default)]
    pub tls_insecure: bool,
    pub bind_dn: String,
    pub bind_password: SecretSource,
    pub base_dn: String,
    /// `{uid}` is replaced by the escaped account name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    #[serde(default)]
    pub group_base_dn: Option<String>,
    /// `{uid}` is the escaped account name, `{dn}` the escaped user DN.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    #[serde(default)]
    pub attributes: LdapAttributes,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

pub(super) fn default_user_filter() -> String {
    "(&(objectClass=posixAccount)(uid={uid}))".into()
}

pub(super) fn default_group_filter() -> String {
    "(&(objectClass=posixGroup)(memberUid={uid}))".into()
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct LdapAttributes {
    pub uid: String,
    pub uid_number: String,
    pub gid_number: String,
    pub home: String,
    pub mail: String,
    pub display_name: String,
    pub group_name: String,
}

impl Default for LdapAttributes {
    fn default() -> Self {
        LdapAttributes {
            uid: "uid".into(),
            uid_number: "uidNumber".into(),
            gid_number: "gidNumber".into(),
            home: "homeDirectory".into(),
            mail: "mail".into(),
            display_name: "cn".into(),
            group_name: "cn".into(),
        }
    }
}

#[derive(Debug)]
pub enum Directory {
    Static {
        users_file: PathBuf,
        cache_seconds: u64,
    },
    Ldap {
        ldap: Box<Ldap>,
        cache_seconds: u64,
    },
}

#[derive(Debug)]
pub struct Ldap {
    pub url: String,
    pub starttls: bool,
    pub tls_insecure: bool,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub base_dn: String,
    pub user_filter: String,
    pub group_base_dn: String,
    pub group_filter: String,
    pub attributes: LdapAttributes,
    pub timeout_seconds: u64,
}

/// `[directory]`, checked.
pub(super) fn checked(
    raw: &DirectoryRaw,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Result<Directory, (String, String)> {
    let cache_seconds = raw.cache_seconds;
    Ok(match raw.source {
        DirectorySource::Static => {
            let f = raw.users_file.as_ref().ok_or((
                "directory.users_file".to_string(),
                "`source = \"static\"` needs `users_file`, the demo users file (see deploy/demo-users.toml)".to_string(),
            ))?;
            let users_file = base.join(f);
            users_file::UsersFile::load(&users_file)
                .map_err(|r| ("directory.users_file".to_string(), r))?;
            Directory::Static {
                users_file,
                cache_seconds,
            }
        }
        DirectorySource::Ldap => {
            let l = raw.ldap.as_ref().ok_or((
                "directory.ldap".to_string(),
                "`source = \"ldap\"` needs a `[directory.ldap]` table".to_string(),
            ))?;
            if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
                return Err((
                    "directory.ldap.url".into(),
                    format!("`{}` must start with ldap:// or ldaps://", l.url),
                ));
            }
            if l.url.starts_with("ldap://") && !l.starttls && !is_loopback_url(&l.url) {
                warnings.push("directory.ldap: plain ldap:// to a remote server sends passwords in clear; use ldaps:// or starttls = true".into());
            }
            for (k, f) in [
                ("user_filter", &l.user_filter),
                ("group_filter", &l.group_filter),
            ] {
                if !f.contains("{uid}") && !f.contains("{dn}") {
                    return Err((
                        format!("directory.ldap.{k}"),
                        "the filter must contain `{uid}`".into(),
                    ));
                }
                if !f.starts_with('(') || !f.ends_with(')') {
                    return Err((
                        format!("directory.ldap.{k}"),
                        "an LDAP filter must be enclosed in parentheses".into(),
                    ));
                }
            }
            let bind_password = l
                .bind_password
                .resolve(base)
                .map_err(|r| ("directory.ldap.bind_password".to_string(), r))?;
            Directory::Ldap {
                ldap: Box::new(Ldap {
                    url: l.url.clone(),
                    starttls: l.starttls,
                    tls_insecure: l.tls_insecure,
                    bind_dn: l.bind_dn.clone(),
                    bind_password,
                    base_dn: l.base_dn.clone(),
                    user_filter: l.user_filter.clone(),
                    group_base_dn: l.group_base_dn.clone().unwrap_or_else(|| l.base_dn.clone()),
                    group_filter: l.group_filter.clone(),
                    attributes: l.attributes.clone(),
                    timeout_seconds: l.timeout_seconds,
                }),
                cache_seconds,
            }
        }
    })
}
