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
        .args(["-noappend", "-comp", "gzip", "-quiet"])
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
