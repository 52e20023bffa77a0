//! Several blades: one local, one behind a real sshd; placement, a blade going
//! down, drains, IP pools, reconciliation (crash consistency: `crash.rs`).

use std::time::Duration;

use crate::harness::{run_root, sshd, Opts, PodmanService, Stack};

fn two_blades(
    b1: &PodmanService,
    b2: &PodmanService,
    ports: u16,
    ip_octet: u8,
    tunnel: &std::path::Path,
) -> String {
    let s = sshd();
    format!(
        "[[blades]]\nname = \"b1\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [{p1}, {p1e}]\n\n\
         [[blades]]\nname = \"b2\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [{p2}, {p2e}]\n\
         [blades.ssh]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nkey_file = {:?}\nknown_hosts = {:?}\nremote_socket = {:?}\n\
         [blades.ip_pool]\nnetwork = \"shisa-pool-{ip_octet}\"\nsubnet = \"10.90.{ip_octet}.0/29\"\n",
        b1.socket.display().to_string(),
        tunnel.display().to_string(),
        s.port,
        s.key.display().to_string(),
        s.known_hosts.display().to_string(),
        b2.socket.display().to_string(),
        p1 = ports,
        p1e = ports + 19,
        p2 = ports + 20,
        p2e = ports + 39,
    )
}

/// Two fresh blades (b1 local, b2 behind sshd) and a shisa using them, once both answer.
async fn two_blade_stack(
    name: &str,
    ports: u16,
    ip_octet: u8,
) -> (PodmanService, PodmanService, Stack) {
    let b1 = PodmanService::start(&format!("{name}-1"));
    let b2 = PodmanService::start(&format!("{name}-2"));
    let tunnel = run_root().join(format!("tunnel-{name}.sock"));
    let blades = two_blades(&b1, &b2, ports, ip_octet, &tunnel);
    let s = Stack::start(Opts {
        blades: Some(blades),
        extra: EXTRA.into(),
        ..Default::default()
    })
    .await;
    // The remote blade comes up once the ssh tunnel is there.
    both_blades_up(&s).await;
    (b1, b2, s)
}

async fn both_blades_up(s: &Stack) {
    wait_until("both blades up", || async {
        s.say("admin", "/container blades")
            .await
            .matches("| up (Podman")
            .count()
            == 2
    })
    .await;
}

const EXTRA: &str = "[limits.student]\ntotal_containers = 20\ntotal_cpus = 100\ntotal_memory = \"100G\"\n[reconcile]\ninterval_seconds = 1\nhealth_seconds = 1\n";

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn blade_of(s: &Stack, user: &str, name: &str) -> String {
    s.store()
        .container_by_name(user, name)
        .await
        .unwrap()
        .unwrap()
        .blade
}

