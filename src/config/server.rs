//! `[server]` and `[storage]`: where shisa listens and keeps its data.

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address to listen on, e.g. `127.0.0.1:8470`.
    pub listen: String,
    /// How Mattermost reaches shisa (used by `shisa chat` and in links).
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Seconds allowed for in-flight work to finish on shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// Proxies in front of shisa (e.g. the TLS proxy, `["127.0.0.1"]`): only a request from
    /// one of them has its client address taken from `client_address_header`; otherwise the
    /// connection's address counts (a header anyone can send is never trusted).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    #[serde(default = "default_client_header")]
    pub client_address_header: String,
    /// `/metrics` answers a request with `Authorization: Bearer` and this; without one
    /// configured, only clients on this machine (loopback, not through a proxy).
    #[serde(default)]
    pub metrics_token: Option<SecretSource>,
}

pub(super) fn default_client_header() -> String {
    "x-forwarded-for".into()
}

impl Server {
    /// The client's address: the last hop a trusted proxy added, or the peer itself.
    pub fn client_address(&self, peer: std::net::IpAddr, header: Option<&str>) -> std::net::IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        header
            .and_then(|h| h.rsplit(',').next())
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or(peer)
    }
}

pub(super) fn default_grace() -> u64 {
    20
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Created if missing; holds `shisa.db` and, for the static directory, `home/USER`.
    pub data_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_address_is_a_trusted_proxys_last_hop_only() {
        let s = super::Server {
            listen: "127.0.0.1:0".into(),
            public_url: None,
            log_format: Default::default(),
            shutdown_grace_seconds: 1,
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            client_address_header: "x-forwarded-for".into(),
            metrics_token: None,
        };
        let proxy = "127.0.0.1".parse().unwrap();
        let other = "192.0.2.1".parse().unwrap();
        // The client writes the left of the header; the proxy appends the right.
        assert_eq!(
            s.client_address(proxy, Some("6.6.6.6, 198.51.100.7")),
            "198.51.100.7".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            s.client_address(other, Some("198.51.100.7")),
            other,
            "not a proxy"
        );
        assert_eq!(s.client_address(proxy, Some("garbage")), proxy);
        assert_eq!(s.client_address(proxy, None), proxy);
    }
}
