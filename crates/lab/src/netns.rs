//! A lab whose places each live in a network namespace of their own, so that a partition drops
//! real packets. A place is a region (its nodes, its controller and etcd member in the highly
//! available shape, its clients) or the controller's place (the single controller, or the
//! witness site).
//!
//! For the lab in slot `s` (its block, below 64):
//! - `vdr<s>-hub` holds a bridge joining every place and the machine's own end;
//! - `vdr<s>-<p>` is place `p` (0: the controller's place, 1…: the regions): its interface
//!   `eth0` carries every lab address of the place, all on the lab's /21 of `198.18.0.0/15`;
//! - `vdr<s>` is the machine's end (`<lab /21>.7.1`): the lab's commands, the chaos monitor and
//!   its checkers reach every place through it, and no cut ever touches it.
//!
//! Cuts are nftables rules in the *receiving* place's input hook: the sender's packets leave
//! and vanish, as on a real network (a rule on the sending side would fail `connect` at once
//! with `EPERM`, which no network does). The region link's proxies still add the link's
//! latency; their connections cross the bridge, so the same rules cut them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::LabSpec;
use crate::cut::{Cut, Effect};

/// etcd's peer port (the cut of peer traffic only).
const ETCD_PEER_PORT: u16 = 2380;
/// The place whose /24 holds the machine's own end of the lab network: never a lab place.
const MACHINE_PLACE: u8 = 7;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "network namespaces need root and iproute2 + nftables (`make test-deps` installs them): {0}"
    )]
    Unavailable(String),
    #[error("no free network namespace slot for a lab (64 are in use: `ip netns list`)")]
    NoSlot,
}

/// The namespace of place `place`.
pub fn place_ns(spec: &LabSpec, place: u8) -> String {
    format!("vdr{}-{place}", spec.block)
}

fn hub_ns(slot: u8) -> String {
    format!("vdr{slot}-hub")
}

/// The namespace a vantage (a region's name, or the controller's place) lives in.
pub fn vantage_ns(spec: &LabSpec, vantage: &str) -> String {
    place_ns(spec, spec.place(vantage))
}

/// Every place of the lab: the controller's place, then each region.
pub fn places(spec: &LabSpec) -> Vec<u8> {
    (0..=spec.regions.len() as u8).collect()
}

/// The vantage name of a place (the name cuts use).
fn vantage_of(spec: &LabSpec, place: u8) -> String {
    match place {
        0 => crate::spec::CONTROLLER_VANTAGE.to_string(),
        p => spec.regions[usize::from(p) - 1].clone(),
    }
}

/// Claims a free slot for a new lab by creating its hub namespace (creation fails when another
/// lab holds the slot, so two labs starting at once never share one). `seed` spreads the
/// first choice.
pub fn claim_slot(seed: u32) -> Result<u8, NetnsError> {
    for attempt in 0..64u32 {
        let slot = (seed.wrapping_add(attempt) % 64) as u8;
        if std::path::Path::new("/run/netns")
            .join(hub_ns(slot))
            .exists()
        {
            continue;
        }
        if ip(&["netns", "add", &hub_ns(slot)]).is_ok() {
            return Ok(slot);
        }
    }
    Err(NetnsError::NoSlot)
}

/// Every lab address, by place: what each place's `eth0` must carry.
fn addresses(spec: &LabSpec) -> BTreeMap<u8, BTreeSet<Ipv4Addr>> {
    let mut ips: Vec<Ipv4Addr> = spec.nodes().map(|(r, i)| spec.node_ip(r, i)).collect();
    let v4 = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    };
    ips.extend(spec.links().iter().filter_map(|l| v4(l.listen)));
    ips.extend(spec.dns_servers().into_iter().filter_map(v4));
    ips.extend(spec.etcd_members().iter().filter_map(|m| v4(m.client)));
    let mut by_place: BTreeMap<u8, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for ip in ips {
        by_place.entry(spec.place_of(ip)).or_default().insert(ip);
    }
    by_place
}

/// One place's /24.
fn place_subnet(spec: &LabSpec, place: u8) -> String {
    format!("{}/24", spec.ip(place, 0))
}