#[tokio::test]
async fn placement_a_blade_down_drains_and_admin_views() {
    let (mut b1, b2, s) = two_blade_stack("place", 63000, 1).await;
    // Least loaded first: four containers spread two and two.
    for i in 0..4 {
        let t = s
            .say(
                "alice",
                &format!("/container run --name p-{i} localhost/busybox -- sleep 600"),
            )
            .await;
        assert!(t.contains("is running"), "{t}");
    }
    let mut on = Vec::new();
    for i in 0..4 {
        on.push(blade_of(&s, "alice", &format!("p-{i}")).await);
    }
    assert_eq!(on.iter().filter(|b| *b == "b1").count(), 2, "{on:?}");
    // Through the tunnel the remote blade really runs it.
    let remote = on.iter().position(|b| b == "b2").unwrap();
    let out = b2
        .cli()
        .args(["ps", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("alice_p-{remote}")));
    // b1 goes down: it is reported, and new work goes to b2.
    b1.kill();
    wait_until("b1 down", || async {
        s.say("admin", "/container blades")
            .await
            .contains("| `b1` | **down**")
    })
    .await;
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shisa_blade_up{blade=\"b1\"} 0")
            && m.contains("shisa_blade_up{blade=\"b2\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("shisa_ports{blade=\"b2\",use=\"used\"} 0"),
        "{m}"
    );
    let t = s
        .say(
            "bob",
            "/container run --name after-down localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("is running on `b2`"), "{t}");
    // Drains are for admins, audited; with b1 down and b2 drained nothing can start.
    assert!(s
        .say("alice", "/container drain b2")
        .await
        .contains("for admins"));
    assert!(s
        .say("admin", "/container drain b2")
        .await
        .contains("drained"));
    let t = s.say("carol", "/container run localhost/busybox").await;
    assert!(t.contains("No blade is available right now"), "{t}");
    assert!(s
        .say("admin", "/container drain --undo b2")
        .await
        .contains("takes new containers again"));
    let audit = s.store().audit_entries(Some("admin")).unwrap();
    let drains: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "container.drain")
        .map(|a| (a.resource.clone(), a.outcome.clone(), a.detail.clone()))
        .collect();
    assert_eq!(
        drains,
        vec![
            (Some("blade:b2".into()), "ok".into(), None),
            (Some("blade:b2".into()), "ok".into(), Some("undo".into()))
        ]
    );
    assert!(s
        .store()
        .audit_entries(Some("alice"))
        .unwrap()
        .iter()
        .any(|a| a.action == "container.drain" && a.outcome == "denied"));
    // Instructors see their course members' containers (read-only), audited as theirs.
    let t = s.say("sensei", "/container ps --group ai-course").await;
    assert!(t.contains("| alice | `p-0`"), "{t}");
    assert!(s
        .store()
        .audit_entries(Some("sensei"))
        .unwrap()
        .iter()
        .any(|a| a.action == "container.ps" && a.outcome == "ok"));
    // b1 comes back (its containers ran on meanwhile); everything is removed as its owner would.
    b1.revive();
    both_blades_up(&s).await;
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}

