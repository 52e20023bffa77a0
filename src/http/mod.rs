//! The HTTP edge: routes, body limits, request ids, tracing, metrics.
//! Handlers here only verify and parse; the work happens in `handlers`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::app::App;
use crate::mattermost::slash::{verify_and_parse, SlashError};

/// Slash-command forms are small; 64 KiB is generous.
pub const MATTERMOST_BODY_LIMIT: usize = 64 * 1024;

/// GitLab's own request body limit (protocols.md §1.1): large pushes fit.
pub const GITLAB_BODY_LIMIT: usize = 25 * 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/hooks/mattermost", post(mattermost_hook).layer(DefaultBodyLimit::max(MATTERMOST_BODY_LIMIT)))
        .route("/hooks/gitlab", post(gitlab_hook).layer(DefaultBodyLimit::max(GITLAB_BODY_LIMIT)))
        .route("/ci/token", post(ci_token))
        .route("/ci-templates/container-image.gitlab-ci.yml", get(ci_template))
        .route("/registry/token", get(registry_token))
        .route("/hooks/registry", post(registry_hook).layer(DefaultBodyLimit::max(1024 * 1024)))
        .route("/sif/{file}", get(sif_download))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, HeaderName::from_static("x-gitlab-token"), HeaderName::from_static("job-token")]))
        .layer(CatchPanicLayer::new())
        .with_state(app)
}

async fn count_requests(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    app.metrics.request(&route, resp.status().as_u16());
    resp
}

fn request_id(headers: &HeaderMap, ext: Option<&RequestId>) -> String {
    ext.and_then(|r| r.header_value().to_str().ok())
        .or_else(|| headers.get("x-request-id").and_then(|v| v.to_str().ok()))
        .map(|s| {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect()
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn error_json(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({"error": msg}))).into_response()
}

async fn mattermost_hook(
    State(app): State<Arc<App>>,
    rid: Option<axum::Extension<RequestId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match verify_and_parse(&headers, &body, &app.cfg.mattermost.tokens) {
        Ok(f) => f,
        Err(SlashError::Unauthorized) => {
            return error_json(
                StatusCode::UNAUTHORIZED,
                "missing or wrong slash-command token",
            )
        }
        Err(SlashError::Malformed(m)) => return error_json(StatusCode::BAD_REQUEST, &m),
    };
    let request = request_id(&headers, rid.as_ref().map(|e| &e.0));
    let reply = crate::handlers::slash::handle(&app, form, &request).await;
    Json(reply).into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        app.store
            .call(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))),
    )
    .await;
    match db {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}

async fn metrics(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let allowed = match &app.cfg.metrics_token {
        Some(t) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| t.matches(v)),
        None => {
            let peer = peer
                .map(|p| p.0 .0.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            let h = headers
                .get(app.cfg.server.client_address_header.as_str())
                .and_then(|v| v.to_str().ok());
            // Through a proxy, the client is whoever the proxy says; without one, the peer.
            let through_proxy = app.cfg.server.trusted_proxies.contains(&peer) && h.is_some();
            !through_proxy && peer.is_loopback()
        }
    };
    if !allowed {
        return error_json(
            StatusCode::FORBIDDEN,
            "metrics are for this machine, or with the configured bearer token",
        );
    }
    let (queued, running) = app.store.queue_depth().await.unwrap_or((-1, -1));
    let mut gauges = vec![(
        "queue_jobs",
        "Jobs in the durable queue by state.",
        vec![
            ("state=\"queued\"".into(), queued as f64),
            ("state=\"running\"".into(), running as f64),
        ],
    )];
    let lanes = app.store.queue_depth_by_lane().await.unwrap_or_default();
    let mut depth = Vec::new();
    for lane in ["quick", "slow", "slurm"] {
        let (q, r) = lanes
            .iter()
            .find(|(l, _, _)| l == lane)
            .map(|(_, q, r)| (*q, *r))
            .unwrap_or((0, 0));
        depth.push((format!("lane=\"{lane}\",state=\"queued\""), q as f64));
        depth.push((format!("lane=\"{lane}\",state=\"running\""), r as f64));
    }
    gauges.push((
        "queue_lane_tasks",
        "Tasks in each lane of the durable queue by state.",
        depth,
    ));
    gauges.extend(crate::handlers::blades::gauges(&app).await);
    if let Some(reg) = app.registry.as_ref() {
        gauges.push((
            "registry_login_failure_keys",
            "Accounts and addresses with recent failed registry logins (bounded).",
            vec![(String::new(), reg.failure_keys() as f64)],
        ));
    }
    let body = app.metrics.render(&gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    scope: Vec<String>,
}

/// distribution's token protocol: 200 with the token, or 401 in the
/// registry's error form with a Basic challenge.
async fn registry_token(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let q: TokenQuery = match serde_html_form::from_str(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => {
            return registry_error(
                StatusCode::BAD_REQUEST,
                "DENIED",
                &format!("malformed query: {e}"),
            )
        }
    };
    let req = crate::handlers::registry::TokenRequest {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        service: q.service,
        scopes: q.scope,
        address: app.cfg.server.client_address(
            peer.map(|p| p.0 .0.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            headers
                .get(app.cfg.server.client_address_header.as_str())
                .and_then(|v| v.to_str().ok()),
        ),
    };
    match crate::handlers::registry::issue(&app, req).await {
        Ok(t) => Json(serde_json::json!({"token": t.token, "access_token": t.token, "expires_in": t.expires_in, "issued_at": t.issued_at})).into_response(),
        Err(crate::handlers::registry::TokenError::Unauthorized(why)) => {
            let mut r = registry_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", why);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Basic realm=\"shisa\""));
            r
        }
        Err(crate::handlers::registry::TokenError::Limited) => {
            registry_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", "too many failed logins; wait a minute")
        }
        Err(crate::handlers::registry::TokenError::BadRequest(m)) => registry_error(StatusCode::BAD_REQUEST, "DENIED", &m),
    }
}