/// Builds the lab's namespaces, bridge and addresses (the hub may exist: [`claim_slot`]).
pub fn create(spec: &LabSpec) -> Result<(), NetnsError> {
    if Command::new("nft").arg("--version").output().is_err() {
        return Err(NetnsError::Unavailable("no `nft` in PATH".into()));
    }
    let slot = spec.block;
    let hub = hub_ns(slot);
    if !std::path::Path::new("/run/netns").join(&hub).exists() {
        ip(&["netns", "add", &hub]).map_err(|e| NetnsError::Unavailable(e.to_string()))?;
    }
    ip(&["-n", &hub, "link", "set", "lo", "up"])?;
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", "br0", "up"])?;
    let by_place = addresses(spec);
    for place in places(spec) {
        let ns = place_ns(spec, place);
        let port = format!("vdr{slot}h{place}");
        ip(&["netns", "add", &ns])?;
        ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        let own = format!("{}/21", spec.ip(place, 254));
        ip(&["-n", &ns, "addr", "add", &own, "dev", "eth0"])?;
        for addr in by_place.get(&place).into_iter().flatten() {
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "eth0",
            ])?;
        }
        nft(&ns, &table(""))?;
        write_resolv_conf(spec, place)?;
    }
    let machine = format!("vdr{slot}");
    let machine_port = format!("vdr{slot}hm");
    ip(&[
        "link",
        "add",
        &machine,
        "type",
        "veth",
        "peer",
        "name",
        &machine_port,
        "netns",
        &hub,
    ])?;
    ip(&[
        "-n",
        &hub,
        "link",
        "set",
        &machine_port,
        "master",
        "br0",
        "up",
    ])?;
    let machine_addr = format!("{}/21", spec.ip(MACHINE_PLACE, 1));
    ip(&["addr", "add", &machine_addr, "dev", &machine])?;
    ip(&["link", "set", &machine, "up"])?;
    Ok(())
}

/// The DNS server an application in `place` asks: its own site's in the highly available
/// shape, else the controller's.
fn place_dns(spec: &LabSpec, place: u8) -> std::net::SocketAddr {
    spec.sites
        .iter()
        .find(|site| spec.place(site) == place)
        .map_or(spec.dns, |site| spec.site_dns(site))
}

/// `/etc/netns/<ns>/resolv.conf` of a place, which `ip netns exec` puts over /etc/resolv.conf:
/// a program started there resolves the lab's name through the place's DNS server, as an
/// application in that site would. resolv.conf names no port, so only when the lab's DNS
/// servers listen on 53 (`lab up --netns --dns 127.0.0.1:53`).
fn write_resolv_conf(spec: &LabSpec, place: u8) -> Result<(), NetnsError> {
    let dns = place_dns(spec, place);
    if dns.port() != 53 {
        return Ok(());
    }
    let dir = std::path::Path::new("/etc/netns").join(place_ns(spec, place));
    let failed = |e: std::io::Error| NetnsError::Command {
        command: format!("writing {}/resolv.conf", dir.display()),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(failed)?;
    std::fs::write(
        dir.join("resolv.conf"),
        format!("nameserver {}\n", dns.ip()),
    )
    .map_err(failed)
}

/// Removes the lab's namespaces (and with them every interface and rule), first killing any
/// process still inside one.
pub fn destroy(spec: &LabSpec) {
    let mut namespaces: Vec<String> = places(spec).iter().map(|p| place_ns(spec, *p)).collect();
    namespaces.push(hub_ns(spec.block));
    for ns in &namespaces {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: a process inside this lab's own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = ip(&["netns", "del", ns]);
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(ns));
    }
    // Deleting the hub removed the machine's end of its veth pair too; this covers a half-built one.
    let _ = Command::new("ip")
        .args(["link", "del", &format!("vdr{}", spec.block)])
        .stderr(Stdio::null())
        .status();
}

/// Makes `command` start inside namespace `ns`.
pub fn enter(command: &mut Command, ns: &str) -> std::io::Result<()> {
    let handle = std::fs::File::open(std::path::Path::new("/run/netns").join(ns))?;
    // SAFETY: setns is async-signal-safe and changes only the child, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `work` on a thread of its own inside namespace `ns`: every socket it opens is the
/// namespace's (the lab's clients stand in their place this way).
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<T>>> {
    let handle = std::fs::File::open(std::path::Path::new("/run/netns").join(ns))?;
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            // SAFETY: changes the network namespace of this thread only.
            if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            drop(handle);
            Ok(work())
        })
}

/// Runs `work` to its end on a runtime of its own, on a thread inside namespace `ns`: every
/// socket it opens is the namespace's. The thread's result: the runtime's start, then `work`'s.
#[allow(clippy::type_complexity)]
pub fn block_on_in<T: Send + 'static>(
    ns: &str,
    work: impl Future<Output = T> + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<std::io::Result<T>>>> {
    spawn_in(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(work))
    })
}