#[tokio::test]
async fn ip_pool_exhaustion_and_release_and_reconciliation_after_a_hand_removal() {
    let (_b1, b2, s) = two_blade_stack("ip", 63100, 2).await;
    // A /29 has 5 addresses for containers (the first host is the gateway).
    for i in 0..5 {
        let t = s
            .say(
                "alice",
                &format!("/container run --ip --name ip-{i} localhost/busybox -- sleep 600"),
            )
            .await;
        assert!(
            t.contains("is running on `b2`") && t.contains(&format!("address: 10.90.2.{}", i + 2)),
            "{t}"
        );
    }
    let out = b2
        .cli()
        .args([
            "inspect",
            "alice_ip-0",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        ])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        addrs.split_whitespace().any(|a| a == "10.90.2.2"),
        "the container really has the leased address (and one on its owner's network): {addrs}"
    );
    let t = s.say("bob", "/container run --ip localhost/busybox").await;
    assert!(
        t.contains("All 5 addresses of `b2`'s IP pool are in use")
            && t.contains("Remove a container"),
        "{t}"
    );
    let t = s
        .say("admin", "/container run --ip localhost/busybox")
        .await;
    assert!(
        t.contains("10.90.2.2 alice/ip-0") && t.contains("10.90.2.6 alice/ip-4"),
        "admins see who holds them: {t}"
    );
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("shisa_ips{blade=\"b2\",use=\"free\"} 0"), "{m}");
    assert!(s
        .say("alice", "/container rm --force ip-1")
        .await
        .contains("removed"));
    let t = s
        .say(
            "bob",
            "/container run --ip --name bob-ip localhost/busybox -- sleep 600",
        )
        .await;
    assert!(
        t.contains("address: 10.90.2.3"),
        "released and leased again: {t}"
    );
    // Removed by hand on the blade: reconciliation notices, releases, tells the owner.
    let ports_before = s.store().blade_load("b2").await.unwrap();
    let out = b2
        .cli()
        .args(["rm", "-f", "-t", "0", "alice_ip-3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until("reconciliation", || async {
        s.store()
            .container_by_name("alice", "ip-3")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let after = s.store().blade_load("b2").await.unwrap();
    assert_eq!(after.ips, ports_before.ips - 1);
    let dm = s.store().outbox_take("alice").unwrap();
    assert!(
        dm.iter().any(|m| m
            .message
            .contains("`ip-3` on `b2` was removed outside shisa")),
        "{dm:?}"
    );
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shisa_reconcile_repairs_total{blade=\"b2\",kind=\"removed_outside\"} 1"),
        "{m}"
    );
    // Pool containers are isolated from each other on the pool's bridge: bob's cannot open
    // alice's unpublished port by her pool address; alice's own container reaches it over
    // her own network; the pool address answers from the host (the way in from outside).
    let web = s
        .say(
            "alice",
            "/container run --ip --name ip-web localhost/busybox -- httpd -f -p 8080",
        )
        .await;
    let addr = web
        .split("address: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .unwrap_or_else(|| panic!("no address in {web}"))
        .to_string();
    let nets = b2
        .cli()
        .args([
            "inspect",
            "alice_ip-web",
            "--format",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        ])
        .output()
        .unwrap();
    let nets = String::from_utf8_lossy(&nets.stdout).to_string();
    let own = nets
        .split_whitespace()
        .find(|kv| !kv.starts_with("shisa-pool-"))
        .and_then(|kv| kv.split_once('='))
        .map(|(_, ip)| ip.to_string())
        .unwrap_or_else(|| panic!("alice's own network: {nets}"));
    let probe = |to: &str| {
        format!("-- sh -c \"echo x | nc -w 2 {to} 8080 >/dev/null && echo R$((1+1)) || echo B$((2+2))\"")
    };
    let mut up = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect((addr.as_str(), 8080)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the pool address answers from the host");
    let theirs = s
        .say("bob", &format!("/container exec bob-ip {}", probe(&addr)))
        .await;
    assert!(
        theirs.contains("B4") && !theirs.contains("R2"),
        "bob to alice's pool address: {theirs}"
    );
    let mine = s
        .say("alice", &format!("/container exec ip-0 {}", probe(&own)))
        .await;
    assert!(
        mine.contains("R2") && !mine.contains("B4"),
        "alice to alice over her network: {mine}"
    );
    s.remove_all(&["alice", "bob"]).await;
    s.stop().await;
}

/// No adapter text reaches a student: with the blade's Podman gone, every answer names
/// the blade or a reference, never the socket, the error of the connection or Podman's words.
#[tokio::test]
async fn an_unreachable_blade_shows_no_adapter_text_in_replies() {
    let mut b = PodmanService::start("unreach");
    let blades = format!(
        "[[blades]]\nname = \"b1\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\nport_range = [63300, 63319]\n",
        b.socket.display().to_string()
    );
    let s = Stack::start(Opts {
        blades: Some(blades),
        extra: format!("{EXTRA}[queue]\nmax_attempts = 2\n"),
        ..Default::default()
    })
    .await;
    wait_until("b1 up", || async {
        s.say("admin", "/container blades")
            .await
            .contains("| up (Podman")
    })
    .await;
    let t = s
        .say(
            "alice",
            "/container run --name w localhost/busybox -- sleep 600",
        )
        .await;
    assert!(t.contains("is running"), "{t}");
    b.kill();
    wait_until("b1 down", || async {
        s.say("admin", "/container blades")
            .await
            .contains("**down**")
    })
    .await;
    let socket = b.socket.display().to_string();
    let leaks = |t: &str| {
        [
            socket.as_str(),
            "podman.sock",
            "os error",
            "Connection refused",
            "No such file",
            "hyper",
            "client error",
        ]
        .into_iter()
        .filter(|n| t.contains(n))
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let mut replies = Vec::new();
    replies.push(s.say("alice", "/container info").await);
    replies.push(s.say("alice", "/container logs w").await);
    // Queued: retried once, then the final answer (nothing half-done).
    replies.push(s.say("alice", "/container stop w").await);
    replies.push(
        s.say(
            "alice",
            "/container run --name v localhost/busybox -- sleep 600",
        )
        .await,
    );
    for t in &replies {
        assert!(leaks(t).is_empty(), "adapter text {:?} in: {t}", leaks(t));
    }
    assert!(replies[0].contains("`b1`: **down**"), "{}", replies[0]);
    assert!(replies[1].contains("reference"), "{}", replies[1]);
    assert!(
        replies[2].contains("could not be completed"),
        "{}",
        replies[2]
    );
    b.revive();
    wait_until("b1 up again", || async {
        s.say("admin", "/container blades")
            .await
            .contains("| up (Podman")
    })
    .await;
    s.remove_all(&["alice"]).await;
    s.stop().await;
}
