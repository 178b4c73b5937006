//! The test cluster on [`Host`]s: its corosync.conf (minimal, for the tests only: the
//! operator-facing configuration is `tandem cluster config`'s), its test-only fence agent,
//! fencing in the CIB, and what `crm_mon --output-as=xml` and `corosync-quorumtool` say.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};

use super::Host;

/// The test fence agent's name. It takes no credentials because it can only kill the
/// processes of test hosts listed in its site's fence map: it is test-only, and says so.
pub const FENCE_AGENT: &str = "fence_tandem_test_netns";

/// One node of the test cluster: its name (the host's) and its interconnect address.
#[derive(Debug, Clone)]
pub struct TestNode {
    /// The node name (= the host's hostname).
    pub name: String,
    /// Its address on the interconnect (corosync's knet link 0).
    pub addr: std::net::Ipv4Addr,
}

/// The test cluster's corosync.conf: knet over unicast on one link, `two_node` quorum (each
/// side keeps quorum alone once both have been seen: `wait_for_all`), a 3 s token, no
/// crypto (the link is a veth between namespaces), logs to a file and stderr. corosync wants
/// every key on its own line.
pub fn test_corosync_conf(cluster_name: &str, nodes: &[TestNode]) -> String {
    let mut s = format!(
        "# The tandem test cluster (tandem_qemu::hosts::cluster): hosts as namespaces.\n\
         totem {{\n\
         \x20   version: 2\n\
         \x20   cluster_name: {cluster_name}\n\
         \x20   transport: knet\n\
         \x20   token: 3000\n\
         \x20   crypto_cipher: none\n\
         \x20   crypto_hash: none\n\
         }}\n\
         nodelist {{\n"
    );
    for (i, n) in nodes.iter().enumerate() {
        let _ = write!(
            s,
            "    node {{\n        ring0_addr: {}\n        name: {}\n        nodeid: {}\n    }}\n",
            n.addr,
            n.name,
            i + 1
        );
    }
    s.push_str("}\nquorum {\n    provider: corosync_votequorum\n");
    if nodes.len() == 2 {
        s.push_str("    two_node: 1\n");
    }
    s.push_str(
        "}\nlogging {\n    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n    \
         to_stderr: yes\n    to_syslog: no\n    timestamp: on\n}\n",
    );
    s
}

/// Writes the fence agent into `dir` (a host's `/usr/sbin` upper layer), reading victims
/// from `map` (one file per node name: the holder's pid, then the netns name). It appends
/// each fencing (`ACTION NODE`) to the file `map` + `.log` ([`fence_log`]).
pub fn write_fence_agent(dir: &Path, map: &Path) -> anyhow::Result<()> {
    let file = dir.join(FENCE_AGENT);
    let text = FENCE_AGENT_SH.replace("@MAP@", &map.display().to_string());
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// The agent: fence-agents' conventions (`key=value` lines on stdin, or `-o ACTION -n
/// NODE`); `off`/`reboot` SIGKILL every process in the victim's network namespace but its
/// holder (the host's "hardware" stays, so a test can start the host again); `on` does
/// nothing (the test does that); `status` 0 while something runs there, 2 when nothing does.
const FENCE_AGENT_SH: &str = r#"#!/bin/sh
# fence_tandem_test_netns: TEST-ONLY fence agent of tandem's hosts-as-namespaces harness
# (tandem_qemu::hosts). It powers off a test host by SIGKILLing every process of its
# network namespace. No credentials: it only knows the test hosts listed in MAP.
MAP='@MAP@'
action=reboot
port=
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--action) action=$2; shift 2 ;;
    -n|--plug|--port) port=$2; shift 2 ;;
    *) shift ;;
  esac
