//! A test host of its own for one replica: a network namespace joined to
//! this machine by a veth pair, so that the replica can be cut off
//! silently — its packets dropped, nothing refused, as when a node loses
//! its network — and healed again.
//!
//! Addresses are link-local (`169.254.N.1` on this side, `169.254.N.2`
//! in the namespace): nothing outside this machine answers them. From the
//! namespace, TCP to `169.254.N.1:<port>` reaches `127.0.0.1:<port>` here
//! (DNAT, with the source rewritten to 127.0.0.1 so that Postgres' trust
//! rules for local clients apply); processes here reach the replica at
//! `169.254.N.2`. Needs root, iproute2 and iptables (scripts/test.sh
//! installs iptables).

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// What a cut drops (both directions, silently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// Every packet: the node is gone from the network.
    Everything,
    /// TCP to and from these ports on this machine (Postgres' 5432, a
    /// peer's gRPC port), the rest still flowing.
    Ports(Vec<u16>),
}

/// A network namespace with a veth pair to this machine; removed on drop.
pub struct Host {
    name: String,
    /// This side's end of the veth pair.
    outer: String,
    /// The namespace's end.
    inner: String,
    /// This machine, as the namespace reaches it.
    pub gateway: Ipv4Addr,
    /// The namespace's address, as this machine reaches it.
    pub ip: Ipv4Addr,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    /// A new namespace, up, with its route to this machine.
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes.
        let name = format!("mrc{}-{n}", pid % 100_000);
        let octet = u8::try_from(64 + (pid.wrapping_mul(7).wrapping_add(n)) % 180).unwrap_or(64);
        let host = Self {
            outer: format!("{name}o"),
            inner: format!("{name}i"),
            gateway: Ipv4Addr::new(169, 254, octet, 1),
            ip: Ipv4Addr::new(169, 254, octet, 2),
            name,
        };
        host.set_up();
        host
    }

    fn set_up(&self) {
        let (ns, outer, inner) = (&self.name, &self.outer, &self.inner);
        let gateway = format!("{}/30", self.gateway);
        let ip = format!("{}/30", self.ip);
        run("ip", &["netns", "add", ns]);
        run(
            "ip",
            &["link", "add", outer, "type", "veth", "peer", "name", inner],
        );
        run("ip", &["link", "set", inner, "netns", ns]);
        run("ip", &["addr", "add", &gateway, "dev", outer]);
        run("ip", &["link", "set", outer, "up"]);
        self.exec(&["ip", "addr", "add", &ip, "dev", inner]);
        self.exec(&["ip", "link", "set", inner, "up"]);
        self.exec(&["ip", "link", "set", "lo", "up"]);
        // Local services listen on 127.0.0.1: let the gateway address
        // stand for them.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{outer}/route_localnet"),
            "1",
        )
        .expect("route_localnet (root needed)");
        for rule in self.nat_rules() {
            let mut args = vec!["-t", "nat", "-A"];
            args.extend(rule.iter().map(String::as_str));
            run("iptables", &args);
        }
    }

    fn nat_rules(&self) -> [Vec<String>; 2] {
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        [
            words(&format!(
                "PREROUTING -i {} -d {} -p tcp -j DNAT --to-destination 127.0.0.1",
                self.outer, self.gateway
            )),
            words(&format!(
                "INPUT -s {} -d 127.0.0.1 -p tcp -j SNAT --to-source 127.0.0.1",
                self.ip
            )),
        ]
    }

    /// Runs `args` inside the namespace, to completion.
    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend(args);
        run("ip", &all);
    }

    /// The words that run a program inside the namespace (the program's
    /// own pid is the one started: `ip netns exec` execs it).
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// Drops what `cut` names, silently, until [`Host::heal`].
    pub fn cut(&self, cut: &Cut) {
        let inner = self.inner.as_str();
        match cut {
            Cut::Everything => {
                self.exec(&["iptables", "-A", "INPUT", "-i", inner, "-j", "DROP"]);
                self.exec(&["iptables", "-A", "OUTPUT", "-o", inner, "-j", "DROP"]);
            }
            Cut::Ports(ports) => {
                for port in ports {
                    let port = port.to_string();
                    self.exec(&[
                        "iptables", "-A", "OUTPUT", "-o", inner, "-p", "tcp", "--dport", &port,
                        "-j", "DROP",
                    ]);
                    self.exec(&[
                        "iptables", "-A", "INPUT", "-i", inner, "-p", "tcp", "--sport", &port,
                        "-j", "DROP",
                    ]);
                }
            }
        }
    }

    /// Lets every packet through again.
    pub fn heal(&self) {
        self.exec(&["iptables", "-F", "INPUT"]);
        self.exec(&["iptables", "-F", "OUTPUT"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for rule in self.nat_rules() {
            let mut args = vec!["-t", "nat", "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = Command::new("iptables").args(&args).output();
        }
        // Removing the namespace removes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
