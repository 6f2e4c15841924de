//! Service binaries as real child processes: started with an environment,
//! ready once they log `"<name> listening"`, killed with SIGKILL and
//! restarted on the same ports, their JSON log lines kept in a file.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A temporary folder for processes' logs and config, kept (and named on
/// stderr) when the test fails.
pub struct LogDir(Option<tempfile::TempDir>);

impl LogDir {
    /// A new folder `/tmp/<prefix>…`.
    pub fn new(prefix: &str) -> Self {
        Self(Some(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("log dir"),
        ))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("log dir").path()
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(logs) = self.0.take()
        {
            eprintln!("service logs kept in {}", logs.keep().display());
        }
    }
}

/// A binary of this workspace. `cargo test --workspace` (the README's test
/// command) builds every binary before any test runs; a test crate sees
/// only its own package's binaries through `CARGO_BIN_EXE_*`, so the others
/// are found next to the test executable, in the target directory.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the workspace's tests (scripts/test.sh) or `cargo build --bins`",
        path.display()
    );
    path
}

/// A port nobody listens on now, for a process that must keep its address
/// across restarts. Taken below Linux's ephemeral range (32768–60999 by
/// default), which the kernel hands to outgoing connections and port-0
/// binds: a port from that range, free when chosen, may be some client's
/// by the time a killed service restarts on it ("Address already in use").
/// Down here only explicit binds compete, and each pick is random.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

/// The environment of a service binary a test starts on this machine: the
/// test auth settings ([`crate::auth::settings_yaml`], written to
/// `dir/config.yaml`), gRPC on 127.0.0.1:`grpc_port` and the other ports
/// free, `database_url`, `redis` (nothing for in-process), JSON logs. Add
/// what a service needs besides.
pub fn local_service_env(
    dir: &Path,
    grpc_port: u16,
    database_url: &str,
    redis: &crate::RedisMode,
) -> Vec<(String, String)> {
    let config = dir.join("config.yaml");
    std::fs::write(&config, crate::auth::settings_yaml()).expect("config file");
    let mut env = vec![
        ("CONFIG_FILE", config.display().to_string()),
        ("GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
        ("HTTP_ADDR", "127.0.0.1:0".into()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("REST_ADDR", "127.0.0.1:0".into()),
        ("DATABASE_URL", database_url.to_owned()),
        ("LOG_FORMAT", "json".into()),
    ];
    if let crate::RedisMode::Url { url, prefix } = redis {
        env.push(("REDIS_URL", url.clone()));
        env.push(("REDIS_KEY_PREFIX", prefix.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// One service process; restarted with the same binary and environment.
pub struct ServiceProcess {
    /// As it logs itself, e.g. `payment service`.
    name: String,
    binary: PathBuf,
    /// Words run before the binary (e.g. `ip netns exec <ns>`), if any.
    prefix: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Where it serves gRPC (fixed when the environment fixes `GRPC_ADDR`).
    pub grpc: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    /// How many times it was started.
    pub starts: u32,
}

impl ServiceProcess {
    /// Starts `binary` with exactly `env` (nothing inherited), logging as
    /// `name` into `log_dir/<binary name>.log`, and waits until it listens.
    pub async fn start(
        name: &str,
        binary: PathBuf,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Self {
        Self::start_under(name, Vec::new(), binary, env, log_dir).await
    }

    /// [`ServiceProcess::start`] behind `prefix`, a command that execs the
    /// binary (`ip netns exec <ns>`: the pid signalled is the service's).
    pub async fn start_under(
        name: &str,
        prefix: Vec<String>,
        binary: PathBuf,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Self {
        let file = binary
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.replace(' ', "-"));
        let mut process = Self {
            name: name.to_owned(),
            binary,
            prefix,
            env,
            log: log_dir.join(format!("{file}.log")),
            child: None,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            starts: 0,
        };
        process.spawn().await;
        process
    }

    async fn spawn(&mut self) {
        let mut command = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let mut child = command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn service process");
        let stdout = child.stdout.take().expect("stdout");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let listening = format!("{} listening", self.name);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Drains stdout for the process's whole life (a full pipe would
        // block it) into the log file, and reports the listening line.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == listening.as_str()
                    && let Some(tx) = tx.take()
                {
                    let addr = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((addr("grpc"), addr("metrics")));
                }
            }
        });
        let (grpc, metrics) = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{} did not start; see {}", self.name, self.log.display()))
            .unwrap_or_else(|_| {
                panic!("{} exited at start; see {}", self.name, self.log.display())
            });
        self.grpc = grpc.parse().expect("grpc address");
        self.metrics = metrics.parse().expect("metrics address");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no shutdown, no cleanup, as when a node dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, and it answers
    /// nothing — a VM or process paused, a node whose kernel still ACKs.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen process goes on where it stopped.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        if let Some(child) = &self.child {
            signal(child, which);
        }
    }

    /// Kills it (if running) and starts it again with the same environment.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The log file (JSON lines of every start).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `which` (`-STOP`, `-CONT`, …) to `child` with kill(1).
pub fn signal(child: &std::process::Child, which: &str) {
    let sent = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(sent.success(), "kill {which} {}", child.id());
}
