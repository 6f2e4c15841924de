//! A real Prometheus (Debian's `prometheus` package) as a child process on
//! a free port, scraping the processes under test every second: what the
//! rollout controller's analysis and the alert rules are tested against,
//! instead of a stand-in that answers whatever a test wants.
//!
//! Its targets are static, labelled the way the Prometheus operator's
//! relabelling labels a pod's series (`namespace`, `pod`, `service`), so
//! the queries the controller generates for a cluster select them as they
//! would there. `MERCATO_PROMETHEUS` may name another `prometheus`
//! executable; `scripts/test.sh` installs the package.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::processes::free_port;

/// One scraped process and the labels its series get.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where its `/metrics` is.
    pub address: SocketAddr,
    /// e.g. `[("namespace", "mercato"), ("pod", "user-service-canary-6b7c9d5f4-x7k2p")]`.
    pub labels: Vec<(String, String)>,
}

impl Target {
    /// A pod's target: `namespace`, `pod` and `service` labels.
    pub fn pod(address: SocketAddr, namespace: &str, pod: &str, service: &str) -> Self {
        Self {
            address,
            labels: [("namespace", namespace), ("pod", pod), ("service", service)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// A running Prometheus; killed when dropped.
pub struct PrometheusServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// The `prometheus` executable: `MERCATO_PROMETHEUS`, else the Debian one.
fn executable() -> PathBuf {
    if let Some(path) = std::env::var_os("MERCATO_PROMETHEUS") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from("/usr/bin/prometheus");
    assert!(
        path.exists(),
        "prometheus is not installed: run scripts/test.sh, or `sudo apt-get install -y prometheus`"
    );
    path
}

/// The scrape configuration: every target once a second.
fn config(targets: &[Target]) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: mercato\n    static_configs:\n",
    );
    for target in targets {
        text.push_str(&format!(
            "      - targets: ['{}']\n        labels:\n",
            target.address
        ));
        for (name, value) in &target.labels {
            text.push_str(&format!("          {name}: '{value}'\n"));
        }
    }
    text
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets`, its data and log in `dir`, and
    /// waits until it is ready.
    pub async fn start(dir: &Path, targets: &[Target]) -> Self {
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config(targets)).expect("prometheus config");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new(executable())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        let this = Self { child, port, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = tokio::time::Instant::now();
        loop {
            // Listening first (http_get insists on a connection), then ready.
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && crate::http_get(addr, "/-/ready").await.0 == 200
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus was not ready on port {port}; see {}",
                this.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        this
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
