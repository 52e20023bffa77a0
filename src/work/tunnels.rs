//! Remote blades: the blade's libpod socket forwarded to a local Unix socket
//! by an `ssh -N -L LOCAL:REMOTE` child, restarted when it exits. Podman's
//! API has no authentication of its own, so it is never exposed over TCP.

use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use crate::app::App;
use crate::config::Blade;

pub fn spawn_tunnels(
    app: &Arc<App>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    app.blades
        .iter()
        .filter(|(b, _)| b.ssh.is_some())
        .map(|(b, _)| {
            let b = b.clone();
            let mut sd = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = supervise(&b) => {}
                    _ = sd.wait_for(|v| *v) => {}
                }
            })
        })
        .collect()
}

/// The ssh command line (an argument vector: no shell ever sees it).
pub fn command(b: &Blade) -> Option<Command> {
    let s = b.ssh.as_ref()?;
    let mut c = Command::new("ssh");
    c.arg("-N")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
        ])
        .args([
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=2",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
        .arg("-i")
        .arg(&s.key_file)
        .args(["-p", &s.port.to_string()])
        .arg("-L")
        .arg(format!("{}:{}", b.podman_socket.display(), s.remote_socket))
        .arg(format!("{}@{}", s.user, s.host))
        .env_clear()
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    Some(c)
}

async fn supervise(b: &Blade) {
    let mut backoff = 1u64;
    loop {
        if let Some(dir) = b.podman_socket.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let Some(mut cmd) = command(b) else { return };
        match cmd.spawn() {
            Ok(mut child) => {
                let started = std::time::Instant::now();
                let out = child.wait_with_output_stderr().await;
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = 1;
                }
                tracing::warn!(blade = %b.name, stderr = %out, "ssh tunnel ended; restarting");
            }
            Err(e) => tracing::error!(blade = %b.name, error = %e, "cannot start ssh"),
        }
        tokio::time::sleep(Duration::from_secs(backoff)).await;
        backoff = (backoff * 2).min(30);
    }
}

trait WaitStderr {
    async fn wait_with_output_stderr(&mut self) -> String;
}

impl WaitStderr for tokio::process::Child {
    async fn wait_with_output_stderr(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf).await;
            err = String::from_utf8_lossy(&buf).chars().take(500).collect();
        }
        let _ = self.wait().await;
        err.trim().to_string()
    }
}
