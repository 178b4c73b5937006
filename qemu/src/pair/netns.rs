//! The pair's private network: a network namespace (owned by a user namespace when not run
//! as root) with a bridge, the host-side address and one tap per node. See the module docs
//! of [`super`] for why.
//!
//! [`enter`] must run while the process is single-threaded: the kernel refuses
//! `unshare(CLONE_NEWUSER)` in a multi-threaded process, and a namespace entered by one
//! thread is not the others'. The supervisor calls it first thing, before any thread.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{access, getgid, getuid, AccessFlags};

use super::spec::{tap, Subnet, BRIDGE, BRIDGE_MAC};
use super::Node;

/// The tap-device clone node.
pub const TUN: &str = "/dev/net/tun";

/// How the namespace was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    /// Inside a user namespace (not root): `nsenter` needs `-U --preserve-credentials`.
    pub userns: bool,
}

/// What stands in the way of a pair network for this user, if anything (checked by
/// `pair up` before it starts the supervisor, so the message reaches the user).
pub fn preflight() -> Result<(), String> {
    if getuid().is_root() {
        return Ok(());
    }
    if access(TUN, AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
        let mode = std::fs::metadata(TUN)
            .map(|m| {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                format!(
                    "mode {:o}, owner uid {}",
                    m.permissions().mode() & 0o777,
                    m.uid()
                )
            })
            .unwrap_or_else(|e| e.to_string());
        return Err(format!(
            "as a user other than root the pair makes its tap devices in a user namespace, \
             which needs read-write access to {TUN} ({mode} here; Debian's default is 0666): \
             run as root, or `chmod 0666 {TUN}`"
        ));
    }
    Ok(())
}

/// Move this (single-threaded) process into a fresh network namespace: as root just that;
/// otherwise inside a fresh user namespace that maps this user to root (setgroups denied),
/// which gives the capabilities the bridge and taps need in the new namespace only.
pub fn enter() -> anyhow::Result<Namespace> {
    let uid = getuid();
    if uid.is_root() {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        return Ok(Namespace { userns: false });
    }
    let gid = getgid();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET).context(
        "unshare(CLONE_NEWUSER | CLONE_NEWNET): this kernel does not let unprivileged users \
         make user namespaces (see sysctl user.max_user_namespaces and \
         kernel.unprivileged_userns_clone); run as root",
    )?;
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ] {
        std::fs::write(file, text).with_context(|| format!("writing {file}"))?;
    }
    Ok(Namespace { userns: true })
}

/// The `ip` commands that build the network (also shown in errors).
pub fn ip_commands(subnet: &Subnet) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = vec![
        vec!["link", "set", "lo", "up"],
        vec![
            "link",
            "add",
            BRIDGE,
            "address",
            &BRIDGE_MAC.to_string(),
            "type",
            "bridge",
            "forward_delay",
            "0",
        ],
        vec![
            "addr",
            "add",
            &format!("{}/{}", subnet.host(), subnet.prefix),
            "dev",
            BRIDGE,
        ],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(str::to_string).collect())
    .collect();
    for n in Node::ALL {
        for c in [
            vec!["tuntap", "add", "dev", tap(n), "mode", "tap"],
            vec!["link", "set", tap(n), "master", BRIDGE],
            vec!["link", "set", tap(n), "up"],
        ] {
            cmds.push(c.into_iter().map(str::to_string).collect());
        }
    }
    cmds.push(
        ["link", "set", BRIDGE, "up"]
            .into_iter()
            .map(str::to_string)
            .collect(),
    );
    cmds
}

/// Build the network in the current namespace: `lo` up, the bridge with the host address,
/// the taps enslaved and up; ARP `locktime` 0 (a gratuitous ARP takes effect at once) and
/// `arp_accept` 1 (it may also create the entry) on the bridge; IPv6 off on the bridge
/// (nothing in the pair speaks it; it only adds noise on the guests' links).
pub fn setup(ip_tool: &Path, subnet: &Subnet) -> anyhow::Result<()> {
    for args in ip_commands(subnet) {
        let out = Command::new(ip_tool)
            .args(&args)
            .output()
            .with_context(|| format!("cannot run {}", ip_tool.display()))?;
        if !out.status.success() {
            bail!(
                "`ip {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    for (file, value, required) in [
        (
            format!("/proc/sys/net/ipv4/neigh/{BRIDGE}/locktime"),
            "0",
            true,
        ),
        (
            format!("/proc/sys/net/ipv4/conf/{BRIDGE}/arp_accept"),
            "1",
            false,
        ),
        (
            format!("/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6"),
            "1",
            false,
        ),
    ] {
        match std::fs::write(&file, value) {
            Ok(()) => {}
            Err(e) if required => return Err(e).with_context(|| format!("writing {file}")),
            Err(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_build_the_bridge_before_bringing_it_up() {
        let cmds: Vec<String> = ip_commands(&Subnet::DEFAULT)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(cmds[0], "link set lo up");
        assert_eq!(
            cmds[1],
            "link add tbr0 address 52:54:00:77:00:01 type bridge forward_delay 0"
        );
        assert_eq!(cmds[2], "addr add 10.77.0.1/24 dev tbr0");
        assert!(cmds.contains(&"tuntap add dev tapa mode tap".to_string()));
        assert!(cmds.contains(&"link set tapb master tbr0".to_string()));
        assert_eq!(cmds.last().unwrap(), "link set tbr0 up");
    }
}
