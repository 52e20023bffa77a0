//! Benchmark (not a test): a course environment from merge to "applied" for a ~300 MB image
//! on two blades, then `/course run` by 80 students at once on the prepared blades. Real
//! Podman and registry; the fake GitLab of tests/it/gitlab.rs. Needs root and the packages of
//! deploy/install-deps.sh.
//!
//!     cargo bench --bench courses                 # 300 MB, 80 students
//!     SHISA_BENCH_MB=50 SHISA_BENCH_STUDENTS=20 SHISA_BENCH_WORKERS=8 cargo bench --bench courses
//!
//! Results go in docs/benchmarks.md, with the machine and the date.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[path = "common/mod.rs"]
mod common;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/gitlab.rs"]
mod gitlab;

use common::pct;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use gitlab::{
    deliver, fixture, gitlab_toml, tar_gz, FakeGitlab, FakeProject, FakeState, HOOK_TOKEN,
};
use harness::{free_port, registry, run_root, Opts, PodmanService, Stack};

const PROJECT: u64 = 41;

fn main() {
    let mb: u64 = std::env::var("SHISA_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let n: usize = std::env::var("SHISA_BENCH_STUDENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    // Quick-lane workers (the service's default is 4; at most `per_blade` per blade at once).
    let workers: usize = std::env::var("SHISA_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    harness::test_images();
    let b1 = PodmanService::start("bench-course-1");
    let b2 = PodmanService::start("bench-course-2");
    // The demo users, and n students in the course's group.
    let mut users =
        std::fs::read_to_string(harness::repo().join("deploy/demo-users.toml")).unwrap();
    let mut members = Vec::new();
    for i in 0..n {
        let uid = format!("s{i:03}");
        users.push_str(&format!(
            "\n[[users]]\nuid = \"{uid}\"\nuid_number = {}\ngid_number = {}\nname = \"Student {i}\"\nmail = \"{uid}@example.edu\"\nmattermost_user_id = \"{:0>26}\"\n",
            31000 + i,
            31000 + i,
            uid
        ));
        members.push(format!("{uid:?}"));
    }
    users.push_str(&format!(
        "\n[[groups]]\nname = \"ml-students\"\ngid_number = 31999\nmembers = [{}]\n",
        members.join(", ")
    ));
    let users_file = run_root().join(format!("bench-course-users-{}.toml", free_port()));
    std::fs::write(&users_file, users).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = FakeGitlab::start(FakeState {
            users: vec![(110, "sensei".into())],
            projects: vec![FakeProject {
                id: PROJECT,
                path: "courses/ml101".into(),
                members: HashMap::from([("sensei".to_string(), 40)]),
                archives: HashMap::new(),
            }],
            ..Default::default()
        })
        .await;
        let port = free_port();
        let reg = registry(port);
        let blades = format!(
            "[[blades]]\nname = \"b1\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [61000, 61199]\n\n[[blades]]\nname = \"b2\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [61200, 61399]\n",
            b1.socket.display().to_string(),
            b2.socket.display().to_string()
        );
        let s = Stack::start(Opts {
            blades: Some(blades),
            users_file: Some(users_file.clone()),
            listen_port: Some(port),
            extra: format!("{}\n{}[queue]\nquick_workers = {workers}\n", reg.toml, gitlab_toml(&fake.url, 1800)),
            ..Default::default()
        })
        .await;
        assert!(s.say("sensei", "/course enable courses/ml101").await.contains("is now a course project"));
        let course = format!(
            "id = \"ml101\"\ntitle = \"ML 101\"\nstudents = [\"ml-students\"]\ninstructors = [\"instructors\"]\n[environment]\nbuild = \"Containerfile\"\ncpus = 0.1\nmemory = \"64M\"\nports = [8080]\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\"]\n[limits]\nmax_containers = {}\n",
            n.max(1)
        );
        let containerfile = format!(
            "FROM localhost/busybox:latest\nRUN head -c {} /dev/urandom > /etc/course-data\n",
            mb * 1_000_000
        );
        let sha = "be11be11be11be11be11be11be11be11be11be11";
        {
            let mut st = fake.state.lock().unwrap();
            st.files.insert((PROJECT, "main".into()), HashMap::new());
            st.files.insert(
                (PROJECT, sha.into()),
                HashMap::from([
                    ("shisa-course.toml".to_string(), course.clone()),
                    ("Containerfile".to_string(), containerfile.clone()),
                ]),
            );
            st.projects[0].archives.insert(
                sha.into(),
                tar_gz(&format!("ml101-{sha}"), &[("shisa-course.toml", &course), ("Containerfile", &containerfile)]),
            );
        }
        let mut v: serde_json::Value = serde_json::from_slice(&fixture("merge_request.json")).unwrap();
        v["project"]["id"] = PROJECT.into();
        v["project"]["default_branch"] = "main".into();
        v["object_attributes"]["action"] = "merge".into();
        v["object_attributes"]["state"] = "merged".into();
        v["object_attributes"]["target_branch"] = "main".into();
        v["object_attributes"]["last_commit"]["id"] = sha.into();
        v["object_attributes"]["merge_commit_sha"] = sha.into();
        // Merge → applied.
        let t0 = Instant::now();
        let (code, _) = deliver(
            &s,
            "Merge Request Hook",
            serde_json::to_vec(&v).unwrap(),
            &[("X-Gitlab-Token", HOOK_TOKEN.to_string()), ("Idempotency-Key", "bench-merge".into())],
        )
        .await;
        assert_eq!(code, 200);
        let applied = loop {
            let note = fake
                .state
                .lock()
                .unwrap()
                .notes
                .iter()
                .find(|n| n.body.contains("shisa applied") || n.body.contains("did not apply"))
                .cloned();
            if let Some(n) = note {
                assert!(n.body.contains("shisa applied"), "{}", n.body);
                assert!(n.body.contains("- `b1`: ready") && n.body.contains("- `b2`: ready"), "{}", n.body);
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(3600), "no apply within an hour");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let size = s.store().current_course("ml101").await.unwrap().unwrap();
        println!("image: {} ({mb} MB of data requested)", size.image);
        // n students at once, over HTTP as Mattermost sends them, 20 ms apart.
        let users = shisa::identity::users_file::UsersFile::load(&users_file).unwrap();
        for i in 0..n {
            s.say(&format!("s{i:03}"), "/container whoami").await; // homes and links first
        }
        let t1 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let uid = format!("s{i:03}");
            let id = shisa::cli::chat::demo_user_id(&users, &uid);
            let mut cfg = shisa::config::Config::load(&s.cfg.path).unwrap();
            cfg.server.public_url = s.cfg.server.public_url.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let replies = shisa::cli::chat::send(&cfg, &uid, &id, "/course run ml101", Duration::from_secs(600), |_| {})
                    .await
                    .unwrap();
                let last = replies.last().unwrap();
                assert!(last.text.contains("is running") && last.text.contains("8080/tcp ->"), "{}", last.text);
                sent.elapsed()
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut ready = Vec::new();
        for t in tasks {
            ready.push(t.await.unwrap());
        }
        let all = t1.elapsed();
        let names: Vec<String> = (0..n).map(|i| format!("s{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        s.remove_all(&refs).await;
        s.stop().await;
        println!("queue workers: {workers}");
        println!("merge to applied on 2 blades: {:.1} s", applied.as_secs_f64());
        println!("/course run, {n} students, first request to last running: {:.2} s", all.as_secs_f64());
        println!("  ready time per student p50 {:.2} s, p95 {:.2} s, max {:.2} s",
            pct(&mut ready, 0.5).as_secs_f64(), pct(&mut ready, 0.95).as_secs_f64(), pct(&mut ready, 1.0).as_secs_f64());
    });
}
