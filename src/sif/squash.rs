//! The squashfs partition: written natively with `backhand` (gzip or zstd),
//! from a mounted root filesystem plus the Apptainer skeleton.
//!
//! The image's files are untrusted, so this runs in a child process
//! (`shisa sif squash`) that the converter starts as `nobody` with only
//! CAP_DAC_READ_SEARCH and resource limits; `mksquashfs` is the fallback when
//! the child cannot be used.
//!
//! backhand's writer compresses on one thread (issue #279 upstream). To use
//! every core, `Ahead` compresses the blocks the writer is about to ask for on
//! worker threads, in the writer's own order, and the writer's compressor
//! hook takes the finished block instead of compressing it again (checked
//! byte for byte; anything unexpected is compressed inline, so the output is
//! the same either way).
//!
//! What the native writer cannot express (backhand 0.25): hard links become
//! separate inodes (their data is stored once, deduplicated), extended
//! attributes are dropped. Device nodes and sockets in an image are left out:
//! Apptainer mounts images `nodev`, so they could never work, and leaving them
//! out keeps a crafted image from carrying a device into a job. Setuid and setgid
//! bits are dropped for the same reason (mounted `nosuid`, and never trusted).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::kind::Kind;
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};
use serde::{Deserialize, Serialize};
use std::sync::{Condvar, Mutex, OnceLock};

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
        // No setuid or setgid bit in a SIF: its files are an image's, untrusted.
        (m.mode() & 0o1777) as u16,
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

/// Squash `root` (never following its symlinks) and the skeleton into `out`, on every core.
pub fn write(root: &Path, out: &Path, comp: &str, skel: &Skeleton) -> anyhow::Result<Counts> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    write_with(root, out, comp, skel, workers)
}

/// `write` with `workers` compressing ahead (below 2: backhand alone). The bytes are the same.
pub fn write_with(
    root: &Path,
    out: &Path,
    comp: &str,
    skel: &Skeleton,
    workers: usize,
) -> anyhow::Result<Counts> {
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
    // (path inside, source, length) of every regular file, for compressing ahead.
    let mut files: Vec<(PathBuf, PathBuf, u64)> = Vec::new();
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
                fs.push_file_from_path(&src, &dst, h)?;
                files.push((dst.clone(), src, m.len()));
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
    let fc = compressor(comp)?;
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    if workers < 2 {
        fs.write(&mut w)?;
    } else {
        fs.set_kind(Kind::new_v4(&AHEAD_HOOK));
        // backhand writes file data in path order (its node list is sorted by path).
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let ahead = ahead();
        // The hook is a static (backhand takes `&'static`): one parallel write per process at a time.
        static IN_USE: Mutex<()> = Mutex::new(());
        let _one = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        ahead.reset();
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(workers * 2);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            for _ in 0..workers {
                let rx = &rx;
                scope.spawn(move || loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok((h, block))) = job else { break };
                    match DefaultCompressor.compress(&block, fc, BLOCK) {
                        Ok(out) => ahead.finish(h, block, Some(out)),
                        Err(_) => ahead.finish(h, block, None),
                    }
                });
            }
            let files = &files;
            scope.spawn(move || ahead.dispatch(files, tx));
            let r = fs.write(&mut w);
            ahead.stop();
            r?;
            Ok(())
        })?;
    }
    w.flush()?;
    Ok(counts)
}

/// backhand's default block size (128 KiB), which the writer keeps.
const BLOCK: u32 = backhand::DEFAULT_BLOCK_SIZE;
/// Blocks held ahead of the writer at most (input and output), bytes.
const AHEAD_LIMIT: usize = 256 << 20;

/// A finished block: its input, and its compressed form (None when compressing failed).
type Done = (Vec<u8>, Option<Vec<u8>>);

struct AheadState {
    /// Finished blocks by hash of their input.
    ready: HashMap<u64, Vec<Done>>,
    /// Blocks handed to a worker and not finished, by hash.
    inflight: HashMap<u64, usize>,
    held: usize,
    stopped: bool,
}

struct Ahead {
    state: Mutex<AheadState>,
    changed: Condvar,
}

fn ahead() -> &'static Ahead {
    static A: OnceLock<Ahead> = OnceLock::new();
    A.get_or_init(|| Ahead {
        state: Mutex::new(AheadState {
            ready: HashMap::new(),
            inflight: HashMap::new(),
            held: 0,
            stopped: false,
        }),
        changed: Condvar::new(),
    })
}