/// The nftables script of one place: its filter table, with `rules` in its input hook.
fn table(rules: &str) -> String {
    format!(
        "table inet lab {{}}\nflush table inet lab\ntable inet lab {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// The input rules of each place for these cuts: packets are dropped where they arrive.
pub fn ruleset(spec: &LabSpec, cuts: &[Cut]) -> BTreeMap<u8, String> {
    let mut scripts = BTreeMap::new();
    for to in places(spec) {
        let mut rules = String::new();
        for from in places(spec).into_iter().filter(|f| *f != to) {
            let source = place_subnet(spec, from);
            let (from_name, to_name) = (vantage_of(spec, from), vantage_of(spec, to));
            for cut in cuts {
                match cut.effect(&from_name, &to_name) {
                    None => {}
                    Some(Effect::All) => rules.push_str(&format!("    ip saddr {source} drop\n")),
                    Some(Effect::EtcdPeers) => {
                        // Both ends of a peer connection: to a member's peer port, and back.
                        for port in ["dport", "sport"] {
                            rules.push_str(&format!(
                                "    ip saddr {source} tcp {port} {ETCD_PEER_PORT} drop\n"
                            ));
                        }
                    }
                    Some(Effect::Loss(percent)) => rules.push_str(&format!(
                        "    ip saddr {source} numgen random mod 100 < {percent} drop\n"
                    )),
                }
            }
        }
        // One node cut off from one place, both ways, dropped where each packet arrives.
        for cut in cuts {
            if let Cut::NodeLink { node, place } = cut {
                let (other, own) = (spec.place(place), spec.place_of(*node));
                if own == other {
                    // Within one place there is no path to cut.
                    continue;
                }
                if to == own {
                    let source = place_subnet(spec, other);
                    rules.push_str(&format!("    ip saddr {source} ip daddr {node} drop\n"));
                } else if to == other {
                    rules.push_str(&format!("    ip saddr {node} drop\n"));
                }
            }
        }
        scripts.insert(to, table(&rules));
    }
    scripts
}

/// Puts `cuts` in force in every place (replacing the previous ones; empty: heal).
pub fn apply(spec: &LabSpec, cuts: &[Cut]) -> Result<(), NetnsError> {
    for (place, script) in ruleset(spec, cuts) {
        nft(&place_ns(spec, place), &script)?;
    }
    Ok(())
}

fn nft(ns: &str, script: &str) -> Result<(), NetnsError> {
    let failed = |detail: String| NetnsError::Command {
        command: format!("nft -f - (in {ns})"),
        detail,
    };
    let mut command = Command::new("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    enter(&mut command, ns).map_err(|e| failed(e.to_string()))?;
    let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Unavailable(format!("ip: {e}")))?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabSpec {
        LabSpec {
            netns: true,
            block: 3,
            ..LabSpec::reference("/tmp/lab".into())
        }
    }

    #[test]
    fn every_place_has_its_own_slash_24_of_the_labs_slash_21() {
        let spec = spec();
        assert_eq!(spec.node_ip(0, 0).to_string(), "198.18.25.1");
        assert_eq!(spec.node_ip(1, 1).to_string(), "198.18.26.2");
        assert_eq!(spec.etcd_ip("witness").to_string(), "198.18.24.50");
        let last = LabSpec {
            block: 63,
            ..spec.clone()
        };
        assert_eq!(last.ip(7, 1).to_string(), "198.19.255.1");
        let by_place = addresses(&spec);
        assert_eq!(by_place.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        for (place, ips) in &by_place {
            for ip in ips {
                assert_eq!(spec.place_of(*ip), *place, "{ip}");
            }
        }
        assert!(by_place[&1].contains(&spec.node_ip(0, 1)));
        let link = spec.controller_link_addr(1, 0);
        assert!(
            by_place[&0]
                .iter()
                .any(|ip| std::net::IpAddr::from(*ip) == link.ip())
        );
    }

    #[test]
    fn cuts_become_drops_where_the_packets_arrive() {
        let spec = spec();
        let east = place_subnet(&spec, 1);
        let west = place_subnet(&spec, 2);
        let witness = place_subnet(&spec, 0);
        let parse = |e: &str| Cut::parse(e).unwrap();

        let isolated = ruleset(&spec, &[parse("us-east-1")]);
        assert!(isolated[&1].contains(&format!("ip saddr {west} drop")));
        assert!(isolated[&1].contains(&format!("ip saddr {witness} drop")));
        assert!(isolated[&2].contains(&format!("ip saddr {east} drop")));
        assert!(!isolated[&2].contains(&format!("ip saddr {witness} drop")));

        let one_way = ruleset(&spec, &[parse("oneway:us-east-1:us-east-2")]);
        assert!(one_way[&2].contains(&format!("ip saddr {east} drop")));
        assert!(!one_way[&1].contains("drop"), "the other way flows");

        let peers = ruleset(&spec, &[parse("etcd-peers:us-east-1")]);
        assert!(peers[&0].contains(&format!("ip saddr {east} tcp dport 2380 drop")));
        assert!(peers[&1].contains(&format!("ip saddr {witness} tcp sport 2380 drop")));

        let lossy = ruleset(&spec, &[parse("loss:25:us-east-2")]);
        assert!(lossy[&1].contains(&format!("ip saddr {west} numgen random mod 100 < 25 drop")));

        let a1 = spec.node_ip(0, 0);
        let node = ruleset(&spec, &[parse(&format!("node:{a1}-to:controller"))]);
        assert!(node[&1].contains(&format!("ip saddr {witness} ip daddr {a1} drop")));
        assert!(node[&0].contains(&format!("ip saddr {a1} drop")));
        assert!(
            !node[&2].contains("drop"),
            "the other region still reaches it"
        );

        let healed = ruleset(&spec, &[]);
        assert!(healed.values().all(|s| !s.contains("drop")));
        assert!(
            healed
                .values()
                .all(|s| s.starts_with("table inet lab {}\nflush table inet lab"))
        );
    }
}
