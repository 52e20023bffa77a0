//! `shisa sif convert IMAGE -o FILE`, `shisa sif inspect FILE`, and the
//! internal `shisa sif squash` the converter runs as its confined child.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::sif::{self, convert, squash};

#[derive(Subcommand)]
pub enum SifCommand {
    /// Convert an image on this machine's Podman to a SIF file.
    Convert {
        /// A local image (`localhost/alice/tools:1`) or one Podman can pull.
        image: String,
        #[arg(short, long)]
        output: PathBuf,
        /// The Podman API socket.
        #[arg(long, default_value = "/run/podman/podman.sock")]
        podman: PathBuf,
        #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
        compression: String,
        /// Use squashfs-tools' mksquashfs instead of the native writer.
        #[arg(long)]
        mksquashfs: bool,
    },
    /// Show a SIF file's header and objects, checking every bound.
    Inspect { file: PathBuf },
    /// (Internal) write ROOT and a skeleton as squashfs; run confined by the converter.
    #[command(hide = true)]
    Squash {
        root: PathBuf,
        out: PathBuf,
        #[arg(long, default_value = "gzip")]
        compression: String,
        #[arg(long)]
        skeleton: PathBuf,
    },
}

pub fn run(cmd: SifCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SifCommand::Squash {
            root,
            out,
            compression,
            skeleton,
        } => {
            let skel: squash::Skeleton = serde_json::from_slice(&std::fs::read(&skeleton)?)?;
            let n = squash::write(&root, &out, &compression, &skel)?;
            if n.skipped > 0 {
                eprintln!("left out {} device nodes or sockets", n.skipped);
            }
            Ok(ExitCode::SUCCESS)
        }
        SifCommand::Inspect { file } => inspect(&file),
        SifCommand::Convert {
            image,
            output,
            podman,
            compression,
            mksquashfs,
        } => convert_cli(&image, &output, &podman, &compression, mksquashfs),
    }
}

fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    let s = sif::Sif::read(&mut f, len).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: SIF, {} bytes, arch code {}, created {}",
        file.display(),
        len,
        String::from_utf8_lossy(&s.arch),
        s.created_at
    )?;
    writeln!(
        out,
        "{:>3}  {:<40} {:>12} {:>12}  name",
        "id", "type", "offset", "size"
    )?;
    for d in &s.descriptors {
        let kind = match &d.partition {
            Some(p) => format!(
                "{:?} ({}, part {}, arch {})",
                d.data_type,
                if p.fs_type == sif::FS_SQUASHFS {
                    "squashfs".to_string()
                } else {
                    format!("fs {}", p.fs_type)
                },
                p.part_type,
                String::from_utf8_lossy(&p.arch)
            ),
            None => format!("{:?}", d.data_type),
        };
        writeln!(
            out,
            "{:>3}  {:<40} {:>12} {:>12}  {}",
            d.id, kind, d.offset, d.size, d.name
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn convert_cli(
    image: &str,
    output: &Path,
    podman: &Path,
    compression: &str,
    mksquashfs: bool,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = crate::podman::PodmanClient::new(podman);
        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let work = tempfile::Builder::new()
            .prefix(".shisa-sif-")
            .tempdir_in(&dir)?;
        let writer = if mksquashfs {
            convert::Writer::Mksquashfs
        } else {
            convert::Writer::Native {
                helper: std::env::current_exe()?,
            }
        };
        let mut opts = convert::Options::new(compression, writer);
        let (tx, mut rx) = tokio::sync::watch::channel(0u64);
        opts.progress = Some(tx);
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {msg}",
        )?);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar.set_message(format!("converting {image}"));
        let b2 = bar.clone();
        let img = image.to_string();
        let ticker = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let n = *rx.borrow();
                b2.set_message(format!(
                    "converting {img}: {} of squashfs written",
                    crate::containers::fmt_size(n)
                ));
            }
        });
        let c =
            convert::convert(&client, image, work.path(), &work.path().join("tmp"), &opts).await;
        ticker.abort();
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                bar.abandon_with_message(format!("failed: {e:#}"));
                return Ok(ExitCode::from(1));
            }
        };
        std::fs::rename(&c.path, output)?;
        let size = std::fs::metadata(output)?.len();
        bar.finish_with_message(format!(
            "{} ({})",
            output.display(),
            crate::containers::fmt_size(size)
        ));
        Ok(ExitCode::SUCCESS)
    })
}
