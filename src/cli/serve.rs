//! `shisa serve`: logs, state, workers, HTTP, graceful shutdown.

use std::path::Path;
use std::time::Duration;

use crate::app::App;
use crate::config::{Config, LogFormat};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHISA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

pub fn run(path: &Path) -> anyhow::Result<std::process::ExitCode> {
    let cfg = Config::load(path)?;
    init_logging(cfg.server.log_format);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, shutdown_signal()))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight work");
}

/// Run until `stop` completes. Public so the tests can run it in-process.
pub async fn serve(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = cfg.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    serve_on(cfg, listener, stop).await
}

/// Run on an already bound listener (tests bind port 0).
pub async fn serve_on(
    cfg: Config,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(cfg, listener, stop, crate::app::Services::default()).await
}

/// Run with the outside services a test brings (the rest real).
pub async fn serve_with(
    cfg: Config,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    services: crate::app::Services,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?;
    let mut cfg = cfg;
    if cfg.server.public_url.is_none() {
        // Port 0 in the config: links must name the port actually bound.
        cfg.server.public_url = Some(format!("http://{listen}"));
    }
    let grace = cfg.server.shutdown_grace_seconds;
    let app = App::assemble(cfg, services)?;
    let recovered = app.store.recover().await?;
    if recovered > 0 {
        tracing::info!(recovered, "re-queued work left running by the previous run");
    }
    crate::work::health::check_all(&app).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut workers = crate::work::workers::spawn(app.clone(), rx.clone());
    workers.extend(crate::work::events::spawn(app.clone(), rx.clone()));
    workers.extend(crate::work::health::spawn(app.clone(), rx.clone()));
    workers.extend(crate::work::slurm_jobs::spawn(app.clone(), rx.clone()));
    workers.extend(crate::work::runners::spawn(app.clone(), rx.clone()));
    workers.push(crate::work::reclaim::spawn(app.clone(), rx.clone()));
    workers.push(crate::work::courses::spawn_readiness(
        app.clone(),
        rx.clone(),
    ));
    workers.extend(crate::work::registry_sync::spawn_sync(app.clone(), rx));
    tracing::info!(%listen, "shisa is listening");
    axum::serve(
        listener,
        crate::http::router(app.clone())
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await?;
    let _ = tx.send(true);
    let all = futures_join(workers);
    if tokio::time::timeout(Duration::from_secs(grace + 5), all)
        .await
        .is_err()
    {
        tracing::warn!(
            "workers did not stop in time; unfinished jobs will be recovered at the next start"
        );
    }
    Ok(())
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
