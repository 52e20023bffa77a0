//! The native SIF writer and reader against Sylabs' `siftool` and squashfs-tools.

use std::process::Command;

use shisa::sif::{self, DataType, Object, StreamObject, WriteOptions};

use crate::harness::run_root;

fn squashfs(dir: &std::path::Path) -> Vec<u8> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::os::unix::fs::symlink("hello", root.join("bin/hi")).unwrap();
    let out = dir.join("fs.sqfs");
    let st = Command::new("mksquashfs")
        .arg(&root)
        .arg(&out)
        .args(["-noappend", "-comp", "gzip", "-quiet", "-no-progress"])
        .status()
        .expect("mksquashfs (squashfs-tools)");
    assert!(st.success());
    std::fs::read(out).unwrap()
}

fn siftool(args: &[&str]) -> String {
    let o = Command::new("siftool")
        .args(args)
        .output()
        .expect("siftool");
    assert!(
        o.status.success(),
        "siftool {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn siftool_reads_what_we_write() {
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    let fs = squashfs(dir.path());
    let path = dir.path().join("img.sif");
    let mut f = std::fs::File::create(&path).unwrap();
    let objects = vec![
        Object::new(
            DataType::Deffile,
            "",
            b"bootstrap: docker\nfrom: busybox\n".to_vec(),
        ),
        Object::new(
            DataType::GenericJson,
            "oci-config.json",
            br#"{"Cmd":["/bin/sh"]}"#.to_vec(),
        ),
        Object::squashfs(fs.clone(), "amd64"),
    ];
    let so = objects
        .into_iter()
        .map(|o| StreamObject {
            reader: Box::new(std::io::Cursor::new(o.data.clone())),
            object: o,
        })
        .collect();
    sif::write(&mut f, so, &WriteOptions::default()).unwrap();
    drop(f);
    let p = path.to_str().unwrap();
    let list = siftool(&["list", p]);
    assert!(
        list.contains("|Def.FILE")
            && list.contains("|JSON.Generic")
            && list.contains("FS (Squashfs/*System/amd64)"),
        "{list}"
    );
    let header = siftool(&["header", p]);
    assert!(header.contains("amd64"), "{header}");
    let info = siftool(&["info", "3", p]);
    assert!(
        info.contains("Squashfs") && info.contains("*System"),
        "{info}"
    );
    let dumped = Command::new("siftool")
        .args(["dump", "3", p])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        dumped, fs,
        "siftool dump of the partition is the squashfs we wrote"
    );
    let l = Command::new("unsquashfs")
        .args(["-lln", "-o"])
        .arg(
            sif::read_bytes(&std::fs::read(&path).unwrap())
                .unwrap()
                .primary()
                .unwrap()
                .offset
                .to_string(),
        )
        .arg(&path)
        .output()
        .unwrap();
    let l = String::from_utf8_lossy(&l.stdout);
    assert!(
        l.contains("squashfs-root/bin/hello") && l.contains("squashfs-root/bin/hi -> hello"),
        "{l}"
    );
}

