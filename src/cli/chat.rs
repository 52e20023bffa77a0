//! `shisa chat`: be Mattermost for one command. Sends exactly the form
//! Mattermost sends (token, user id from the demo users, a `response_url`
//! served here on loopback) and prints every reply until the final one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::mpsc;

use crate::config::{Config, Directory};
use crate::identity::users_file::UsersFile;
use crate::mattermost::Reply;

pub fn users_file_for(cfg: &Config, explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    match &cfg.directory {
        Directory::Static { users_file, .. } => users_file.clone(),
        Directory::Ldap { .. } => cfg
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join("demo-users.toml"),
    }
}

/// The Mattermost user id a demo user is sent with.
pub fn demo_user_id(users: &UsersFile, uid: &str) -> String {
    users
        .user(uid)
        .and_then(|u| u.mattermost_user_id.clone())
        .unwrap_or_else(|| format!("demo-{uid}"))
}

pub fn run(
    config: &Path,
    as_user: &str,
    inbox: bool,
    users: Option<PathBuf>,
    timeout: u64,
    text: Option<String>,
) -> anyhow::Result<std::process::ExitCode> {
    let cfg = Config::load(config)?;
    if inbox {
        let store = crate::store::Store::open(&cfg.db_path())?;
        let msgs = store.outbox_take(as_user)?;
        if msgs.is_empty() {
            println!("(no new messages for {as_user})");
        }
        use std::io::Write;
        for m in msgs {
            let _ = writeln!(std::io::stdout(), "{}\n", m.message);
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let Some(text) = text else {
        anyhow::bail!(
            "give the command to send, e.g. shisa chat --config F --as alice \"/container help\""
        );
    };
    let users = UsersFile::load(&users_file_for(&cfg, users)).map_err(|e| anyhow::anyhow!(e))?;
    let user_id = demo_user_id(&users, as_user);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let replies = rt.block_on(send(
        &cfg,
        as_user,
        &user_id,
        &text,
        Duration::from_secs(timeout),
        |r| {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{}\n", r.text);
        },
    ))?;
    match replies.last() {
        Some(r) if r.is_final() => Ok(std::process::ExitCode::SUCCESS),
        _ => {
            eprintln!(
                "{}",
                crate::messages::render(
                    crate::messages::Lang::En,
                    "chat.timeout",
                    &[("seconds", timeout.to_string())]
                )
            );
            Ok(std::process::ExitCode::from(3))
        }
    }
}

/// Send one command and collect the replies (immediate first) until a final one or the timeout.
pub async fn send(
    cfg: &Config,
    user_name: &str,
    user_id: &str,
    line: &str,
    timeout: Duration,
    mut each: impl FnMut(&Reply),
) -> anyhow::Result<Vec<Reply>> {
    let (command, text) = match line.trim().split_once(char::is_whitespace) {
        Some((c, t)) => (c.to_string(), t.trim().to_string()),
        None => (line.trim().to_string(), String::new()),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    async fn receive(
        State(tx): State<mpsc::UnboundedSender<Reply>>,
        Json(r): Json<Reply>,
    ) -> &'static str {
        let _ = tx.send(r);
        "ok"
    }
    let router = Router::new()
        .route("/hooks/commands/{id}", post(receive))
        .with_state(tx);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let hook = uuid::Uuid::new_v4().simple().to_string();
    let token = cfg
        .mattermost
        .tokens
        .first()
        .map(|t| t.expose().to_string())
        .unwrap_or_default();
    let response_url = format!("http://127.0.0.1:{port}/hooks/commands/{hook}");
    let form: Vec<(&str, &str)> = vec![
        ("channel_id", "demochannel0000000000000000"),
        ("channel_name", "town-square"),
        ("command", &command),
        ("response_url", &response_url),
        ("team_domain", "demo"),
        ("team_id", "demoteam00000000000000000000"),
        ("text", &text),
        ("token", &token),
        ("trigger_id", "demo-trigger"),
        ("user_id", user_id),
        ("user_name", user_name),
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let resp = http
        .post(format!("{}/hooks/mattermost", cfg.public_url()))
        .header("Authorization", format!("Token {token}"))
        .header("Accept", "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach shisa at {}: {}",
                cfg.public_url(),
                e.without_url()
            )
        })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        server.abort();
        anyhow::bail!("shisa answered HTTP {status}: {body}");
    }
    let first: Reply = resp.json().await?;
    each(&first);
    let mut replies = vec![first];
    let deadline = tokio::time::Instant::now() + timeout;
    while !replies.last().is_some_and(Reply::is_final) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => {
                each(&r);
                replies.push(r);
            }
            _ => break,
        }
    }
    server.abort();
    Ok(replies)
}
