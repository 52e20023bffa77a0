//! The one authorisation function. Every command asks `authorize` before it
//! touches a resource; nothing else decides who may do what.
//!
//! Rules: owners may do anything to their own resources; admins may do
//! anything to anyone's (flagged so it is audited and the owner told);
//! instructors may view the resources of members of their course groups;
//! a resource shared with a user, one of their groups, or `all` may be viewed
//! and used by them, never changed. Anyone else is told it does not exist.

use serde::Serialize;

use crate::identity::{Account, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// See that it exists and its details (ps, inspect, logs, images).
    View,
    /// Use without changing it (run a shared image, pull it).
    Use,
    /// Change its state (start, stop, exec, share).
    Modify,
    /// Remove it.
    Delete,
}

/// What the authorisation function needs to know about a resource.
#[derive(Debug, Clone)]
pub struct ResourceRef<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub owner: &'a str,
    /// Users, groups, or `all`.
    pub shared_with: &'a [String],
    /// The owner's groups (for instructors' course views).
    pub owner_groups: &'a [String],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The caller owns it.
    Owner,
    /// Allowed through sharing.
    Shared,
    /// Allowed because of a staff role acting on someone else's resource:
    /// audit it and tell the owner.
    Staff,
    /// The caller may see it but not do this.
    Forbidden,
    /// The caller may not know it exists.
    NotFound,
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Owner | Decision::Shared | Decision::Staff)
    }
}

pub fn authorize(
    caller: &Account,
    action: Action,
    res: &ResourceRef<'_>,
    role_groups: &[String],
) -> Decision {
    if caller.uid == res.owner {
        return Decision::Owner;
    }
    if caller.role == Role::Admin {
        return Decision::Staff;
    }
    let shared = res
        .shared_with
        .iter()
        .any(|s| s == "all" || *s == caller.uid || caller.in_group(s));
    let teaches = caller.role == Role::Instructor
        && res
            .owner_groups
            .iter()
            .any(|g| caller.in_group(g) && !role_groups.iter().any(|r| r == g));
    match action {
        Action::View if shared => Decision::Shared,
        Action::View if teaches => Decision::Staff,
        Action::Use if shared => Decision::Shared,
        _ if shared || teaches => Decision::Forbidden,
        _ => Decision::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(uid: &str, role: Role, groups: &[&str]) -> Account {
        Account {
            uid: uid.into(),
            uid_number: 1000,
            gid_number: 1000,
            home: "/h".into(),
            mail: String::new(),
            display_name: String::new(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            role,
        }
    }

    #[test]
    fn table() {
        let alice = acc("alice", Role::Student, &["ai-course", "students"]);
        let bob = acc("bob", Role::Student, &["students"]);
        let carol = acc("carol", Role::Student, &["ai-course"]);
        let sensei = acc("sensei", Role::Instructor, &["ai-course", "instructors"]);
        let admin = acc("admin", Role::Admin, &["shisa-admins"]);
        let role_groups = vec!["instructors".to_string(), "shisa-admins".to_string()];
        let og = alice.groups.clone();
        let private = ResourceRef {
            kind: "container",
            name: "web",
            owner: "alice",
            shared_with: &[],
            owner_groups: &og,
        };
        let share = vec!["ai-course".to_string()];
        let shared = ResourceRef {
            shared_with: &share,
            ..private.clone()
        };
        use Action::*;
        use Decision::*;
        let cases = [
            (&alice, Delete, &private, Owner),
            (&bob, View, &private, NotFound),
            (&bob, Delete, &private, NotFound),
            (&carol, View, &shared, Shared),
            (&carol, Use, &shared, Shared),
            (&carol, Delete, &shared, Forbidden),
            (&bob, Use, &shared, NotFound),
            (&sensei, View, &private, Staff),
            (&sensei, Modify, &private, Forbidden),
            (&admin, Delete, &private, Staff),
        ];
        for (who, action, res, want) in cases {
            assert_eq!(
                authorize(who, action, res, &role_groups),
                want,
                "{} {:?} {:?}",
                who.uid,
                action,
                res.shared_with
            );
        }
        // "students" is everyone's group, not a course: an instructor in it sees nothing through it.
        let t2 = acc("t2", Role::Instructor, &["students"]);
        let bobs = bob.groups.clone();
        let r = ResourceRef {
            kind: "container",
            name: "x",
            owner: "bob",
            shared_with: &[],
            owner_groups: &bobs,
        };
        assert_eq!(
            authorize(&t2, View, &r, &["students".to_string()]),
            NotFound
        );
    }
}
