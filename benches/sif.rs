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
    let pdir = sock.parent().unwrap().to_path_buf();
    let podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", pdir.join("containers.conf"))
            .arg("--root")
            .arg(pdir.join("root"))
            .arg("--runroot")
            .arg(pdir.join("runroot"));
        c
    };
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

    // Baseline.
    let t0 = Instant::now();
    let cid = String::from_utf8(
        podman()
            .args(["create", "localhost/bench/big:1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let rootfs = work.path().join("rootfs");
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
    let sq = work.path().join("base.sqfs");
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
    let sif = work.path().join("base.sif");
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
    let baseline = t0.elapsed();
    let _ = podman().args(["rm", "-f", cid.trim()]).output();

    // shisa.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = shisa::podman::PodmanClient::new(sock);
    let store = work.path().join("store");
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
    let (c, ours) = run(&store, &native);
    assert!(!c.cached);
    let (cm, ours_mk) = run(&work.path().join("store-mk"), &mk);
    assert!(!cm.cached);
    let (again, cached) = run(&store, &native);
    assert!(again.cached);
    println!("image size: {} bytes", size.trim());
    println!(
        "baseline (export | tar -x, mksquashfs gzip, siftool new+add): {:.2} s",
        baseline.as_secs_f64()
    );
    println!(
        "shisa convert, native writer (mounted rootfs, backhand gzip in a confined child, native SIF): {:.2} s, ratio {:.3}",
        ours.as_secs_f64(),
        ours.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "shisa convert, mksquashfs fallback (mounted rootfs, mksquashfs gzip, native SIF): {:.2} s, ratio {:.3}",
        ours_mk.as_secs_f64(),
        ours_mk.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("cached request: {:.1} ms", cached.as_secs_f64() * 1000.0);
    println!(
        "sif sizes: baseline {} bytes, native {} bytes, mksquashfs {} bytes",
        std::fs::metadata(&sif).unwrap().len(),
        std::fs::metadata(&c.path).unwrap().len(),
        std::fs::metadata(&cm.path).unwrap().len()
    );
    let _ = podman()
        .args(["rmi", "-f", "localhost/bench/big:1"])
        .output();
}
