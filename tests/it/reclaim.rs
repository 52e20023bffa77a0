//! Reclaim and fair queues: stale and idle containers warned then reclaimed (an injected
//! clock and injected usage figures), `extend`, pool addresses that come back, image
//! prune that spares a course's image, lanes that keep runs apart from slow work, and a
//! full blade that queues a run instead of refusing it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shisa::config::Blade;
use shisa::podman::Podman;
use shisa::usage::{Sample, Usage};

use crate::harness::{Opts, PodmanService, Stack};

/// Every container reports the CPU counter it is told (0: idle from the first sample on).
struct StillUsage;

#[async_trait]
impl Usage for StillUsage {
    async fn sample(
        &self,
        _: &Blade,
        _: &dyn Podman,
        _: &str,
        _: &[String],
    ) -> anyhow::Result<Sample> {
        Ok(Sample {
            cpu_nanos: Some(0),
            gpu_busy: None,
        })
    }
}

const DAY: i64 = 86400;
const HOUR: i64 = 3600;

fn blade(b: &PodmanService, ports: u16, extra: &str) -> String {
    format!(
        "[[blades]]\nname = \"r1\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [{ports}, {}]\n{extra}",
        b.socket.display().to_string(),
        ports + 39
    )
}

async fn stack(
    b: &PodmanService,
    ports: u16,
    blade_extra: &str,
    extra: &str,
) -> (Stack, Arc<AtomicI64>) {
    let clock = Arc::new(AtomicI64::new(0));
    let s = Stack::start(Opts {
        blades: Some(blade(b, ports, blade_extra)),
        extra: format!(
            "[limits.student]\ntotal_containers = 20\ntotal_cpus = 100\ntotal_memory = \"100G\"\ntotal_ports = 40\n\
             [reconcile]\nhealth_seconds = 1\n[reclaim]\ncheck_seconds = 1\n{extra}"
        ),
        services: shisa::app::Services {
            clock_offset: Some(clock.clone()),
            usage: Some(Arc::new(StillUsage)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    for _ in 0..100 {
        if s.say("admin", "/container blades")
            .await
            .contains("| up (Podman")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (s, clock)
}

/// A user's direct messages as they arrive (the outbox is read once; what one wait does
/// not match stays for the next).
#[derive(Default)]
struct Inbox(Vec<String>);

impl Inbox {
    /// The first message containing `needle` (a minute at most), taken out.
    async fn wait(&mut self, s: &Stack, user: &str, needle: &str) -> String {
        for _ in 0..600 {
            for m in s.store().outbox_take(user).unwrap() {
                self.0.push(m.message);
            }
            if let Some(i) = self.0.iter().position(|m| m.contains(needle)) {
                return self.0.remove(i);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no message to {user} containing {needle:?}; got {:?}",
            self.0
        );
    }
}

async fn dm(s: &Stack, user: &str, needle: &str) -> String {
    Inbox::default().wait(s, user, needle).await
}

async fn row(s: &Stack, user: &str, name: &str) -> Option<shisa::store::containers::ContainerRow> {
    s.store().container_by_name(user, name).await.unwrap()
}

#[tokio::test]
async fn stopped_and_idle_containers_are_warned_then_reclaimed_and_extend_postpones() {
    let b = PodmanService::start("reclaim-1");
    let (s, clock) = stack(
        &b,
        63400,
        "[blades.ip_pool]\nnetwork = \"shisa-pool-rc1\"\nsubnet = \"10.90.41.0/29\"\n",
        "",
    )
    .await;
    let t = s
        .say(
            "alice",
            "/container run --ip --port 80 --name old localhost/busybox -- sleep 3600",
        )
        .await;
    assert!(
        t.contains("is running on `r1`") && t.contains("address: 10.90.41.2"),
        "{t}"
    );
    let t = s
        .say(
            "alice",
            "/container run --name idle localhost/busybox -- sleep 3600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    assert!(s
        .say("alice", "/container stop old")
        .await
        .contains("is stopped"));
    let old = row(&s, "alice", "old").await.unwrap();
    assert_eq!(
        s.store().ip_of(old.id).await.unwrap(),
        None,
        "a stopped container's pool address goes back at once"
    );

    // Six days and an hour on: the idle one is long overdue (a day without CPU), so it is
    // warned with the whole half hour still to come; the stopped one is a day from removal.
    let mut inbox = Inbox::default();
    clock.store(6 * DAY + HOUR, Ordering::SeqCst);
    let w = inbox.wait(&s, "alice", "`idle` has used no CPU").await;
    assert!(
        w.contains("stopped in 30m") && w.contains("/container extend idle"),
        "{w}"
    );
    let w = inbox.wait(&s, "alice", "`old` has been stopped").await;
    assert!(
        (w.contains("removed in 23h") || w.contains("removed in 22h"))
            && w.contains("/container extend old"),
        "{w}"
    );
    // Warned once per deadline, not every sweep.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = s.store().outbox_take("alice").unwrap();
    assert!(
        again
            .iter()
            .all(|m| !m.message.contains("has been stopped")),
        "{again:?}"
    );

    // Asking past the role's cap (7 days) gets the cap.
    let t = s.say("alice", "/container extend old 30d").await;
    assert!(t.contains("the most your role allows (7d)"), "{t}");
    let t = s.say("alice", "/container extend old 2d").await;
    assert!(
        t.contains("(in 7d)") || t.contains("(in 6d)"),
        "a shorter extend keeps the longer one: {t}"
    );
    let t = s.say("bob", "/container extend old").await;
    assert!(
        t.contains("no container called `old`"),
        "not bob's to extend: {t}"
    );

    // The idle one's half hour passes: stopped and told.
    clock.store(6 * DAY + HOUR + 31 * 60, Ordering::SeqCst);
    let m = inbox
        .wait(&s, "alice", "`idle` was idle and was stopped")
        .await;
    assert!(m.contains("/container start idle"), "{m}");
    for _ in 0..100 {
        if row(&s, "alice", "idle").await.unwrap().state == "exited" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row(&s, "alice", "idle").await.unwrap().state, "exited");

    // Past the week, `old` stays: it was extended.
    clock.store(7 * DAY + 2 * HOUR, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        row(&s, "alice", "old").await.is_some(),
        "extended, so not removed"
    );
    // Past the extension (and its new warning's day): removed, its ports free.
    clock.store(14 * DAY + 2 * HOUR, Ordering::SeqCst);
    let _ = inbox.wait(&s, "alice", "`old` has been stopped").await;
    clock.store(15 * DAY + 3 * HOUR, Ordering::SeqCst);
    let m = inbox
        .wait(&s, "alice", "`old` was stopped for long and was removed")
        .await;
    assert!(m.contains("ports and address are free"), "{m}");
    for _ in 0..100 {
        if row(&s, "alice", "old").await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(row(&s, "alice", "old").await.is_none());
    assert_eq!(s.store().ports_of(old.id).await.unwrap().len(), 0);
    let out = b
        .cli()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("alice_old"),
        "gone from the blade too"
    );
    let audit = s
        .store()
        .with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM audit WHERE action = 'container.reclaim' AND detail IN ('stale', 'idle')",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap();
    // `idle`, stopped at the fortnight's start, went stale by its end and was removed too.
    assert_eq!(audit, 3, "each reclaim is audited (idle, stale, stale)");
    clock.store(0, Ordering::SeqCst);
    s.remove_all(&["alice"]).await;
    s.stop().await;
}

#[tokio::test]
async fn a_pool_of_three_addresses_serves_ten_run_stop_cycles() {
    let b = PodmanService::start("reclaim-2");
    let (s, _clock) = stack(
        &b,
        63440,
        "[blades.ip_pool]\nnetwork = \"shisa-pool-rc2\"\nsubnet = \"10.90.42.0/29\"\n",
        "",
    )
    .await;
    // A /29 has five addresses; two stay held by running containers, three are left.
    for n in ["hold-a", "hold-b"] {
        let t = s
            .say(
                "bob",
                &format!("/container run --ip --name {n} localhost/busybox -- sleep 3600"),
            )
            .await;
        assert!(t.contains("address: 10.90.42."), "{t}");
    }
    for i in 0..10 {
        let t = s
            .say(
                "alice",
                &format!("/container run --ip --name c{i} localhost/busybox -- sleep 3600"),
            )
            .await;
        assert!(t.contains("address: 10.90.42."), "cycle {i}: {t}");
        let t = s.say("alice", &format!("/container stop c{i}")).await;
        assert!(t.contains("is stopped"), "cycle {i}: {t}");
    }
    let t = s.say("admin", "/container blades").await;
    assert!(
        t.contains("| 2 / 5 |"),
        "ten stopped containers hold no address: {t}"
    );
    // A stopped one starts again on a fresh lease, and really has it.
    let t = s.say("alice", "/container start c0").await;
    let addr = t
        .split("address: ")
        .nth(1)
        .map(|a| a.trim().to_string())
        .unwrap_or_else(|| panic!("{t}"));
    let out = b
        .cli()
        .args([
            "inspect",
            "alice_c0",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        ])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        addrs.split_whitespace().any(|a| a == addr),
        "{addr} in {addrs}"
    );
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}

fn build(b: &PodmanService, tag: &str, label: &str) {
    let dir = tempfile::tempdir_in(crate::harness::run_root()).unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        format!("FROM localhost/busybox:latest\nLABEL shisa.test={label}\n"),
    )
    .unwrap();
    let out = b
        .cli()
        .args(["build", "-q", "--network=none", "-t", tag])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn has_image(b: &PodmanService, tag: &str) -> bool {
    b.cli()
        .args(["image", "exists", tag])
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn images_nobody_ran_are_pruned_but_not_a_courses_image() {
    let b = PodmanService::start("reclaim-3");
    build(&b, "localhost/old-lab:1", "old");
    build(&b, "localhost/courses-ml:v1", "course");
    let (s, clock) = stack(&b, 63480, "", "prune_seconds = 1\n").await;
    // The course's current version names that image.
    s.store()
        .with(|c| {
            c.execute(
                "INSERT INTO course_versions(project_id, version, course, sha, file, image, digest, applied_by, applied_at)
                 VALUES (9, 1, 'ml', 'abc', '', 'localhost/courses-ml:v1', 'sha256:x', 'sensei', 0)",
                [],
            )
        })
        .unwrap();
    // A container keeps its image (busybox) whatever the clock says.
    let t = s
        .say(
            "alice",
            "/container run --name keep localhost/busybox -- sleep 3600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        has_image(&b, "localhost/old-lab:1"),
        "two weeks have not passed"
    );
    clock.store(15 * DAY, Ordering::SeqCst);
    for _ in 0..100 {
        if !has_image(&b, "localhost/old-lab:1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !has_image(&b, "localhost/old-lab:1"),
        "pruned from the blade"
    );
    assert!(
        has_image(&b, "localhost/courses-ml:v1"),
        "a course's image stays"
    );
    assert!(
        has_image(&b, "localhost/busybox:latest"),
        "an image with a container stays"
    );
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shisa_pruned_images_total{blade=\"r1\"} 1"),
        "{m}"
    );
    clock.store(0, Ordering::SeqCst);
    s.remove_all(&["alice"]).await;
    s.stop().await;
}

#[tokio::test]
async fn a_full_blade_queues_a_run_and_starts_it_when_room_comes() {
    let b = PodmanService::start("reclaim-4");
    let (s, _clock) = stack(&b, 63520, "cpus = 2\nmemory = \"4G\"\n", "").await;
    let t = s
        .say(
            "alice",
            "/container run --cpus 2 --name big localhost/busybox -- sleep 3600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    let t = s
        .say(
            "bob",
            "/container run --cpus 1 --name next localhost/busybox -- sleep 3600",
        )
        .await;
    assert!(
        t.contains("number 1 in the queue") && t.contains("/container rm next"),
        "{t}"
    );
    let t = s.say("bob", "/container ps").await;
    assert!(t.contains("queued (#1 on `r1`)"), "{t}");
    let t = s
        .say("bob", "/container run --cpus 3 localhost/busybox")
        .await;
    assert!(
        t.contains("big enough"),
        "bigger than the blade: refused at once: {t}"
    );
    assert!(s
        .say("alice", "/container rm --force big")
        .await
        .contains("removed"));
    let m = dm(&s, "bob", "`next` is running on `r1`").await;
    assert!(m.contains("is running"), "{m}");
    assert_eq!(row(&s, "bob", "next").await.unwrap().state, "running");
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}

#[tokio::test]
async fn slow_work_and_one_users_burst_do_not_delay_another_users_run() {
    let b = PodmanService::start("reclaim-5");
    let (s, _clock) = stack(
        &b,
        63560,
        "",
        "[queue]\nquick_workers = 1\nslow_workers = 1\nper_blade = 1\n",
    )
    .await;
    // Ten slow tasks of alice's (SIF conversions) hold the one slow worker for a while.
    for i in 0..10 {
        let task = shisa::work::tasks::Task::Sif {
            image: "localhost/busybox:latest".into(),
            typed: format!("busybox-{i}"),
        };
        s.store()
            .enqueue(task.owned("alice", &format!("slow-{i}"), None, 1))
            .await
            .unwrap();
    }
    // And four runs of alice's go into the quick lane (at once) just before bob's one.
    let lines: Vec<String> = (0..4)
        .map(|i| format!("/container run --name a{i} localhost/busybox -- sleep 3600"))
        .collect();
    let alice = futures_util::future::join_all(lines.iter().map(|l| s.chat("alice", l)));
    let bob = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.chat(
            "bob",
            "/container run --name b0 localhost/busybox -- sleep 3600",
        )
        .await
    };
    let (a, r) = tokio::join!(alice, bob);
    assert!(a.iter().all(|r| !r.is_empty()) && !r.is_empty());
    let started = |name: &str| {
        let out = b
            .cli()
            .args(["inspect", name, "--format", "{{.State.StartedAt.UnixNano}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i128>()
            .unwrap_or(i128::MAX)
    };
    for _ in 0..300 {
        if row(&s, "alice", "a3")
            .await
            .is_some_and(|r| r.state == "running")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b0 = started("bob_b0");
    let alice: Vec<i128> = (0..4).map(|i| started(&format!("alice_a{i}"))).collect();
    let before = alice.iter().filter(|a| **a < b0).count();
    assert!(
        before <= 1,
        "bob's run waited at most the one turn of alice's already under way: {before} of alice's four went first ({b0} vs {alice:?})"
    );
    // In one first-in-first-out queue, all ten conversions queued before would have come
    // first too; in their own lane they took none of the quick lane's turns.
    let quick_turns: i64 = s
        .store()
        .with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM queue_turns WHERE lane = 'quick'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(quick_turns, 2, "alice and bob took turns in the quick lane");
    // Let the slow lane finish before the teardown check.
    for _ in 0..1200 {
        let n: i64 = s
            .store()
            .with(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM queue WHERE state IN ('queued', 'running')",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}
