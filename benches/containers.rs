//! Benchmark (not a test): 50 containers started through shisa versus 50
//! `podman run -d` of the same image, and the slash-command acknowledgement
//! latency meanwhile. Needs root and the packages of deploy/install-deps.sh.
//!
//!     cargo bench --bench containers            # N=50
//!     SHISA_BENCH_N=10 cargo bench --bench containers
//!
//! Results go in docs/benchmarks.md, with the machine and the date.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[path = "common/mod.rs"]
mod common;

use common::{pct, remove_all};
use std::time::{Duration, Instant};

use harness::{run_root, test_images, Opts, Stack};

fn main() {
    let n: usize = std::env::var("SHISA_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    test_images();
    remove_all();
    // Baseline: n × `podman run -d`, one after another, same image, same limits.
    let t0 = Instant::now();
    for i in 0..n {
        let out = harness::podman_cli()
            .args([
                "run",
                "-d",
                "--name",
                &format!("bench-podman-{i}"),
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
    }
    let podman = t0.elapsed();
    remove_all();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (shisa, mut acks) = rt.block_on(async {
        let extra = "[limits.student]\ntotal_containers = 1000\ntotal_cpus = 1000\ntotal_memory = \"1000G\"\n[queue]\nquick_workers = 1\nper_blade = 1\n".to_string();
        let data_dir = tempfile::tempdir_in(run_root()).unwrap().keep();
        let o = Opts { podman: true, extra, data_dir: Some(data_dir.clone()), ..Default::default() };
        let path = data_dir.with_extension("toml");
        // The harness's config has no [queue] table; ours replaces the default of 4 quick workers with 1,
        // the same concurrency as the sequential baseline.
        std::fs::write(&path, harness::config_text(&o, &data_dir)).unwrap();
        let s = Stack::start_with(&path, data_dir).await;
        // Warm up: the home directory, the link, the image check.
        s.say("alice", "/container whoami").await;
        let id = shisa::cli::chat::demo_user_id(&harness::demo_users(), "alice");
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let cfg = shisa::config::Config::load(&s.cfg.path).unwrap();
            let mut cfg = cfg;
            cfg.server.public_url = s.cfg.server.public_url.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let mut ack = None;
                let line = format!("/container run --name bench-{i} --memory 64M --cpus 0.1 localhost/busybox -- sleep 3600");
                let replies = shisa::cli::chat::send(&cfg, "alice", &id, &line, Duration::from_secs(600), |_| {
                    if ack.is_none() {
                        ack = Some(sent.elapsed());
                    }
                })
                .await
                .unwrap();
                let last = replies.last().unwrap();
                assert!(last.text.contains("is running"), "{}", last.text);
                ack.unwrap()
            }));
            // Requests arrive over a few seconds, as from a class, not all in one instant.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut acks = Vec::new();
        for t in tasks {
            acks.push(t.await.unwrap());
        }
        let total = t0.elapsed();
        s.stop().await;
        (total, acks)
    });
    remove_all();
    println!("containers: {n}");
    println!("podman run -d (sequential): {:.2} s", podman.as_secs_f64());
    println!(
        "shisa /container run (1 worker): {:.2} s",
        shisa.as_secs_f64()
    );
    println!(
        "ratio shisa/podman: {:.3}",
        shisa.as_secs_f64() / podman.as_secs_f64()
    );
    println!(
        "ack latency p50: {:.1} ms",
        pct(&mut acks, 0.5).as_secs_f64() * 1000.0
    );
    println!(
        "ack latency p99: {:.1} ms",
        pct(&mut acks, 0.99).as_secs_f64() * 1000.0
    );
}
