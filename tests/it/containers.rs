//! `/container` against real Podman: ports, ownership, what runs inside,
//! limits, GPUs through a fake CDI vendor, totals, and deaths reported.

use std::time::Duration;

use crate::harness::{test_images, Opts, Stack};

async fn stack(o: Opts) -> Stack {
    test_images();
    Stack::start(Opts { podman: true, ..o }).await
}

/// The host port from a `PORT/tcp -> HOST:PORT` line.
fn host_port(reply: &str, cport: u16) -> u16 {
    let prefix = format!("{cport}/tcp -> 127.0.0.1:");
    let line = reply
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no port line in: {reply}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn http_get(port: u16) -> Option<String> {
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/")).await {
            return r.text().await.ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn run_publishes_a_port_answered_over_http_and_the_rest_of_the_lifecycle() {
    let s = stack(Opts::default()).await;
    let cmd = "/container run --name web-http --port 80 localhost/busybox -- sh -c 'echo hello from $(id -un) > $HOME/index.html; echo started; exec httpd -f -p 80 -h $HOME'";
    let r = s.chat("alice", cmd).await;
    assert!(!r[0].is_final(), "acknowledged first: {r:?}");
    let t = &r.last().unwrap().text;
    assert!(
        t.contains("Container `web-http` is running on `local`"),
        "{t}"
    );
    let port = host_port(t, 80);
    assert!((61000..65000).contains(&port));
    // Port 80 inside, bound by an unprivileged process; reachable from outside.
    assert_eq!(http_get(port).await.as_deref(), Some("hello from alice\n"));
    let ps = s.say("alice", "/container ps").await;
    assert!(
        ps.contains("`web-http` | running | `busybox:latest`")
            && ps.contains(&format!("80/tcp -> 127.0.0.1:{port}")),
        "{ps}"
    );
    let logs = s.say("alice", "/container logs web-http").await;
    assert!(logs.contains("started"), "{logs}");
    let ins = s.say("alice", "/container inspect web-http").await;
    assert!(
        ins.contains("state: running (Podman: running)") && ins.contains("1 CPUs, 2G memory"),
        "{ins}"
    );
    // Name taken: says what to do instead, creates nothing.
    let t = s
        .say("alice", "/container run --name web-http localhost/busybox")
        .await;
    assert!(
        t.contains("already have a container called `web-http`, and it is running"),
        "{t}"
    );
    assert!(s
        .say("alice", "/container stop web-http")
        .await
        .contains("is stopped"));
    let t = s
        .say("alice", "/container run --name web-http localhost/busybox")
        .await;
    assert!(
        t.contains("`/container start web-http`") && t.contains("`/container rm web-http`"),
        "{t}"
    );
    assert!(
        s.say("alice", "/container ps")
            .await
            .contains("no containers"),
        "exited ones are hidden without --all"
    );
    assert!(s
        .say("alice", "/container ps --all")
        .await
        .contains("exited"));
    let t = s.say("alice", "/container start web-http").await;
    assert_eq!(host_port(&t, 80), port, "the lease survives a stop");
    assert_eq!(http_get(port).await.as_deref(), Some("hello from alice\n"));
    let t = s.say("alice", "/container rm web-http").await;
    assert!(t.contains("is running") && t.contains("--force"), "{t}");
    assert!(s
        .say("alice", "/container rm --force web-http")
        .await
        .contains("is removed"));
    assert_eq!(
        s.store().holdings("alice").await.unwrap(),
        Default::default(),
        "nothing held after rm"
    );
    s.stop().await;
}

#[tokio::test]
async fn nobody_else_can_see_or_touch_a_container_but_admins_who_are_audited() {
    let s = stack(Opts::default()).await;
    let t = s
        .say(
            "alice",
            "/container run --name own-1 localhost/alice/tools:1 -- sleep 600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    for cmd in [
        "stop own-1",
        "start own-1",
        "logs own-1",
        "inspect own-1",
        "rm --force own-1",
        "exec own-1 -- id",
    ] {
        let t = s.say("bob", &format!("/container {cmd}")).await;
        assert!(
            t.contains("You have no container called `own-1`"),
            "bob: {cmd}: {t}"
        );
    }
    assert!(s
        .say("bob", "/container ps --all")
        .await
        .contains("no containers"));
    assert!(s
        .say("bob", "/container ps --user alice")
        .await
        .contains("for admins"));
    // Another user's image is not runnable without sharing.
    let t = s.say("bob", "/container run alice/tools:1").await;
    assert!(t.contains("There is no image `alice/tools:1`"), "{t}");
    // The instructor sees course members read-only; cannot act.
    let t = s.say("sensei", "/container ps --group ai-course").await;
    assert!(t.contains("| alice | `own-1` | running"), "{t}");
    assert!(s
        .say("sensei", "/container stop --user alice own-1")
        .await
        .contains("for admins"));
    assert!(s
        .say("bob", "/container ps --group ai-course")
        .await
        .contains("instructors of that group"));
    // An admin may act; the owner is told, and the audit says who.
    assert!(s
        .say("admin", "/container stop --user alice own-1")
        .await
        .contains("is stopped"));
    s.dm_containing(
        "alice",
        "An admin (`admin`) did `stop` on your container `own-1`",
    )
    .await;
    let audit = s.store().audit_entries(Some("admin")).unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "container.stop"
            && a.resource.as_deref() == Some("container:alice/own-1")));
    assert!(s
        .say("alice", "/container rm own-1")
        .await
        .contains("removed"));
    s.stop().await;
}

