//! Slow commands: acknowledged at once, answered later through the
//! response_url (or a DM, or the outbox), and resumed after a crash.

use std::time::Duration;

use shisa::store::queue::ReplyTarget;
use shisa::work::tasks::Task;

use crate::harness::{FakeMattermost, Opts, Stack};

#[tokio::test]
async fn container_info_is_acknowledged_then_answered_from_real_podman() {
    let s = Stack::start(Opts {
        podman: true,
        ..Default::default()
    })
    .await;
    let r = s.chat("alice", "/container info").await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(!r[0].is_final() && r[0].text.contains("Working on `/container info`"));
    assert!(r[1].is_final());
    assert!(
        r[1].text.contains("`local`: up, Podman 4."),
        "{}",
        r[1].text
    );
    assert_eq!(
        r[0].props["shisa"]["request"],
        r[1].props["shisa"]["request"]
    );
    let rid = r[0].props["shisa"]["request"].as_str().unwrap().to_string();
    wait_done(&s.store(), &rid).await;
    assert_eq!(
        s.store().task_state(&rid).unwrap(),
        Some(("done".into(), 1))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_blade_that_is_down_is_reported() {
    let s = Stack::start(Opts::default()).await;
    let t = s.say("alice", "/container info").await;
    // Down, and why stays with the admins (logs, metrics): no socket path, no Podman words.
    assert!(
        t.contains("`local`: **down**") && !t.contains("Podman API") && !t.contains(".sock"),
        "{t}"
    );
    s.stop().await;
}

#[tokio::test]
async fn response_url_use_limit_then_outbox() {
    let s = Stack::start(Opts::default()).await;
    let store = s.store();
    let url = "http://127.0.0.1:9/hooks/commands/used";
    for _ in 0..5 {
        assert!(store.take_response_url(url).await.unwrap());
    }
    assert!(
        !store.take_response_url(url).await.unwrap(),
        "a sixth use is refused"
    );
    // An expired URL (30 minutes) is not used either.
    store.with(|c| c.execute("INSERT INTO response_urls(url, first_seen, uses) VALUES ('http://127.0.0.1:9/old', 0, 0)", [])).unwrap();
    store.with(|c| c.execute("UPDATE response_urls SET first_seen = strftime('%s','now') - 1800 WHERE url = 'http://127.0.0.1:9/old'", [])).unwrap();
    assert!(!store
        .take_response_url("http://127.0.0.1:9/old")
        .await
        .unwrap());
    // A job whose response_url is used up lands in the outbox, which `shisa chat --inbox` shows.
    enqueue_info(&store, "req-outbox", Some(url.into())).await;
    wait_done(&store, "req-outbox").await;
    // The task is recorded as ended just before its answer goes out.
    let mut msgs = Vec::new();
    for _ in 0..100 {
        msgs = store.outbox_take("alice").unwrap();
        if !msgs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].message.contains("Blades:"));
    assert!(
        store.outbox_take("alice").unwrap().is_empty(),
        "read messages are not shown again"
    );
    s.stop().await;
}

#[tokio::test]
async fn with_a_bot_token_notices_go_by_direct_message() {
    let (fake, url) = FakeMattermost::start("bot-secret", vec![]).await;
    let s = Stack::start(Opts {
        mattermost_url: Some(url),
        bot_token: Some("bot-secret".into()),
        ..Default::default()
    })
    .await;
    enqueue_info(&s.store(), "req-dm", None).await;
    wait_done(&s.store(), "req-dm").await;
    // The task is recorded as ended just before its answer goes out; give it a moment.
    for _ in 0..100 {
        if !fake.posts.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let posts = fake.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0]["channel_id"], "dm-alice0000000000000000000aa");
    assert_eq!(posts[0]["props"]["shisa"]["final"], true);
    s.stop().await;
}

#[tokio::test]
async fn work_acknowledged_before_a_crash_is_finished_after_the_restart() {
    let data_dir = tempfile::tempdir_in(crate::harness::run_root())
        .unwrap()
        .keep();
    let cfg_path = data_dir.with_extension("toml");
    std::fs::write(
        &cfg_path,
        crate::harness::config_text(&Opts::default(), &data_dir),
    )
    .unwrap();
    // A previous run acknowledged a request and had claimed it when it died.
    let store = shisa::store::Store::open(&data_dir.join("shisa.db")).unwrap();
    let (url, mut rx) = receiver().await;
    enqueue_info(&store, "req-crash", Some(url)).await;
    let (claimed, _) = store.claim("quick", 2).await.unwrap().unwrap();
    assert_eq!(claimed.request_id, "req-crash");
    assert_eq!(
        store.task_state("req-crash").unwrap(),
        Some(("running".into(), 1))
    );
    drop(store);
    // The restart recovers it and answers the user.
    let s = Stack::start_with(&cfg_path, data_dir).await;
    let reply = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["props"]["shisa"]["request"], "req-crash");
    assert_eq!(reply["props"]["shisa"]["final"], true);
    wait_done(&s.store(), "req-crash").await;
    assert_eq!(
        s.store().task_state("req-crash").unwrap(),
        Some(("done".into(), 2))
    );
    s.stop().await;
}

async fn enqueue_info(store: &shisa::store::Store, rid: &str, response_url: Option<String>) {
    store
        .enqueue(Task::Info {}.owned(
            "alice",
            rid,
            Some(ReplyTarget {
                response_url,
                channel_id: None,
                mm_user_id: Some("alice0000000000000000000aa".into()),
                uid: "alice".into(),
                command: "/container".into(),
                sub: "info".into(),
            }),
            3,
        ))
        .await
        .unwrap();
}

async fn wait_done(store: &shisa::store::Store, rid: &str) {
    for _ in 0..200 {
        if store
            .task_state(rid)
            .unwrap()
            .is_some_and(|(s, _)| s == "done" || s == "failed")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {rid} did not finish");
}

/// A loopback response_url receiver.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use axum::extract::State;
    use axum::Json;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    async fn h(
        State(tx): State<tokio::sync::mpsc::UnboundedSender<serde_json::Value>>,
        Json(v): Json<serde_json::Value>,
    ) -> &'static str {
        let _ = tx.send(v);
        "ok"
    }
    let app = axum::Router::new()
        .route("/hooks/commands/{id}", axum::routing::post(h))
        .with_state(tx);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/commands/abc", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, rx)
}
