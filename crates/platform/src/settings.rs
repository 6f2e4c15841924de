//! Settings: defaults, then an optional YAML file, then environment variables.
//!
//! Every binary has one typed `Settings` struct (serde) whose field names are
//! also its environment variable names, upper-cased: `database_url` is set by
//! `DATABASE_URL`, `grpc_addr` by `GRPC_ADDR`. Nested structs use `__`
//! (`BREAKER__PAYMENT__FAILURE_RATE`). The YAML file is `$CONFIG_FILE`, or
//! `/etc/config/config.yaml` when that exists (the Kubernetes ConfigMap mount).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Yaml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Where the default config file is mounted in Kubernetes.
const DEFAULT_CONFIG_FILE: &str = "/etc/config/config.yaml";

/// Settings could not be loaded or are invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(String);

impl SettingsError {
    /// A validation failure with a message naming the setting.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Loads `T` from its `Default`, the config file and the environment.
pub fn load<T>() -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let file = std::env::var_os("CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()));
    load_from(file, Env::raw().split("__"))
}

/// Like [`load`] but with the file and environment provider given, so tests
/// never touch the process environment.
pub fn load_from<T>(file: Option<PathBuf>, env: Env) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(SettingsError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Yaml::file(path));
    }
    figment
        .merge(env)
        .extract()
        .map_err(|e| SettingsError(e.to_string()))
}

/// The network and lifecycle settings every server has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerSettings {
    /// gRPC listen address (all services, health, reflection).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for `/health/*` probes.
    pub http_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_addr: SocketAddr,
    /// REST/JSON listen address: the `google.api.http` routes of the
    /// services, answered through the gRPC stack (crates/rest).
    pub rest_addr: SocketAddr,
    /// Whether to serve REST/JSON at all (`REST_ENABLED`). On by default
    /// (`mercato up`, a binary run by hand); the Kubernetes base turns it
    /// off, where clients come through the mesh on the gRPC port and an
    /// undeclared listener would be one more door (deploy/README.md).
    pub rest_enabled: bool,
    /// Seconds between turning NOT_SERVING and starting to drain, so load
    /// balancers (Kubernetes endpoints, Istio) stop sending new calls first.
    pub shutdown_delay_secs: f64,
    /// Seconds that in-flight calls and streams get to finish once draining
    /// starts; after that the process exits anyway. Keep
    /// `shutdown_delay_secs + drain_timeout_secs` below the pod's
    /// `terminationGracePeriodSeconds`.
    pub drain_timeout_secs: f64,
    /// Calls handled at once across all connections; more are refused at
    /// once with RESOURCE_EXHAUSTED (load shedding) instead of queueing.
    /// 0 means no limit.
    pub max_concurrent_requests: usize,
    /// Largest request message accepted, in bytes.
    pub max_decoding_message_size: usize,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 PINGs on idle connections, and how long to wait for the answer.
    pub http2_keepalive_interval_secs: f64,
    pub http2_keepalive_timeout_secs: f64,
    /// Connections are closed gracefully after this many seconds, so clients
    /// rebalance across new replicas; 0 disables.
    pub max_connection_age_secs: f64,
    /// TCP keepalive probe interval in seconds.
    pub tcp_keepalive_secs: f64,
    /// Reset streams not yet accepted that a connection may pile up before
    /// it is closed (HTTP/2 rapid reset, CVE-2023-44487).
    pub http2_max_pending_accept_reset_streams: usize,
    /// Largest header block accepted, in bytes (bounds CONTINUATION floods).
    pub http2_max_header_list_size: u32,
    /// gRPC connections open at once; one more is closed as soon as it is
    /// accepted (bounds the memory idle connections hold). 0: no limit.
    pub max_connections: usize,
    /// Seconds a new connection may stay silent (no HTTP/2 preface) before
    /// it is closed; 0: forever.
    pub handshake_timeout_secs: f64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            rest_addr: SocketAddr::from(([0, 0, 0, 0], 8082)),
            rest_enabled: true,
            shutdown_delay_secs: 0.0,
            drain_timeout_secs: 20.0,
            ..Self::limits()
        }
    }
}

