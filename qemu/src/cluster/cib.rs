//! The Pacemaker configuration: `cib.xml` (a whole CIB, for `crm_verify --xml-file`) and
//! `load.sh` (which puts its `<configuration>` into a running cluster with `cibadmin`).
//!
//! Per guest G with home host H:
//! - `vm-G`: `ocf:heartbeat:VirtualDomain` over the guest's domain XML, `force_stop=true`
//!   (without it a stop waits 85 s for an ACPI shutdown the guest does not do), no live
//!   migration (the guest's NVRAM cannot follow it), a monitor, and a fence `priority`.
//! - `nvlog-G`: a promotable clone of `ocf:tandem:nvlog`, one instance per host. Promoted
//!   where G runs (it sends G's log to the peer), Unpromoted on the other host (it receives
//!   into `/dev/shm/tandem-nvlog-G`, the file G's `<shmem>` maps when G starts there).
//! - order `promote nvlog-G then start vm-G` and colocation `vm-G with Promoted nvlog-G`:
//!   G starts only on the host that holds its log's promoted side. The order is symmetric,
//!   so a move stops G before its log side is demoted.
//! - `vm-G` prefers H (`home_score`); `resource-stickiness` is higher, so a host that
//!   comes back takes nothing back on its own: moving back is `crm_resource --move`, then
//!   `--clear`.
//!
//! The guest owns its client address (it is on its command line, so it comes up with the
//! guest wherever it starts), so there is no IPaddr2 resource.
//!
//! Promotion: the `ocf:tandem:nvlog` agent sets the promotion score of its host (node
//! attribute `master-nvlog-G-rsc`, `crm_attribute --promotion`) only when its copy of the
//! log is complete; the colocation then brings `vm-G`'s home preference and stickiness into
//! which host is promoted.
//!
//! Fencing: stonith on, one device per host (`pcmk_host_list` = that host, never run on the
//! host it fences). Each guest's `priority` is a distinct power of two, so the two hosts'
//! sums always differ, and `priority-fencing-delay` delays the fencing of the host that runs
//! the more important guests: when the interconnect is cut, that host wins the race.
//! `no-quorum-policy=stop`: corosync's `two_node` keeps the survivor quorate, so Pacemaker
//! has no reason to ignore quorum (which would let a host that boots alone start guests).
//!
//! No secret is written here: fence passwords go through `password_script`; the mirror key
//! and corosync's key are files the parameters name.

use std::fmt::Write as _;

use super::spec::{Cluster, Guest, DEFAULT_FENCE_AGENT, MAX_GUESTS};
use crate::appliance::render::xml;

/// The schema the CIB declares: the first with the Promoted/Unpromoted role names
/// (Pacemaker 2.1.0); Pacemaker 2.1.5 upgrades it as it needs.
pub const SCHEMA: &str = "pacemaker-3.7";
/// The marker of a value the operator must fill in; `load.sh` refuses a CIB that has one.
pub const CHANGE_ME: &str = "CHANGE-ME";
/// The OCF agent of the NVLOG mirror (`ocf:tandem:nvlog`).
pub const NVLOG_AGENT: (&str, &str) = ("tandem", "nvlog");
/// VirtualDomain's hypervisor URI.
pub const HYPERVISOR: &str = "qemu:///system";

/// `vm-G`.
pub fn vm_id(g: &Guest) -> String {
    format!("vm-{}", g.name)
}

/// `nvlog-G`: the promotable clone (what constraints and operators name).
pub fn nvlog_id(g: &Guest) -> String {
    format!("nvlog-{}", g.name)
}

/// `nvlog-G-rsc`: the primitive inside the clone.
pub fn nvlog_rsc_id(g: &Guest) -> String {
    format!("nvlog-{}-rsc", g.name)
}

/// `fence-H`.
pub fn fence_id(host: &str) -> String {
    format!("fence-{host}")
}

/// Guest `g`'s fence priority: distinct powers of two, the first guest highest.
pub fn priority(c: &Cluster, g: &Guest) -> u32 {
    debug_assert!(c.guests.len() <= MAX_GUESTS);
    1 << (c.guests.len() - 1 - g.index)
}

