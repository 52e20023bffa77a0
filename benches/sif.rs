//! Benchmark (not a test): converting an image of at least 300 MB to SIF with
//! shisa versus the baseline pipeline `podman export | tar -x`,
//! `mksquashfs -comp gzip`, `siftool new` + `siftool add`; and the cached request.
//! Needs root and deploy/install-deps.sh's packages.
//!
//!     cargo bench --bench sif          # SHISA_BENCH_MB=300 by default

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

use std::process::Command;
use std::time::Instant;

fn main() {
    let mb: u64 = std::env::var("SHISA_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    harness::test_images();
    let sock = harness::podman();
    let podman = harness::podman_cli;
    // A generated image: three layers, half random (incompressible) and half text-like data, many files.
    let ctx = tempfile::tempdir_in(harness::run_root()).unwrap();
    let per = mb / 6;
    let mut cf = String::from("FROM localhost/busybox:latest\n");
    for layer in 0..3 {
        cf.push_str(&format!(
            "RUN mkdir -p /data/l{layer} && cd /data/l{layer} && for i in $(seq 1 {n}); do head -c 1048576 /dev/urandom > r$i; yes \"line $i of layer {layer}\" | head -c 1048576 > t$i; done\n",
            n = per
        ));
    }
    std::fs::write(ctx.path().join("Containerfile"), cf).unwrap();
    let b = podman()
        .args(["build", "-q", "-t", "localhost/bench/big:1"])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let size = String::from_utf8(
        podman()
            .args([
                "image",
                "inspect",
                "--format",
                "{{.Size}}",
                "localhost/bench/big:1",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let work = tempfile::tempdir_in(harness::run_root()).unwrap();
    let procs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();

    // The baseline pipeline, from a fresh directory each time.
    let baseline_once = |dir: &std::path::Path| -> (std::time::Duration, u64) {
        let t0 = Instant::now();
        let cid = String::from_utf8(
            podman()
                .args(["create", "localhost/bench/big:1"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        // `podman export | tar -x`, a real pipe.
        let mut export = podman()
            .args(["export", cid.trim()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&rootfs)
            .stdin(export.stdout.take().unwrap())
            .status()
            .unwrap();
        assert!(export.wait().unwrap().success() && tar.success());
        let sq = dir.join("base.sqfs");
        assert!(Command::new("mksquashfs")
            .arg(&rootfs)
            .arg(&sq)
            .args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-comp",
                "gzip",
                "-processors",
                &procs
            ])
            .status()
            .unwrap()
            .success());
        let sif = dir.join("base.sif");
        assert!(Command::new("siftool")
            .arg("new")
            .arg(&sif)
            .status()
            .unwrap()
            .success());
        assert!(Command::new("siftool")
            .args([
                "add",
                "--datatype",
                "4",
                "--parttype",
                "2",
                "--partfs",
                "1",
                "--partarch",
                "2"
            ])
            .arg(&sif)
            .arg(&sq)
            .status()
            .unwrap()
            .success());
        let _ = podman().args(["rm", "-f", cid.trim()]).output();
        (t0.elapsed(), std::fs::metadata(&sif).unwrap().len())
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = shisa::podman::PodmanClient::new(sock);
    let native = shisa::sif::convert::Options::new(
        "gzip",
        shisa::sif::convert::Writer::Native {
            helper: env!("CARGO_BIN_EXE_shisa").into(),
        },
    );
    let mk = shisa::sif::convert::Options::new("gzip", shisa::sif::convert::Writer::Mksquashfs);
    let run = |store: &std::path::Path, opts: &shisa::sif::convert::Options| {
        let t = Instant::now();
        let c = rt
            .block_on(shisa::sif::convert::convert(
                &client,
                "localhost/bench/big:1",
                store,
                &work.path().join("tmp"),
                opts,
            ))
            .unwrap();
        (c, t.elapsed())
    };
    // Interleaved rounds, each from a fresh directory after `sync`, so neither
    // order nor the previous run's writeback favours one pipeline; medians reported.
    let rounds: usize = std::env::var("SHISA_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (mut tb, mut tn, mut tm) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sb, mut sn, mut sm) = (0, 0, 0);
    let sync = || {
        let _ = Command::new("sync").status();
    };
    for r in 0..rounds {
        let d = work.path().join(format!("round{r}"));
        std::fs::create_dir_all(&d).unwrap();
        sync();
        let (t, size) = baseline_once(&d);
        tb.push(t.as_secs_f64());
        sb = size;
        sync();
        let (c, t) = run(&d.join("native"), &native);
        assert!(!c.cached && c.writer == "native");
        tn.push(t.as_secs_f64());
        sn = std::fs::metadata(&c.path).unwrap().len();
        sync();
        let (c, t) = run(&d.join("mk"), &mk);
        assert!(!c.cached && c.writer == "mksquashfs");
        tm.push(t.as_secs_f64());
        sm = std::fs::metadata(&c.path).unwrap().len();
        let (again, cached) = run(&d.join("native"), &native);
        assert!(again.cached);
        if r + 1 == rounds {
            println!("cached request: {:.1} ms", cached.as_secs_f64() * 1000.0);
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "image size: {} bytes; {rounds} interleaved rounds",
        size.trim()
    );
    println!(
        "baseline (export | tar -x, mksquashfs gzip, siftool new+add): [{}] s",
        show(&tb)
    );
    println!(
        "shisa, native writer (mounted rootfs, backhand gzip on all cores in a confined child, native SIF): [{}] s",
        show(&tn)
    );
    println!(
        "shisa, mksquashfs fallback (mounted rootfs, mksquashfs gzip, native SIF): [{}] s",
        show(&tm)
    );
    let (b, n, m) = (median(&mut tb), median(&mut tn), median(&mut tm));
    println!(
        "medians: baseline {b:.2} s, native {n:.2} s (ratio {:.3}), mksquashfs {m:.2} s (ratio {:.3})",
        n / b,
        m / b
    );
    println!("sif sizes: baseline {sb} bytes, native {sn} bytes, mksquashfs {sm} bytes");
    let _ = podman()
        .args(["rmi", "-f", "localhost/bench/big:1"])
        .output();
}
