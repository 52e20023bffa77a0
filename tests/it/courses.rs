//! Course environments end to end: a course project enabled by its instructor, plan comments
//! on merge requests (one comment, edited), apply on merge (built, tagged `current` in
//! `courses/ID`, pulled on two real Podman blades), students' `/course run`, a revert, and
//! readiness before a lecture with an injected clock. Real Podman, registry and slapd; the
//! GitLab is the protocol-faithful fake of `gitlab.rs`, driven by the fixture payloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::gitlab::{
    deliver, fixture, gitlab_toml, tar_gz, FakeGitlab, FakeProject, FakeState, HOOK_TOKEN,
};
use crate::harness::{free_port, registry, Dir, Opts, PodmanService, Stack};

const PROJECT: u64 = 31;
const PATH: &str = "courses/ai1";

fn course_file(cpus: &str, lecture: &str) -> String {
    format!(
        "id = \"ai1\"\ntitle = \"AI basics\"\nstudents = [\"ai-course\"]\ninstructors = [\"instructors\"]\n\n[environment]\nbuild = \"Containerfile\"\ncpus = {cpus}\nmemory = \"256M\"\nports = [8080]\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\"]\n\n[schedule]\ntimezone = \"Asia/Tokyo\"\nready_before = \"30m\"\nlectures = [{lecture}]\n\n[limits]\nmax_containers = 4\n"
    )
}

const MONDAY: &str = "{ weekday = \"mon\", start = \"09:00\", duration = \"90m\" }";

fn containerfile(version: &str) -> String {
    format!("FROM localhost/busybox:latest\nRUN echo {version} > /etc/course-version\n")
}

/// A commit of the course repository: its files, by sha, and its archive.
fn commit(st: &mut FakeState, sha: &str, files: &[(&str, String)]) {
    let map: HashMap<String, String> = files
        .iter()
        .map(|(p, c)| (p.to_string(), c.clone()))
        .collect();
    st.files.insert((PROJECT, sha.to_string()), map);
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let p = st.projects.iter_mut().find(|p| p.id == PROJECT).unwrap();
    p.archives
        .insert(sha.to_string(), tar_gz(&format!("ai1-{sha}"), &refs));
}

/// The Merge Request Hook fixture, made this project's: `action` at `head`.
fn mr_body(iid: u64, action: &str, head: &str, merge_sha: Option<&str>) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("merge_request.json")).unwrap();
    v["project"]["id"] = PROJECT.into();
    v["project"]["path_with_namespace"] = PATH.into();
    v["project"]["default_branch"] = "main".into();
    v["user"]["id"] = 110.into();
    let a = &mut v["object_attributes"];
    a["iid"] = iid.into();
    a["id"] = (1000 + iid).into();
    a["action"] = action.into();
    a["state"] = if action == "merge" {
        "merged"
    } else {
        "opened"
    }
    .into();
    a["target_branch"] = "main".into();
    a["target_project_id"] = PROJECT.into();
    a["last_commit"]["id"] = head.into();
    a["merge_commit_sha"] = merge_sha
        .map(serde_json::Value::from)
        .unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&v).unwrap()
}

/// The Note Hook fixture: `text` commented on merge request `iid` at `head`.
fn note_body(iid: u64, head: &str, text: &str) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture("note_merge_request.json")).unwrap();
    v["project_id"] = PROJECT.into();
    v["project"]["id"] = PROJECT.into();
    v["project"]["path_with_namespace"] = PATH.into();
    v["object_attributes"]["note"] = text.into();
    v["merge_request"]["iid"] = iid.into();
    v["merge_request"]["state"] = "opened".into();
    v["merge_request"]["target_branch"] = "main".into();
    v["merge_request"]["last_commit"]["id"] = head.into();
    serde_json::to_vec(&v).unwrap()
}

async fn send(s: &Stack, event: &str, body: Vec<u8>, key: &str) {
    let (code, text) = deliver(
        s,
        event,
        body,
        &[
            ("X-Gitlab-Token", HOOK_TOKEN.to_string()),
            ("Idempotency-Key", key.to_string()),
        ],
    )
    .await;
    assert_eq!(code, 200, "{text}");
}