/// The parameters of `ocf:tandem:nvlog` for `g`, common to both hosts (`listen` is per
/// host: [`nvlog_listen`]).
pub fn nvlog_params(c: &Cluster, g: &Guest) -> Vec<(&'static str, String)> {
    let peers: Vec<String> = (0..2)
        .map(|h| format!("{}={}", c.hosts[h].name, c.mirror_addr(g, h)))
        .collect();
    vec![
        ("guest", g.name.clone()),
        ("shm", format!("/dev/shm/{}", g.shm_name())),
        ("size", g.nvram().bytes().to_string()),
        ("key", c.mirror.key_file.clone()),
        ("peers", peers.join(" ")),
        ("policy", c.mirror.policy.clone()),
        ("mode", c.mirror.mode.clone()),
        ("max_lag", c.mirror.max_lag.bytes().to_string()),
    ]
}

/// `listen` of `g`'s nvlog instance on host `h`.
pub fn nvlog_listen(c: &Cluster, g: &Guest, h: usize) -> String {
    c.mirror_addr(g, h).to_string()
}

/// `<nvpair>`s in a set whose id is `set`.
fn nvpairs(s: &mut String, indent: &str, set: &str, pairs: &[(&str, String)]) {
    for (k, v) in pairs {
        let _ = writeln!(
            s,
            "{indent}<nvpair id=\"{set}-{k}\" name=\"{k}\" value=\"{}\"/>",
            xml(v)
        );
    }
}

/// A set element (`instance_attributes`, `meta_attributes`, ...) with its pairs.
fn set(s: &mut String, indent: &str, tag: &str, id: &str, pairs: &[(&str, String)]) {
    let _ = writeln!(s, "{indent}<{tag} id=\"{id}\">");
    nvpairs(s, &format!("{indent}  "), id, pairs);
    let _ = writeln!(s, "{indent}</{tag}>");
}

/// One `<op>`: (name, interval, timeout, role).
type Op<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

fn operations(s: &mut String, indent: &str, rsc: &str, ops: &[Op<'_>]) {
    let _ = writeln!(s, "{indent}<operations>");
    for (name, interval, timeout, role) in ops {
        let role_attr = role.map(|r| format!(" role=\"{r}\"")).unwrap_or_default();
        let suffix = role
            .map(|r| format!("-{}", r.to_lowercase()))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{indent}  <op id=\"{rsc}-{name}-{interval}{suffix}\" name=\"{name}\" \
             interval=\"{interval}\" timeout=\"{timeout}\"{role_attr}/>"
        );
    }
    let _ = writeln!(s, "{indent}</operations>");
}

/// The fence parameters of host `h`: the operator's, a placeholder for each parameter
/// `fence_ipmilan` cannot do without that is missing, and `pcmk_host_list`.
pub fn fence_params(c: &Cluster, h: usize) -> Vec<(String, String)> {
    let host = &c.hosts[h];
    let mut params = host.fence.clone();
    if c.fence_agent == DEFAULT_FENCE_AGENT {
        for (k, v) in [
            ("ip", format!("{CHANGE_ME}-bmc-address-of-{}", host.name)),
            ("username", CHANGE_ME.to_string()),
            (
                "password_script",
                format!("/etc/tandem/fence-{}-password.sh", host.name),
            ),
        ] {
            params.entry(k.to_string()).or_insert(v);
        }
    }
    let mut params: Vec<(String, String)> = params.into_iter().collect();
    params.push(("pcmk_host_list".into(), host.name.clone()));
    params
}

