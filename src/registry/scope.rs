//! Token scopes (`repository:NAME:ACTIONS`, `registry:catalog:*`): parsed here, granted
//! by the one authorisation function (`access::registry_grant`). Pure.
//!
//! Users: push and pull on their own namespace (`OWNER/...`, matched on the
//! first path component after validating the whole name), pull on what is
//! shared with them and on the admins' `library/`; never delete or `*`.
//! Admins: everything. Reserved names are never anyone's namespace.

pub const RESERVED: &[&str] = &[
    "library", "admin", "admins", "shisa", "root", "registry", "v2", "_catalog", "courses",
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
        && crate::values::valid_component(uid)
}

pub fn valid_repository(name: &str) -> bool {
    name.len() <= 255 && !name.is_empty() && name.split('/').all(crate::values::valid_component)
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

#[cfg(test)]
mod tests {
    use super::*;

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