#[tokio::test]
async fn what_runs_inside_is_the_owner_never_root() {
    let s = stack(Opts::default()).await;
    let t = s.say("alice", "/container run --name inside-1 --memory 256M --cpus 0.5 localhost/busybox -- sleep 600").await;
    assert!(t.contains("0.5 CPUs, 256M memory"), "{t}");
    let ex = |c: &'static str| {
        let s = &s;
        async move {
            s.say("alice", &format!("/container exec inside-1 -- sh -c '{c}'"))
                .await
        }
    };
    let t = ex("id -u; id -g; echo $HOME; pwd").await;
    let home = s.data_dir.join("home/alice").display().to_string();
    assert!(
        t.contains(&format!(
            "exited with code 0:\n```\n20001\n20001\n{home}\n{home}\n"
        )),
        "{t}"
    );
    assert!(ex("grep ^alice: /etc/passwd")
        .await
        .contains(&format!("alice:*:20001:20001:Alice Student:{home}:/bin/sh")));
    let t = ex("grep -E \"^(CapEff|NoNewPrivs)\" /proc/self/status").await;
    assert!(
        t.contains("CapEff:\t0000000000000000") && t.contains("NoNewPrivs:\t1"),
        "{t}"
    );
    assert!(ex("echo $NVIDIA_VISIBLE_DEVICES").await.contains("void"));
    // The home mount is nosuid,nodev; a file written there belongs to the owner on the host.
    let t = ex("grep \" $HOME \" /proc/mounts").await;
    assert!(t.contains("nosuid") && t.contains("nodev"), "{t}");
    let t = ex("mkdir -p $HOME/bin && cp /bin/busybox $HOME/bin/id && chmod 4755 $HOME/bin/id && echo data > $HOME/written && ls -l $HOME/bin/id").await;
    assert!(t.contains("exited with code 0"), "{t}");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(s.data_dir.join("home/alice/written")).unwrap();
    assert_eq!((m.uid(), m.gid()), (20001, 20001));
    let m = std::fs::metadata(s.data_dir.join("home/alice/bin/id")).unwrap();
    assert_eq!(
        m.uid(),
        20001,
        "a setuid file can only ever be setuid to its owner, never root"
    );
    // Running it inside does not gain privileges (nosuid + no-new-privileges).
    let t = ex("$HOME/bin/id -u").await;
    assert!(t.contains("\n20001\n"), "{t}");
    // Limits are in the container's cgroup (v1 or v2 paths).
    let t = ex("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max").await;
    assert!(t.contains("268435456"), "{t}");
    let t = ex("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max").await;
    assert!(t.contains("50000"), "{t}");
    // exec: exit code shown, bounded output.
    assert!(ex("exit 3").await.contains("exited with code 3"));
    let t = ex("yes | head -c 100000").await;
    assert!(
        t.contains("cut to its last 3000 bytes"),
        "{}",
        &t[..200.min(t.len())]
    );
    // NVIDIA_* and HOME from users are refused.
    let t = s
        .say(
            "alice",
            "/container run --env NVIDIA_VISIBLE_DEVICES=all localhost/busybox",
        )
        .await;
    assert!(
        t.contains("`NVIDIA_VISIBLE_DEVICES` is set by shisa"),
        "{t}"
    );
    s.say("alice", "/container rm --force inside-1").await;
    s.stop().await;
}