done
if [ ! -t 0 ]; then
  while IFS= read -r line; do
    case "$line" in
      action=*|option=*) action=${line#*=} ;;
      port=*|plug=*) port=${line#*=} ;;
      nodename=*) [ -n "$port" ] || port=${line#*=} ;;
    esac
  done
fi
victim() { # the victim's processes but its holder
  read -r holder _ <"$MAP/$port" || return 1
  ino=$(stat -L -c %i "/proc/$holder/ns/net") || return 1
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$holder" ] && continue
    [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$ino" ] && echo "$pid"
  done
  return 0
}
case "$action" in
  metadata)
    cat <<'EOF'
<?xml version="1.0" ?>
<resource-agent name="fence_tandem_test_netns" shortdesc="TEST ONLY: kills every process of a tandem test host (a network namespace)">
<longdesc>Test-only fence agent of tandem's hosts-as-namespaces harness. Takes no credentials.</longdesc>
<parameters>
  <parameter name="action" unique="0" required="0"><getopt mixed="-o, --action=[action]"/><content type="string" default="reboot"/><shortdesc lang="en">Fencing action</shortdesc></parameter>
  <parameter name="port" unique="0" required="0"><getopt mixed="-n, --plug=[node]"/><content type="string"/><shortdesc lang="en">The test host (node name) to fence</shortdesc></parameter>
  <parameter name="plug" unique="0" required="0" obsoletes="port"><getopt mixed="-n, --plug=[node]"/><content type="string"/><shortdesc lang="en">The test host (node name) to fence</shortdesc></parameter>
</parameters>
<actions>
  <action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
  <action name="list"/><action name="monitor"/><action name="metadata"/>
</actions>
</resource-agent>
EOF
    exit 0 ;;
  monitor) [ -d "$MAP" ] && exit 0; exit 1 ;;
  list) ls "$MAP"; exit 0 ;;
  on) exit 0 ;;
  status)
    [ -r "$MAP/$port" ] || exit 1
    [ -n "$(victim)" ] && exit 0
    exit 2 ;;
  off|reboot)
    [ -r "$MAP/$port" ] || { echo "no test host $port in $MAP" >&2; exit 1; }
    echo "$action $port" >>"$MAP.log"
    i=0
    while [ $i -lt 200 ]; do
      pids=$(victim) || exit 1
      [ -z "$pids" ] && exit 0
      kill -9 $pids 2>/dev/null
      sleep 0.1
      i=$((i + 1))
    done
    echo "processes of $port survive SIGKILL" >&2
    exit 1 ;;
  *) echo "unsupported action $action" >&2; exit 1 ;;
esac
"#;

/// The fencings the test agent carried out at `site` so far, one `ACTION NODE` a line.
pub fn fence_log(site: &super::Site) -> String {
    let mut p = site.fence_map().into_os_string();
    p.push(".log");
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Configures fencing in the CIB through `host`: the test fence agent as one device for
/// every node (`pcmk_host_list`), `stonith-enabled`, and a `priority-fencing-delay` of
/// `priority_delay` seconds (the side with the higher-priority resources is fenced later,
/// so both sides of a split do not fence each other at once).
pub fn configure_fencing(host: &Host, nodes: &[&str], priority_delay: u32) -> anyhow::Result<()> {
    let device = format!(
        "<primitive id='fence-test' class='stonith' type='{FENCE_AGENT}'>\
         <instance_attributes id='fence-test-ia'>\
         <nvpair id='fence-test-hosts' name='pcmk_host_list' value='{}'/>\
         <nvpair id='fence-test-check' name='pcmk_host_check' value='static-list'/>\
         </instance_attributes>\
         <operations><op id='fence-test-monitor' name='monitor' interval='60s'/></operations>\
         </primitive>",
        nodes.join(" ")
    );
    host.exec_ok(&[
        "cibadmin",
        "--create",
        "-o",
        "resources",
        "--xml-text",
        &device,
    ])?;
    for (name, value) in [
        ("stonith-enabled", "true".to_string()),
        ("priority-fencing-delay", format!("{priority_delay}s")),
    ] {
        host.exec_ok(&[
            "crm_attribute",
            "--type",
            "crm_config",
            "--name",
            name,
            "--update",
            &value,
        ])?;
    }
    Ok(())
}

/// What `crm_mon -1 --output-as=xml` says about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrmStatus {
    /// Whether the DC has quorum (`current_dc with_quorum`).
    pub quorum: bool,
    /// The DC's name, if there is one.
    pub dc: Option<String>,
    /// Every node.
    pub nodes: Vec<NodeStatus>,
}

/// One node in `crm_mon`'s view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Online (a cluster member running Pacemaker).
    pub online: bool,
    /// Unclean: lost and not yet fenced.
    pub unclean: bool,
}

