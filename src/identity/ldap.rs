//! LDAP adapter: service bind, escaped filters, configurable attribute names.

use std::time::Duration;

use ldap3::{ldap_escape, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::{Account, Directory, DirectoryError, Role};
use crate::config::{Ldap, Roles};

pub struct LdapDirectory {
    cfg: Ldap,
    roles: Roles,
}

impl LdapDirectory {
    pub fn new(cfg: &Ldap, roles: Roles) -> Self {
        LdapDirectory {
            cfg: Ldap {
                url: cfg.url.clone(),
                starttls: cfg.starttls,
                tls_insecure: cfg.tls_insecure,
                bind_dn: cfg.bind_dn.clone(),
                bind_password: cfg.bind_password.clone(),
                base_dn: cfg.base_dn.clone(),
                user_filter: cfg.user_filter.clone(),
                group_base_dn: cfg.group_base_dn.clone(),
                group_filter: cfg.group_filter.clone(),
                attributes: cfg.attributes.clone(),
                timeout_seconds: cfg.timeout_seconds,
            },
            roles,
        }
    }

    async fn connect(&self) -> Result<ldap3::Ldap, DirectoryError> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(self.cfg.timeout_seconds))
            .set_starttls(self.cfg.starttls)
            .set_no_tls_verify(self.cfg.tls_insecure);
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(|e| DirectoryError::Unavailable(format!("connect {}: {e}", self.cfg.url)))?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    async fn service_bind(&self) -> Result<ldap3::Ldap, DirectoryError> {
        let mut ldap = self.connect().await?;
        ldap.with_timeout(self.timeout())
            .simple_bind(&self.cfg.bind_dn, self.cfg.bind_password.expose())
            .await
            .and_then(|r| r.success())
            .map_err(|e| {
                DirectoryError::Unavailable(format!("service bind as {}: {e}", self.cfg.bind_dn))
            })?;
        Ok(ldap)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_seconds)
    }

    async fn find_user(
        &self,
        ldap: &mut ldap3::Ldap,
        uid: &str,
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        let a = &self.cfg.attributes;
        let filter = self.cfg.user_filter.replace("{uid}", &ldap_escape(uid));
        let attrs = vec![
            &a.uid,
            &a.uid_number,
            &a.gid_number,
            &a.home,
            &a.mail,
            &a.display_name,
        ];
        let (entries, _) = ldap
            .with_timeout(self.timeout())
            .search(&self.cfg.base_dn, Scope::Subtree, &filter, attrs)
            .await
            .and_then(|r| r.success())
            .map_err(|e| DirectoryError::Unavailable(format!("search: {e}")))?;
        // Exactly one entry or none: two entries for one uid is a directory error we refuse to guess about.
        match entries.len() {
            0 => Ok(None),
            1 => Ok(Some(SearchEntry::construct(
                entries.into_iter().next().unwrap(),
            ))),
            n => Err(DirectoryError::Unavailable(format!(
                "{n} entries match uid {uid}"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Directory for LdapDirectory {
    async fn lookup(&self, uid: &str) -> Result<Option<Account>, DirectoryError> {
        let roles = &self.roles;
        let mut ldap = self.service_bind().await?;
        let Some(e) = self.find_user(&mut ldap, uid).await? else {
            let _ = ldap.unbind().await;
            return Ok(None);
        };
        let a = &self.cfg.attributes;
        let get = |k: &str| e.attrs.get(k).and_then(|v| v.first()).cloned();
        let num = |k: &str| get(k).and_then(|v| v.parse::<u32>().ok());
        let (Some(uid_number), Some(gid_number), Some(home)) =
            (num(&a.uid_number), num(&a.gid_number), get(&a.home))
        else {
            let _ = ldap.unbind().await;
            return Ok(None); // not a POSIX account: it cannot own anything
        };
        let gfilter = self
            .cfg
            .group_filter
            .replace("{uid}", &ldap_escape(uid))
            .replace("{dn}", &ldap_escape(&e.dn));
        let (gentries, _) = ldap
            .with_timeout(self.timeout())
            .search(
                &self.cfg.group_base_dn,
                Scope::Subtree,
                &gfilter,
                vec![&a.group_name],
            )
            .await
            .and_then(|r| r.success())
            .map_err(|e| DirectoryError::Unavailable(format!("group search: {e}")))?;
        let mut groups: Vec<String> = gentries
            .into_iter()
            .filter_map(|g| {
                SearchEntry::construct(g)
                    .attrs
                    .get(&a.group_name)
                    .and_then(|v| v.first())
                    .cloned()
            })
            .collect();
        groups.sort();
        let _ = ldap.unbind().await;
        Ok(Some(Account {
            uid: get(&a.uid).unwrap_or_else(|| uid.to_string()),
            uid_number,
            gid_number,
            home: home.into(),
            mail: get(&a.mail).unwrap_or_default(),
            display_name: get(&a.display_name).unwrap_or_default(),
            role: Role::from_groups(&groups, roles),
            groups,
            dn: Some(e.dn.clone()),
        }))
    }

    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
        let mut ldap = self.service_bind().await?;
        let filter = format!(
            "(&(objectClass=posixGroup)({}={}))",
            self.cfg.attributes.group_name,
            ldap_escape(group)
        );
        let (entries, _) = ldap
            .with_timeout(self.timeout())
            .search(
                &self.cfg.group_base_dn,
                Scope::Subtree,
                &filter,
                vec!["memberUid"],
            )
            .await
            .and_then(|r| r.success())
            .map_err(|e| DirectoryError::Unavailable(format!("group search: {e}")))?;
        let _ = ldap.unbind().await;
        Ok(entries
            .into_iter()
            .flat_map(|e| {
                SearchEntry::construct(e)
                    .attrs
                    .remove("memberUid")
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn verify_password(&self, uid: &str, password: &str) -> Result<bool, DirectoryError> {
        if password.is_empty() {
            return Ok(false);
        }
        let mut ldap = self.service_bind().await?;
        let Some(e) = self.find_user(&mut ldap, uid).await? else {
            return Ok(false);
        };
        let _ = ldap.unbind().await;
        let mut user = self.connect().await?;
        let ok = user
            .with_timeout(self.timeout())
            .simple_bind(&e.dn, password)
            .await
            .map(|r| r.rc == 0)
            .map_err(|e| DirectoryError::Unavailable(format!("bind: {e}")))?;
        let _ = user.unbind().await;
        Ok(ok)
    }
}
