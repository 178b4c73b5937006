//! The generator's structure: what Pacemaker, corosync and libvirt need is there, secrets
//! are nowhere but their own files, and bad descriptions name the key.

use std::path::Path;

use super::*;
use crate::scratch::tempdir;

const GUEST: &str = "name = \"app-NAME\"\ninstall_dir = \"/srv/tandem/NAME\"\n\
                     [nvram]\nsize = \"16M\"\n[[disk]]\nname = \"data\"\nsize = \"8M\"\n";

const CLUSTER: &str = r#"
name = "tc"
[[host]]
name = "host1"
interconnect = "10.10.0.1"
bridge = "br0"
fence = { ip = "192.0.2.1", username = "admin", password_script = "/etc/p.sh" }
[[host]]
name = "host2"
interconnect = "10.10.0.2"
bridge = "br0"
fence = { ip = "192.0.2.2", username = "admin", password_script = "/etc/p.sh" }
[[guest]]
name = "A"
home = "host1"
appliance = "a.toml"
ip = "192.168.50.10/24"
[[guest]]
name = "B"
home = "host2"
appliance = "b.toml"
ip = "192.168.50.11/24"
[mirror]
port = 7000
policy = "degraded"
mode = "async"
max_lag = "1M"
"#;

/// A directory with `a.toml` and `b.toml`.
fn guests_dir() -> crate::scratch::TempDir {
    let d = tempdir().unwrap();
    for n in ["A", "B"] {
        let text = GUEST.replace("NAME", n);
        std::fs::write(d.path().join(format!("{}.toml", n.to_lowercase())), text).unwrap();
    }
    d
}

fn cluster(text: &str, dir: &Path) -> Result<Cluster, spec::SpecError> {
    spec::parse(text, dir)
}

fn problems(text: &str) -> String {
    let d = guests_dir();
    cluster(text, d.path()).unwrap_err().to_string()
}

fn files(c: &Cluster, accel: Accel) -> (Vec<OutFile>, Secrets) {
    let s = Secrets::generate().unwrap();
    (generate(c, accel, &s).unwrap(), s)
}

fn text<'a>(files: &'a [OutFile], path: &str) -> &'a str {
    let f = files.iter().find(|f| f.path == path).unwrap();
    std::str::from_utf8(&f.bytes).unwrap()
}

#[test]
fn the_cib_has_what_a_failover_needs() {
    let d = guests_dir();
    let c = cluster(CLUSTER, d.path()).unwrap();
    let (f, _) = files(&c, Accel::Kvm);
    let cib = text(&f, CIB);
    for want in [
        r#"validate-with="pacemaker-3.7""#,
        r#"name="stonith-enabled" value="true""#,
        r#"name="priority-fencing-delay" value="15s""#,
        r#"name="no-quorum-policy" value="stop""#,
        r#"name="resource-stickiness" value="1000""#,
        r#"<primitive id="vm-A" class="ocf" provider="heartbeat" type="VirtualDomain">"#,
        r#"name="config" value="/etc/tandem/libvirt/A.xml""#,
        r#"name="hypervisor" value="qemu:///system""#,
        r#"name="force_stop" value="true""#,
        r#"name="allow-migrate" value="false""#,
        r#"<clone id="nvlog-A">"#,
        r#"name="promotable" value="true""#,
        r#"<primitive id="nvlog-A-rsc" class="ocf" provider="tandem" type="nvlog">"#,
        r#"<rsc_order id="vm-A-after-nvlog-A" first="nvlog-A" first-action="promote" then="vm-A" then-action="start""#,
        r#"<rsc_colocation id="vm-A-with-nvlog-A" rsc="vm-A" with-rsc="nvlog-A" with-rsc-role="Promoted" score="INFINITY"/>"#,
        r#"<rsc_location id="vm-A-home" rsc="vm-A" node="host1" score="100"/>"#,
        r#"<rsc_location id="vm-B-home" rsc="vm-B" node="host2" score="100"/>"#,
        r#"<primitive id="fence-host1" class="stonith" type="fence_ipmilan">"#,
        r#"name="pcmk_host_list" value="host1""#,
        r#"rsc="fence-host1" node="host1" score="-INFINITY""#,
        r#"name="monitor" interval="10s" timeout="20s" role="Promoted""#,
        r#"name="monitor" interval="11s" timeout="20s" role="Unpromoted""#,
        // Distinct powers of two: the hosts' sums always differ.
        r#"id="vm-A-meta-priority" name="priority" value="2""#,
        r#"id="vm-B-meta-priority" name="priority" value="1""#,
        // The agent's parameters.
        r#"name="guest" value="A""#,
        r#"name="shm" value="/dev/shm/tandem-nvlog-A""#,
        r#"name="size" value="16777216""#,
        r#"name="key" value="/etc/tandem/mirror.key""#,
        r#"name="peers" value="host1=10.10.0.1:7000 host2=10.10.0.2:7000""#,
        r#"name="peers" value="host1=10.10.0.1:7001 host2=10.10.0.2:7001""#,
        r#"id="nvlog-A-rsc-on-host2-listen" name="listen" value="10.10.0.2:7000""#,
        r#"id="nvlog-B-rsc-on-host1-listen" name="listen" value="10.10.0.1:7001""#,
        r##"attribute="#uname" operation="eq" value="host2""##,
        r#"name="policy" value="degraded""#,
        r#"name="mode" value="async""#,
        r#"name="max_lag" value="1048576""#,
    ] {
        assert!(cib.contains(want), "{want}\n{cib}");
    }
    // No IPaddr2: the guest owns its address.
    assert!(!cib.contains("IPaddr2"));
    // load.sh takes exactly the <configuration> lines.
    let lines: Vec<&str> = cib.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| **l == "  <configuration>").count(),
        1
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "  </configuration>").count(),
        1
    );
}