impl CrmStatus {
    /// The names of the online nodes.
    pub fn online(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.online)
            .map(|n| n.name.as_str())
            .collect()
    }

    /// The node named `name`, if the cluster knows it.
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The value of attribute `name` in the XML start tag `tag` (`name="v"` or `name='v'`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    for q in ['"', '\''] {
        let key = format!(" {name}={q}");
        if let Some(i) = tag.find(&key) {
            let rest = &tag[i + key.len()..];
            return rest.find(q).map(|end| &rest[..end]);
        }
    }
    None
}

/// The start tags named `name` in `xml`.
fn tags<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    xml.match_indices(&open)
        .filter_map(|(i, _)| xml[i..].find('>').map(|end| &xml[i..i + end]))
        .collect()
}

/// Parses `crm_mon -1 --output-as=xml`.
pub fn parse_crm_mon(xml: &str) -> anyhow::Result<CrmStatus> {
    if !xml.contains("<pacemaker-result") {
        bail!("not crm_mon XML:\n{xml}");
    }
    let dc = tags(xml, "current_dc").into_iter().next();
    let present = dc.and_then(|t| attr(t, "present")) == Some("true");
    Ok(CrmStatus {
        quorum: present && dc.and_then(|t| attr(t, "with_quorum")) == Some("true"),
        dc: dc
            .filter(|_| present)
            .and_then(|t| attr(t, "name"))
            .map(str::to_string),
        nodes: tags(xml, "node")
            .into_iter()
            .filter_map(|t| {
                Some(NodeStatus {
                    name: attr(t, "name")?.to_string(),
                    online: attr(t, "online")? == "true",
                    unclean: attr(t, "unclean") == Some("true"),
                })
            })
            .collect(),
    })
}

/// One resource (a primitive, or a clone's instance) in `crm_mon`'s view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// Its id (a clone's instances share the primitive's id).
    pub id: String,
    /// `Started`, `Stopped`, `Promoted`, `Unpromoted`, ...
    pub role: String,
    /// Whether a failed operation marks it.
    pub failed: bool,
    /// The nodes it runs on.
    pub nodes: Vec<String>,
}

/// The `<resource>` elements of `crm_mon -1 --output-as=xml`, clones' instances included.
pub fn parse_resources(xml: &str) -> Vec<ResourceStatus> {
    let mut out = Vec::new();
    for (i, _) in xml.match_indices("<resource ") {
        let rest = &xml[i..];
        let Some(end) = rest.find('>') else { continue };
        let tag = &rest[..end];
        let body = if tag.ends_with('/') {
            ""
        } else {
            rest.find("</resource>").map_or("", |e| &rest[end..e])
        };
        let (Some(id), Some(role)) = (attr(tag, "id"), attr(tag, "role")) else {
            continue;
        };
        out.push(ResourceStatus {
            id: id.to_string(),
            role: role.to_string(),
            failed: attr(tag, "failed") == Some("true"),
            nodes: tags(body, "node")
                .into_iter()
                .filter_map(|t| attr(t, "name").map(str::to_string))
                .collect(),
        });
    }
    out
}

/// The resources `crm_mon` in `host` shows.
pub fn resources(host: &Host) -> anyhow::Result<Vec<ResourceStatus>> {
    Ok(parse_resources(&host.exec_ok(&[
        "crm_mon",
        "-1",
        "--output-as=xml",
    ])?))
}

/// What `corosync-quorumtool -s` says: quorate, and the members' names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quorum {
    /// `Quorate: Yes`.
    pub quorate: bool,
    /// The member names of the membership information table.
    pub members: Vec<String>,
}

/// Parses `corosync-quorumtool -s` (its exit status is 0 only when quorate; read the text).
pub fn parse_quorumtool(text: &str) -> Quorum {
    let quorate = text
        .lines()
        .any(|l| l.trim_start().starts_with("Quorate:") && l.contains("Yes"));
    let mut members = Vec::new();
    let mut table = false;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"Nodeid") {
            table = true;
        } else if table && f.len() >= 3 && f[0].parse::<u32>().is_ok() {
            members.push(f[2].to_string());
        }
    }
    Quorum { quorate, members }
}

/// `crm_mon -1 --output-as=xml` in `host`, parsed.
pub fn crm_status(host: &Host) -> anyhow::Result<CrmStatus> {
    parse_crm_mon(&host.exec_ok(&["crm_mon", "-1", "--output-as=xml"])?)
}

