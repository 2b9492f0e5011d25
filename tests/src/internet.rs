//! An "internet" for end-to-end tests: a builder namespace (where airlockd
//! runs) wired to an "internet" namespace at 203.0.113.10 (TEST-NET-3).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{del_netns, new_netns};

/// A DNS server that answers every query with NXDOMAIN (RCODE 3).
const NXDOMAIN: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('203.0.113.10',53))\nwhile True:\n    q,a=s.recvfrom(512)\n    if len(q)>=12: s.sendto(q[:2]+bytes([0x81,0x83])+q[4:6]+bytes(6)+q[12:],a)\n";

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

pub struct Internet {
    pub host: String,
    pub inet: String,
    servers: Vec<Child>,
}

impl Internet {
    /// A builder namespace wired to an "internet" namespace that serves `dir`
    /// on http://203.0.113.10/ and answers every DNS query on
    /// 203.0.113.10:53 with NXDOMAIN at once (no name resolves, quickly).
    pub fn up(dir: &Path) -> Internet {
        let host = new_netns("sh");
        let inet = new_netns("si");
        ip(&[
            "link", "add", "wan0", "netns", &host, "type", "veth", "peer", "name", "eth0", "netns",
            &inet,
        ]);
        ip(&["-n", &host, "addr", "add", "203.0.113.1/24", "dev", "wan0"]);
        ip(&["-n", &host, "link", "set", "wan0", "up"]);
        ip(&["-n", &host, "link", "set", "lo", "up"]);
        ip(&["-n", &inet, "addr", "add", "203.0.113.10/24", "dev", "eth0"]);
        ip(&["-n", &inet, "link", "set", "eth0", "up"]);
        ip(&["-n", &inet, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.10",
        ]);
        let server = Command::new("ip")
            .args(["netns", "exec", &inet, "python3", "-m", "http.server", "80"])
            .args(["--bind", "203.0.113.10", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dns = Command::new("ip")
            .args(["netns", "exec", &inet, "python3", "-c", NXDOMAIN])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        Internet {
            host,
            inet,
            servers: vec![server, dns],
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        del_netns(&self.host);
        del_netns(&self.inet);
    }
}
