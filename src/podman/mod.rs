//! A small typed client for a blade's libpod REST API over its Unix socket.
//! Not the Docker-compatible API: that one drops CDI GPU devices on Podman 4.3
//! (shared/docs/crates.md). Paths carry the `/v4.0.0/libpod` prefix libpod requires.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

const API: &str = "http://d/v4.0.0/libpod";

#[derive(Clone)]
pub struct PodmanClient {
    http: reqwest::Client,
    socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BladeInfo {
    pub version: String,
    pub containers: u64,
    pub images: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("cannot reach the Podman API at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("Podman answered {status}: {message}")]
    Api { status: u16, message: String },
}

impl PodmanClient {
    pub fn new(socket: &Path) -> PodmanClient {
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("reqwest client");
        PodmanClient {
            http,
            socket: socket.to_path_buf(),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> PodmanError {
        PodmanError::Unreachable {
            socket: self.socket.display().to_string(),
            reason: e.without_url().to_string(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, PodmanError> {
        let r = self
            .http
            .get(format!("{API}{path}"))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = r.status();
        if !status.is_success() {
            #[derive(Deserialize)]
            struct ErrBody {
                #[serde(default)]
                message: String,
            }
            let message = r
                .json::<ErrBody>()
                .await
                .map(|b| b.message)
                .unwrap_or_default();
            return Err(PodmanError::Api {
                status: status.as_u16(),
                message,
            });
        }
        r.json().await.map_err(|e| self.unreachable(e))
    }

    pub async fn ping(&self) -> Result<(), PodmanError> {
        let r = self
            .http
            .get("http://d/libpod/_ping")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(PodmanError::Api {
                status: r.status().as_u16(),
                message: "ping failed".into(),
            })
        }
    }

    /// `GET /libpod/info`: version and counts.
    pub async fn info(&self) -> Result<BladeInfo, PodmanError> {
        #[derive(Deserialize)]
        struct Info {
            version: Version,
            store: StoreInfo,
        }
        #[derive(Deserialize)]
        struct Version {
            #[serde(rename = "Version")]
            version: String,
        }
        #[derive(Deserialize)]
        struct StoreInfo {
            #[serde(rename = "containerStore")]
            container_store: Count,
            #[serde(rename = "imageStore")]
            image_store: Count,
        }
        #[derive(Deserialize)]
        struct Count {
            number: u64,
        }
        let i: Info = self.get_json("/info").await?;
        Ok(BladeInfo {
            version: i.version.version,
            containers: i.store.container_store.number,
            images: i.store.image_store.number,
        })
    }
}
