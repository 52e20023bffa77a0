//! Benchmark (not a test): a lecture burst. N students (default 200), each their own
//! account, send `/container run` over HTTP as Mattermost does, spread over 5 s, to one
//! blade; against the same N `podman run -d` arriving on the same schedule and run two at
//! a time. Prints acknowledgement and ready-time percentiles and the ratio of the p95s.
//! Needs root and the packages of deploy/install-deps.sh.
//!
//!     cargo bench --bench burst
//!     SHISA_BENCH_N=50 cargo bench --bench burst
//!
//! Results go in docs/benchmarks.md, with the machine and the date.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[path = "common/mod.rs"]
mod common;

use common::{pct, remove_all};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{run_root, test_images, Opts, Stack};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n` students of their own in a static users file.
fn users_file(n: usize) -> std::path::PathBuf {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "[[users]]\nuid = \"s{i:03}\"\nuid_number = {}\ngid_number = {}\nname = \"Student {i}\"\nmail = \"s{i:03}@example.edu\"\nmattermost_user_id = \"{:0>26}\"\n\n",
            30000 + i,
            30000 + i,
            format!("st{i}")
        ));
    }
    let p = run_root().join(format!("burst-users-{n}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

fn main() {
    let n: usize = std::env::var("SHISA_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let spread = Duration::from_secs(5);
    let gap = spread / n as u32;
    test_images();
    remove_all();

    // Baseline: the same arrivals, two `podman run -d` at a time.
    let queue: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let ready: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (queue, ready, done) = (queue.clone(), ready.clone(), done.clone());
            std::thread::spawn(move || loop {
                if done.load(std::sync::atomic::Ordering::SeqCst) >= n {
                    return;
                }
                let next = queue.lock().unwrap().pop();
                let Some((i, arrived)) = next else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let out = harness::podman_cli()
                    .args([
                        "run",
                        "-d",
                        "--name",
                        &format!("burst-podman-{i}"),
                        "--memory",
                        "64m",
                        "--cpus",
                        "0.1",
                        "localhost/busybox:latest",
                        "sleep",
                        "3600",
                    ])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ready.lock().unwrap().push(arrived.elapsed());
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    for i in 0..n {
        // Oldest first: insert at the front, pop from the back.
        queue.lock().unwrap().insert(0, (i, Instant::now()));
        std::thread::sleep(gap);
    }
    for w in workers {
        w.join().unwrap();
    }
    let mut podman_ready = ready.lock().unwrap().clone();
    remove_all();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let users = users_file(n);
    let (mut acks, mut shisa_ready) = rt.block_on(async {
        let data_dir = tempfile::tempdir_in(run_root()).unwrap().keep();
        let o = Opts {
            podman: true,
            users_file: Some(users.clone()),
            data_dir: Some(data_dir.clone()),
            ..Default::default()
        };
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, harness::config_text(&o, &data_dir)).unwrap();
        let s = Stack::start_with(&path, data_dir).await;
        // Warm up the image check once (every student's home is made on their first run).
        s.say("s000", "/container whoami").await;
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut cfg = shisa::config::Config::load(&s.cfg.path).unwrap();
            cfg.server.public_url = s.cfg.server.public_url.clone();
            let uid = format!("s{i:03}");
            let id = format!("{:0>26}", format!("st{i}"));
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let mut ack = None;
                let line = "/container run --name lab --memory 64M --cpus 0.1 localhost/busybox -- sleep 3600";
                let replies = shisa::cli::chat::send(&cfg, &uid, &id, line, Duration::from_secs(900), |_| {
                    if ack.is_none() {
                        ack = Some(sent.elapsed());
                    }
                })
                .await
                .unwrap();
                let last = replies.last().unwrap();
                assert!(last.text.contains("is running"), "{uid}: {}", last.text);
                (ack.unwrap(), sent.elapsed())
            }));
            tokio::time::sleep(gap).await;
        }
        let mut acks = Vec::new();
        let mut ready = Vec::new();
        for t in tasks {
            let (a, r) = t.await.unwrap();
            acks.push(a);
            ready.push(r);
        }
        s.stop_for_restart().await;
        (acks, ready)
    });
    remove_all();
    let (pp95, sp95) = (pct(&mut podman_ready, 0.95), pct(&mut shisa_ready, 0.95));
    println!("students: {n}, over {} s, one blade", spread.as_secs());
    println!(
        "ack p50 / p99: {:.1} / {:.1} ms",
        ms(pct(&mut acks, 0.5)),
        ms(pct(&mut acks, 0.99))
    );
    println!(
        "shisa ready p50 / p95 / max: {:.2} / {:.2} / {:.2} s",
        pct(&mut shisa_ready, 0.5).as_secs_f64(),
        sp95.as_secs_f64(),
        pct(&mut shisa_ready, 1.0).as_secs_f64()
    );
    println!(
        "podman run -d, 2 at a time, ready p50 / p95 / max: {:.2} / {:.2} / {:.2} s",
        pct(&mut podman_ready, 0.5).as_secs_f64(),
        pp95.as_secs_f64(),
        pct(&mut podman_ready, 1.0).as_secs_f64()
    );
    println!(
        "ratio of the p95s, shisa / podman: {:.2}",
        sp95.as_secs_f64() / pp95.as_secs_f64()
    );
}