#[test]
fn the_stickiness_is_above_the_home_preference() {
    let d = guests_dir();
    let c = cluster(CLUSTER, d.path()).unwrap();
    assert!(c.stickiness > c.home_score);
    let text = format!("{CLUSTER}[pacemaker]\nstickiness = 50\n");
    let e = cluster(&text, d.path()).unwrap_err().to_string();
    assert!(e.contains("pacemaker.stickiness"), "{e}");
}

#[test]
fn secrets_are_in_their_own_files_only() {
    let d = guests_dir();
    let c = cluster(CLUSTER, d.path()).unwrap();
    let (f, s) = files(&c, Accel::Kvm);
    let modes: Vec<(&str, u32)> = f.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert!(modes.contains(&(AUTHKEY, 0o400)), "{modes:?}");
    assert!(modes.contains(&(MIRROR_KEY, 0o600)), "{modes:?}");
    assert!(corosync::AUTHKEY_SIZES.contains(&s.authkey.len()));
    let hex = s.mirror.to_hex();
    assert_eq!(text(&f, MIRROR_KEY), format!("{hex}\n"));
    assert_eq!(
        crate::mgmt::parse_key_file(text(&f, MIRROR_KEY)),
        Some(s.mirror.clone())
    );
    let authkey_hex: String = s.authkey.iter().map(|b| format!("{b:02x}")).collect();
    for other in f
        .iter()
        .filter(|f| f.path != AUTHKEY && f.path != MIRROR_KEY)
    {
        let t = String::from_utf8_lossy(&other.bytes);
        assert!(!t.contains(&hex), "mirror key in {}", other.path);
        assert!(!t.contains(&authkey_hex[..32]), "authkey in {}", other.path);
        assert!(
            !other.bytes.windows(16).any(|w| w == &s.authkey[..16]),
            "authkey bytes in {}",
            other.path
        );
        assert!(!t.contains("password="), "{}", other.path);
    }
    // The files are written with those modes.
    let out = tempdir().unwrap();
    let dir = out.path().join("out");
    write(&dir, &f).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(AUTHKEY, 0o400), (MIRROR_KEY, 0o600), (CIB, 0o644)] {
        let m = std::fs::metadata(dir.join(path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, mode, "{path}");
    }
    // A second run into the same directory is refused.
    let e = write(&dir, &f).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
}