fn registry_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]})),
    )
        .into_response()
}

/// Registry notifications, authenticated by the header configured in the registry.
async fn registry_hook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(reg) = app.registry.as_ref() else {
        return error_json(StatusCode::NOT_FOUND, "no registry configured");
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !reg.cfg.notification_token.matches(given) {
        return error_json(
            StatusCode::UNAUTHORIZED,
            "wrong or missing notification token",
        );
    }
    match crate::handlers::registry::notifications(&app, &body).await {
        Ok(n) => Json(serde_json::json!({"applied": n})).into_response(),
        Err(e) => error_json(StatusCode::BAD_REQUEST, &e),
    }
}

/// The CI template, pointing at this shisa (what `include: remote:` fetches).
async fn ci_template(State(app): State<Arc<App>>) -> Response {
    const TEMPLATE: &str = include_str!("../../ci-templates/container-image.gitlab-ci.yml");
    let body = TEMPLATE.replace("https://shisa.example.edu", &app.cfg.public_url());
    ([(header::CONTENT_TYPE, "text/yaml; charset=utf-8")], body).into_response()
}

/// A CI job's identity for a short push credential (`ci-templates/`). `?format=lines`
/// answers registry, image, username and password on four lines, for `read` in sh.
async fn ci_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    use crate::handlers::ci::{exchange, CiRefusal};
    let token = headers.get("job-token").and_then(|v| v.to_str().ok());
    let id_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match exchange(&app, token, id_token).await {
        Ok(g) => {
            if uri
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|q| q == "format=lines")
            {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain")],
                    format!(
                        "{}\n{}\n{}\n{}\n",
                        g.registry, g.image, g.username, g.password
                    ),
                )
                    .into_response()
            } else {
                (StatusCode::OK, axum::Json(g)).into_response()
            }
        }
        Err(CiRefusal::Unauthorized(m)) => error_json(StatusCode::UNAUTHORIZED, &m),
        Err(CiRefusal::Forbidden(m)) => error_json(StatusCode::FORBIDDEN, &m),
        Err(CiRefusal::Unavailable(m)) => error_json(StatusCode::SERVICE_UNAVAILABLE, &m),
    }
}

