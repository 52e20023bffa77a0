//! Identities from the static file and from a real slapd agree, and LDAP
//! filters are escaped.

use shisa::config::Config;
use shisa::identity::directory::Directory;
use shisa::identity::Role;

use crate::harness::{config_text, demo_users, run_root, shared_data_dir, Dir, Opts};

fn directory(d: Dir) -> std::sync::Arc<dyn Directory> {
    let o = Opts {
        directory: d,
        ..Default::default()
    };
    let p = tempfile::NamedTempFile::new_in(run_root())
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::write(&p, config_text(&o, &shared_data_dir())).unwrap();
    let cfg = Config::load(&p).unwrap();
    shisa::identity::directory::from_config(&cfg).unwrap()
}

#[tokio::test]
async fn static_and_ldap_directories_agree_on_every_demo_user() {
    let st = directory(Dir::Static);
    let ld = directory(Dir::Ldap);
    for u in &demo_users().users {
        let a = st.lookup(&u.uid).await.unwrap().expect("static user");
        let mut b = ld.lookup(&u.uid).await.unwrap().expect("LDAP user");
        // Only the directory has entries with DNs.
        assert_eq!(
            b.dn.take().as_deref(),
            Some(format!("uid={},ou=people,dc=example,dc=edu", u.uid).as_str())
        );
        assert_eq!(a, b, "{}", u.uid);
        assert_eq!(a.home, shared_data_dir().join("home").join(&u.uid));
    }
    let alice = ld.lookup("alice").await.unwrap().unwrap();
    assert_eq!((alice.uid_number, alice.role), (20001, Role::Student));
    assert_eq!(alice.groups, vec!["ai-course", "students"]);
    assert_eq!(
        ld.lookup("sensei").await.unwrap().unwrap().role,
        Role::Instructor
    );
    assert_eq!(ld.lookup("admin").await.unwrap().unwrap().role, Role::Admin);
    assert_eq!(ld.lookup("nobody").await.unwrap(), None);
    assert_eq!(st.lookup("nobody").await.unwrap(), None);
    let mut members = ld.members("ai-course").await.unwrap();
    members.sort();
    assert_eq!(members, vec!["alice", "carol", "sensei"]);
}

#[tokio::test]
async fn ldap_filters_are_escaped() {
    // Bypass the account-name check to show the LDAP layer itself is safe.
    let l = crate::harness::slapd();
    let cfg = shisa::config::Ldap {
        url: l.url.clone(),
        starttls: false,
        tls_insecure: false,
        bind_dn: l.bind_dn.clone(),
        bind_password: shisa::config::Secret::new(l.password.clone()),
        base_dn: l.base_dn.clone(),
        user_filter: "(&(objectClass=posixAccount)(uid={uid}))".into(),
        group_base_dn: l.base_dn.clone(),
        group_filter: "(&(objectClass=posixGroup)(memberUid={uid}))".into(),
        attributes: Default::default(),
        timeout_seconds: 3,
    };
    let d = shisa::identity::ldap::LdapDirectory::new(&cfg, shisa::config::Roles::default());
    for evil in ["*", "a*", "alice)(uid=*", "*)(objectClass=*"] {
        assert_eq!(d.lookup(evil).await.unwrap(), None, "{evil}");
    }
    assert!(d.lookup("alice").await.unwrap().is_some());
}

#[tokio::test]
async fn passwords_checked_by_bind_and_empty_refused() {
    let ld = directory(Dir::Ldap);
    assert!(ld.verify_password("alice", "alice-demo").await.unwrap());
    assert!(!ld.verify_password("alice", "wrong").await.unwrap());
    assert!(
        !ld.verify_password("alice", "").await.unwrap(),
        "an empty password is an anonymous bind, never a login"
    );
    assert!(!ld.verify_password("nobody", "x").await.unwrap());
}