#[test]
fn we_read_what_siftool_writes() {
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    let fs = squashfs(dir.path());
    let path = dir.path().join("ref.sif");
    let p = path.to_str().unwrap();
    siftool(&["new", p]);
    let sq = dir.path().join("fs.sqfs");
    siftool(&[
        "add",
        "--datatype",
        "4",
        "--parttype",
        "2",
        "--partfs",
        "1",
        "--partarch",
        "2",
        p,
        sq.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&path).unwrap();
    let s = sif::read_bytes(&bytes).unwrap();
    let d = s.primary().unwrap();
    assert_eq!(d.partition.unwrap().arch, *b"02");
    assert_eq!(d.offset % 4096, 0);
    assert_eq!(
        &bytes[d.offset as usize..(d.offset + d.size) as usize],
        &fs[..]
    );
}

/// perms, owner, path (without the root prefix), link target.
fn listing(
    text: &str,
    strip: &str,
) -> std::collections::BTreeMap<String, (String, String, Option<String>)> {
    let mut m = std::collections::BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let rest = f[5..].join(" ");
        let (path, target) = match rest.split_once(" -> ") {
            Some((p, t)) => (p.to_string(), Some(t.to_string())),
            None => (rest, None),
        };
        let path = path
            .trim_start_matches(strip)
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() {
            continue;
        }
        m.insert(path, (f[0].to_string(), f[1].to_string(), target));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_a_multi_layer_image_and_run_its_runscript() {
    crate::harness::test_images();
    let sock = crate::harness::podman();
    let podman = crate::harness::podman_cli;
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM localhost/busybox:latest\n\
         RUN rm /bin/vi && echo v2 > /etc/motd && mkdir -p /opt/app && echo one > /opt/app/a && chmod 0640 /opt/app/a && chown 20001:20001 /opt/app/a\n\
         RUN rm -rf /opt/app && mkdir /opt/app && echo two > /opt/app/b\n\
         RUN ln -s /etc/motd /motd-link && echo secret > /root/only-root && chmod 0600 /root/only-root\n\
         ENV GREETING=\"hello there\"\n\
         ENTRYPOINT [\"/bin/echo\"]\n\
         CMD [\"from\", \"runscript\"]\n",
    )
    .unwrap();
    let b = podman()
        .args(["build", "-q", "-t", "localhost/alice/multi:1"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let client = shisa::podman::PodmanClient::new(sock);
    let store = dir.path().join("store");
    let c = shisa::sif::convert::convert(
        &client,
        "localhost/alice/multi:1",
        &store,
        &dir.path().join("tmp"),
        &native(),
    )
    .await
    .unwrap();
    assert_eq!(
        (c.cached, c.writer),
        (false, "native"),
        "no silent fallback"
    );
    let p = c.path.to_str().unwrap();
    assert!(siftool(&["list", p]).contains("FS (Squashfs/*System/amd64)"));
    let bytes = std::fs::read(&c.path).unwrap();
    let s = sif::read_bytes(&bytes).unwrap();
    let d = s.primary().unwrap();
    let dumped = Command::new("siftool")
        .args(["dump", &d.id.to_string(), p])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        &dumped[..],
        &bytes[d.offset as usize..(d.offset + d.size) as usize]
    );
    let config = s
        .descriptors
        .iter()
        .find(|x| x.name == "oci-config.json")
        .unwrap();
    assert!(String::from_utf8_lossy(
        &bytes[config.offset as usize..(config.offset + config.size) as usize]
    )
    .contains("GREETING=hello there"));
    // The partition lists what `podman export` of the same image holds: paths, modes, owners, links.
    let sq = Command::new("unsquashfs")
        .args(["-lln", "-o", &d.offset.to_string(), p])
        .output()
        .unwrap();
    let sq = listing(&String::from_utf8_lossy(&sq.stdout), "squashfs-root/");
    let cid = String::from_utf8(
        podman()
            .args(["create", "localhost/alice/multi:1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let tar = dir.path().join("export.tar");
    assert!(podman()
        .args(["export", "-o"])
        .arg(&tar)
        .arg(cid.trim())
        .status()
        .unwrap()
        .success());
    let tv = Command::new("tar")
        .args(["-tvf"])
        .arg(&tar)
        .arg("--numeric-owner")
        .output()
        .unwrap();
    let ex = listing(&String::from_utf8_lossy(&tv.stdout), "");
    let _ = podman().args(["rm", "-f", cid.trim()]).output();
    let podman_made = [
        "run",
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev",
        "proc",
        "sys",
    ];
    let mut compared = 0;
    for (path, (perm, owner, target)) in &ex {
        if podman_made
            .iter()
            .any(|m| path == m || path.starts_with(&format!("{m}/")))
        {
            continue;
        }
        let got = sq
            .get(path)
            .unwrap_or_else(|| panic!("{path} is in the export but not in the SIF"));
        assert_eq!((&got.0, &got.1, &got.2), (perm, owner, target), "{path}");
        compared += 1;
    }
    assert!(compared > 200, "busybox has hundreds of links: {compared}");
    assert!(
        !sq.contains_key("bin/vi") && !sq.contains_key("opt/app/a") && sq.contains_key("opt/app/b"),
        "whiteouts and opaque directories applied"
    );
    assert_eq!(
        sq.get("motd-link").and_then(|x| x.2.clone()).as_deref(),
        Some("/etc/motd")
    );
    // The runscript does what the image's ENTRYPOINT and CMD say; the environment comes along.
    // The partition, loop-mounted read-only in place inside the SIF, is what a job would see.
    let root = dir.path().join("root");
    let _mounted = LoopMount::new(&c.path, d.offset, &root);
    let run = |args: &[&str]| {
        String::from_utf8(
            Command::new("chroot")
                .arg(&root)
                .args(args)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert_eq!(run(&["/.singularity.d/runscript"]), "from runscript\n");
    assert_eq!(
        run(&["/.singularity.d/runscript", "other", "words"]),
        "other words\n"
    );
    assert_eq!(
        run(&[
            "/bin/sh",
            "-c",
            ". /.singularity.d/env/10-docker2singularity.sh; echo $GREETING"
        ]),
        "hello there\n"
    );
    assert_eq!(run(&["/singularity"]), "from runscript\n");
    assert_eq!(
        std::fs::read_to_string(root.join("root/only-root")).unwrap(),
        "secret\n",
        "read by the unprivileged child"
    );
    let only = sq.get("root/only-root").unwrap();
    assert_eq!(
        (only.0.as_str(), only.1.as_str()),
        ("-rw-------", "0/0"),
        "owner and mode kept"
    );
    // A second request is the cached file, unchanged.
    let before = std::fs::metadata(&c.path).unwrap().modified().unwrap();
    let again = shisa::sif::convert::convert(
        &client,
        "localhost/alice/multi:1",
        &store,
        &dir.path().join("tmp"),
        &native(),
    )
    .await
    .unwrap();
    assert!(again.cached && again.path == c.path);
    assert_eq!(
        std::fs::metadata(&c.path).unwrap().modified().unwrap(),
        before
    );
    // The fallback writer (mksquashfs) gives the same tree.
    let other = shisa::sif::convert::convert(
        &client,
        "localhost/alice/multi:1",
        &dir.path().join("store-mk"),
        &dir.path().join("tmp"),
        &shisa::sif::convert::Options::new("gzip", shisa::sif::convert::Writer::Mksquashfs),
    )
    .await
    .unwrap();
    assert_eq!(other.writer, "mksquashfs");
    let ob = std::fs::read(&other.path).unwrap();
    let od = sif::read_bytes(&ob).unwrap().primary().unwrap().clone();
    let mk = Command::new("unsquashfs")
        .args(["-lln", "-o", &od.offset.to_string()])
        .arg(&other.path)
        .output()
        .unwrap();
    let mk = listing(&String::from_utf8_lossy(&mk.stdout), "squashfs-root/");
    assert_eq!(mk.keys().collect::<Vec<_>>(), sq.keys().collect::<Vec<_>>());
    for (path, v) in &mk {
        assert_eq!(sq.get(path), Some(v), "{path}: native and mksquashfs agree");
    }
}

fn native() -> shisa::sif::convert::Options {
    shisa::sif::convert::Options::new(
        "gzip",
        shisa::sif::convert::Writer::Native {
            helper: env!("CARGO_BIN_EXE_shisa").into(),
        },
    )
}

/// `mount -t squashfs -o loop,ro,offset=N`, undone on drop.
struct LoopMount(std::path::PathBuf);

impl LoopMount {
    fn new(file: &std::path::Path, offset: u64, at: &std::path::Path) -> LoopMount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "squashfs", "-o", &format!("loop,ro,offset={offset}")])
            .arg(file)
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopMount(at.to_path_buf())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sif_from_chat_with_a_signed_download_link() {
    crate::harness::test_images();
    let s = crate::harness::Stack::start(crate::harness::Opts {
        podman: true,
        ..Default::default()
    })
    .await;
    let r = s.chat("alice", "/container sif tools:1").await;
    assert!(!r[0].is_final());
    let t = &r.last().unwrap().text;
    assert!(
        t.contains("as a Singularity image") && t.contains("converted on `local`"),
        "{t}"
    );
    let path = s.data_dir.join("sif/alice/tools_1.sif");
    assert!(t.contains(&path.display().to_string()), "{t}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(sif::read_bytes(&bytes).unwrap().primary().is_some());
    let url = t
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.bytes().await.unwrap().as_ref(),
        &bytes[..],
        "the link serves the file"
    );
    assert!(
        url.contains("user=alice"),
        "the link is bound to its user: {url}"
    );
    let forged = url.replace("sig=", "sig=0");
    assert_eq!(reqwest::get(&forged).await.unwrap().status(), 403);
    let as_bob = url.replace("user=alice", "user=bob");
    assert_eq!(
        reqwest::get(&as_bob).await.unwrap().status(),
        403,
        "bound to alice"
    );
    let (exp_at, _) = url.split_once("&sig=").unwrap();
    let exp: i64 = exp_at.rsplit("exp=").next().unwrap().parse().unwrap();
    assert!(
        exp <= shisa::store::now() + 900,
        "valid for at most 15 minutes"
    );
    let later = url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    assert_eq!(
        reqwest::get(&later).await.unwrap().status(),
        403,
        "expiry is signed"
    );
    // Range requests, for resuming a large download.
    let http = reqwest::Client::new();
    let part = http
        .get(&url)
        .header("Range", "bytes=4096-4105")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 4096-4105/{}", bytes.len())
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[4096..4106]);
    let tail = http
        .get(&url)
        .header("Range", "bytes=-7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        tail.bytes().await.unwrap().as_ref(),
        &bytes[bytes.len() - 7..]
    );
    let past = http
        .get(&url)
        .header("Range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    // On disk: readable by alice (20001) through an ACL, by nobody else; her names only she lists.
    let content = std::fs::canonicalize(&path).unwrap();
    assert_eq!(
        shisa::sif::acl::readers(&content).unwrap(),
        std::collections::BTreeSet::from([20001])
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&content).unwrap().mode() & 0o777, 0o640);
    let linkdir = std::fs::metadata(s.data_dir.join("sif/alice")).unwrap();
    assert_eq!((linkdir.uid(), linkdir.mode() & 0o777), (20001, 0o700));
    let other = url.replacen("/sif/", "/sif/..%2F", 1);
    assert_ne!(reqwest::get(&other).await.unwrap().status(), 200);
    // Once per image: the second request is immediate.
    assert!(s
        .say("alice", "/container sif tools:1")
        .await
        .contains("already converted"));
    // Another user's unshared image: not found, nothing converted for them.
    assert!(s
        .say("bob", "/container sif alice/tools:1")
        .await
        .contains("There is no image"));
    s.stop().await;
}

#[test]
fn both_writers_keep_links_as_text_and_leave_devices_and_setuid_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("etc/motd"), "hi\n").unwrap();
    std::fs::set_permissions(
        root.join("etc/motd"),
        std::fs::Permissions::from_mode(0o4711),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", root.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/shadow", root.join("etc/up")).unwrap();
    assert!(Command::new("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .unwrap()
        .success());
    // An image's own /.singularity.d is replaced by ours.
    std::fs::create_dir_all(root.join(".singularity.d")).unwrap();
    std::fs::write(root.join(".singularity.d/runscript"), "evil").unwrap();
    let skel = shisa::sif::convert::skeleton(&serde_json::json!({"Cmd": ["/bin/true"]}));
    let out = dir.path().join("fs.sqfs");
    let n = shisa::sif::squash::write(&root, &out, "gzip", &skel).unwrap();
    assert_eq!(n.skipped, 1, "the device node");
    // The fallback writer, on the same tree.
    let work = dir.path().join("mk-work");
    std::fs::create_dir_all(&work).unwrap();
    let mk_out = dir.path().join("fs-mk.sqfs");
    let args =
        shisa::sif::convert::mksquashfs_args(root.to_str().unwrap(), &mk_out, "gzip", &skel, &work)
            .unwrap();
    let st = Command::new("mksquashfs").args(&args).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    for (writer, file) in [("native", &out), ("mksquashfs", &mk_out)] {
        let l = Command::new("unsquashfs")
            .arg("-lln")
            .arg(file)
            .output()
            .unwrap();
        let l = listing(&String::from_utf8_lossy(&l.stdout), "squashfs-root/");
        assert_eq!(l["escape"].2.as_deref(), Some("/etc/shadow"), "{writer}");
        assert_eq!(
            l["etc/up"].2.as_deref(),
            Some("../../../../etc/shadow"),
            "{writer}"
        );
        assert_eq!(
            l["etc/motd"].0, "-rwx--x--x",
            "{writer}: mode kept, setuid bit dropped"
        );
        assert!(l["pipe"].0.starts_with('p'), "{writer}");
        assert!(
            !l.contains_key("null"),
            "{writer}: device nodes are left out"
        );
    }
    // Extracting never writes outside the target.
    let x = dir.path().join("x");
    assert!(Command::new("unsquashfs")
        .args(["-q", "-d"])
        .arg(&x)
        .arg(&out)
        .status()
        .unwrap()
        .success());
    let rs = std::fs::read_to_string(x.join(".singularity.d/runscript")).unwrap();
    assert!(rs.contains("/bin/true") && !rs.contains("evil"), "{rs}");
    let root_mode = std::fs::metadata(&x).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        root_mode, 0o755,
        "the root keeps the image's mode, not backhand's 000"
    );
}
