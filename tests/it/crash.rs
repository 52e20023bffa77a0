//! Crash safety: `shisa serve` as a child process takes bursts of `/container
//! run` over HTTP exactly as Mattermost sends them (each with its own
//! `response_url`, served here), is killed with SIGKILL while runs are in
//! flight (early, mid, late in a burst), and restarted on the same data
//! directory. Every acknowledged request must end with a running container and
//! exactly one final reply carrying its port line; the blade, the database and
//! the leases must agree.
//!
//! `SHISA_CRASH_REQUESTS` sets the burst size per kill point (default 12, so 36
//! in all) and `SHISA_CRASH_POINTS` the kill points (default `early,mid,late`):
//! `SHISA_CRASH_REQUESTS=100 SHISA_CRASH_POINTS=mid` is the long run in docs/developers.

use shisa::podman::Podman as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use axum::{Json, Router};
use shisa::mattermost::Reply;

use crate::harness::{
    demo_users, form, free_port, podman, run_root, test_images, Opts, Stack, TOKEN,
};

/// Replies that came to the test's response URLs, by request key.
type Inbox = Arc<Mutex<HashMap<String, Vec<Reply>>>>;

async fn response_server() -> (Inbox, u16) {
    let inbox: Inbox = Default::default();
    async fn receive(
        State(inbox): State<Inbox>,
        UrlPath(key): UrlPath<String>,
        Json(r): Json<Reply>,
    ) -> &'static str {
        inbox.lock().unwrap().entry(key).or_default().push(r);
        "ok"
    }
    let router = Router::new()
        .route("/hooks/commands/{key}", post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (inbox, port)
}

struct Serve {
    cfg_path: std::path::PathBuf,
    log: std::path::PathBuf,
    port: u16,
}

impl Serve {
    fn start(&self) -> std::process::Child {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shisa"));
        // It dies with the test (PDEATHSIG), so a test binary killed halfway leaves no shisa behind.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&self.cfg_path)
            .env("SHISA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        child
    }
}

/// One slash command as Mattermost posts it; the immediate reply if it was acknowledged.
async fn post_command(port: u16, user: &str, text: &str, response_url: &str) -> Option<Reply> {
    let id = shisa::cli::chat::demo_user_id(&demo_users(), user);
    let body = form(&[
        ("channel_id", "crashchannel00000000000000"),
        ("channel_name", "town-square"),
        ("command", "/container"),
        ("response_url", response_url),
        ("team_domain", "demo"),
        ("team_id", "crashteam0000000000000000000"),
        ("text", text),
        ("token", TOKEN),
        ("trigger_id", "crash-trigger"),
        ("user_id", &id),
        ("user_name", user),
    ]);
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/hooks/mattermost"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<Reply>().await.ok()
}

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// As soon as the first request of the burst is acknowledged.
    Early,
    /// When a third of the burst has its final reply.
    Mid,
    /// When all but two have their final reply.
    Late,
}