/// `corosync-quorumtool -s` in `host`, parsed (whatever its exit status).
pub fn quorum(host: &Host) -> anyhow::Result<Quorum> {
    let out = host.exec(&["corosync-quorumtool", "-s"])?;
    Ok(parse_quorumtool(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corosync_conf_has_every_key_on_its_own_line() {
        let nodes = [
            TestNode {
                name: "h1".into(),
                addr: [10, 99, 0, 1].into(),
            },
            TestNode {
                name: "h2".into(),
                addr: [10, 99, 0, 2].into(),
            },
        ];
        let c = test_corosync_conf("t", &nodes);
        for l in [
            "transport: knet",
            "two_node: 1",
            "token: 3000",
            "ring0_addr: 10.99.0.2",
        ] {
            assert!(c.lines().any(|x| x.trim() == l), "{l} missing:\n{c}");
        }
        assert!(c.contains("name: h2\n        nodeid: 2"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn crm_mon_xml_is_read() {
        let xml = r#"<pacemaker-result api-version="2.25" request="crm_mon">
  <summary>
    <current_dc present="true" version="2.1.5" name="a" id="1" with_quorum="true" mixed_version="false"/>
  </summary>
  <nodes>
    <node name="a" id="1" online="true" standby="false"/>
    <node name="b" id="2" online="false" standby="false" unclean="true"/>
  </nodes>
</pacemaker-result>"#;
        let s = parse_crm_mon(xml).unwrap();
        assert!(s.quorum);
        assert_eq!(s.dc.as_deref(), Some("a"));
        let node = |name: &str, online, unclean| NodeStatus {
            name: name.into(),
            online,
            unclean,
        };
        assert_eq!(
            s.nodes,
            vec![node("a", true, false), node("b", false, true)]
        );
        assert_eq!(s.online(), ["a"]);
        let none =
            parse_crm_mon(r#"<pacemaker-result><current_dc present="false"/></pacemaker-result>"#)
                .unwrap();
        assert!(!none.quorum && none.dc.is_none());
        assert!(parse_crm_mon("Connection to cluster failed").is_err());
    }

    #[test]
    fn crm_mon_resources_are_read() {
        let xml = r#"<pacemaker-result api-version="2.25" request="crm_mon">
  <resources>
    <resource id="vm-A" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" failed="false" nodes_running_on="1">
      <node name="host1" id="1" cached="true"/>
    </resource>
    <clone id="nvlog-A" multi_state="true" unique="false">
      <resource id="nvlog-A-rsc" resource_agent="ocf:tandem:nvlog" role="Promoted" active="true" failed="false">
        <node name="host1" id="1" cached="true"/>
      </resource>
      <resource id="nvlog-A-rsc" resource_agent="ocf:tandem:nvlog" role="Unpromoted" active="true" failed="true">
        <node name="host2" id="2" cached="true"/>
      </resource>
    </clone>
    <resource id="fence-host1" resource_agent="stonith:x" role="Stopped" active="false" failed="false"/>
  </resources>
</pacemaker-result>"#;
        let r = parse_resources(xml);
        let short: Vec<(&str, &str, bool, Vec<&str>)> = r
            .iter()
            .map(|r| {
                let nodes = r.nodes.iter().map(String::as_str).collect();
                (r.id.as_str(), r.role.as_str(), r.failed, nodes)
            })
            .collect();
        assert_eq!(
            short,
            vec![
                ("vm-A", "Started", false, vec!["host1"]),
                ("nvlog-A-rsc", "Promoted", false, vec!["host1"]),
                ("nvlog-A-rsc", "Unpromoted", true, vec!["host2"]),
                ("fence-host1", "Stopped", false, vec![]),
            ]
        );
    }

    #[test]
    fn quorumtool_text_is_read() {
        let t = "Quorum information\n------------------\nNodes:            2\nQuorate:          Yes\n\n\
                 Membership information\n----------------------\n    Nodeid      Votes Name\n\
                 \x20        1          1 a (local)\n         2          1 b\n";
        assert_eq!(
            parse_quorumtool(t),
            Quorum {
                quorate: true,
                members: vec!["a".into(), "b".into()]
            }
        );
        assert!(!parse_quorumtool("Quorate:          No\n").quorate);
    }
}