impl ServerSettings {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (name, secs) in [
            ("shutdown_delay_secs", self.shutdown_delay_secs),
            ("drain_timeout_secs", self.drain_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            (
                "http2_keepalive_interval_secs",
                self.http2_keepalive_interval_secs,
            ),
            (
                "http2_keepalive_timeout_secs",
                self.http2_keepalive_timeout_secs,
            ),
            ("max_connection_age_secs", self.max_connection_age_secs),
            ("tcp_keepalive_secs", self.tcp_keepalive_secs),
        ] {
            if !(0.0..=3600.0).contains(&secs) {
                return Err(SettingsError(format!(
                    "{name} must be between 0 and 3600 seconds, got {secs}"
                )));
            }
        }
        if self.max_decoding_message_size < 1024 || self.max_concurrent_streams == 0 {
            return Err(SettingsError(
                "max_decoding_message_size must be at least 1024 and max_concurrent_streams at least 1".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn shutdown_delay(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_delay_secs)
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_secs)
    }

    /// Settings for tests and the CLI: every port on 127.0.0.1:0 and no delays.
    pub fn ephemeral() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            grpc_addr: any,
            http_addr: any,
            metrics_addr: any,
            rest_addr: any,
            shutdown_delay_secs: 0.0,
            drain_timeout_secs: 5.0,
            ..Self::limits()
        }
    }

    /// The default protection limits (addresses and timings are placeholders).
    fn limits() -> Self {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            grpc_addr: any,
            http_addr: any,
            metrics_addr: any,
            rest_addr: any,
            rest_enabled: true,
            shutdown_delay_secs: 0.0,
            drain_timeout_secs: 0.0,
            max_concurrent_requests: 1024,
            max_decoding_message_size: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            http2_keepalive_interval_secs: 30.0,
            http2_keepalive_timeout_secs: 10.0,
            max_connection_age_secs: 1800.0,
            tcp_keepalive_secs: 60.0,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_header_list_size: 16 * 1024,
            max_connections: 4096,
            handshake_timeout_secs: 10.0,
        }
    }

    /// How long a new connection may stay silent, if bounded.
    pub fn handshake_timeout(&self) -> Option<Duration> {
        Self::secs(self.handshake_timeout_secs)
    }

    fn secs(value: f64) -> Option<Duration> {
        (value > 0.0).then(|| Duration::from_secs_f64(value))
    }

    pub(crate) fn http2_keepalive_interval(&self) -> Option<Duration> {
        Self::secs(self.http2_keepalive_interval_secs)
    }

    pub(crate) fn http2_keepalive_timeout(&self) -> Duration {
        Self::secs(self.http2_keepalive_timeout_secs).unwrap_or(Duration::from_secs(20))
    }

    pub(crate) fn max_connection_age(&self) -> Option<Duration> {
        Self::secs(self.max_connection_age_secs)
    }

    pub(crate) fn tcp_keepalive(&self) -> Option<Duration> {
        Self::secs(self.tcp_keepalive_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Example {
        #[serde(flatten)]
        server: ServerSettings,
        database_url: String,
    }

    #[test]
    fn file_then_environment_override_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "grpc_addr: 127.0.0.1:7000\ndatabase_url: postgres://file\n",
        )?;
        // A private prefix keeps this test independent of the real environment.
        let env = Env::prefixed("MERCATO_SETTINGS_TEST_NOTHING_");
        let loaded: Example = load_from(Some(file.clone()), env)?;
        assert_eq!(loaded.server.grpc_addr, "127.0.0.1:7000".parse()?);
        assert_eq!(loaded.server.http_addr, "0.0.0.0:8080".parse()?);
        assert_eq!(loaded.database_url, "postgres://file");

        // Environment beats the file. Cargo sets CARGO_PKG_NAME for every test
        // process, so this reads a real variable without calling set_var.
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default)]
        struct Named {
            name: String,
        }
        std::fs::write(&file, "name: from-file\n")?;
        let from_file: Named = load_from(Some(file.clone()), Env::prefixed("NO_SUCH_PREFIX_"))?;
        assert_eq!(from_file.name, "from-file");
        let from_env: Named = load_from(Some(file), Env::prefixed("CARGO_PKG_"))?;
        assert_eq!(from_env.name, "mercato-platform");
        Ok(())
    }

    #[test]
    fn missing_file_and_bad_values_are_clear_errors() {
        let err = load_from::<Example>(Some("/nonexistent/x.yaml".into()), Env::prefixed("X_"))
            .expect_err("missing file");
        assert!(err.to_string().contains("does not exist"), "{err}");

        let bad = ServerSettings {
            drain_timeout_secs: -1.0,
            ..ServerSettings::default()
        };
        let err = bad.validate().expect_err("negative");
        assert!(err.to_string().contains("drain_timeout_secs"), "{err}");
    }
}