/// The whole CIB.
pub fn cib_xml(c: &Cluster) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!-- Pacemaker configuration of Tandem cluster {} (generated by `tandem cluster config`).\n\
         \x20    Check it: crm_verify -x cib.xml (offline it warns that there is no quorum yet).\n\
         \x20    Load it on one host once both are online: sh load.sh (see README.txt). -->",
        c.name
    );
    let _ = writeln!(
        s,
        "<cib validate-with=\"{SCHEMA}\" epoch=\"1\" num_updates=\"0\" admin_epoch=\"0\">"
    );
    let _ = writeln!(s, "  <configuration>");
    crm_config(&mut s, c);
    let _ = writeln!(s, "    <nodes>");
    for (i, h) in c.hosts.iter().enumerate() {
        let _ = writeln!(s, "      <node id=\"{}\" uname=\"{}\"/>", i + 1, h.name);
    }
    let _ = writeln!(s, "    </nodes>");
    let _ = writeln!(s, "    <resources>");
    for h in 0..2 {
        fence_device(&mut s, c, h);
    }
    for g in &c.guests {
        vm_primitive(&mut s, c, g);
        nvlog_clone(&mut s, c, g);
    }
    let _ = writeln!(s, "    </resources>");
    constraints(&mut s, c);
    let _ = writeln!(s, "    <rsc_defaults>");
    set(
        &mut s,
        "      ",
        "meta_attributes",
        "rsc-options",
        &[("resource-stickiness", c.stickiness.to_string())],
    );
    let _ = writeln!(s, "    </rsc_defaults>");
    let _ = writeln!(s, "  </configuration>");
    let _ = writeln!(s, "  <status/>");
    let _ = writeln!(s, "</cib>");
    s
}

fn crm_config(s: &mut String, c: &Cluster) {
    let _ = writeln!(s, "    <crm_config>");
    set(
        s,
        "      ",
        "cluster_property_set",
        "cib-bootstrap-options",
        &[
            ("stonith-enabled", "true".into()),
            ("priority-fencing-delay", format!("{}s", c.priority_delay_s)),
            ("no-quorum-policy", "stop".into()),
            ("symmetric-cluster", "true".into()),
        ],
    );
    let _ = writeln!(s, "    </crm_config>");
}

fn fence_device(s: &mut String, c: &Cluster, h: usize) {
    let id = fence_id(&c.hosts[h].name);
    let _ = writeln!(
        s,
        "      <primitive id=\"{id}\" class=\"stonith\" type=\"{}\">",
        c.fence_agent
    );
    let params = fence_params(c, h);
    let pairs: Vec<(&str, String)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    set(
        s,
        "        ",
        "instance_attributes",
        &format!("{id}-params"),
        &pairs,
    );
    operations(s, "        ", &id, &[("monitor", "60s", "20s", None)]);
    let _ = writeln!(s, "      </primitive>");
}

fn vm_primitive(s: &mut String, c: &Cluster, g: &Guest) {
    let id = vm_id(g);
    let _ = writeln!(
        s,
        "      <primitive id=\"{id}\" class=\"ocf\" provider=\"heartbeat\" type=\"VirtualDomain\">"
    );
    set(
        s,
        "        ",
        "instance_attributes",
        &format!("{id}-params"),
        &[
            ("config", format!("{}/{}.xml", c.domain_dir, g.name)),
            ("hypervisor", HYPERVISOR.into()),
            ("force_stop", "true".into()),
        ],
    );
    set(
        s,
        "        ",
        "meta_attributes",
        &format!("{id}-meta"),
        &[
            ("allow-migrate", "false".into()),
            ("priority", priority(c, g).to_string()),
        ],
    );
    operations(
        s,
        "        ",
        &id,
        &[
            ("start", "0s", "90s", None),
            ("stop", "0s", "90s", None),
            ("monitor", "10s", "30s", None),
        ],
    );
    let _ = writeln!(s, "      </primitive>");
}

