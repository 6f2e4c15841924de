//! localstripe (PyPI), a stateful Stripe emulator, as a child process on a
//! free port: the real HTTP API the Stripe adapter is tested against.
//!
//! `scripts/test.sh` installs it into `target/tools/localstripe` (a Python
//! venv); `MERCATO_LOCALSTRIPE` may name another `localstripe` executable.
//! It keeps its objects in memory only (it is started `--from-scratch`), so
//! a restart loses every intent and refund, as the tests want.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::processes::free_port;

/// A secret key localstripe accepts (any `sk_test_…` does).
pub const SECRET_KEY: &str = "sk_test_mercato";

/// Which payment provider a harness's payment service pays through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The built-in simulated one (the `pm_*` test methods).
    Simulated,
    /// The Stripe adapter against localstripe (`pm_card_*` test methods).
    LocalStripe,
}

/// A running localstripe; killed when dropped.
pub struct LocalStripe {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

/// The `localstripe` executable: `MERCATO_LOCALSTRIPE`, else the venv
/// `scripts/test.sh` makes in the target directory.
fn executable() -> PathBuf {
    if let Some(path) = std::env::var_os("MERCATO_LOCALSTRIPE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/tools/localstripe/bin/localstripe
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf();
    let path = target.join("tools/localstripe/bin/localstripe");
    assert!(
        path.exists(),
        "localstripe is not installed at {}: run scripts/test.sh, or \
         `python3 -m venv target/tools/localstripe && target/tools/localstripe/bin/pip install localstripe==1.15.10`",
        path.display()
    );
    path
}

impl LocalStripe {
    /// Starts localstripe on a free port, its log in `dir`, and waits until it answers.
    pub async fn start(dir: &Path) -> Self {
        let mut this = Self {
            child: None,
            port: free_port(),
            log: dir.join("localstripe.log"),
        };
        this.spawn().await;
        this
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("localstripe log");
        let child = Command::new(executable())
            .args(["--port", &self.port.to_string(), "--from-scratch"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start localstripe");
        self.child = Some(child);
        let started = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "localstripe did not listen on port {}; see {}",
                self.port,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its API's base URL (for `stripe_api_base`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes [`SECRET_KEY`] to a file in `dir` (for `stripe_secret_key_file`).
    pub fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("stripe-secret-key");
        std::fs::write(&path, SECRET_KEY).expect("key file");
        path
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The environment that makes a payment service pay through it, for a
    /// service that reaches this machine at `host` (`127.0.0.1`, or a test
    /// host's gateway); the key file is written in `dir`.
    pub fn payment_env(&self, host: &str, dir: &Path) -> Vec<(String, String)> {
        let key = Self::key_file(dir);
        [
            ("PAYMENT_PROVIDER", "stripe".to_owned()),
            ("STRIPE_API_BASE", format!("http://{host}:{}", self.port)),
            ("STRIPE_SECRET_KEY_FILE", key.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Its log: the access log, one line per request.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// SIGSTOP: its socket stays open and it answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: it answers what it was sent meanwhile.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        if let Some(child) = &self.child {
            crate::processes::signal(child, which);
        }
    }

    /// Kills it: every connection to it is refused until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port, with nothing kept.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        self.stop();
    }
}