/// GitLab webhooks and system hooks: verify, parse, store with the queue job,
/// answer at once (GitLab gives up after 10 s); the work happens from the queue.
async fn gitlab_hook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use crate::gitlab::{hooks, verify};
    let Some(g) = app.cfg.gitlab.as_ref() else {
        return error_json(
            StatusCode::NOT_FOUND,
            "GitLab is not configured on this server",
        );
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let d = verify::Delivery {
        token: h("x-gitlab-token"),
        webhook_id: h("webhook-id"),
        webhook_timestamp: h("webhook-timestamp"),
        webhook_signature: h("webhook-signature"),
    };
    // A project's delivery carries that project's own secret once it has one; the global
    // tokens are for system hooks and projects enabled before per-project secrets.
    // Parsed once: for the project's secret here, and as the queued task's body below.
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let project_id = value["project"]["id"]
        .as_u64()
        .or(value["project_id"].as_u64());
    let own = match project_id {
        Some(id) => app.store.hook_secret(id).await.ok().flatten(),
        None => None,
    };
    let tokens = match own {
        Some(sealed) => match crate::sealing::open_text(&app.state_key, &sealed) {
            Ok(t) => vec![crate::config::Secret::new(t)],
            Err(_) => Vec::new(),
        },
        None => g.webhook_tokens.clone(),
    };
    if let Err(why) = verify::check(
        &d,
        &body,
        &tokens,
        &g.signing_keys,
        g.max_skew_seconds,
        crate::store::now(),
    ) {
        tracing::warn!(?why, "GitLab delivery refused");
        return error_json(
            StatusCode::UNAUTHORIZED,
            "this delivery is not signed by a known token or key",
        );
    }
    let event = h("x-gitlab-event").unwrap_or_default().to_string();
    let hook = match hooks::parse(&event, &body) {
        Ok(x) => x,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                &format!("malformed {event} body {e}"),
            )
        }
    };
    if let hooks::Hook::Other(kind) = &hook {
        tracing::info!(kind, "GitLab event of a kind shisa does not use: ignored");
        return (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ignored"})),
        )
            .into_response();
    }
    use sha2::Digest;
    // A signed delivery is deduplicated by its signed `webhook-id` (an unsigned header
    // could be changed to replay it within the signature's time window).
    let signed = d.webhook_signature.is_some() && !g.signing_keys.is_empty();
    let key = if signed { h("webhook-id") } else { None }
        .or(h("idempotency-key"))
        .or(h("webhook-id"))
        .or(h("x-gitlab-event-uuid"))
        .map(|k| k.chars().take(200).collect::<String>())
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))));
    let job = crate::work::tasks::Task::GitlabEvent {
        event: event.to_string(),
        body: value,
    }
    .owned(
        "gitlab",
        &format!("gitlab-{}", uuid::Uuid::new_v4().simple()),
        None,
        app.cfg.queue.max_attempts,
    );
    match app.store.accept_delivery(&key, hook.kind(), job).await {
        Ok(fresh) => {
            if fresh {
                crate::work::wake(&app);
            }
            let status = if fresh { "queued" } else { "duplicate" };
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({"status": status})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store a GitLab delivery");
            error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the event now; resend it",
            )
        }
    }
}

#[derive(serde::Deserialize)]
struct SifQuery {
    user: String,
    exp: i64,
    sig: String,
}

/// One `Range: bytes=…` against a file of `len` bytes (RFC 9110 §14.1.2):
/// `Ok(None)` means send it all (no header, or a form we ignore such as
/// several ranges, which the RFC allows); `Err(())` means 416.
#[allow(clippy::result_unit_err)]
pub fn byte_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        // The last N bytes.
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || len == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// A signed, expiring link to a converted SIF (what `/container sif` replies
/// with), bound to the user it was given to; Range requests resume downloads.
async fn sif_download(
    State(app): State<Arc<App>>,
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(q) = serde_html_form::from_str::<SifQuery>(uri.query().unwrap_or("")) else {
        return error_json(StatusCode::FORBIDDEN, "this link is incomplete");
    };
    match crate::work::sif::verify(&app, &file, &q.user, q.exp, &q.sig).await {
        Ok(Some(path)) => match tokio::fs::File::open(&path).await {
            Ok(mut f) => {
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                let _ = app.store.sif_touch(&file, len).await;
                let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
                let (status, start, end) = match byte_range(range, len) {
                    Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
                    Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
                    Err(()) => {
                        return (
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                        )
                            .into_response()
                    }
                };
                let count = if len == 0 { 0 } else { end - start + 1 };
                if start > 0 && f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
                    return error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
                let _ = app
                    .store
                    .audit(crate::store::audit::NewAudit {
                        request_id: None,
                        actor: &q.user,
                        role: "user",
                        action: "sif.download",
                        resource: Some(&format!("sif:{file}")),
                        outcome: "ok",
                        detail: Some(&format!("bytes {start}-{end}/{len}")),
                    })
                    .await;
                let body =
                    axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f.take(count)));
                let mut resp = (
                    status,
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                        (header::CONTENT_LENGTH, count.to_string()),
                        (header::ACCEPT_RANGES, "bytes".to_string()),
                        (
                            header::CONTENT_DISPOSITION,
                            format!("attachment; filename=\"{file}\""),
                        ),
                    ],
                    body,
                )
                    .into_response();
                if status == StatusCode::PARTIAL_CONTENT {
                    if let Ok(v) = format!("bytes {start}-{end}/{len}").parse() {
                        resp.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                }
                resp
            }
            Err(_) => error_json(
                StatusCode::NOT_FOUND,
                "the file is gone; ask for it again with /container sif",
            ),
        },
        Ok(None) => error_json(
            StatusCode::FORBIDDEN,
            "this link is wrong or has expired; /container sif gives a new one",
        ),
        Err(e) => {
            tracing::error!(error = %e, "sif download");
            error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::byte_range;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=90-500"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-500"), 100), Ok(Some((0, 99))));
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(byte_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=5-4"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=x-4"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=0-"), 0), Err(()));
    }

    proptest! {
        #[test]
        fn a_range_given_is_inside_the_file(h in "\\PC{0,30}", len in 0u64..10_000) {
            if let Ok(Some((a, b))) = byte_range(Some(&h), len) {
                prop_assert!(a <= b && b < len);
            }
        }
    }
}
