//! The one authorisation function. Every command, endpoint, registry scope, download
//! link, build, listing and admin action asks [`authorize`] before it touches a resource;
//! nothing else decides who may do what.
//!
//! Rules, for a thing one user owns (a container, image, registry repository, SIF file,
//! Slurm job, GitLab project): its owner may do anything to it, except that only admins
//! delete registry repositories; admins may do anything to anyone's (flagged `Staff` so it
//! is audited and the owner told); instructors may view what members of their course
//! groups own (never through a group that confers a role); what is shared with a user,
//! one of their groups, or `all` may be viewed and used by them, never changed. Anyone
//! else is told it does not exist. A group's listing is for admins and that group's
//! instructors; another user's listing, the fleet (drains) and the registry catalog are
//! for admins.

use serde::Serialize;

use crate::config::Courses;
use crate::identity::{Account, Role};
use crate::registry::scope::{may_own, Scope};

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
    /// List what a group or a user owns.
    List,
    /// Change the service itself (drain a blade, read the catalog).
    Administer,
}

/// What is being asked about.
#[derive(Debug, Clone)]
pub enum Resource<'a> {
    /// Something one user owns.
    Owned(ResourceRef<'a>),
    /// The things of a group's members (`ps --group`).
    Group(&'a str),
    /// The things of one user, by name (`--user`).
    User(&'a str),
    /// The blades (drain, undrain).
    Fleet,
    /// The registry's catalog of every repository.
    Catalog,
    /// Every course there is (`/course list --all`).
    AllCourses,
    /// Making a GitLab project a course's (`/course enable`): for those who teach.
    CourseSetup,
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

/// Does `caller` teach the course of group `g`? Only a configured course, only its named
/// instructors, only with the instructor role.
fn teaches(caller: &Account, g: &str, courses: &Courses) -> bool {
    caller.role == Role::Instructor
        && courses
            .get(g)
            .is_some_and(|c| c.instructors.contains(&caller.uid))
}

/// The one entry point: may `caller` do `action` to `res`? `courses` are the configured
/// courses, the only groups through which an instructor sees other people's things.
pub fn authorize(
    caller: &Account,
    action: Action,
    res: &Resource<'_>,
    courses: &Courses,
) -> Decision {
    let admin = caller.role == Role::Admin;
    match res {
        Resource::Owned(r) => owned(caller, action, r, courses),
        Resource::Group(g) => {
            if admin
                || (teaches(caller, g, courses) && matches!(action, Action::List | Action::View))
            {
                Decision::Staff
            } else {
                Decision::Forbidden
            }
        }
        Resource::User(u) if *u == caller.uid => Decision::Owner,
        Resource::CourseSetup if caller.role == Role::Instructor => Decision::Owner,
        Resource::User(_)
        | Resource::Fleet
        | Resource::Catalog
        | Resource::AllCourses
        | Resource::CourseSetup => {
            if admin {
                Decision::Staff
            } else {
                Decision::Forbidden
            }
        }
    }
}

fn owned(caller: &Account, action: Action, res: &ResourceRef<'_>, courses: &Courses) -> Decision {
    if caller.uid == res.owner && !res.owner.is_empty() {
        // Registry repositories are deleted by admins only (garbage collection is theirs).
        if res.kind == "repository" && action == Action::Delete && caller.role != Role::Admin {
            return Decision::Forbidden;
        }
        return Decision::Owner;
    }
    if caller.role == Role::Admin {
        return Decision::Staff;
    }
    let shared = res
        .shared_with
        .iter()
        .any(|s| s == "all" || *s == caller.uid || caller.in_group(s));
    let teaches = res.owner_groups.iter().any(|g| teaches(caller, g, courses));
    match action {
        Action::View if shared => Decision::Shared,
        Action::View if teaches => Decision::Staff,
        Action::Use if shared => Decision::Shared,
        _ if shared || teaches => Decision::Forbidden,
        _ => Decision::NotFound,
    }
}

/// The actions granted on one registry token scope, a subset of those asked: `pull` is
/// [`Action::Use`], `push` is [`Action::Modify`] (refused to owners over their quota),
/// `delete` and `*` are [`Action::Delete`]. A repository's owner is the first component
/// of its name when that may own a namespace; `library/` is pulled by everyone.
pub fn registry_grant(
    caller: &Account,
    scope: &Scope,
    shared_with: &[String],
    over_quota: bool,
    courses: &Courses,
) -> Vec<String> {
    match scope {
        Scope::Catalog => {
            if authorize(caller, Action::View, &Resource::Catalog, courses).allowed() {
                vec!["*".into()]
            } else {
                vec![]
            }
        }
        Scope::Repository { name, actions } => {
            let first = name.split('/').next().unwrap_or_default();
            let namespaced = name.contains('/');
            let owner = if namespaced && may_own(first) {
                first
            } else {
                ""
            };
            let everyone = ["all".to_string()];
            let shared = if namespaced && first == "library" {
                &everyone[..]
            } else {
                shared_with
            };
            let r = Resource::Owned(ResourceRef {
                kind: "repository",
                name,
                owner,
                shared_with: shared,
                owner_groups: &[],
            });
            actions
                .iter()
                .filter(|a| {
                    let action = match a.as_str() {
                        "pull" => Action::Use,
                        "push" => Action::Modify,
                        _ => Action::Delete,
                    };
                    match authorize(caller, action, &r, courses) {
                        Decision::Owner => !(action == Action::Modify && over_quota),
                        d => d.allowed(),
                    }
                })
                .cloned()
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ai-course` taught by `sensei` and `ins` (the only course).
    fn courses() -> Courses {
        let mut c = Courses::new();
        c.insert(
            "ai-course".into(),
            crate::config::Course {
                instructors: vec!["sensei".into(), "ins".into()],
            },
        );
        c
    }

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
            dn: None,
        }
    }

    #[test]
    fn table() {
        let alice = acc("alice", Role::Student, &["ai-course", "students"]);
        let bob = acc("bob", Role::Student, &["students"]);
        let carol = acc("carol", Role::Student, &["ai-course"]);
        let sensei = acc("sensei", Role::Instructor, &["ai-course", "instructors"]);
        let admin = acc("admin", Role::Admin, &["shisa-admins"]);
        let role_groups = courses();
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
                authorize(who, action, &Resource::Owned(res.clone()), &role_groups),
                want,
                "{} {:?} {:?}",
                who.uid,
                action,
                res.shared_with
            );
        }
        // "students" is everyone's group, not a course: an instructor in it sees nothing
        // through it, even one who teaches another course (a TA who is also a student).
        let t2 = acc("sensei", Role::Instructor, &["students", "ai-course"]);
        let bobs = bob.groups.clone();
        let r = ResourceRef {
            kind: "container",
            name: "x",
            owner: "bob",
            shared_with: &[],
            owner_groups: &bobs,
        };
        assert_eq!(
            authorize(&t2, View, &Resource::Owned(r.clone()), &courses()),
            NotFound
        );
        assert_eq!(
            authorize(&t2, List, &Resource::Group("students"), &courses()),
            Forbidden
        );
        // A member of a course group who is not named its instructor sees nothing through it.
        let other = acc("other", Role::Instructor, &["ai-course"]);
        assert_eq!(
            authorize(&other, List, &Resource::Group("ai-course"), &courses()),
            Forbidden
        );
        let alices = alice.groups.clone();
        let ra = ResourceRef {
            owner: "alice",
            owner_groups: &alices,
            ..r
        };
        assert_eq!(
            authorize(&other, View, &Resource::Owned(ra), &courses()),
            NotFound
        );
        // Course-wide acts: setting one up is for those who teach, listing all for admins.
        for (who, res, want) in [
            (&alice, Resource::CourseSetup, Forbidden),
            (&sensei, Resource::CourseSetup, Owner),
            (&admin, Resource::CourseSetup, Staff),
            (&sensei, Resource::AllCourses, Forbidden),
            (&admin, Resource::AllCourses, Staff),
        ] {
            let action = if matches!(res, Resource::AllCourses) {
                List
            } else {
                Administer
            };
            assert_eq!(
                authorize(who, action, &res, &courses()),
                want,
                "{} {res:?}",
                who.uid
            );
        }
    }

    /// Every role against every relation to a resource and every action.
    #[test]
    fn role_by_relation_by_action() {
        use Action::*;
        use Decision::*;
        let role_groups = courses();
        let student = acc("stu", Role::Student, &["ai-course", "students"]);
        let instructor = acc("ins", Role::Instructor, &["ai-course", "instructors"]);
        let admin = acc("adm", Role::Admin, &["shisa-admins"]);
        let course = vec!["ai-course".to_string()];
        let none: Vec<String> = vec![];
        let all = vec!["all".to_string()];
        // (relation, owner, shared_with, owner_groups)
        let relations: [(&str, &str, &Vec<String>, &Vec<String>); 5] = [
            ("own", "", &none, &none),
            ("stranger", "zed", &none, &none),
            ("shared", "zed", &course, &none),
            ("shared with all", "zed", &all, &none),
            ("in my course", "zed", &none, &course),
        ];
        let actions = [View, Use, Modify, Delete];
        // Expected decisions per action, for student / instructor / admin.
        let want: &[(&str, [[Decision; 4]; 3])] = &[
            ("own", [[Owner; 4], [Owner; 4], [Owner; 4]]),
            ("stranger", [[NotFound; 4], [NotFound; 4], [Staff; 4]]),
            (
                "shared",
                [
                    [Shared, Shared, Forbidden, Forbidden],
                    [Shared, Shared, Forbidden, Forbidden],
                    [Staff; 4],
                ],
            ),
            (
                "shared with all",
                [
                    [Shared, Shared, Forbidden, Forbidden],
                    [Shared, Shared, Forbidden, Forbidden],
                    [Staff; 4],
                ],
            ),
            (
                "in my course",
                [
                    [NotFound; 4],
                    [Staff, Forbidden, Forbidden, Forbidden],
                    [Staff; 4],
                ],
            ),
        ];
        for (rel, owner, shared, groups) in relations {
            let row = want.iter().find(|(r, _)| *r == rel).unwrap().1;
            for (ri, who) in [&student, &instructor, &admin].into_iter().enumerate() {
                let owner = if owner.is_empty() {
                    who.uid.as_str()
                } else {
                    owner
                };
                let r = ResourceRef {
                    kind: "container",
                    name: "x",
                    owner,
                    shared_with: shared,
                    owner_groups: groups,
                };
                for (ai, a) in actions.into_iter().enumerate() {
                    let got = authorize(who, a, &Resource::Owned(r.clone()), &role_groups);
                    assert_eq!(got, row[ri][ai], "{:?} {rel} {a:?}", who.role);
                }
            }
        }
        // Listings, the fleet, the catalog.
        let cases = [
            (&student, List, Resource::Group("ai-course"), Forbidden),
            (&instructor, List, Resource::Group("ai-course"), Staff),
            (&instructor, List, Resource::Group("instructors"), Forbidden),
            (
                &instructor,
                List,
                Resource::Group("other-course"),
                Forbidden,
            ),
            (&admin, List, Resource::Group("other-course"), Staff),
            (&student, List, Resource::User("stu"), Owner),
            (&student, List, Resource::User("zed"), Forbidden),
            (&instructor, List, Resource::User("zed"), Forbidden),
            (&admin, List, Resource::User("zed"), Staff),
            (&student, Administer, Resource::Fleet, Forbidden),
            (&instructor, Administer, Resource::Fleet, Forbidden),
            (&admin, Administer, Resource::Fleet, Staff),
            (&student, View, Resource::Catalog, Forbidden),
            (&admin, View, Resource::Catalog, Staff),
        ];
        for (who, a, r, want) in cases {
            assert_eq!(
                authorize(who, a, &r, &role_groups),
                want,
                "{} {a:?} {r:?}",
                who.uid
            );
        }
        // Registry repositories: owners push and pull, only admins delete.
        let repo = ResourceRef {
            kind: "repository",
            name: "stu/app",
            owner: "stu",
            shared_with: &none,
            owner_groups: &none,
        };
        let r = Resource::Owned(repo);
        assert_eq!(authorize(&student, Modify, &r, &role_groups), Owner);
        assert_eq!(authorize(&student, Delete, &r, &role_groups), Forbidden);
        assert_eq!(authorize(&admin, Delete, &r, &role_groups), Staff);
        // Nobody owns a resource with no owner (a reserved name): only admins reach it.
        let orphan = ResourceRef {
            owner: "",
            ..ResourceRef {
                kind: "repository",
                name: "shisa/x",
                owner: "",
                shared_with: &none,
                owner_groups: &none,
            }
        };
        let blank = acc("", Role::Student, &[]);
        assert_eq!(
            authorize(&blank, View, &Resource::Owned(orphan.clone()), &role_groups),
            NotFound
        );
        assert_eq!(
            authorize(&admin, View, &Resource::Owned(orphan), &role_groups),
            Staff
        );
    }

    #[test]
    fn registry_grants() {
        use crate::registry::scope::parse;
        let repo = |n: &str, a: &str| parse(&format!("repository:{n}:{a}")).unwrap().remove(0);
        let g = |who: &Account, s: &Scope, shared: &[&str], over: bool| {
            let shared: Vec<String> = shared.iter().map(|x| x.to_string()).collect();
            registry_grant(who, s, &shared, over, &Courses::new())
        };
        let alice = acc("alice", Role::Student, &["ai"]);
        assert_eq!(
            g(&alice, &repo("alice/app", "pull,push"), &[], false),
            ["pull", "push"]
        );
        assert_eq!(
            g(&alice, &repo("alice/team/app", "push"), &[], false),
            ["push"]
        );
        assert!(g(&alice, &repo("bob/app", "pull,push"), &[], false).is_empty());
        assert!(
            g(&alice, &repo("alicex/app", "pull"), &[], false).is_empty(),
            "matched per component, not prefix"
        );
        assert!(
            g(&alice, &repo("alice", "push"), &[], false).is_empty(),
            "a bare name is no namespace"
        );
        assert_eq!(
            g(&alice, &repo("bob/app", "pull,push"), &["alice"], false),
            ["pull"]
        );
        assert_eq!(
            g(&alice, &repo("bob/app", "pull,push"), &["ai"], false),
            ["pull"]
        );
        assert_eq!(
            g(&alice, &repo("library/python", "pull,push"), &[], false),
            ["pull"]
        );
        assert_eq!(
            g(&alice, &repo("alice/app", "pull,push"), &[], true),
            ["pull"]
        );
        assert!(
            g(&alice, &repo("alice/app", "delete,*"), &[], false).is_empty(),
            "never delete or * to users"
        );
        assert!(g(&alice, &Scope::Catalog, &[], false).is_empty());
        let lib = acc("library", Role::Student, &[]);
        assert!(
            g(&lib, &repo("library/x", "push"), &[], false).is_empty(),
            "a reserved name owns nothing"
        );
        let admin = acc("admin", Role::Admin, &[]);
        assert_eq!(
            g(&admin, &repo("bob/app", "pull,push,delete"), &[], false),
            ["pull", "push", "delete"]
        );
        assert_eq!(g(&admin, &Scope::Catalog, &[], false), ["*"]);
    }
}
