//! The squashfs partition: written natively with `backhand` (gzip or zstd),
//! from a mounted root filesystem plus the Apptainer skeleton.
//!
//! The image's files are untrusted, so this runs in a child process
//! (`shisa sif squash`) that the converter starts as `nobody` with only
//! CAP_DAC_READ_SEARCH and resource limits; `mksquashfs` is the fallback when
//! the child cannot be used.
//!
//! What the native writer cannot express (backhand 0.25): hard links become
//! separate inodes (their data is stored once, deduplicated), extended
//! attributes are dropped. Device nodes and sockets in an image are left out:
//! Apptainer mounts images `nodev`, so they could never work, and leaving them
//! out keeps a crafted image from carrying a device into a job.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use serde::{Deserialize, Serialize};

/// What the converter adds to every image: `/.singularity.d` and the links Apptainer looks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Skeleton {
    pub dirs: Vec<String>,
    /// (path, mode, content)
    pub files: Vec<(String, u32, String)>,
    /// (path, target)
    pub links: Vec<(String, String)>,
}

impl Skeleton {
    /// Top-level names the skeleton owns; the image's own copies are replaced.
    fn owned_top_level(&self) -> BTreeSet<String> {
        self.dirs
            .iter()
            .chain(self.files.iter().map(|f| &f.0))
            .chain(self.links.iter().map(|l| &l.0))
            .filter_map(|p| {
                p.trim_start_matches('/')
                    .split('/')
                    .next()
                    .map(str::to_string)
            })
            .collect()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Device nodes and sockets left out.
    pub skipped: u64,
}

fn header(m: &std::fs::Metadata) -> NodeHeader {
    NodeHeader::new(
        (m.mode() & 0o7777) as u16,
        m.uid(),
        m.gid(),
        m.mtime().clamp(0, u32::MAX as i64) as u32,
    )
}

fn compressor(comp: &str) -> anyhow::Result<FilesystemCompressor> {
    let id = match comp {
        "gzip" => Compressor::Gzip,
        "zstd" => Compressor::Zstd,
        other => anyhow::bail!("compression must be gzip or zstd, not {other}"),
    };
    Ok(FilesystemCompressor::new(id, None)?)
}

/// Squash `root` (never following its symlinks) and the skeleton into `out`.
pub fn write(root: &Path, out: &Path, comp: &str, skel: &Skeleton) -> anyhow::Result<Counts> {
    let mut fs = FilesystemWriter::default();
    fs.set_compressor(compressor(comp)?);
    // backhand's root defaults to mode 000 and time 0 (shared/docs/crates.md): take the image's.
    let rm = std::fs::symlink_metadata(root)?;
    anyhow::ensure!(rm.is_dir(), "{} is not a directory", root.display());
    fs.set_root_mode((rm.mode() & 0o7777) as u16);
    fs.set_root_uid(rm.uid());
    fs.set_root_gid(rm.gid());
    fs.set_time(rm.mtime().clamp(0, u32::MAX as i64) as u32);
    fs.set_no_duplicate_files(true);
    let owned = skel.owned_top_level();
    let mut counts = Counts::default();
    // Depth first, parents before children, names sorted for a reproducible file.
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(root.to_path_buf(), PathBuf::from("/"))];
    while let Some((dir, inside)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            if inside == Path::new("/") && owned.contains(&*name.to_string_lossy()) {
                continue;
            }
            let src = dir.join(&name);
            let dst = inside.join(&name);
            let m = std::fs::symlink_metadata(&src)?;
            let h = header(&m);
            let ft = m.file_type();
            if ft.is_dir() {
                fs.push_dir(&dst, h)?;
                counts.dirs += 1;
                subdirs.push((src, dst));
            } else if ft.is_file() {
                // Opened at write time: no descriptor held per file.
                fs.push_file_from_path(src, &dst, h)?;
                counts.files += 1;
            } else if ft.is_symlink() {
                // Stored as text; resolved later inside the container, never here.
                fs.push_symlink(std::fs::read_link(&src)?, &dst, h)?;
                counts.symlinks += 1;
            } else if ft.is_fifo() {
                fs.push_fifo(&dst, h)?;
            } else {
                counts.skipped += 1;
            }
        }
        // Reversed so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    let root_header = |mode: u32| NodeHeader::new(mode as u16, 0, 0, rm.mtime() as u32);
    for d in &skel.dirs {
        fs.push_dir(d, root_header(0o755))?;
    }
    for (path, mode, content) in &skel.files {
        fs.push_file(
            std::io::Cursor::new(content.clone().into_bytes()),
            path,
            root_header(*mode),
        )?;
    }
    for (path, target) in &skel.links {
        fs.push_symlink(target, path, root_header(0o777))?;
    }
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    fs.write(&mut w)?;
    w.flush()?;
    Ok(counts)
}