#[test]
fn corosync_conf_is_two_node_knet_with_crypto() {
    let d = guests_dir();
    let c = cluster(CLUSTER, d.path()).unwrap();
    let conf = corosync::corosync_conf(&c);
    for want in [
        "    version: 2\n",
        "    cluster_name: tc\n",
        "    transport: knet\n",
        "    token: 3000\n",
        "    crypto_cipher: aes256\n",
        "    crypto_hash: sha256\n",
        "    keyfile: /etc/corosync/authkey\n",
        "        name: host1\n        nodeid: 1\n        ring0_addr: 10.10.0.1\n",
        "        name: host2\n        nodeid: 2\n        ring0_addr: 10.10.0.2\n",
        "    provider: corosync_votequorum\n    two_node: 1\n",
        "    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n",
    ] {
        assert!(conf.contains(want), "{want:?}\n{conf}");
    }
    assert_eq!(conf.matches('{').count(), conf.matches('}').count());
}

#[test]
fn domains_map_the_nvram_from_dev_shm_for_the_chosen_accelerator() {
    let d = guests_dir();
    let c = cluster(CLUSTER, d.path()).unwrap();
    for (accel, ty) in [(Accel::Kvm, "kvm"), (Accel::Tcg, "qemu")] {
        let (f, _) = files(&c, accel);
        let x = text(&f, "libvirt/B.xml");
        assert!(x.contains(&format!("<domain type='{ty}'")), "{x}");
        assert!(x.contains("<cpu mode='maximum'/>"), "{x}");
        assert!(x.contains("<name>B</name>"), "{x}");
        assert!(
            x.contains(
                "    <shmem name='tandem-nvlog-B'>\n      <model type='ivshmem-plain'/>\n      \
                 <size unit='M'>16</size>\n      <address type='pci' domain='0x0000' \
                 bus='0x00' slot='0x04' function='0x0'/>\n    </shmem>"
            ),
            "{x}"
        );
        // The file region is not given as well.
        assert!(
            !x.contains("memory-backend-file") && !x.contains("nvram.bin"),
            "{x}"
        );
        assert!(x.contains("isa-debug-exit"), "{x}");
        assert!(x.contains("<source bridge='br0'/>"), "{x}");
        assert!(x.contains("ip=192.168.50.11/24"), "{x}");
        assert!(
            x.contains("<source file='/srv/tandem/B/disk0.raw'/>"),
            "{x}"
        );
        // The same MAC on both hosts, derived from the names.
        let mac = spec::stable_mac("tc", "B");
        assert!(x.contains(&format!("<mac address='{mac}'/>")), "{x}");
    }
    // The appliance's own domain still names its region file.
    let app = &c.guests[0].appliance;
    let plan = &crate::appliance::render::plans(app).unwrap()[0];
    let own = crate::appliance::render::libvirt_xml(app, plan);
    assert!(own.contains("<domain type='kvm'") && own.contains("mem-path=/srv/tandem/A/nvram.bin"));
    assert!(!own.contains("<shmem name="));
}

/// The guest's mirror gate is on: its command line carries `[mirror]`'s mode and policy
/// (async: the lag bound in records, 1M of log = 256 records of at least one page each).
#[test]
fn domains_turn_the_guests_mirror_gate_on() {
    let d = guests_dir();
    let c = cluster(CLUSTER, d.path()).unwrap();
    let (f, _) = files(&c, Accel::Tcg);
    let x = text(&f, "libvirt/A.xml");
    let line = x.lines().find(|l| l.contains("<cmdline>")).unwrap();
    let words: Vec<&str> = line
        .trim()
        .trim_start_matches("<cmdline>")
        .trim_end_matches("</cmdline>")
        .split_whitespace()
        .collect();
    for w in [
        "mirror=async",
        "mirror.policy=degraded",
        "mirror.max_lag=256",
    ] {
        assert!(words.contains(&w), "{w}: {line}");
    }
    let sync = CLUSTER.replace("mode = \"async\"", "mode = \"sync\"");
    let c = cluster(&sync, d.path()).unwrap();
    assert_eq!(
        libvirt::mirror_words(&c),
        ["mirror=sync", "mirror.policy=degraded"]
    );
}