#[tokio::test]
async fn gpus_exclusive_exhaustion_wait_queue_and_release_on_stop() {
    let extra = "[limits.student]\ntotal_gpus = 2\nmax_gpus = 2\n".to_string();
    let s = stack(Opts {
        gpus: vec!["0".into(), "1".into()],
        extra,
        ..Default::default()
    })
    .await;
    let t = s
        .say(
            "alice",
            "/container run --name g-a --gpu localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("GPU shisa.test/gpu=0)"), "{t}");
    let t = s.say("alice", "/container exec g-a -- ls /dev").await;
    assert!(
        t.contains("shisa-test-gpu0") && !t.contains("shisa-test-gpu1"),
        "only its own GPU: {t}"
    );
    let t = s
        .say(
            "bob",
            "/container run --name g-b --gpus 1 localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("GPU shisa.test/gpu=1)"), "{t}");
    let t = s
        .say(
            "carol",
            "/container run --name g-c --gpu localhost/busybox -- sleep 600",
        )
        .await;
    // No GPU free: the run waits in the queue (with or without `--wait`).
    assert!(t.contains("number 1 in the queue"), "{t}");
    assert!(s
        .say("carol", "/container ps")
        .await
        .contains("`g-c` | queued (#1 on `local`)"));
    // alice stops: her GPU goes to carol, who is told by DM.
    assert!(s
        .say("alice", "/container stop g-a")
        .await
        .contains("stopped"));
    let dm = s.dm_containing("carol", "Container `g-c` is running").await;
    assert!(dm.contains("GPU shisa.test/gpu=0"), "{dm}");
    // Starting alice's again finds no GPU.
    let t = s.say("alice", "/container start g-a").await;
    assert!(t.contains("All 2 GPUs"), "{t}");
    // A container without --gpus never gets one; no GPUs asked of a GPU-less request.
    let t = s.say("alice", "/container exec g-b -- ls /dev").await;
    assert!(t.contains("no container"), "bob's, not alice's: {t}");
    for (u, n) in [("alice", "g-a"), ("bob", "g-b"), ("carol", "g-c")] {
        s.say(u, &format!("/container rm --force {n}")).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn gpu_containers_are_stopped_after_their_lifetime() {
    let extra =
        "[limits.student]\ngpu_lifetime = \"2s\"\n[containers]\nsweep_seconds = 1\n".to_string();
    let s = stack(Opts {
        gpus: vec!["0".into()],
        extra,
        ..Default::default()
    })
    .await;
    let t = s
        .say(
            "alice",
            "/container run --name life-1 --gpu localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("GPU shisa.test/gpu=0"), "{t}");
    let dm = s.dm_containing("alice", "maximum lifetime").await;
    assert!(dm.contains("`life-1`"), "{dm}");
    assert!(s
        .say("alice", "/container ps --all")
        .await
        .contains("`life-1` | exited"));
    // Its GPU is free again.
    assert!(s
        .say(
            "bob",
            "/container run --name life-2 --gpu localhost/busybox -- sleep 600"
        )
        .await
        .contains("GPU shisa.test/gpu=0"));
    // Spent GPU time is spent: starting it again does not renew it.
    let t = s.say("alice", "/container start life-1").await;
    assert!(t.contains("used up its GPU time"), "{t}");
    s.say("alice", "/container rm life-1").await;
    s.say("bob", "/container rm --force life-2").await;
    s.stop().await;
}

#[tokio::test]
async fn templates_and_private_ports() {
    let extra = "[templates.web]\nimage = \"localhost/busybox:latest\"\ncpus = 0.5\nmemory = \"128M\"\nports = [8080]\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/tmp\"]\ncomment = \"a web server\"\n".to_string();
    let s = stack(Opts {
        extra,
        ..Default::default()
    })
    .await;
    assert!(s
        .say("alice", "/container templates")
        .await
        .contains("| `web` | `localhost/busybox:latest` | 0.5 | 128M | 0 | 8080 | a web server |"));
    let t = s
        .say(
            "alice",
            "/container run --template web --name tpl-1 --private",
        )
        .await;
    assert!(t.contains("0.5 CPUs, 128M memory"), "{t}");
    let port = host_port(t.as_str(), 8080);
    assert!(
        t.contains(&format!(
            "(private: `ssh -L {port}:127.0.0.1:{port} 127.0.0.1`)"
        )),
        "{t}"
    );
    assert!(
        http_get(port).await.is_some(),
        "reachable on the blade's loopback"
    );
    let t = s.say("alice", "/container run --template nope").await;
    assert!(
        t.contains("There is no template `nope`. Templates: `busybox`, `web`"),
        "{t}"
    );
    s.say("alice", "/container rm --force tpl-1").await;
    s.stop().await;
}

#[tokio::test]
async fn gpus_shared_mode_says_so() {
    let s = stack(Opts {
        gpus: vec!["0".into()],
        gpu_share: 2,
        ..Default::default()
    })
    .await;
    let t = s
        .say(
            "alice",
            "/container run --name sh-a --gpu localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("GPU shisa.test/gpu=0)"), "{t}");
    let t = s
        .say(
            "bob",
            "/container run --name sh-b --gpu localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("shared with other containers"), "{t}");
    let t = s
        .say(
            "carol",
            "/container run --name sh-c --gpu localhost/busybox",
        )
        .await;
    assert!(t.contains("number 1 in the queue"), "share 2 of 1 GPU: {t}");
    s.say("carol", "/container rm --force sh-c").await;
    s.say("alice", "/container rm --force sh-a").await;
    s.say("bob", "/container rm --force sh-b").await;
    s.stop().await;
}

#[tokio::test]
async fn per_user_totals_and_per_request_limits() {
    let extra = "[limits.student]\ntotal_containers = 2\nmax_memory = \"1G\"\n".to_string();
    let s = stack(Opts {
        extra,
        ..Default::default()
    })
    .await;
    assert!(s
        .say(
            "alice",
            "/container run --name t-1 localhost/busybox -- sleep 600"
        )
        .await
        .contains("running"));
    assert!(s
        .say(
            "alice",
            "/container run --name t-2 --memory 512M localhost/busybox -- sleep 600"
        )
        .await
        .contains("running"));
    let t = s
        .say(
            "alice",
            "/container run --name t-3 localhost/busybox -- sleep 600",
        )
        .await;
    assert!(
        t.contains("limit of 2 containers")
            && t.contains("You now hold 2 containers, 2 CPUs, 1.5G memory"),
        "{t}"
    );
    let t = s
        .say("bob", "/container run --memory 2G localhost/busybox")
        .await;
    assert!(
        t.contains("You asked for 2G memory; one container may have at most 1G"),
        "{t}"
    );
    // Bad input changes nothing.
    let t = s
        .say("bob", "/container run --name x-1 localhost/nothere")
        .await;
    assert!(t.contains("There is no image `localhost/nothere`"), "{t}");
    let t = s
        .say("bob", "/container run --port 99999 localhost/busybox")
        .await;
    assert!(t.contains("`99999`"), "{t}");
    assert_eq!(s.store().holdings("bob").await.unwrap(), Default::default());
    s.say("alice", "/container rm --force t-1").await;
    s.say("alice", "/container rm --force t-2").await;
    s.stop().await;
}

#[tokio::test]
async fn a_container_killed_for_memory_is_reported_by_dm() {
    let s = stack(Opts::default()).await;
    let t = s.say("alice", "/container run --name oom-1 --memory 16M localhost/busybox -- sh -c 'echo filling; a=$(head -c 200000000 /dev/zero | tr \"\\0\" x); echo survived'").await;
    assert!(t.contains("is running"), "{t}");
    let dm = s.dm_containing("alice", "`oom-1`").await;
    assert!(
        dm.contains("stopped on its own with exit code 137")
            && dm.contains("16M")
            && dm.contains("ran out of memory"),
        "{dm}"
    );
    assert!(
        dm.contains("filling"),
        "the last log lines are included: {dm}"
    );
    let ps = s.say("alice", "/container ps --all").await;
    assert!(
        ps.contains("exited (out of memory)") || ps.contains("exited (137)"),
        "{ps}"
    );
    s.say("alice", "/container rm oom-1").await;
    s.stop().await;
}

/// A CUDA base image sets `NVIDIA_VISIBLE_DEVICES=all`; a container gets exactly its grant.
#[tokio::test]
async fn an_images_nvidia_env_never_widens_the_gpus_granted() {
    let s = stack(Opts {
        gpus: vec!["0".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let ctx = tempfile::tempdir_in(crate::harness::run_root()).unwrap();
    std::fs::write(
        ctx.path().join("Containerfile"),
        "FROM localhost/busybox:latest\nENV NVIDIA_VISIBLE_DEVICES=all\n",
    )
    .unwrap();
    let out = crate::harness::podman_cli()
        .args([
            "build",
            "-q",
            "--network=none",
            "-t",
            "localhost/alice/cuda:1",
        ])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, flag) in [("with-gpu", "--gpu"), ("no-gpu", "")] {
        let t = s
            .say(
                "alice",
                &format!("/container run --name {name} {flag} localhost/alice/cuda:1 -- sleep 600"),
            )
            .await;
        assert!(t.contains("is running"), "{t}");
        let env = s
            .say("alice", &format!("/container exec {name} -- env"))
            .await;
        assert!(
            env.contains("NVIDIA_VISIBLE_DEVICES=void")
                && !env.contains("NVIDIA_VISIBLE_DEVICES=all"),
            "{name}: {env}"
        );
    }
    let dev = s.say("alice", "/container exec with-gpu -- ls /dev").await;
    assert!(
        dev.contains("shisa-test-gpu0") && !dev.contains("shisa-test-gpu1"),
        "{dev}"
    );
    s.remove_all(&["alice"]).await;
    s.stop().await;
}

/// Totals hold at every start, not only at run: run A, stop A, run B, start A is refused
/// against `total_gpus = 1`; a restart keeps the GPU deadline of the first start.
#[tokio::test]
async fn totals_hold_at_every_start_and_a_restart_keeps_the_gpu_deadline() {
    let extra =
        "[limits.student]\ntotal_gpus = 1\nmax_gpus = 1\ngpu_lifetime = \"1h\"\n".to_string();
    let s = stack(Opts {
        gpus: vec!["0".into(), "1".into()],
        extra,
        ..Default::default()
    })
    .await;
    let run =
        |name: &str| format!("/container run --name {name} --gpu localhost/busybox -- sleep 600");
    assert!(s.say("alice", &run("tg-a")).await.contains("is running"));
    let deadline = |name: &'static str| {
        let st = s.store();
        async move {
            st.container_by_name("alice", name)
                .await
                .unwrap()
                .unwrap()
                .expires_at
        }
    };
    let first = deadline("tg-a").await;
    assert!(first.is_some());
    assert!(s
        .say("alice", "/container stop tg-a")
        .await
        .contains("stopped"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Restarted with its GPU free: the deadline is the first start's.
    let t = s.say("alice", "/container start tg-a").await;
    assert!(t.contains("is running"), "{t}");
    assert_eq!(deadline("tg-a").await, first);
    assert!(s
        .say("alice", "/container stop tg-a")
        .await
        .contains("stopped"));
    assert!(s.say("alice", &run("tg-b")).await.contains("is running"));
    let t = s.say("alice", "/container start tg-a").await;
    assert!(t.contains("over your limit of 1 GPUs"), "{t}");
    assert!(s
        .say("alice", "/container ps --all")
        .await
        .contains("`tg-a` | exited"));
    s.remove_all(&["alice"]).await;
    s.stop().await;
}

/// Only configured courses give instructors a view: a TA who is also in `students` sees
/// nobody through `students`, and sees a course's members only where named its instructor.
#[tokio::test]
async fn instructors_see_only_their_configured_courses() {
    let users = crate::harness::run_root().join("users-ta.toml");
    let text = std::fs::read_to_string(crate::harness::repo().join("deploy/demo-users.toml"))
        .unwrap()
        .replace(
            "members = [\"alice\", \"bob\", \"carol\"]",
            "members = [\"alice\", \"bob\", \"carol\", \"sensei\"]",
        );
    std::fs::write(&users, text).unwrap();
    let s = stack(Opts {
        users_file: Some(users),
        ..Default::default()
    })
    .await;
    for (u, n) in [("alice", "ca"), ("bob", "cb")] {
        let t = s
            .say(
                u,
                &format!("/container run --name {n} localhost/busybox -- sleep 600"),
            )
            .await;
        assert!(t.contains("is running"), "{t}");
    }
    let t = s.say("sensei", "/container ps --group students").await;
    assert!(t.contains("instructors of that group"), "{t}");
    assert!(!t.contains("`cb`") && !t.contains("`ca`"), "{t}");
    let t = s.say("sensei", "/container ps --group ai-course").await;
    assert!(t.contains("`ca`") && !t.contains("`cb`"), "{t}");
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}

/// Each owner's containers sit on their own isolated network: bob's container cannot open
/// alice's `--private` port by its address, alice's other container can, and the published
/// port still answers from the host.
#[tokio::test]
async fn owners_containers_cannot_reach_each_other_but_their_own_can() {
    let s = stack(Opts::default()).await;
    let srv = s
        .say(
            "alice",
            "/container run --name a-srv --private --port 8080 localhost/busybox -- httpd -f -p 8080",
        )
        .await;
    assert!(srv.contains("is running"), "{srv}");
    for (u, n) in [("alice", "a-cli"), ("bob", "b-cli")] {
        let t = s
            .say(
                u,
                &format!("/container run --name {n} localhost/busybox -- sleep 600"),
            )
            .await;
        assert!(t.contains("is running"), "{t}");
    }
    let pid = s
        .store()
        .container_by_name("alice", "a-srv")
        .await
        .unwrap()
        .unwrap()
        .podman_id
        .unwrap();
    let out = crate::harness::podman_cli()
        .args([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &pid,
        ])
        .output()
        .unwrap();
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!ip.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // The shell computes the verdict, so the echoed command line never contains it.
    let probe = format!(
        "/container exec {{}} -- sh -c \"echo x | nc -w 2 {ip} 8080 >/dev/null && echo R$((1+1)) || echo B$((2+2))\""
    );
    let mine = s.say("alice", &probe.replace("{}", "a-cli")).await;
    assert!(
        mine.contains("R2") && !mine.contains("B4"),
        "alice to alice: {mine}"
    );
    let theirs = s.say("bob", &probe.replace("{}", "b-cli")).await;
    assert!(
        theirs.contains("B4") && !theirs.contains("R2"),
        "bob to alice: {theirs}"
    );
    let port = host_port(&srv, 8080);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the published port answers on the host"
    );
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}

/// shisa's state on disk is its own: the data directory passes through only (the demo homes
/// are inside it), the database and its keys are 0600, `--env` values are sealed in the
/// database, and a key file others can read stops shisa from starting.
#[tokio::test]
async fn state_on_disk_is_shisas_alone() {
    use std::os::unix::fs::PermissionsExt;
    let s = stack(Opts::default()).await;
    let t = s
        .say(
            "alice",
            "/container run --name envy --env API_TOKEN=hunter2-secret localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    let t = s.say("alice", "/container exec envy -- env").await;
    assert!(
        t.contains("API_TOKEN=hunter2-secret"),
        "the container has it: {t}"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&s.data_dir),
        0o711,
        "no listing, passing through to the homes"
    );
    let db = s.data_dir.join("shisa.db");
    for p in [
        db.clone(),
        s.data_dir.join("shisa.db-wal"),
        s.data_dir.join("state.key"),
    ] {
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.extend(std::fs::read(s.data_dir.join("shisa.db-wal")).unwrap_or_default());
    assert!(
        !bytes.windows(14).any(|w| w == b"hunter2-secret"),
        "the value is not in the database in clear text"
    );
    assert!(s
        .say("alice", "/container rm --force envy")
        .await
        .contains("removed"));
    let cfg_path = s.data_dir.with_extension("toml");
    let data_dir = s.data_dir.clone();
    s.stop().await;
    std::fs::set_permissions(
        data_dir.join("state.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let cfg = shisa::config::Config::load(&cfg_path).unwrap();
    let e = shisa::app::App::new(cfg).err().expect("refused to start");
    assert!(e.to_string().contains("chmod 600"), "{e}");
}
