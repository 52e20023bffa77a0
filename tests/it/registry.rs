//! The department registry with a real docker-registry whose token realm is
//! the shisa under test: namespaces, sharing, tokens, notifications, sync,
//! rmi, quotas.

use std::process::Output;
use std::time::Duration;

use crate::harness::{free_port, registry, run_root, Opts, Stack, NOTIFY_TOKEN};

struct Env {
    s: Stack,
    host: String,
}

impl Env {
    /// `podman` against the harness's storage, with one auth file per user.
    fn podman(&self, user: &str, args: &[&str]) -> Output {
        let sock = crate::harness::podman();
        let dir = sock.parent().unwrap();
        let auth = run_root().join(format!("auth-{}-{user}.json", self.host.replace(':', "_")));
        std::process::Command::new("podman")
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .arg(args[0])
            .args(if args[0] == "tag" {
                vec![]
            } else {
                vec!["--authfile".to_string(), auth.display().to_string()]
            })
            .args(&args[1..])
            .output()
            .unwrap()
    }
    fn login(&self, user: &str, password: &str) -> Output {
        self.podman(
            user,
            &[
                "login",
                "--tls-verify=false",
                "-u",
                user,
                "-p",
                password,
                &self.host,
            ],
        )
    }
    fn push(&self, user: &str, reference: &str) -> Output {
        let full = format!("{}/{reference}", self.host);
        let t = self.podman(user, &["tag", "localhost/busybox:latest", &full]);
        assert!(t.status.success());
        self.podman(user, &["push", "--tls-verify=false", &full])
    }
    fn pull(&self, user: &str, reference: &str) -> Output {
        self.podman(
            user,
            &[
                "pull",
                "--tls-verify=false",
                &format!("{}/{reference}", self.host),
            ],
        )
    }
}

async fn env(extra: &str, users_file: Option<std::path::PathBuf>) -> Env {
    env_with(extra, users_file, "").await
}

