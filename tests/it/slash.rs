//! `POST /hooks/mattermost` end to end, driven the way Mattermost drives it.

use crate::harness::{form, FakeMattermost, Opts, Stack, TOKEN, TOKEN2};

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn alice_form(token: &str, text: &str) -> String {
    form(&[
        ("channel_id", "chan"),
        ("command", "/container"),
        ("response_url", "http://127.0.0.1:9/hooks/commands/x"),
        ("text", text),
        ("token", token),
        ("user_id", "alice0000000000000000000aa"),
        ("user_name", "alice"),
    ])
}

async fn post(stack: &Stack, body: String, auth: Option<&str>) -> reqwest::Response {
    let mut r = http()
        .post(stack.url("/hooks/mattermost"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn tokens_verified_in_form_or_header_and_failures_record_nothing() {
    let s = Stack::start(Opts::default()).await;
    // Form token, either of the configured ones (one per slash command, rotation).
    for t in [TOKEN, TOKEN2] {
        let r = post(&s, alice_form(t, "help"), None).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-request-id").is_some());
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["response_type"], "ephemeral");
        assert_eq!(v["props"]["shisa"]["final"], true);
        assert!(v["text"].as_str().unwrap().contains("/container run"));
    }
    // Header token only.
    let r = post(
        &s,
        alice_form("", "help").replace("token=&", ""),
        Some(&format!("Token {TOKEN}")),
    )
    .await;
    assert_eq!(r.status(), 200);
    let before = s.store().audit_entries(None).unwrap().len();
    // Wrong, missing, and a prefix of the right one.
    for (body, auth) in [
        (alice_form("wrong", "help"), None),
        (alice_form("", "help"), None),
        (alice_form(&TOKEN[..5], "help"), Some("Token nope")),
        (
            alice_form("wrong", "help"),
            Some("Bearer test-container-token"),
        ),
    ] {
        let r = post(&s, body, auth).await;
        assert_eq!(r.status(), 401);
    }
    assert_eq!(
        s.store().audit_entries(None).unwrap().len(),
        before,
        "a request with a bad token records nothing"
    );
    s.stop().await;
}

#[tokio::test]
async fn malformed_and_oversize_bodies() {
    let s = Stack::start(Opts::default()).await;
    let r = post(&s, form(&[("token", TOKEN), ("text", "help")]), None).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("user_id"));
    let big = alice_form(TOKEN, &"x".repeat(100 * 1024));
    assert_eq!(post(&s, big, None).await.status(), 413);
    let long = alice_form(TOKEN, &"x".repeat(5000));
    assert_eq!(post(&s, long, None).await.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn the_reconstructed_mattermost_form_with_repeated_mention_keys() {
    let body = std::fs::read_to_string(
        crate::harness::repo()
            .join("tests/fixtures/mattermost/slash_command_request.reconstructed.form"),
    )
    .unwrap();
    let s = Stack::start(Opts {
        tokens: vec!["okwexkjpe7ygb8eq1ww58t483w".into()],
        ..Default::default()
    })
    .await;
    // Its user is not a department account, and /test is not our command: a clear answer, 200.
    let r = post(&s, body.trim().to_string(), None).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("`/test`") && text.contains("/container"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn users_roles_and_answers() {
    let s = Stack::start(Opts::default()).await;
    let t = s.say("alice", "/container whoami").await;
    assert!(
        t.contains("`alice` (uid 20001, gid 20001), role **student**"),
        "{t}"
    );
    // The home directory is created on first use, as its owner, 0700.
    let home = s.data_dir.join("home/alice");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(&home).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((m.uid(), m.gid()), (20001, 20001));
    }
    assert!(s
        .say("sensei", "/job whoami")
        .await
        .contains("role **instructor**"));
    assert!(s
        .say("admin", "/container whoami")
        .await
        .contains("role **admin**"));
    // Japanese-keyboard input.
    assert!(s
        .say("bob", "/container ｗｈｏａｍｉ")
        .await
        .contains("`bob`"));
    // Unknown user.
    let t = s.say("mallory", "/container whoami").await;
    assert!(
        t.contains("not linked") && t.contains("the test admins"),
        "{t}"
    );
    // Bad input: the reply explains, nothing is queued.
    let t = s.say("alice", "/container rnu myimg").await;
    assert!(t.contains("Did you mean `run`?"), "{t}");
    let t = s.say("alice", "/container run --memory lots myimg").await;
    assert!(t.contains("`lots`") && t.contains("8G"), "{t}");
    let t = s.say("alice", "/job submit --image x").await;
    assert!(t.contains("`--script` or `-- CMD`"), "{t}");
    // No Slurm on this server: says so, and whom to ask.
    let t = s
        .say("alice", "/job submit --image myimg -- python3 train.py")
        .await;
    assert!(
        t.contains("not set up on this server") && t.contains("the test admins"),
        "{t}"
    );
    // Templates from the config.
    let t = s.say("alice", "/container templates").await;
    assert!(t.contains("`busybox`") && t.contains("512M"), "{t}");
    assert_eq!(s.store().queue_depth().await.unwrap(), (0, 0));
    s.stop().await;
}

#[tokio::test]
async fn the_audit_trail_records_who_did_what_and_how_it_ended() {
    let s = Stack::start(Opts::default()).await;
    s.say("alice", "/container whoami").await;
    s.say("alice", "/container run --memory lots x").await;
    s.say("mallory", "/container ps").await;
    s.say("bob", "/container help run").await;
    let rows = s.store().audit_entries(None).unwrap();
    let view: Vec<_> = rows
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        view,
        vec![
            ("alice", "container.whoami", "ok"),
            ("alice", "container.?", "rejected"),
            ("mattermost:demo-mallory", "identify", "denied"),
            ("bob", "container.help", "ok"),
        ]
    );
    assert_eq!(rows[0].role, "student");
    assert_eq!(rows[1].detail.as_deref(), Some("grammar.bad_value"));
    assert!(rows
        .iter()
        .all(|r| r.request_id.as_deref().is_some_and(|id| id.len() >= 32)));
    s.stop().await;
}

#[tokio::test]
async fn metrics_and_health() {
    let s = Stack::start(Opts::default()).await;
    s.say("alice", "/container whoami").await;
    post(&s, alice_form("wrong", "help"), None).await;
    assert_eq!(
        http().get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let m = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shisa_http_requests_total{route=\"/hooks/mattermost\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("shisa_http_requests_total{route=\"/hooks/mattermost\",status=\"401\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("shisa_command_duration_seconds_count{command=\"container\"} 1"),
        "{m}"
    );
    assert!(m.contains("shisa_queue_jobs{state=\"queued\"} 0"), "{m}");
    s.stop().await;
    // Behind the (trusted) proxy, a client elsewhere is refused; with a token configured,
    // only the bearer of it is answered.
    let s = Stack::start(Opts {
        server_extra: "trusted_proxies = [\"127.0.0.1\"]\n".into(),
        ..Default::default()
    })
    .await;
    let via_proxy = http()
        .get(s.url("/metrics"))
        .header("X-Forwarded-For", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(via_proxy.status(), 403);
    assert_eq!(
        http().get(s.url("/metrics")).send().await.unwrap().status(),
        200
    );
    s.stop().await;
    let s = Stack::start(Opts {
        server_extra: "metrics_token = \"scrape-secret\"\n".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        http().get(s.url("/metrics")).send().await.unwrap().status(),
        403
    );
    let ok = http()
        .get(s.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn mattermost_ldap_linking_asks_mattermost_and_links_by_user_id() {
    let users = vec![
        serde_json::json!({"id": "alice0000000000000000000aa", "username": "alice", "auth_service": "ldap", "auth_data": "alice"}),
        serde_json::json!({"id": "bob000000000000000000000bb", "username": "bob", "auth_service": "", "auth_data": null}),
    ];
    let (fake, url) = FakeMattermost::start("bot-secret", users).await;
    let s = Stack::start(Opts {
        mattermost_url: Some(url),
        bot_token: Some("bot-secret".into()),
        ldap_linking: true,
        directory: crate::harness::Dir::Ldap,
        ..Default::default()
    })
    .await;
    assert!(s
        .say("alice", "/container whoami")
        .await
        .contains("`alice` (uid 20001"));
    // Linked by id: a renamed Mattermost user stays alice.
    fake.users.lock().unwrap()[0]["username"] = "alice-renamed".into();
    let id = shisa::cli::chat::demo_user_id(&crate::harness::demo_users(), "alice");
    let r = shisa::cli::chat::send(
        &s.cfg,
        "alice-renamed",
        &id,
        "/container whoami",
        std::time::Duration::from_secs(10),
        |_| {},
    )
    .await
    .unwrap();
    assert!(r[0].text.contains("`alice` (uid 20001"));
    // Not an LDAP login: refused with a reason.
    let t = s.say("bob", "/container whoami").await;
    assert!(
        t.contains("does not sign in through the department directory"),
        "{t}"
    );
    s.stop().await;
}
