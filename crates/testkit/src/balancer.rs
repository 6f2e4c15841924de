//! An L7 gRPC balancer in front of replicas, standing in for the mesh:
//! Debian's haproxy, HTTP/2 cleartext on both sides, round robin per call
//! (as Envoy balances gRPC), and each replica's `/health/ready` probed on
//! its HTTP port, as a readiness probe takes a pod out of its Service. A
//! frozen replica accepts connections (its kernel still answers) but
//! fails the probe, so it leaves the rotation within about a second.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::processes::free_port;

/// One replica behind the balancer.
#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    /// Where it serves gRPC.
    pub grpc: SocketAddr,
    /// Where it serves `/health/ready`.
    pub http: SocketAddr,
}

/// A running haproxy; stopped when dropped.
pub struct Balancer {
    child: Child,
    /// Where callers reach the replicas.
    pub addr: SocketAddr,
}

impl Balancer {
    /// Starts haproxy over `upstreams`, its config and log in `dir`.
    pub async fn start(upstreams: &[Upstream], dir: &Path) -> Self {
        let installed = Command::new("haproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "haproxy is not installed: run `apt-get install -y haproxy` (scripts/test.sh does)"
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let servers: String = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                format!(
                    "    server r{i} {} proto h2 check port {}\n",
                    u.grpc,
                    u.http.port()
                )
            })
            .collect();
        let config = format!(
            "global\n    maxconn 4000\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 300s\n    timeout server 300s\n    timeout check 500ms\n\
             frontend grpc\n    bind {addr} proto h2\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n    option httpchk GET /health/ready\n    http-check expect status 200\n\
             \x20   default-server inter 500ms fall 2 rise 1\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("haproxy config");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let started = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not listen on {addr}; see {}",
                dir.join("haproxy.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, addr }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