async fn env_with(extra: &str, users_file: Option<std::path::PathBuf>, server: &str) -> Env {
    crate::harness::test_images();
    let port = free_port();
    let reg = registry(port);
    let extra = format!("{}\n{}", reg.toml, extra);
    let s = Stack::start(Opts {
        podman: true,
        listen_port: Some(port),
        extra,
        users_file,
        server_extra: server.to_string(),
        ..Default::default()
    })
    .await;
    Env {
        s,
        host: format!("127.0.0.1:{}", reg.port),
    }
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn wait_for_image(s: &Stack, repo: &str, tag: &str, present: bool) {
    for _ in 0..100 {
        if s.store().image(repo, tag).await.unwrap().is_some() == present {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("image {repo}:{tag} present={present} not reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_sharing_tokens_notifications_sync_and_rmi() {
    let e = env("", None).await;
    let s = &e.s;
    // alice logs in with her directory password and pushes into her namespace.
    assert!(ok(&e.login("alice", "alice-demo")), "login");
    assert!(!ok(&e.login("alice", "wrong")), "a wrong password fails");
    let p = e.push("alice", "alice/app:1");
    assert!(ok(&p), "push alice/app:1: {}", err(&p));
    // Not into bob's.
    let p = e.push("alice", "bob/app:1");
    assert!(!ok(&p), "alice must not push bob/app:1");
    assert!(s
        .store()
        .audit_entries(Some("alice"))
        .unwrap()
        .iter()
        .any(|a| a.action == "registry.token"
            && a.outcome == "denied"
            && a.resource.as_deref() == Some("repository:bob/app")));
    // bob pushes his; alice cannot pull it until he shares it with her.
    assert!(ok(&e.login("bob", "bob-demo")));
    assert!(ok(&e.push("bob", "bob/app:1")));
    assert!(!ok(&e.pull("alice", "bob/app:1")), "unshared: refused");
    wait_for_image(s, "bob/app", "1", true).await;
    let t = s
        .say(
            "bob",
            "/container share app --with alice --description \"busybox for the lab\"",
        )
        .await;
    assert!(t.contains("shared with: alice"), "{t}");
    let p = e.pull("alice", "bob/app:1");
    assert!(ok(&p), "shared: pull works: {}", err(&p));
    let t = s.say("alice", "/container images --shared").await;
    assert!(
        t.contains("`bob/app` | `1`") && t.contains("busybox for the lab"),
        "{t}"
    );
    // The image table followed the pushes (notifications).
    wait_for_image(s, "alice/app", "1", true).await;
    let t = s.say("alice", "/container images").await;
    assert!(
        t.contains("`alice/app` | `1`") && t.contains("Registry use:"),
        "{t}"
    );
    // Run it through shisa: the blade pulls it with a credential for that repository only.
    let t = s
        .say(
            "alice",
            "/container run --name from-reg bob/app:1 -- sleep 600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    s.say("alice", "/container rm --force from-reg").await;
    // Her SIF of it: readable by her and bob, until he unshares it.
    let r = s.chat("alice", "/container sif bob/app:1").await;
    let t = &r.last().unwrap().text;
    assert!(t.contains("as a Singularity image"), "{r:?}");
    let content = std::fs::canonicalize(s.data_dir.join("sif/alice/app_1.sif")).unwrap();
    let link = t
        .split_whitespace()
        .find(|w| w.contains("/sif/") && w.contains("sig="))
        .unwrap_or_else(|| panic!("no download link in {t}"))
        .to_string();
    assert_eq!(reqwest::get(&link).await.unwrap().status(), 200);
    assert_eq!(
        shisa::sif::acl::readers(&content).unwrap(),
        std::collections::BTreeSet::from([20001, 20002])
    );
    // Unshared again: run re-checks, even though the blade holds the image now.
    s.say("bob", "/container unshare app").await;
    assert_eq!(
        shisa::sif::acl::readers(&content).unwrap(),
        std::collections::BTreeSet::from([20002]),
        "alice no longer reads the SIF she made of bob's image"
    );
    assert_ne!(
        reqwest::get(&link).await.unwrap().status(),
        200,
        "nor downloads it with the link she was given before"
    );
    let t = s.say("alice", "/container run bob/app:1").await;
    assert!(t.contains("There is no image `bob/app:1`"), "{t}");
    // Personal tokens: shown once, work for login, stop working when revoked.
    let t = s.say("alice", "/container token new").await;
    let secret = t
        .split_whitespace()
        .find(|w| w.starts_with("shisa_"))
        .unwrap()
        .to_string();
    assert!(
        ok(&e.login("alice", &secret)),
        "login with a personal token"
    );
    assert!(s
        .say("alice", "/container token list")
        .await
        .contains("| active, expires in "));
    let id = secret.split('_').nth(1).unwrap();
    assert!(s
        .say("alice", &format!("/container token revoke {id}"))
        .await
        .contains("revoked"));
    let o = e.login("alice", &secret);
    assert!(!ok(&o), "a revoked token stops working");
    // The token endpoint's own answer: 401 in the registry's error form.
    let r = reqwest::Client::new()
        .get(s.url("/registry/token?service=shisa-registry&scope=repository:alice/app:pull"))
        .basic_auth("alice", Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    let r = reqwest::Client::new()
        .get(s.url("/registry/token?scope=repository:Alice/..:pull"))
        .basic_auth("alice", Some("alice-demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "malformed scope");
    // Forged and replayed notifications change nothing.
    let forged = serde_json::json!({"events": [{"id": "f1", "action": "delete", "target": {"repository": "alice/app", "digest": "sha256:00", "mediaType": "application/vnd.oci.image.manifest.v1+json"}}]});
    let r = reqwest::Client::new()
        .post(s.url("/hooks/registry"))
        .header("authorization", "Bearer nope")
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The sync repairs a notification that never arrived.
    s.store().delete_image_tag("alice/app", "1").await.unwrap();
    wait_for_image(s, "alice/app", "1", true).await;
    // rmi removes the manifest from the registry, and the record.
    let t = s.say("alice", "/container rmi app:1").await;
    assert!(t.contains("Deleted `alice/app`"), "{t}");
    assert!(s.store().image("alice/app", "1").await.unwrap().is_none());
    assert!(!ok(&e.pull("alice", "alice/app:1")), "the manifest is gone");
    // bob cannot rmi alice's; a replayed delete of bob's does nothing twice.
    assert!(s
        .say("alice", "/container rmi bob/app:1")
        .await
        .contains("There is no image"));
    let img = s.store().image("bob/app", "1").await.unwrap().unwrap();
    let ev = serde_json::json!({"events": [{"id": "evt-bob-del", "action": "delete", "target": {"repository": "bob/app", "digest": img.digest}}]});
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(s.url("/hooks/registry"))
            .header("authorization", NOTIFY_TOKEN)
            .json(&ev)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        s.store().image("bob/app", "1").await.unwrap().is_none(),
        "a delete notification removes the record"
    );
    e.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_reserved_names() {
    // A user named like a reserved namespace gains nothing.
    let mut users =
        std::fs::read_to_string(crate::harness::repo().join("deploy/demo-users.toml")).unwrap();
    users.push_str("\n[[users]]\nuid = \"library\"\nuid_number = 20099\ngid_number = 20099\nname = \"Sneaky\"\nmail = \"l@example.edu\"\ndemo_password = \"lib-demo\"\n");
    let uf = run_root().join(format!("users-{}.toml", free_port()));
    std::fs::write(&uf, users).unwrap();
    let e = env("[limits.student]\nregistry_bytes = \"100K\"\n", Some(uf)).await;
    let s = &e.s;
    assert!(ok(&e.login("library", "lib-demo")));
    assert!(
        !ok(&e.push("library", "library/python:3")),
        "`library` is the admins', not a user's"
    );
    // alice's first push fits; then she is over quota and can no longer push.
    assert!(ok(&e.login("alice", "alice-demo")));
    assert!(ok(&e.push("alice", "alice/big:1")));
    wait_for_image(s, "alice/big", "1", true).await;
    let p = e.push("alice", "alice/more:1");
    assert!(
        !ok(&p),
        "over quota: push refused; usage {:?}: {}",
        s.store().registry_usage("alice").await,
        String::from_utf8_lossy(&p.stderr)
    );
    let t = s.say("alice", "/container images").await;
    assert!(
        t.contains("Registry use: ") && t.contains(" of 100K."),
        "{t}"
    );
    let mut dm = Vec::new();
    for _ in 0..50 {
        dm.extend(s.store().outbox_take("alice").unwrap());
        if !dm.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dm.iter().any(|m| m.message.contains("pushing is paused")),
        "{dm:?}"
    );
    // Pull still works when over quota.
    assert!(ok(&e.pull("alice", "alice/big:1")));
    e.s.stop().await;
}

/// The cross-user matrix: alice owns a running container, a registry image, its SIF and a
/// project with shisa builds; bob tries every command on each of them (and the new paths:
/// builds, CI tokens, course listings, SIF links after an unshare). Each is refused in the
/// words that say "not found or not yours", is audited as refused, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_user_matrix_every_command_on_another_users_things() {
    use crate::gitlab::{FakeGitlab, FakeProject, FakeState};
    use std::collections::HashMap;
    let sha = "a1a1a1a1b2b2b2b2c3c3c3c3d4d4d4d4e5e5e5e5";
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (102, "bob".into())],
        projects: vec![
            FakeProject {
                id: 7,
                path: "alice/MyModel".into(),
                members: HashMap::from([("alice".to_string(), 40), ("bob".to_string(), 30)]),
                archives: HashMap::new(),
            },
            FakeProject {
                id: 8,
                path: "bob/tool".into(),
                members: HashMap::from([("bob".to_string(), 40)]),
                archives: HashMap::new(),
            },
        ],
        // bob's CI jobs: one in alice's project on a branch, one in his own (not enabled).
        job_tokens: HashMap::from([
            (
                "bob-in-alices".to_string(),
                (
                    901,
                    7,
                    "bob".to_string(),
                    "running".to_string(),
                    sha.to_string(),
                ),
            ),
            (
                "bob-in-his".to_string(),
                (
                    902,
                    8,
                    "bob".to_string(),
                    "running".to_string(),
                    sha.to_string(),
                ),
            ),
        ]),
        job_refs: HashMap::from([("bob-in-alices".to_string(), "feature".to_string())]),
        ..Default::default()
    })
    .await;
    let e = env(&crate::gitlab::gitlab_toml(&fake.url, 15), None).await;
    let s = &e.s;
    // alice's things.
    let t = s
        .say(
            "alice",
            "/container run --name own --port 8080 localhost/busybox -- httpd -f -p 8080",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    assert!(ok(&e.login("alice", "alice-demo")));
    assert!(ok(&e.push("alice", "alice/app:1")));
    wait_for_image(s, "alice/app", "1", true).await;
    let r = s.chat("alice", "/container sif app:1").await;
    let sif_reply = r.last().unwrap().text.clone();
    let link = sif_reply
        .split_whitespace()
        .find(|w| w.contains("/sif/") && w.contains("sig="))
        .unwrap_or_else(|| panic!("{sif_reply}"))
        .to_string();
    assert!(s
        .say("alice", "/container build enable alice/MyModel")
        .await
        .contains("Builds are on"));
    let rows = || async {
        s.store()
            .containers_of(vec!["alice".to_string()], true)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.state, c.podman_id))
            .collect::<Vec<_>>()
    };
    let before = (
        rows().await,
        s.say("alice", "/container images").await,
        s.say("alice", "/container build status").await,
    );
    // bob, on each of them.
    let nothing = |name: &str| format!("You have no container called `{name}`");
    let cases: Vec<(&str, String)> = vec![
        ("/container stop own", nothing("own")),
        ("/container start own", nothing("own")),
        ("/container logs own", nothing("own")),
        ("/container inspect own", nothing("own")),
        ("/container exec own -- id", nothing("own")),
        ("/container rm --force own", nothing("own")),
        ("/container ps --user alice", "for admins".into()),
        (
            "/container ps --group ai-course",
            "instructors of that group".into(),
        ),
        (
            "/container run alice/app:1",
            "There is no image `alice/app:1`".into(),
        ),
        (
            "/container sif alice/app:1",
            "There is no image `alice/app:1`".into(),
        ),
        (
            "/container rmi alice/app:1",
            "There is no image `alice/app:1`".into(),
        ),
        (
            "/container unshare alice/app",
            "There is no image `alice/app`".into(),
        ),
        (
            "/container share alice/app --with bob",
            "There is no image `alice/app`".into(),
        ),
        (
            "/container build run alice/MyModel",
            "has no shisa builds to change (or they are not yours)".into(),
        ),
        (
            "/container build disable alice/MyModel",
            "has no shisa builds to change (or they are not yours)".into(),
        ),
        ("/container build enable alice/MyModel", "Maintainer".into()),
    ];
    for (cmd, want) in &cases {
        let t = s.say("bob", cmd).await;
        assert!(t.contains(want.as_str()), "bob: {cmd}: {t}");
    }
    // Course listings: an instructor sees only the courses they are named for.
    let t = s.say("sensei", "/container ps --group students").await;
    assert!(t.contains("instructors of that group"), "{t}");
    // The registry: bob's token gets no pull of alice's repository.
    assert!(ok(&e.login("bob", "bob-demo")));
    assert!(!ok(&e.pull("bob", "alice/app:1")), "bob pulls alice/app");
    // CI tokens: bob's job on a branch of alice's project, and in a project shisa does not build.
    for (token, code) in [("bob-in-alices", 403), ("bob-in-his", 403)] {
        let r = reqwest::Client::new()
            .post(s.url("/ci/token"))
            .header("JOB-TOKEN", token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code, "{token}");
    }
    // alice's SIF link, re-signed for bob: refused; a link for bob's own unshared-from image
    // stops working at the unshare (registry::namespaces_sharing_… checks it, and here).
    let as_bob = link.replace("user=alice", "user=bob");
    assert_ne!(reqwest::get(&as_bob).await.unwrap().status(), 200);
    // (Content of bob's own: a SIF of the same content as alice's own image stays hers.)
    crate::gitlab::bob_private_image();
    let full = format!("{}/bob/lab:1", e.host);
    assert!(ok(&e.podman(
        "bob",
        &["tag", "localhost/bob/bob-thesis:latest", &full]
    )));
    assert!(ok(&e.podman("bob", &["push", "--tls-verify=false", &full])));
    wait_for_image(s, "bob/lab", "1", true).await;
    assert!(s
        .say("bob", "/container share lab --with alice")
        .await
        .contains("shared with: alice"));
    let r = s.chat("alice", "/container sif bob/lab:1").await;
    let t = r.last().unwrap().text.clone();
    let shared_link = t
        .split_whitespace()
        .find(|w| w.contains("/sif/") && w.contains("sig="))
        .unwrap_or_else(|| panic!("{t}"))
        .to_string();
    assert_eq!(reqwest::get(&shared_link).await.unwrap().status(), 200);
    s.say("bob", "/container unshare lab").await;
    assert_ne!(reqwest::get(&shared_link).await.unwrap().status(), 200);
    // Nothing of alice's changed, and her own link still works.
    let after = (
        rows().await,
        s.say("alice", "/container images").await,
        s.say("alice", "/container build status").await,
    );
    assert_eq!(before.0, after.0);
    assert_eq!(before.2, after.2);
    assert!(after.1.contains("`alice/app` | `1`"), "{}", after.1);
    assert_eq!(reqwest::get(&link).await.unwrap().status(), 200);
    // Every refusal is on record as bob's, none as done.
    let audit = s.store().audit_entries(Some("bob")).unwrap();
    for (cmd, _) in &cases {
        let action = {
            let mut w = cmd.trim_start_matches('/').split_whitespace();
            let family = w.next().unwrap();
            format!("{family}.{}", w.next().unwrap())
        };
        assert!(
            audit
                .iter()
                .any(|a| a.action == action && a.outcome != "ok"),
            "{cmd}: {action} refused on record: {:?}",
            audit
                .iter()
                .map(|a| (&a.action, &a.outcome))
                .collect::<Vec<_>>()
        );
    }
    // Her image removed: its SIF goes with it (nobody else has a claim to it).
    let content = std::fs::canonicalize(s.data_dir.join("sif/alice/app_1.sif")).unwrap();
    let t = s.say("alice", "/container rmi app:1").await;
    assert!(t.contains("Deleted `alice/app`"), "{t}");
    assert!(!content.exists(), "the SIF of a removed image is gone");
    assert!(!s.data_dir.join("sif/alice/app_1.sif").exists());
    assert_ne!(reqwest::get(&link).await.unwrap().status(), 200);
    s.remove_all(&["alice"]).await;
    e.s.stop().await;
}

/// Nobody locks others out of the registry: after 50 bad logins (for alice and for made-up
/// names) from one address, a personal token and shisa's own pull credential from that same
/// address still work at once, and alice's correct password from her own address (named by
/// the trusted proxy) works too; only password guesses from that address are slowed. A burst
/// of made-up names leaves the failure map at its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_logins_cannot_be_locked_out_by_others() {
    let e = env_with("", None, "trusted_proxies = [\"127.0.0.1\"]\n").await;
    let s = &e.s;
    assert!(ok(&e.login("alice", "alice-demo")));
    assert!(ok(&e.push("alice", "alice/app:1")));
    wait_for_image(s, "alice/app", "1", true).await;
    let secret = s
        .say("alice", "/container token new")
        .await
        .split_whitespace()
        .find(|w| w.starts_with("shisa_"))
        .unwrap()
        .to_string();
    let token = |user: &str, password: &str, from: Option<&str>| {
        let mut r = reqwest::Client::new()
            .get(s.url("/registry/token?service=shisa-registry&scope=repository:alice/app:pull"))
            .basic_auth(user, Some(password));
        if let Some(a) = from {
            r = r.header("X-Forwarded-For", format!("10.0.0.1, {a}"));
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // The attacker, at 203.0.113.9 behind the proxy.
    let attacker = Some("203.0.113.9");
    let mut limited = 0;
    for i in 0..50 {
        let who = if i % 2 == 0 {
            "alice".to_string()
        } else {
            format!("nosuch{i}")
        };
        if token(&who, "guess", attacker).await == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "guesses from that address are slowed");
    assert_eq!(
        token("alice", "alice-demo", attacker).await,
        429,
        "even a right guess there"
    );
    // Everyone and everything else: at once.
    assert_eq!(
        token("alice", &secret, attacker).await,
        200,
        "a personal token"
    );
    assert_eq!(
        token("alice", "alice-demo", Some("198.51.100.7")).await,
        200,
        "alice's own address"
    );
    assert_eq!(
        token("bob", "bob-demo", Some("198.51.100.8")).await,
        200,
        "bob"
    );
    // Personal tokens: at most 5 live ones each, and each expires.
    for _ in 0..4 {
        assert!(s
            .say("alice", "/container token new")
            .await
            .contains("valid for 90d"));
    }
    let t = s.say("alice", "/container token new").await;
    assert!(t.contains("already have 5 active registry tokens"), "{t}");
    let id: i64 = secret.split('_').nth(1).unwrap().parse().unwrap();
    s.store()
        .with(|c| {
            c.execute(
                "UPDATE registry_tokens SET expires_at = 1 WHERE id = ?1",
                [id],
            )
        })
        .unwrap();
    assert_eq!(token("alice", &secret, None).await, 401, "an expired token");
    assert!(s
        .say("alice", "/container token list")
        .await
        .contains("| expired |"));
    assert!(
        s.say("alice", "/container token new")
            .await
            .contains("valid for 90d"),
        "room again"
    );
    // shisa's own pull credential (the blade's pull of alice's image), from 127.0.0.1.
    for i in 0..30 {
        token(&format!("x{i}"), "guess", None).await;
    }
    let t = s
        .say(
            "alice",
            "/container run --name pulled alice/app:1 -- sleep 60",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    s.say("alice", "/container rm --force pulled").await;
    // Made-up names, many: the map stays bounded.
    // Each failure holds two keys (account@address, address): 1200 of them pass the bound.
    for i in 0..1200 {
        token(&format!("r{i}"), "x", Some(&format!("192.0.2.{}", i % 250))).await;
    }
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let keys: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("shisa_registry_login_failure_keys "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(keys <= shisa::registry::MAX_FAILURE_KEYS as f64, "{keys}");
    e.s.stop().await;
}

/// Quotas count what the registry holds, not only recorded images: a layer uploaded without
/// a manifest counts at once (the registry's blob notification), so its owner gets no push
/// token; an image's own layers are not counted twice; a loose layer is unlinked after the
/// grace and pushing works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_uploads_count_against_the_quota_until_pruned() {
    use base64::Engine;
    use sha2::Digest;
    // The first line lands in `[registry]`.
    let e = env(
        "upload_grace_seconds = 3\n[limits.student]\nregistry_bytes = \"6M\"\n",
        None,
    )
    .await;
    let s = &e.s;
    assert!(ok(&e.login("alice", "alice-demo")));
    assert!(ok(&e.push("alice", "alice/app:1")));
    wait_for_image(s, "alice/app", "1", true).await;
    let image = s.store().image("alice/app", "1").await.unwrap().unwrap();
    let loose = |s: &Stack| {
        s.store()
            .with(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM registry_uploads WHERE owner = 'alice'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap()
    };
    assert_eq!(loose(s), 0, "the image's layers count with the image");
    assert_eq!(
        s.store().registry_usage("alice").await.unwrap(),
        image.size,
        "counted once"
    );
    // A push token for alice/loose, as any client gets one.
    let token = || async {
        let r: serde_json::Value = reqwest::Client::new()
            .get(s.url(
                "/registry/token?service=shisa-registry&scope=repository:alice/loose:pull,push",
            ))
            .basic_auth("alice", Some("alice-demo"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let jwt = r["token"].as_str().unwrap().to_string();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let actions: Vec<String> = claims["access"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        (jwt, actions)
    };
    let (jwt, actions) = token().await;
    assert!(actions.contains(&"push".to_string()), "{actions:?}");
    // 6 MB of layer, uploaded straight to the registry, and no manifest.
    let blob: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&blob)));
    let reg = format!("http://{}", e.host);
    let http = reqwest::Client::new();
    let started = http
        .post(format!("{reg}/v2/alice/loose/blobs/uploads/"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with('/') {
        format!("{reg}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = http
        .put(format!("{location}{sep}digest={digest}"))
        .bearer_auth(&jwt)
        .header("content-type", "application/octet-stream")
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201, "{:?}", put.text().await);
    let mut counted = false;
    for _ in 0..100 {
        if s.store().registry_usage("alice").await.unwrap() >= image.size + 6_000_000 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "the upload counts from its notification");
    let (_, actions) = token().await;
    assert!(
        !actions.contains(&"push".to_string()) && actions.contains(&"pull".to_string()),
        "over quota: pull, no push: {actions:?}"
    );
    // After the grace the sync unlinks it from the registry, and pushing works again.
    let mut pruned = false;
    for _ in 0..300 {
        if loose(s) == 0 {
            pruned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pruned, "the loose upload is pruned after the grace");
    let head = http
        .head(format!("{reg}/v2/alice/loose/blobs/{digest}"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 404, "unlinked in the registry");
    assert_eq!(s.store().registry_usage("alice").await.unwrap(), image.size);
    let (_, actions) = token().await;
    assert!(actions.contains(&"push".to_string()), "{actions:?}");
    // The image itself is untouched.
    assert!(ok(&e.pull("alice", "alice/app:1")));
    e.s.stop().await;
}