#[tokio::test]
async fn sigkill_mid_burst_loses_no_acknowledged_run() {
    test_images();
    let n: usize = std::env::var("SHISA_CRASH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let users = ["alice", "bob", "carol"];
    let data_dir = tempfile::tempdir_in(run_root()).unwrap().keep();
    let port = free_port();
    let first_port = 63500;
    let blades = format!(
        "[[blades]]\nname = \"crashblade\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [{first_port}, {}]\n",
        podman().display().to_string(),
        first_port as usize + 3 * n + 20
    );
    let per_user = 3 * n / users.len() + 5;
    let o = Opts {
        blades: Some(blades),
        extra: format!("[limits.student]\ntotal_containers = {per_user}\ntotal_ports = {per_user}\ntotal_cpus = 1000\ntotal_memory = \"1000G\"\n[reconcile]\ninterval_seconds = 2\n[containers]\nstop_timeout = 1\n"),
        ..Default::default()
    };
    let text = crate::harness::config_text(&o, &data_dir).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let cfg_path = data_dir.with_extension("toml");
    std::fs::write(&cfg_path, text).unwrap();
    let serve = Serve {
        cfg_path: cfg_path.clone(),
        log: data_dir.with_extension("log"),
        port,
    };
    let (inbox, rport) = response_server().await;
    let store = shisa::store::Store::open(&data_dir.join("shisa.db")).unwrap();

    // key -> (user, container name, request id) of every acknowledged request
    let mut acked: Vec<(String, String, String, String)> = Vec::new();
    // `SHISA_CRASH_POINTS=mid` (a comma list of early, mid, late) for a long run at one point.
    let points: Vec<KillPoint> = std::env::var("SHISA_CRASH_POINTS")
        .unwrap_or_else(|_| "early,mid,late".into())
        .split(',')
        .filter_map(|p| match p.trim() {
            "early" => Some(KillPoint::Early),
            "mid" => Some(KillPoint::Mid),
            "late" => Some(KillPoint::Late),
            _ => None,
        })
        .collect();
    assert!(!points.is_empty(), "SHISA_CRASH_POINTS: early, mid or late");
    for (round, point) in points.into_iter().enumerate() {
        let mut child = serve.start();
        let mut tasks = Vec::new();
        for i in 0..n {
            let user = users[i % users.len()];
            let name = format!("r{round}n{i:03}");
            let key = format!("r{round}x{i}");
            let line = format!("run --name {name} --port 8888 --memory 32M --cpus 0.1 localhost/busybox -- sleep 600");
            let url = format!("http://127.0.0.1:{rport}/hooks/commands/{key}");
            tasks.push(tokio::spawn(async move {
                let ack = post_command(port, user, &line, &url).await;
                (key, user, name, ack)
            }));
        }
        let finals_of_round = |inbox: &Inbox| {
            let prefix = format!("r{round}x");
            inbox
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, v)| k.starts_with(&prefix) && v.iter().any(Reply::is_final))
                .count()
        };
        let wanted = match point {
            KillPoint::Early => 0,
            KillPoint::Mid => n / 3,
            KillPoint::Late => n.saturating_sub(2),
        };
        for _ in 0..600 {
            let any_acked = tasks.iter().any(|t| t.is_finished());
            if any_acked && finals_of_round(&inbox) >= wanted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let in_flight = n - finals_of_round(&inbox);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("kill point {point:?}: {in_flight} of {n} runs without a final reply");
        for t in tasks {
            let (key, user, name, ack) = t.await.unwrap();
            if let Some(ack) = ack {
                // An immediate final answer is a refusal: the request was not taken on.
                assert!(
                    !ack.is_final(),
                    "{user} {name}: refused at once: {}",
                    ack.text
                );
                let rid = ack.props["shisa"]["request"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                acked.push((key, user.to_string(), name, rid));
            }
        }
    }
    assert!(
        acked.len() >= 30.min(3 * n) / 2,
        "too few acknowledged: {}",
        acked.len()
    );

    // The last start: recover and finish; every acknowledged request gets its answer.
    let mut child = serve.start();
    let mut dms: HashMap<String, Vec<String>> = HashMap::new();
    let finals_for = |inbox: &Inbox, dms: &HashMap<String, Vec<String>>, key: &str, rid: &str| {
        let mut v: Vec<String> = inbox
            .lock()
            .unwrap()
            .get(key)
            .map(|r| {
                r.iter()
                    .filter(|r| r.is_final())
                    .map(|r| r.text.clone())
                    .collect()
            })
            .unwrap_or_default();
        v.extend(dms.get(rid).cloned().unwrap_or_default());
        v
    };
    let mut all_answered = false;
    let restarted = std::time::Instant::now();
    for _ in 0..1200 {
        for u in users {
            for m in store.outbox_take(u).unwrap() {
                let props: serde_json::Value = serde_json::from_str(&m.props).unwrap_or_default();
                if let Some(rid) = props["shisa"]["request"].as_str() {
                    dms.entry(rid.to_string()).or_default().push(m.message);
                }
            }
        }
        if acked
            .iter()
            .all(|(k, _, _, rid)| !finals_for(&inbox, &dms, k, rid).is_empty())
        {
            all_answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A late duplicate would show up here; reconciliation also gets a round.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for u in users {
        for m in store.outbox_take(u).unwrap() {
            let props: serde_json::Value = serde_json::from_str(&m.props).unwrap_or_default();
            if let Some(rid) = props["shisa"]["request"].as_str() {
                dms.entry(rid.to_string()).or_default().push(m.message);
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged; all answered {:.1} s after the restart",
        acked.len(),
        restarted.elapsed().as_secs_f64()
    );
    if !all_answered {
        eprintln!(
            "some acknowledged requests got no final reply in two minutes; see {}",
            serve.log.display()
        );
    }

    let mut problems = Vec::new();
    for (key, user, name, rid) in &acked {
        let finals = finals_for(&inbox, &dms, key, rid);
        let row = store.container_by_name(user, name).await.unwrap();
        let Some(row) = row else {
            problems.push(format!(
                "{user}/{name}: no container row; replies {finals:?}"
            ));
            continue;
        };
        let ports = store.ports_of(row.id).await.unwrap();
        let line = ports
            .first()
            .map(|p| format!("8888/tcp -> 127.0.0.1:{}", p.port));
        if finals.len() != 1 || line.as_ref().is_none_or(|l| !finals[0].contains(l)) {
            problems.push(format!(
                "{user}/{name}: want one final reply with {line:?}, got {finals:?}"
            ));
        }
        if row.state != "running" {
            problems.push(format!("{user}/{name}: row is {}", row.state));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} acknowledged requests:\n{}",
        problems.len(),
        acked.len(),
        problems.join("\n")
    );

    // The blade, the rows and the leases agree: no container without a row, no row without
    // a running container, one port lease per container and none without one.
    let instance = store.instance_id().unwrap();
    let client = shisa::podman::PodmanClient::new(podman());
    let listed = client
        .list_labelled(&format!("shisa.instance={instance}"))
        .await
        .unwrap();
    let mut on_blade: Vec<(String, String)> = listed
        .iter()
        .map(|l| (l.id.clone(), l.state.clone()))
        .collect();
    let mut in_db: Vec<(String, String)> = store
        .with(|c| {
            let mut st =
                c.prepare("SELECT COALESCE(podman_id, '(none)'), state FROM containers")?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>();
            v
        })
        .unwrap();
    on_blade.sort();
    in_db.sort();
    assert_eq!(
        on_blade, in_db,
        "containers on the blade (id, state) vs the database"
    );
    let (rows, leases, orphans): (i64, i64, i64) = store
        .with(|c| {
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM containers),
                        (SELECT COUNT(*) FROM port_leases WHERE container_id IS NOT NULL),
                        (SELECT COUNT(*) FROM port_leases p WHERE p.container_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM containers c WHERE c.id = p.container_id))",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
        .unwrap();
    assert_eq!((leases, orphans), (rows, 0), "port leases vs containers");

    // Clean up as the students would, then the teardown check.
    let s = Stack::start_with(&cfg_path, data_dir).await;
    s.remove_all(&users).await;
    s.stop().await;
}

/// Peak resident memory of a process (VmHWM), bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Everything shisa reads is bounded: a build printing 1 GB (on one line) and a container
/// printing one 100 MB line leave `shisa serve` under 100 MB at its peak, and both replies say
/// their output was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_output_is_read_within_bounds() {
    use crate::gitlab::{tar_gz, FakeGitlab, FakeProject, FakeState};
    test_images();
    let sha = "b16b16b16b16b16b16b16b16b16b16b16b16b16b";
    let mut p = FakeProject {
        id: 7,
        path: "alice/MyModel".into(),
        members: HashMap::from([("alice".to_string(), 40)]),
        archives: HashMap::new(),
    };
    p.archives.insert(
        sha.into(),
        tar_gz(
            &format!("mymodel-{sha}"),
            &[(
                "Containerfile",
                "FROM localhost/busybox:latest\nRUN head -c 1000000000 /dev/zero | tr '\\0' y; echo; echo the-end; exit 1\n",
            )],
        ),
    );
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into())],
        projects: vec![p],
        ..Default::default()
    })
    .await;
    let data_dir = tempfile::tempdir_in(run_root()).unwrap().keep();
    let port = free_port();
    let o = Opts {
        podman: true,
        extra: crate::gitlab::gitlab_toml(&fake.url, 300),
        ..Default::default()
    };
    let text = crate::harness::config_text(&o, &data_dir).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let cfg_path = data_dir.with_extension("toml");
    std::fs::write(&cfg_path, text).unwrap();
    let serve = Serve {
        cfg_path,
        log: data_dir.with_extension("log"),
        port,
    };
    let (inbox, rport) = response_server().await;
    let mut child = serve.start();
    let url = |k: &str| format!("http://127.0.0.1:{rport}/hooks/commands/{k}");
    let final_of = |k: &str| {
        let k = k.to_string();
        let inbox = inbox.clone();
        async move {
            for _ in 0..600 {
                if let Some(r) = inbox
                    .lock()
                    .unwrap()
                    .get(&k)
                    .and_then(|v| v.last().cloned())
                {
                    return r.text;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no final reply for {k}");
        }
    };
    // One 100 MB line from a container.
    post_command(
        port,
        "alice",
        "run --name big localhost/busybox -- sh -c \"dd if=/dev/zero bs=1000000 count=100 2>/dev/null; echo; echo last-line; sleep 600\"",
        &url("big"),
    )
    .await
    .expect("acknowledged");
    assert!(final_of("big").await.contains("is running"));
    // Once the line is written (the container's log file has grown past 100 MB).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let logs = post_command(port, "alice", "logs big --tail 5", &url("logs"))
        .await
        .map(|r| r.text)
        .unwrap_or_default();
    // Podman itself reads a 100 MB line slowly: the reply says so, or shows the end.
    assert!(
        (logs.contains("last-line") && logs.contains("only its end is shown"))
            || logs.contains("could not read all of this output"),
        "{}",
        &logs[logs.len().saturating_sub(300)..]
    );
    // A build printing 1 GB.
    post_command(port, "alice", "build enable alice/MyModel", &url("enable"))
        .await
        .expect("acknowledged");
    // The project's own hook secret, as shisa installed it.
    let hook_token = {
        let st = shisa::store::Store::open(&data_dir.join("shisa.db")).unwrap();
        let sealed = st
            .hook_secret(7)
            .await
            .unwrap()
            .expect("a secret of its own");
        let key = shisa::sealing::key(&data_dir.join("state.key")).unwrap();
        shisa::sealing::open_text(&key, &sealed).unwrap()
    };
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/hooks/gitlab"))
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", hook_token)
        .body(crate::gitlab::push_body(
            7,
            "alice/MyModel",
            101,
            sha,
            "Containerfile",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = shisa::store::Store::open(&data_dir.join("shisa.db")).unwrap();
    let mut detail = String::new();
    for _ in 0..1200 {
        let row = store
            .with(|c| {
                c.query_row(
                    "SELECT state, COALESCE(detail, '') FROM builds ORDER BY id DESC LIMIT 1",
                    [],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
            })
            .ok();
        if let Some((state, d)) = row {
            if state == "failed" {
                detail = d;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        detail.contains("The build printed") && detail.contains("the-end"),
        "{}",
        &detail[detail.len().saturating_sub(300)..]
    );
    let peak = peak_rss(child.id());
    post_command(port, "alice", "rm --force big", &url("rm")).await;
    let _ = final_of("rm").await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        peak < 100 * 1024 * 1024,
        "shisa's peak memory {} MB",
        peak / 1024 / 1024
    );
    eprintln!(
        "huge_output_is_read_within_bounds: peak RSS {} MB",
        peak / 1024 / 1024
    );
}