impl Ahead {
    fn lock(&self) -> std::sync::MutexGuard<'_, AheadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&self) {
        let mut s = self.lock();
        s.ready.clear();
        s.inflight.clear();
        s.held = 0;
        s.stopped = false;
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// Read the files as backhand will (chunks of BLOCK; files shorter than
    /// one block go to fragments, all-zero blocks become holes) and queue each
    /// block it will compress.
    fn dispatch(
        &self,
        files: &[(PathBuf, PathBuf, u64)],
        tx: std::sync::mpsc::SyncSender<(u64, Vec<u8>)>,
    ) {
        for (_, src, len) in files {
            if *len < BLOCK as u64 {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(src) else {
                continue;
            };
            loop {
                let mut block = vec![0u8; BLOCK as usize];
                let mut n = 0;
                while n < block.len() {
                    match f.read(&mut block[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
                if n == 0 {
                    break;
                }
                block.truncate(n);
                if block.iter().any(|b| *b != 0) {
                    let h = xxhash_rust::xxh3::xxh3_64(&block);
                    {
                        let mut s = self.lock();
                        while s.held >= AHEAD_LIMIT && !s.stopped {
                            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                        if s.stopped {
                            return;
                        }
                        *s.inflight.entry(h).or_default() += 1;
                        s.held += block.len();
                    }
                    if tx.send((h, block)).is_err() {
                        return;
                    }
                }
                if n < BLOCK as usize {
                    break;
                }
            }
        }
    }

    fn finish(&self, h: u64, block: Vec<u8>, out: Option<Vec<u8>>) {
        let mut s = self.lock();
        if let Some(n) = s.inflight.get_mut(&h) {
            *n = n.saturating_sub(1);
        }
        s.held += out.as_ref().map_or(0, Vec::len);
        s.ready.entry(h).or_default().push((block, out));
        drop(s);
        self.changed.notify_all();
    }

    /// The finished compression of `bytes`, waiting for it when a worker has it in hand.
    fn take(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let h = xxhash_rust::xxh3::xxh3_64(bytes);
        let mut s = self.lock();
        loop {
            if let Some(list) = s.ready.get_mut(&h) {
                if let Some(i) = list.iter().position(|(input, _)| input == bytes) {
                    let (input, out) = list.swap_remove(i);
                    if list.is_empty() {
                        s.ready.remove(&h);
                    }
                    s.held = s
                        .held
                        .saturating_sub(input.len() + out.as_ref().map_or(0, Vec::len));
                    drop(s);
                    self.changed.notify_all();
                    return out;
                }
            }
            if s.inflight.get(&h).copied().unwrap_or(0) == 0 {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// backhand's compressor hook: a block compressed ahead if there is one, else compress now.
struct AheadHook;
static AHEAD_HOOK: AheadHook = AheadHook;

impl CompressionAction for AheadHook {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = backhand::SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        c: Compressor,
    ) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, c)
    }

    fn compress(
        &self,
        bytes: &[u8],
        fc: FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, BackhandError> {
        if block_size == BLOCK {
            if let Some(out) = ahead().take(bytes) {
                return Ok(out);
            }
        }
        DefaultCompressor.compress(bytes, fc, block_size)
    }

    fn compression_options(
        &self,
        sb: &mut backhand::SuperBlock,
        kind: &Kind,
        fc: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        DefaultCompressor.compression_options(sb, kind, fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressing_ahead_gives_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut seed = 7u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect()
        };
        let big = noise(3 * BLOCK as usize + 1000);
        std::fs::write(root.join("a/big"), &big).unwrap();
        // A duplicate, a file of zeros with data after (holes), repeated blocks, small files.
        std::fs::write(root.join("a/b/copy"), &big).unwrap();
        let mut holes = vec![0u8; 2 * BLOCK as usize];
        holes.extend(noise(10));
        std::fs::write(root.join("holes"), holes).unwrap();
        std::fs::write(root.join("same"), b"abc".repeat(BLOCK as usize)).unwrap();
        std::fs::write(root.join("a.txt"), b"small").unwrap();
        std::fs::write(root.join("exact"), noise(BLOCK as usize)).unwrap();
        let skel = Skeleton::default();
        let (one, two) = (d.path().join("1.sqfs"), d.path().join("2.sqfs"));
        for comp in ["gzip", "zstd"] {
            write_with(&root, &one, comp, &skel, 1).unwrap();
            let n = write_with(&root, &two, comp, &skel, 3).unwrap();
            assert_eq!(n.files, 6);
            assert!(
                std::fs::read(&one).unwrap() == std::fs::read(&two).unwrap(),
                "{comp}"
            );
        }
    }
}