async fn wait_for<T>(s: &Stack, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..secs * 10 {
        if let Some(x) = f() {
            return x;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the queue did with the deliveries says why.
    let queue: Vec<String> = s
        .store()
        .with(|c| {
            let mut st = c.prepare(
                "SELECT kind, state, attempts, COALESCE(last_error, '') FROM queue ORDER BY id",
            )?;
            let v = st
                .query_map([], |r| {
                    Ok(format!(
                        "{} {} {} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .unwrap_or_default();
    panic!(
        "timed out after {secs} s waiting for {what}; queue: {queue:#?}; audit: {:#?}",
        s.store()
            .audit_entries(None)
            .unwrap_or_default()
            .iter()
            .filter(|a| a.action.starts_with("course"))
            .map(|a| format!("{} {} {:?}", a.action, a.outcome, a.detail))
            .collect::<Vec<_>>()
    );
}

fn blades(b1: &PodmanService, b2: Option<&PodmanService>, ports: u16) -> String {
    let mut t = format!(
        "[[blades]]\nname = \"b1\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [{ports}, {}]\ncpus = 4\nmemory = \"2G\"\n",
        b1.socket.display().to_string(),
        ports + 19
    );
    if let Some(b2) = b2 {
        t.push_str(&format!(
            "\n[[blades]]\nname = \"b2\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [{}, {}]\ncpus = 4\nmemory = \"2G\"\n",
            b2.socket.display().to_string(),
            ports + 20,
            ports + 39
        ));
    }
    t
}

struct Env {
    s: Stack,
    fake: FakeGitlab,
    registry_port: u16,
}

async fn env(
    b1: &PodmanService,
    b2: Option<&PodmanService>,
    ports: u16,
    clock: Arc<AtomicI64>,
    slurm: bool,
) -> Env {
    crate::harness::test_images();
    let project = FakeProject {
        id: PROJECT,
        path: PATH.into(),
        members: HashMap::from([("sensei".to_string(), 40), ("alice".to_string(), 30)]),
        archives: HashMap::new(),
    };
    let fake = FakeGitlab::start(FakeState {
        users: vec![(101, "alice".into()), (110, "sensei".into())],
        projects: vec![project],
        ..Default::default()
    })
    .await;
    let port = free_port();
    let reg = registry(port);
    // LDAP's homes are under the shared data directory; alice's is hers (as the site's
    // home server would make it).
    let homes = crate::harness::shared_data_dir().join("home");
    let alice_home = homes.join("alice");
    std::fs::create_dir_all(&alice_home).unwrap();
    std::os::unix::fs::chown(&alice_home, Some(20001), Some(20001)).unwrap();
    let s = Stack::start(Opts {
        directory: Dir::Ldap,
        blades: Some(blades(b1, b2, ports)),
        listen_port: Some(port),
        extra: format!(
            "{}\n{}[reconcile]\ncourse_check_seconds = 1\n[containers]\nhome_base = {:?}\n{}",
            reg.toml,
            gitlab_toml(&fake.url, 120),
            homes.display().to_string(),
            if slurm {
                format!(
                    "[slurm]\nconf = {:?}\nlauncher = [{:?}]\n",
                    crate::harness::slurm().conf.display().to_string(),
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/sif-exec.sh")
                        .display()
                        .to_string()
                )
            } else {
                String::new()
            }
        ),
        services: shisa::app::Services {
            clock_offset: Some(clock),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    Env {
        s,
        fake,
        registry_port: reg.port,
    }
}

fn notes(fake: &FakeGitlab, iid: u64) -> Vec<crate::gitlab::FakeNote> {
    fake.state
        .lock()
        .unwrap()
        .notes
        .iter()
        .filter(|n| n.project == PROJECT && n.iid == iid)
        .cloned()
        .collect()
}

fn has_image(b: &PodmanService, reference: &str) -> bool {
    b.cli()
        .args(["image", "exists", reference])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_course_from_merge_request_to_lecture() {
    let b1 = PodmanService::start("course-1");
    let b2 = PodmanService::start("course-2");
    let e = env(&b1, Some(&b2), 63600, Arc::new(AtomicI64::new(0)), true).await;
    let (s, fake) = (&e.s, &e.fake);
    // Enabling: only an instructor who maintains the project.
    let t = s.say("alice", "/course enable courses/ai1").await;
    assert!(t.contains("Only instructors"), "{t}");
    let t = s.say("sensei", "/course enable courses/ai1").await;
    assert!(t.contains("is now a course project"), "{t}");
    {
        let st = fake.state.lock().unwrap();
        let params = &st.hook_params[&PROJECT];
        assert_eq!(
            params.get("merge_requests_events").map(String::as_str),
            Some("true"),
            "{params:?}"
        );
        assert_eq!(
            params.get("note_events").map(String::as_str),
            Some("true"),
            "{params:?}"
        );
        assert!(
            st.hook_tokens[&PROJECT].starts_with("shisa-hook_"),
            "its own secret"
        );
    }
    let (sha1, sha2, sha3, merge1) = (
        "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1",
        "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2",
        "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3",
        "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1",
    );
    {
        let mut st = fake.state.lock().unwrap();
        st.files.insert((PROJECT, "main".into()), HashMap::new());
        commit(
            &mut st,
            sha1,
            &[
                ("shisa-course.toml", course_file("1", MONDAY)),
                ("Containerfile", containerfile("v1")),
            ],
        );
        // A push to the merge request that asks for more than the blades hold.
        commit(
            &mut st,
            sha2,
            &[
                ("shisa-course.toml", course_file("3", MONDAY)),
                ("Containerfile", containerfile("v1")),
            ],
        );
        commit(
            &mut st,
            sha3,
            &[
                ("shisa-course.toml", course_file("1", MONDAY)),
                ("Containerfile", containerfile("v1")),
            ],
        );
        commit(
            &mut st,
            merge1,
            &[
                ("shisa-course.toml", course_file("1", MONDAY)),
                ("Containerfile", containerfile("v1")),
            ],
        );
    }
    // Opened: one plan comment, with the build's digest and a capacity line that fits.
    send(
        s,
        "Merge Request Hook",
        mr_body(1, "open", sha1, None),
        "mr1-open",
    )
    .await;
    let plan = wait_for(s, "the plan with its build", 180, || {
        notes(fake, 1)
            .into_iter()
            .find(|n| n.body.contains("digest `sha256:"))
    })
    .await;
    assert!(
        plan.body.contains("course `ai1` at `c1c1c1c1`"),
        "{}",
        plan.body
    );
    assert!(
        plan.body
            .contains("4 × 1 CPUs, 256M on 2 blades: fits (room for 8)"),
        "{}",
        plan.body
    );
    assert!(
        plan.body.contains("| per student | — | 1 CPUs, 256M |"),
        "{}",
        plan.body
    );
    assert!(
        plan.body.contains("Mon "),
        "the next lecture: {}",
        plan.body
    );
    assert_eq!(plan.author, "sensei", "as the instructor who enabled it");
    assert_eq!(notes(fake, 1).len(), 1);
    let status_of = |sha: &str| {
        fake.state
            .lock()
            .unwrap()
            .statuses
            .iter()
            .rev()
            .find(|x| x.1 == sha && x.3 == "shisa/course")
            .map(|x| x.2.clone())
    };
    assert_eq!(status_of(sha1).as_deref(), Some("success"));
    // A push that does not fit: the same comment, edited, says by how much.
    send(
        s,
        "Merge Request Hook",
        mr_body(1, "update", sha2, None),
        "mr1-up2",
    )
    .await;
    let short = wait_for(s, "the plan that does not fit", 120, || {
        notes(fake, 1)
            .into_iter()
            .find(|n| n.body.contains("c2c2c2c2") && n.body.contains("digest"))
    })
    .await;
    assert!(
        short
            .body
            .contains("does **not** fit, room for 2, 2 short (runs out of CPUs)"),
        "{}",
        short.body
    );
    assert!(
        short.body.contains("the same sources were built before"),
        "{}",
        short.body
    );
    assert_eq!(notes(fake, 1).len(), 1, "edited, not a second comment");
    assert_eq!(status_of(sha2).as_deref(), Some("failed"));
    // `shisa plan` plans again; a fix, then the merge.
    send(
        s,
        "Merge Request Hook",
        mr_body(1, "update", sha3, None),
        "mr1-up3",
    )
    .await;
    wait_for(s, "the fixed plan", 120, || {
        notes(fake, 1)
            .into_iter()
            .find(|n| n.body.contains("c3c3c3c3") && n.body.contains("fits ("))
    })
    .await;
    let edits_before = notes(fake, 1)[0].edits;
    send(s, "Note Hook", note_body(1, sha3, "shisa plan"), "mr1-note").await;
    wait_for(s, "the plan again", 60, || {
        notes(fake, 1)
            .into_iter()
            .find(|n| n.edits >= edits_before + 2)
    })
    .await;
    assert_eq!(notes(fake, 1).len(), 1);
    send(
        s,
        "Merge Request Hook",
        mr_body(1, "merge", sha3, Some(merge1)),
        "mr1-merge",
    )
    .await;
    let applied = wait_for(s, "the applied comment", 180, || {
        notes(fake, 1)
            .into_iter()
            .find(|n| n.body.contains("shisa applied course `ai1`"))
    })
    .await;
    assert!(applied.body.contains("version 1"), "{}", applied.body);
    assert!(
        applied.body.contains("- `b1`: ready") && applied.body.contains("- `b2`: ready"),
        "{}",
        applied.body
    );
    let v1 = s.store().current_course("ai1").await.unwrap().unwrap();
    assert!(v1.image.contains("/courses/ai1@sha256:"), "{}", v1.image);
    assert!(
        has_image(&b1, &v1.image) && has_image(&b2, &v1.image),
        "pulled on both blades"
    );
    // `current` in the course's namespace, by the registry's own answer; pullable by the
    // course's members only, pushable by nobody but shisa.
    let token = |user: &'static str, password: &'static str, actions: &'static str| {
        let url = s.url(&format!(
            "/registry/token?service=shisa-registry&scope=repository:courses/ai1:{actions}"
        ));
        async move {
            let r: serde_json::Value = reqwest::Client::new()
                .get(url)
                .basic_auth(user, Some(password))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["token"].as_str().unwrap_or_default().to_string()
        }
    };
    let head = |tok: String, reference: &'static str| {
        let url = format!(
            "http://127.0.0.1:{}/v2/courses/ai1/manifests/{reference}",
            e.registry_port
        );
        async move {
            let r = reqwest::Client::new()
                .head(url)
                .bearer_auth(tok)
                .header("accept", shisa::registry::client::ACCEPT)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("docker-content-digest")
                    .map(|d| d.to_str().unwrap().to_string())
                    .unwrap_or_default(),
            )
        }
    };
    let (code, digest) = head(token("alice", "alice-demo", "pull").await, "current").await;
    assert_eq!(
        (code, digest.as_str()),
        (200, v1.digest.as_str()),
        "a student pulls `current`"
    );
    assert_eq!(
        head(token("alice", "alice-demo", "pull").await, "v1")
            .await
            .1,
        v1.digest
    );
    assert_eq!(
        head(token("bob", "bob-demo", "pull").await, "current")
            .await
            .0,
        401,
        "not bob"
    );
    let claims = |t: String| -> serde_json::Value {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let granted = claims(token("sensei", "sensei-demo", "pull,push").await);
    assert_eq!(
        granted["access"][0]["actions"],
        serde_json::json!(["pull"]),
        "no push: {granted}"
    );
    let dm = s
        .dm_containing("sensei", "Course `ai1` version 1 is applied")
        .await;
    assert!(dm.contains("2/2 blades ready"), "{dm}");
    // Students: a member runs one; someone not in the course is told so.
    let t = s.say("bob", "/course run ai1").await;
    assert!(t.contains("not in course `ai1`"), "{t}");
    let r = s.chat("alice", "/course run ai1").await;
    let last = r.last().unwrap().text.clone();
    assert!(
        last.contains("is running") && last.contains("8080/tcp -> 127.0.0.1:"),
        "{r:?}"
    );
    // Its SIF for Slurm jobs, by the course's name (members only).
    let t = s
        .say("bob", "/job submit --course ai1 --dry-run -- echo hi")
        .await;
    assert!(t.contains("not in course `ai1`"), "{t}");
    let t = s
        .say("alice", "/job submit --course ai1 --dry-run -- echo hi")
        .await;
    assert!(
        t.contains("nothing was submitted") && t.contains("/sif/alice/ai1_sha256_"),
        "the course's image as the SIF: {t}"
    );
    let t = s
        .say(
            "alice",
            "/job submit --course ai1 --image x --dry-run -- echo hi",
        )
        .await;
    assert!(t.contains("either `--course`"), "{t}");
    let t = s.say("alice", "/container run --course ai1 --cpus 2").await;
    assert!(t.contains("as its instructors defined it"), "{t}");
    let t = s.say("alice", "/container run --course ai1").await;
    assert!(
        t.contains("`ai1`") && t.contains("running"),
        "one per student: {t}"
    );
    let t = s.say("alice", "/course list").await;
    assert!(t.contains("| `ai1` | AI basics | Mon "), "{t}");
    let t = s.say("sensei", "/course ps ai1").await;
    assert!(t.contains("| alice | `ai1` | running |"), "{t}");
    let t = s.say("alice", "/course ps ai1").await;
    assert!(t.contains("Only the instructors"), "{t}");
    let t = s.say("sensei", "/course status ai1").await;
    assert!(
        t.contains("| `b1` | ready |")
            && t.contains("| `b2` | ready |")
            && t.contains("Students running: 1, starting: 0"),
        "{t}"
    );
    // A second version, then a revert: it applies the first digest again.
    let (sha4, merge2, sha5, merge3) = (
        "c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4",
        "d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2",
        "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
        "d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3",
    );
    {
        let mut st = fake.state.lock().unwrap();
        let v1_files = st.files[&(PROJECT, merge1.to_string())].clone();
        st.files.insert((PROJECT, "main".into()), v1_files);
        for sha in [sha4, merge2] {
            commit(
                &mut st,
                sha,
                &[
                    ("shisa-course.toml", course_file("1", MONDAY)),
                    ("Containerfile", containerfile("v2")),
                ],
            );
        }
        for sha in [sha5, merge3] {
            commit(
                &mut st,
                sha,
                &[
                    ("shisa-course.toml", course_file("1", MONDAY)),
                    ("Containerfile", containerfile("v1")),
                ],
            );
        }
    }
    send(
        s,
        "Merge Request Hook",
        mr_body(2, "merge", sha4, Some(merge2)),
        "mr2-merge",
    )
    .await;
    wait_for(s, "version 2", 180, || {
        notes(fake, 2)
            .into_iter()
            .find(|n| n.body.contains("version 2"))
    })
    .await;
    let v2 = s.store().current_course("ai1").await.unwrap().unwrap();
    assert_ne!(v2.digest, v1.digest);
    send(
        s,
        "Merge Request Hook",
        mr_body(3, "merge", sha5, Some(merge3)),
        "mr3-merge",
    )
    .await;
    wait_for(s, "version 3", 180, || {
        notes(fake, 3)
            .into_iter()
            .find(|n| n.body.contains("version 3"))
    })
    .await;
    let v3 = s.store().current_course("ai1").await.unwrap().unwrap();
    assert_eq!(
        v3.digest, v1.digest,
        "the revert applies the first version's image"
    );
    assert_eq!(v3.version, 3);
    // A merge whose image cannot be built: the merge request says why; version 3 stays.
    let (sha6, merge4) = (
        "c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6",
        "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4",
    );
    {
        let mut st = fake.state.lock().unwrap();
        for sha in [sha6, merge4] {
            commit(
                &mut st,
                sha,
                &[
                    ("shisa-course.toml", course_file("1", MONDAY)),
                    (
                        "Containerfile",
                        "FROM localhost/busybox:latest\nRUN false\n".to_string(),
                    ),
                ],
            );
        }
    }
    send(
        s,
        "Merge Request Hook",
        mr_body(4, "merge", sha6, Some(merge4)),
        "mr4-merge",
    )
    .await;
    let failed = wait_for(s, "the failed apply", 180, || {
        notes(fake, 4)
            .into_iter()
            .find(|n| n.body.contains("did not apply"))
    })
    .await;
    assert!(
        failed.body.contains("RUN false") && failed.body.contains("(version 3, `sha256:"),
        "{}",
        failed.body
    );
    assert_eq!(
        s.store()
            .current_course("ai1")
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
    // Every apply is on record.
    let audit = s.store().audit_entries(Some("sensei")).unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "course.apply" && a.outcome == "ok")
            .count(),
        3,
        "{audit:?}"
    );
    s.remove_all(&["alice"]).await;
    e.s.stop().await;
}

/// Before each lecture the scheduler makes the blades ready (an image pruned by hand is
/// pulled again) and tells the instructors once, at the injected time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_before_a_lecture_with_an_injected_clock() {
    let b1 = PodmanService::start("course-ready");
    let clock = Arc::new(AtomicI64::new(0));
    let e = env(&b1, None, 63660, clock.clone(), false).await;
    let (s, fake) = (&e.s, &e.fake);
    assert!(s
        .say("sensei", "/course enable courses/ai1")
        .await
        .contains("is now a course project"));
    let merge = "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1";
    // A lecture on 2030-01-07 at 09:00 in Tokyo.
    let lecture = "{ date = \"2030-01-07\", start = \"09:00\", duration = \"1h\" }";
    {
        let mut st = fake.state.lock().unwrap();
        st.files.insert((PROJECT, "main".into()), HashMap::new());
        commit(
            &mut st,
            merge,
            &[
                ("shisa-course.toml", course_file("1", lecture)),
                ("Containerfile", containerfile("r1")),
            ],
        );
    }
    send(
        s,
        "Merge Request Hook",
        mr_body(1, "merge", merge, Some(merge)),
        "r-merge",
    )
    .await;
    wait_for(s, "applied", 180, || {
        let n = notes(fake, 1);
        if let Some(x) = n.iter().find(|n| n.body.contains("did not apply")) {
            panic!("{}", x.body);
        }
        n.into_iter().find(|n| n.body.contains("shisa applied"))
    })
    .await;
    let v = s.store().current_course("ai1").await.unwrap().unwrap();
    assert!(has_image(&b1, &v.image));
    // Pruned on the blade (by hand, as reclaim or an admin might).
    assert!(b1
        .cli()
        .args(["rmi", "-f", &v.image])
        .status()
        .unwrap()
        .success());
    assert!(!has_image(&b1, &v.image));
    // The clock moves to 35 minutes before the lecture (00:25 UTC that day).
    let start = 1_893_974_400; // 2030-01-07T00:00:00Z = 09:00 in Tokyo
    clock.store(start - 35 * 60 - shisa::store::now(), Ordering::Relaxed);
    let dm = s.dm_containing("sensei", "ai1 at 09:00").await;
    assert!(dm.contains("1/1 blades ready, 4 seats"), "{dm}");
    assert!(has_image(&b1, &v.image), "pulled again before the lecture");
    // Once per lecture.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !s.store()
            .outbox_take("sensei")
            .unwrap()
            .iter()
            .any(|m| m.message.contains("ai1 at 09:00")),
        "told once"
    );
    // At the end of the lecture the students are warned; after the grace, stopped.
    let r = s.chat("alice", "/course run ai1").await;
    assert!(r.last().unwrap().text.contains("is running"), "{r:?}");
    clock.store(start + 3600 + 60 - shisa::store::now(), Ordering::Relaxed);
    let dm = s
        .dm_containing("alice", "The lecture of `ai1` has ended")
        .await;
    assert!(dm.contains("stops in 10 min"), "{dm}");
    let row = || async {
        s.store()
            .container_by_name("alice", "ai1")
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(row().await.state, "running", "not before the grace");
    clock.store(
        start + 3600 + 11 * 60 - shisa::store::now(),
        Ordering::Relaxed,
    );
    let mut state = String::new();
    for _ in 0..300 {
        state = row().await.state;
        if state == "exited" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "exited", "stopped after the grace");
    s.remove_all(&["alice"]).await;
    e.s.stop().await;
}
