//! The registry API as shisa uses it (catalog, tags, manifests, delete),
//! authenticated with tokens shisa issues itself.

use std::time::Duration;

use std::sync::Arc;

use super::jwt::{Access, TokenSigner};
use crate::config;

/// distribution 2.8 returns 404 for an OCI manifest asked without OCI types,
/// and rewrites schema2 to schema1 (another digest) without schema2 types:
/// always ask for all of them (shared/docs/protocols.md §5.2).
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The registry's HTTP API, with tokens shisa signs for itself.
pub struct Client {
    pub cfg: config::Registry,
    pub signer: Arc<TokenSigner>,
    pub http: reqwest::Client,
}

pub fn http() -> reqwest::Client {
    // No idle connections kept: the client lives as long as the service, and a pooled
    // connection the registry has meanwhile closed fails the next request (a push
    // notification then recorded its image with no size, and quotas counted nothing).
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A manifest as the registry stores it.
struct Fetched {
    digest: String,
    media_type: String,
    body: bytes::Bytes,
}

/// What shisa reads of one manifest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    pub digest: String,
    /// Config and layers (for an index, its manifests as given).
    pub size: u64,
    /// The blobs it refers to (config and layers; for an index, its manifests).
    pub blobs: Vec<String>,
}

/// The registry as shisa uses it: the HTTP client here, or a test's fake.
#[async_trait::async_trait]
pub trait RegistryApi: Send + Sync {
    async fn catalog(&self) -> anyhow::Result<Vec<String>>;
    async fn tags(&self, name: &str) -> anyhow::Result<Vec<String>>;
    /// A tag's (or digest's) manifest, read once: its digest, size and blobs; None if it
    /// does not exist.
    async fn manifest(&self, name: &str, reference: &str) -> anyhow::Result<Option<Manifest>>;
    /// Delete by digest (the only way distribution 2.8 accepts); all its tags go.
    async fn delete_manifest(&self, name: &str, digest: &str) -> anyhow::Result<()>;
    /// Unlink a blob from a repository (garbage collection frees the space).
    async fn delete_blob(&self, name: &str, digest: &str) -> anyhow::Result<()>;
    /// Give the manifest `digest` of `name` another tag (the same manifest put again).
    async fn tag(&self, name: &str, digest: &str, tag: &str) -> anyhow::Result<()>;
}

impl Client {
    fn token(&self, access: Vec<Access>) -> String {
        self.signer
            .issue(&self.cfg.issuer, &self.cfg.service, "shisa", &access, 120)
    }

    fn repo_token(&self, name: &str, actions: &[&str]) -> String {
        self.token(vec![Access {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }])
    }

    /// `DELETE /v2/NAME/{manifests|blobs}/DIGEST` (by digest: the only way distribution 2.8
    /// accepts); gone already is fine.
    async fn delete_by_digest(&self, name: &str, kind: &str, digest: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .delete(format!("{}/v2/{name}/{kind}/{digest}", self.cfg.url))
            .bearer_auth(self.repo_token(name, &["pull", "delete"]))
            .send()
            .await?;
        match r.status().as_u16() {
            202 | 404 => Ok(()),
            405 => anyhow::bail!("the registry has deletes disabled (storage.delete.enabled)"),
            s => anyhow::bail!("registry answered {s} to a delete of {kind}/{digest}"),
        }
    }

    /// One manifest as stored, by tag or digest; None when the registry does not have it.
    async fn fetch_manifest(
        &self,
        name: &str,
        reference: &str,
        actions: &[&str],
    ) -> anyhow::Result<Option<Fetched>> {
        let r = self
            .http
            .get(format!("{}/v2/{name}/manifests/{reference}", self.cfg.url))
            .bearer_auth(self.repo_token(name, actions))
            .header("accept", ACCEPT)
            .send()
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(None);
        }
        let r = r.error_for_status()?;
        let header = |h: &str| {
            r.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let digest = header("docker-content-digest").unwrap_or_default();
        let media_type = header("content-type")
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        Ok(Some(Fetched {
            digest,
            media_type,
            body: r.bytes().await?,
        }))
    }
}

#[async_trait::async_trait]
impl RegistryApi for Client {
    async fn catalog(&self) -> anyhow::Result<Vec<String>> {
        let tok = self.token(vec![Access {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }]);
        let mut out = Vec::new();
        let mut url = format!("{}/v2/_catalog?n=100", self.cfg.url);
        loop {
            let r = self
                .http
                .get(&url)
                .bearer_auth(&tok)
                .send()
                .await?
                .error_for_status()?;
            let next = r
                .headers()
                .get("link")
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| l.trim().trim_matches(['<', '>']).to_string());
            #[derive(serde::Deserialize)]
            struct Cat {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let c: Cat = r.json().await?;
            out.extend(c.repositories);
            match next {
                Some(n) if !n.is_empty() => url = format!("{}{n}", self.cfg.url),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn tags(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let r = self
            .http
            .get(format!("{}/v2/{name}/tags/list", self.cfg.url))
            .bearer_auth(self.repo_token(name, &["pull"]))
            .send()
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(vec![]);
        }
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let t: Tags = r.error_for_status()?.json().await?;
        Ok(t.tags.unwrap_or_default())
    }

    async fn manifest(&self, name: &str, reference: &str) -> anyhow::Result<Option<Manifest>> {
        let Some(f) = self.fetch_manifest(name, reference, &["pull"]).await? else {
            return Ok(None);
        };
        let m: serde_json::Value = serde_json::from_slice(&f.body)?;
        let mut size = m["config"]["size"].as_u64().unwrap_or(0);
        for l in m["layers"].as_array().into_iter().flatten() {
            size += l["size"].as_u64().unwrap_or(0);
        }
        // An index: count its manifests' sizes as given (layers are not fetched).
        for l in m["manifests"].as_array().into_iter().flatten() {
            size += l["size"].as_u64().unwrap_or(0);
        }
        Ok(Some(Manifest {
            digest: f.digest,
            size,
            blobs: referenced_blobs(&m),
        }))
    }

    /// Delete by digest (the only way distribution 2.8 accepts); all its tags go.
    async fn delete_manifest(&self, name: &str, digest: &str) -> anyhow::Result<()> {
        self.delete_by_digest(name, "manifests", digest).await
    }

    async fn delete_blob(&self, name: &str, digest: &str) -> anyhow::Result<()> {
        self.delete_by_digest(name, "blobs", digest).await
    }

    async fn tag(&self, name: &str, digest: &str, tag: &str) -> anyhow::Result<()> {
        let token = self.repo_token(name, &["pull", "push"]);
        let f = self
            .fetch_manifest(name, digest, &["pull", "push"])
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name}@{digest} is not in the registry"))?;
        let (media, body) = (f.media_type, f.body);
        let put = self
            .http
            .put(format!("{}/v2/{name}/manifests/{tag}", self.cfg.url))
            .bearer_auth(&token)
            .header("content-type", media)
            .body(body)
            .send()
            .await?;
        if !put.status().is_success() {
            anyhow::bail!("registry answered {} to tagging {name}:{tag}", put.status());
        }
        Ok(())
    }
}

/// The digests a manifest (or index) names: config, layers, manifests.
pub fn referenced_blobs(m: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = m["config"]["digest"]
        .as_str()
        .map(str::to_string)
        .into_iter()
        .collect();
    for key in ["layers", "manifests"] {
        for l in m[key].as_array().into_iter().flatten() {
            if let Some(d) = l["digest"].as_str() {
                out.push(d.to_string());
            }
        }
    }
    out
}