#[test]
fn the_spec_round_trips_through_toml() {
    let raw: spec::ClusterFile = toml::from_str(CLUSTER).unwrap();
    let again: spec::ClusterFile = toml::from_str(&toml::to_string(&raw).unwrap()).unwrap();
    assert_eq!(raw, again);
    let d = guests_dir();
    assert_eq!(
        spec::resolve(&raw, d.path()).unwrap(),
        spec::resolve(&again, d.path()).unwrap()
    );
}

#[test]
fn bad_descriptions_name_the_key() {
    let one_host = CLUSTER.replacen(
        "[[host]]\nname = \"host2\"",
        "[[hostx]]\nname = \"host2\"",
        1,
    );
    let e = problems(&one_host);
    assert!(e.contains("unknown field `hostx`"), "{e}");
    for (from, to, want) in [
        (
            "home = \"host2\"",
            "home = \"host3\"",
            "guest[1].home = \"host3\": no such host",
        ),
        ("name = \"A\"", "name = \"A<b\"", "guest[0].name = \"A<b\""),
        ("name = \"B\"", "name = \"A\"", "two guests have this name"),
        ("name = \"host1\"", "name = \"host 1\"", "host[0].name"),
        ("name = \"tc\"", "name = \"t/c\"", "name = \"t/c\""),
        (
            "interconnect = \"10.10.0.2\"",
            "interconnect = \"10.10.0\"",
            "host[1].interconnect",
        ),
        (
            "bridge = \"br0\"\nfence = { ip = \"192.0.2.2\"",
            "bridge = \"br1\"\nfence = { ip = \"192.0.2.2\"",
            "host[1].bridge",
        ),
        (
            "policy = \"degraded\"",
            "policy = \"maybe\"",
            "mirror.policy",
        ),
        ("mode = \"async\"", "mode = \"later\"", "mirror.mode"),
        (
            "username = \"admin\", password_script",
            "password = \"hunter2\", password_script",
            "password_script",
        ),
        (
            "ip = \"192.168.50.11/24\"",
            "ip = \"192.168.50.10/24\"",
            "two guests have this address",
        ),
        (
            "ip = \"192.168.50.11/24\"",
            "ip = \"nonsense\"",
            "guest[1]: ",
        ),
        (
            "appliance = \"b.toml\"",
            "appliance = \"a.toml\"",
            "install_dir",
        ),
        (
            "appliance = \"b.toml\"",
            "appliance = \"missing.toml\"",
            "cannot read",
        ),
        (
            "appliance = \"b.toml\"",
            "image = \"x\"\nappliance = \"b.toml\"",
            "exactly one of",
        ),
        ("port = 7000", "port = 65535", "mirror.port"),
    ] {
        assert!(CLUSTER.contains(from), "{from}");
        let e = problems(&CLUSTER.replacen(from, to, 1));
        assert!(e.contains(want), "{from} -> {to}: want {want:?} in\n{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    // Exactly two hosts, and it says why.
    let three = format!(
        "{CLUSTER}\n[[host]]\nname = \"host3\"\ninterconnect = \"10.10.0.3\"\nbridge = \"br0\"\n"
    );
    let e = problems(&three);
    assert!(e.contains("exactly two hosts"), "{e}");
}

#[test]
fn fence_ipmilan_without_parameters_gets_placeholders_load_sh_refuses() {
    let d = guests_dir();
    let bare = CLUSTER
        .lines()
        .filter(|l| !l.starts_with("fence = "))
        .collect::<Vec<_>>()
        .join("\n");
    let c = cluster(&bare, d.path()).unwrap();
    let (f, _) = files(&c, Accel::Tcg);
    assert!(text(&f, CIB).contains(cib::CHANGE_ME));
    assert!(text(&f, LOAD_SH).contains(&format!("grep -q '{}'", cib::CHANGE_ME)));
    // Another agent gets what it is given, nothing invented.
    let other = format!("{bare}\n[fence]\nagent = \"fence_tandem_test_netns\"\n");
    let c = cluster(&other, d.path()).unwrap();
    let cib = cib::cib_xml(&c);
    assert!(cib.contains(r#"type="fence_tandem_test_netns""#) && !cib.contains(cib::CHANGE_ME));
}