fn nvlog_clone(s: &mut String, c: &Cluster, g: &Guest) {
    let id = nvlog_id(g);
    let rsc = nvlog_rsc_id(g);
    let _ = writeln!(s, "      <clone id=\"{id}\">");
    set(
        s,
        "        ",
        "meta_attributes",
        &format!("{id}-meta"),
        &[
            ("promotable", "true".into()),
            ("promoted-max", "1".into()),
            ("promoted-node-max", "1".into()),
            ("clone-max", "2".into()),
            ("clone-node-max", "1".into()),
        ],
    );
    let (provider, agent) = NVLOG_AGENT;
    let _ = writeln!(
        s,
        "        <primitive id=\"{rsc}\" class=\"ocf\" provider=\"{provider}\" type=\"{agent}\">"
    );
    set(
        s,
        "          ",
        "instance_attributes",
        &format!("{rsc}-params"),
        &nvlog_params(c, g),
    );
    // `listen` differs per host: a set per host, chosen by a rule on the node's name.
    for (h, host) in c.hosts.iter().enumerate() {
        let set_id = format!("{rsc}-on-{}", host.name);
        let _ = writeln!(s, "          <instance_attributes id=\"{set_id}\">");
        let _ = writeln!(
            s,
            "            <rule id=\"{set_id}-rule\" score=\"INFINITY\">\n\
             \x20             <expression id=\"{set_id}-expr\" attribute=\"#uname\" \
             operation=\"eq\" value=\"{}\"/>\n            </rule>",
            host.name
        );
        nvpairs(
            s,
            "            ",
            &set_id,
            &[("listen", nvlog_listen(c, g, h))],
        );
        let _ = writeln!(s, "          </instance_attributes>");
    }
    operations(
        s,
        "          ",
        &rsc,
        &[
            ("start", "0s", "60s", None),
            ("stop", "0s", "60s", None),
            ("promote", "0s", "60s", None),
            ("demote", "0s", "60s", None),
            ("monitor", "10s", "20s", Some("Promoted")),
            ("monitor", "11s", "20s", Some("Unpromoted")),
        ],
    );
    let _ = writeln!(s, "        </primitive>");
    let _ = writeln!(s, "      </clone>");
}

fn constraints(s: &mut String, c: &Cluster) {
    let _ = writeln!(s, "    <constraints>");
    for h in &c.hosts {
        let id = fence_id(&h.name);
        let _ = writeln!(
            s,
            "      <rsc_location id=\"{id}-not-on-{0}\" rsc=\"{id}\" node=\"{0}\" score=\"-INFINITY\"/>",
            h.name
        );
    }
    for g in &c.guests {
        let (vm, nvlog) = (vm_id(g), nvlog_id(g));
        let home = &c.hosts[g.home].name;
        let _ = writeln!(
            s,
            "      <rsc_location id=\"{vm}-home\" rsc=\"{vm}\" node=\"{home}\" score=\"{}\"/>",
            c.home_score
        );
        let _ = writeln!(
            s,
            "      <rsc_order id=\"{vm}-after-{nvlog}\" first=\"{nvlog}\" first-action=\"promote\" \
             then=\"{vm}\" then-action=\"start\" kind=\"Mandatory\"/>"
        );
        let _ = writeln!(
            s,
            "      <rsc_colocation id=\"{vm}-with-{nvlog}\" rsc=\"{vm}\" with-rsc=\"{nvlog}\" \
             with-rsc-role=\"Promoted\" score=\"INFINITY\"/>"
        );
    }
    let _ = writeln!(s, "    </constraints>");
}

/// `load.sh`: checks the new configuration against the running cluster's status, then
/// replaces the cluster's configuration with it.
pub fn load_sh(c: &Cluster) -> String {
    format!(
        r#"#!/bin/sh
# Load the Pacemaker configuration of Tandem cluster {name} (generated by
# `tandem cluster config`). Run it as root on one host once both hosts are online
# (`crm_mon -1` lists {h0} and {h1} as Online). It replaces the cluster's whole
# <configuration> with cib.xml's, after checking the result against the live status.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if grep -q '{CHANGE_ME}' "$here/cib.xml"; then
    echo "load.sh: cib.xml still has {CHANGE_ME} values (fence device parameters):" >&2
    grep -n '{CHANGE_ME}' "$here/cib.xml" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The <configuration> element, as cibadmin --scope configuration takes it.
sed -n '/^  <configuration>$/,/^  <\/configuration>$/p' "$here/cib.xml" > "$tmp/configuration.xml"
cibadmin --query > "$tmp/live.xml"
cp "$tmp/live.xml" "$tmp/next.xml"
CIB_file="$tmp/next.xml" cibadmin --replace --scope configuration --xml-file "$tmp/configuration.xml"
crm_verify --xml-file "$tmp/next.xml"
cibadmin --replace --scope configuration --xml-file "$tmp/configuration.xml"
echo "load.sh: configuration loaded; watch it with crm_mon"
"#,
        name = c.name,
        h0 = c.hosts[0].name,
        h1 = c.hosts[1].name,
    )
}
