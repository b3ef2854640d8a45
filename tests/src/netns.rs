//! Network namespaces for partition tests: every node gets its own namespace, linked by a
//! veth pair to a bridge that lives in a hub namespace of its own (so the host's firewall
//! and addresses play no part). Cutting a node's link (its veth end in the hub goes down)
//! isolates it for real: its TCP connections stall and time out as on a broken network.
//! Names carry a random tag; everything is deleted on drop. Needs root and `ip`
//! (iproute2).

use std::net::Ipv4Addr;
use std::process::Command;

/// The namespaces of one test cluster.
#[derive(Debug)]
pub struct Net {
    tag: String,
    subnet: [u8; 2],
    nodes: Vec<u64>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run `ip` (package iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// Creates the hub with its bridge and one namespace per node `1..=n`.
    pub fn create(n: u64) -> Net {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 20;
        let h = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let tag = format!("{:05x}", h >> 44);
        let net = Net {
            tag,
            subnet: [10 + ((h >> 8) as u8 % 200), (h >> 16) as u8],
            nodes: (1..=n).collect(),
        };
        let hub = net.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for id in 1..=n {
            let ns = net.ns_name(id);
            let (a, b) = net.veth(id);
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &hub]);
            ip(&["-n", &hub, "link", "set", &b, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &b, "up"]);
            let addr = format!("{}/24", net.ip(id));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &a]);
            ip(&["-n", &ns, "link", "set", &a, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn hub(&self) -> String {
        format!("csvt-{}-hub", self.tag)
    }

    /// The hub namespace (its bridge links every node).
    pub fn hub_name(&self) -> String {
        self.hub()
    }

    /// Gives the hub's bridge the address `.254` of the nodes' subnet and returns it: a
    /// service run in the hub namespace (a SAN target) is then reached by every node
    /// over its own link, and cutting a node's link cuts its storage path too.
    pub fn hub_address(&self) -> Ipv4Addr {
        let a = Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 254);
        let cidr = format!("{a}/24");
        let hub = self.hub();
        let out = Command::new("ip")
            .args(["-n", &hub, "addr", "show", "dev", "br0"])
            .output()
            .expect("ip addr show");
        if !String::from_utf8_lossy(&out.stdout).contains(&cidr) {
            ip(&["-n", &hub, "addr", "add", &cidr, "dev", "br0"]);
            ip(&["-n", &hub, "link", "set", "lo", "up"]);
        }
        a
    }

    fn veth(&self, id: u64) -> (String, String) {
        (
            format!("cv{}n{id}", self.tag),
            format!("cv{}h{id}", self.tag),
        )
    }

    /// Namespace of node `id`.
    pub fn ns_name(&self, id: u64) -> String {
        format!("csvt-{}-{id}", self.tag)
    }

    /// Address of node `id`.
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], id as u8)
    }

    /// Cuts the links of `ids` (they can reach nobody, nobody reaches them).
    pub fn cut(&self, ids: &[u64]) {
        for id in ids {
            ip(&["-n", &self.hub(), "link", "set", &self.veth(*id).1, "down"]);
        }
    }

    /// Restores the links of `ids`.
    pub fn heal(&self, ids: &[u64]) {
        for id in ids {
            ip(&["-n", &self.hub(), "link", "set", &self.veth(*id).1, "up"]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for id in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns_name(*id)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .status();
    }
}
