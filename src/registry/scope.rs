//! Token scopes (`repository:NAME:ACTIONS`, `registry:catalog:*`) and the
//! grant rules. Pure.
//!
//! Users: push and pull on their own namespace (`OWNER/...`, matched on the
//! first path component after validating the whole name), pull on what is
//! shared with them and on the admins' `library/`; never delete or `*`.
//! Admins: everything. Reserved names are never anyone's namespace.

use crate::identity::{Account, Role};

pub const RESERVED: &[&str] = &[
    "library", "admin", "admins", "shisa", "root", "registry", "v2", "_catalog",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Repository { name: String, actions: Vec<String> },
    Catalog,
}

/// A user name that may own a namespace.
pub fn may_own(uid: &str) -> bool {
    !RESERVED.contains(&uid)
        && !uid.contains('.')
        && !uid.contains(':')
        && crate::images::valid_component(uid)
}

pub fn valid_repository(name: &str) -> bool {
    name.len() <= 255 && !name.is_empty() && name.split('/').all(crate::images::valid_component)
}

/// Parse one `scope` parameter. Several scopes may come space-separated.
pub fn parse(s: &str) -> Result<Vec<Scope>, String> {
    let mut out = Vec::new();
    for one in s.split(' ').filter(|x| !x.is_empty()) {
        let Some((kind, rest)) = one.split_once(':') else {
            return Err(format!("`{one}` is not a scope"));
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            return Err(format!("`{one}` is not a scope"));
        };
        match kind {
            "repository" => {
                if !valid_repository(name) {
                    return Err(format!("`{name}` is not a valid repository name"));
                }
                let actions: Vec<String> = actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect();
                if actions.is_empty()
                    || actions
                        .iter()
                        .any(|a| !matches!(a.as_str(), "pull" | "push" | "delete" | "*"))
                {
                    return Err(format!("`{actions:?}` are not registry actions"));
                }
                out.push(Scope::Repository {
                    name: name.to_string(),
                    actions,
                });
            }
            "registry" if name == "catalog" => out.push(Scope::Catalog),
            _ => return Err(format!("`{one}` is not a scope this registry knows")),
        }
    }
    Ok(out)
}

pub struct Facts {
    /// Is the repository shared with the caller?
    pub shared: bool,
    /// Is the caller over their registry quota?
    pub over_quota: bool,
}

/// The actions granted on one scope (a subset of those asked).
pub fn grant(caller: &Account, scope: &Scope, facts: &Facts) -> Vec<String> {
    match scope {
        Scope::Catalog => {
            if caller.role == Role::Admin {
                vec!["*".into()]
            } else {
                vec![]
            }
        }
        Scope::Repository { name, actions } => {
            if caller.role == Role::Admin {
                return actions.clone();
            }
            let first = name.split('/').next().unwrap_or_default();
            let own = name.contains('/') && first == caller.uid && may_own(&caller.uid);
            let mut allowed: Vec<&str> = Vec::new();
            if own {
                allowed.push("pull");
                if !facts.over_quota {
                    allowed.push("push");
                }
            } else if first == "library" && name.contains('/') || facts.shared {
                allowed.push("pull");
            }
            actions
                .iter()
                .filter(|a| allowed.contains(&a.as_str()))
                .cloned()
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(uid: &str, role: Role) -> Account {
        Account {
            uid: uid.into(),
            uid_number: 1,
            gid_number: 1,
            home: "/".into(),
            mail: String::new(),
            display_name: String::new(),
            groups: vec![],
            role,
        }
    }
    fn repo(n: &str, a: &str) -> Scope {
        parse(&format!("repository:{n}:{a}")).unwrap().remove(0)
    }
    const NO: Facts = Facts {
        shared: false,
        over_quota: false,
    };

    #[test]
    fn grants() {
        let alice = acc("alice", Role::Student);
        assert_eq!(
            grant(&alice, &repo("alice/app", "pull,push"), &NO),
            vec!["pull", "push"]
        );
        assert_eq!(
            grant(&alice, &repo("alice/team/app", "push"), &NO),
            vec!["push"]
        );
        assert!(grant(&alice, &repo("bob/app", "pull,push"), &NO).is_empty());
        assert!(
            grant(&alice, &repo("alicex/app", "pull"), &NO).is_empty(),
            "matched per component, not prefix"
        );
        assert!(
            grant(&alice, &repo("alice", "push"), &NO).is_empty(),
            "a bare name is no namespace"
        );
        assert_eq!(
            grant(
                &alice,
                &repo("bob/app", "pull,push"),
                &Facts {
                    shared: true,
                    over_quota: false
                }
            ),
            vec!["pull"]
        );
        assert_eq!(
            grant(&alice, &repo("library/python", "pull,push"), &NO),
            vec!["pull"]
        );
        assert_eq!(
            grant(
                &alice,
                &repo("alice/app", "pull,push"),
                &Facts {
                    shared: false,
                    over_quota: true
                }
            ),
            vec!["pull"]
        );
        assert!(
            grant(&alice, &repo("alice/app", "delete,*"), &NO).is_empty(),
            "never delete or * to users"
        );
        assert!(grant(&alice, &Scope::Catalog, &NO).is_empty());
        let lib = acc("library", Role::Student);
        assert!(
            grant(&lib, &repo("library/x", "push"), &NO).is_empty(),
            "a reserved name owns nothing"
        );
        let admin = acc("admin", Role::Admin);
        assert_eq!(
            grant(&admin, &repo("bob/app", "pull,push,delete"), &NO),
            vec!["pull", "push", "delete"]
        );
        assert_eq!(grant(&admin, &Scope::Catalog, &NO), vec!["*"]);
    }

    #[test]
    fn parsing() {
        assert_eq!(parse("registry:catalog:*").unwrap(), vec![Scope::Catalog]);
        assert_eq!(
            parse("repository:alice/app:pull repository:bob/x:pull")
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "repository:Alice/app:pull",
            "repository:alice/app",
            "repository:alice/app:fly",
            "repository::pull",
            "x",
            "repository:a/../b:pull",
            "image:alice/app:pull",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = parse(&s);
        }
    }
}
