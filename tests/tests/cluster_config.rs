//! `tandem cluster config` checked by the real engines' own tools, offline:
//!
//! - `crm_verify --xml-file` (Pacemaker 2.1.5) on the CIB: the schema, ids and references,
//!   and a scheduler run. Offline it can only warn that there is no quorum, so it is also
//!   run on a copy with both nodes online (the status a running cluster adds); it does not
//!   read agents' metadata, so neither `ocf:tandem:nvlog` nor the fence agent need be here.
//!   A CIB with a dangling reference is refused (the check is real).
//! - `crm_simulate` runs the scheduler through a life: both hosts up (each guest on its home
//!   host, its nvlog promoted there), host1 fails (fenced; A moves to host2), host1 returns
//!   (nothing moves back: stickiness), `crm_resource --move` then `--clear` (A goes home and
//!   stays). The promotion scores are injected where the `ocf:tandem:nvlog` agent would set
//!   them (a host whose copy of the log is complete).
//! - `load.sh` against a CIB file (`CIB_file`, the file back end of the same cibadmin
//!   operations) whose epoch is ahead, as a running cluster's is.
//! - `corosync -t` on corosync.conf and authkey installed at their production paths inside
//!   a private mount and network namespace that has the host's interconnect address.
//! - `virt-xml-validate` on each guest's domain, for kvm and for tcg.
//!
//! A missing tool fails its test, naming the tool (scripts/deps installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tandem_qemu::cli::{Cli, Command as Cmd};
use tandem_qemu::cluster::{self, AUTHKEY, CIB, COROSYNC_CONF, LOAD_SH, MIRROR_KEY};
use tandem_qemu::scratch::{tempdir, TempDir};
use tandem_tests::workspace_root;

fn example(name: &str) -> PathBuf {
    workspace_root().join("examples").join(name)
}

/// The tool's path; a missing tool fails the test, naming it.
fn tool(name: &str) -> PathBuf {
    // The cluster tools live in sbin, which a user's PATH may lack.
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let found = tandem_qemu::qemu_bin::find_in_path(
        std::ffi::OsStr::new(name),
        Some(std::ffi::OsStr::new(&path)),
    );
    found.unwrap_or_else(|| {
        panic!("{name} is not installed (corosync, pacemaker-cli-utils, libvirt-clients): run scripts/deps")
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn show(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tandem cluster config --config FILE --out DIR/out --accel ACCEL`, through the command's
/// own parser and code.
fn config(file: &Path, accel: &str) -> anyhow::Result<(TempDir, PathBuf)> {
    let d = tempdir()?;
    let out = d.path().join("out");
    let argv = [
        "tandem",
        "cluster",
        "config",
        "--config",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--accel",
        accel,
    ];
    let Cmd::Cluster(c) = Cli::try_parse_args(argv)?.command else {
        panic!("not a cluster command");
    };
    assert_eq!(c.run()?, 0);
    Ok((d, out))
}

/// The example cluster with the test fence agent (its parameters are the agent's own).
fn test_cluster(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(example("cluster.toml"))
        .unwrap()
        .replace(
            "agent = \"fence_ipmilan\"",
            "agent = \"fence_tandem_test_netns\"",
        );
    for g in ["cluster-a.toml", "cluster-b.toml"] {
        std::fs::copy(example(g), dir.join(g)).unwrap();
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `cib` with a status in which both hosts are online members and the cluster is quorate,
/// and `promotion` scores (what the nvlog agent sets) on each host.
fn online(cib: &str, promotion: &[(&str, u32)]) -> String {
    let attrs = |id: u32| {
        let pairs: String = promotion
            .iter()
            .map(|(rsc, v)| {
                format!("<nvpair id=\"status-{id}-{rsc}\" name=\"master-{rsc}\" value=\"{v}\"/>")
            })
            .collect();
        format!(
            "<transient_attributes id=\"{id}\"><instance_attributes id=\"status-{id}\">{pairs}\
             </instance_attributes></transient_attributes>"
        )
    };
    let state = |id: u32, name: &str| {
        format!(
            "<node_state id=\"{id}\" uname=\"{name}\" in_ccm=\"true\" crmd=\"online\" \
             join=\"member\" expected=\"member\">{}</node_state>",
            attrs(id)
        )
    };
    cib.replacen("<cib ", "<cib have-quorum=\"1\" dc-uuid=\"1\" ", 1)
        .replacen(
            "<status/>",
            &format!(
                "<status>{}{}</status>",
                state(1, "host1"),
                state(2, "host2")
            ),
            1,
        )
}

#[test]
fn the_example_gives_every_file_with_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, out) = config(&example("cluster.toml"), "tcg").unwrap();
    for (path, mode) in [
        (COROSYNC_CONF, 0o644),
        (AUTHKEY, 0o400),
        (CIB, 0o644),
        (LOAD_SH, 0o755),
        (MIRROR_KEY, 0o600),
        ("libvirt/A.xml", 0o644),
        ("libvirt/B.xml", 0o644),
        ("README.txt", 0o644),
    ] {
        let m = std::fs::metadata(out.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode();
        assert_eq!(m & 0o777, mode, "{path}");
    }
    // Bad input: the key is named, and a used directory is refused.
    let d = tempdir().unwrap();
    let bad = test_cluster(d.path());
    let text = std::fs::read_to_string(&bad).unwrap();
    std::fs::write(
        &bad,
        text.replacen("home = \"host2\"", "home = \"host9\"", 1),
    )
    .unwrap();
    let e = config(&bad, "tcg").unwrap_err().to_string();
    assert!(e.contains("guest[1].home = \"host9\": no such host"), "{e}");
    let mut again = cluster::spec::load(&example("cluster.toml")).unwrap();
    again.guests.truncate(1);
    let files = cluster::generate(
        &again,
        tandem_qemu::accel::Accel::Tcg,
        &cluster::Secrets::generate().unwrap(),
    )
    .unwrap();
    let e = cluster::write(&out, &files).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
}

#[test]
fn crm_verify_accepts_the_cib() {
    let crm_verify = tool("crm_verify");
    let d = tempdir().unwrap();
    let (_o, out) = config(&test_cluster(d.path()), "tcg").unwrap();
    let cib = std::fs::read_to_string(out.join(CIB)).unwrap();

    // Offline, as written: only the lack of quorum is warned about.
    let o = run(Command::new(&crm_verify)
        .arg("--xml-file")
        .arg(out.join(CIB))
        .arg("-V"));
    let err = String::from_utf8_lossy(&o.stderr);
    for line in err
        .lines()
        .filter(|l| l.contains("error") || l.contains("warning"))
    {
        assert!(
            line.contains("quorum")
                || line.contains("unclean")
                || line.contains("config may not be valid"),
            "{line}\n{}",
            show(&o)
        );
    }

    // With both hosts online: clean.
    let live = d.path().join("live.xml");
    std::fs::write(&live, online(&cib, &[])).unwrap();
    let o = run(Command::new(&crm_verify)
        .arg("--xml-file")
        .arg(&live)
        .arg("-V"));
    assert!(o.status.success(), "{}", show(&o));

    // The check is real: a colocation with a resource that is not there is refused.
    let broken = d.path().join("broken.xml");
    std::fs::write(
        &broken,
        online(&cib, &[]).replacen("with-rsc=\"nvlog-A\"", "with-rsc=\"nvlog-Z\"", 1),
    )
    .unwrap();
    let o = run(Command::new(&crm_verify).arg("--xml-file").arg(&broken));
    assert!(!o.status.success(), "{}", show(&o));
}

/// `crm_simulate -x IN -S -O OUT [more]`: its transition summary (the actions scheduled).
fn simulate(dir: &Path, step: &str, from: &str, more: &[&str]) -> String {
    let o = run(Command::new(tool("crm_simulate"))
        .current_dir(dir)
        .args(["-x", from, "-S", "-O", step])
        .args(more));
    assert!(o.status.success(), "{step}: {}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let start = text
        .find("Transition Summary:")
        .expect("a transition summary");
    let end = text[start..]
        .find("Executing Cluster Transition:")
        .map_or(text.len(), |e| start + e);
    text[start..end].to_string()
}

/// The cluster status in the CIB file `file` (where each resource runs, in which role).
fn placement(dir: &Path, file: &str) -> String {
    let o = run(Command::new(tool("crm_simulate"))
        .current_dir(dir)
        .args(["-x", file]));
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_scheduler_places_fails_over_stays_and_moves_back_on_command() {
    let d = tempdir().unwrap();
    let (_o, out) = config(&test_cluster(d.path()), "tcg").unwrap();
    let cib = std::fs::read_to_string(out.join(CIB)).unwrap();
    let both = [("nvlog-A-rsc", 10), ("nvlog-B-rsc", 10)];
    let dir = d.path();
    std::fs::write(dir.join("s0.xml"), online(&cib, &both)).unwrap();

    // Both up: each guest on its home host, its log promoted there.
    simulate(dir, "s1.xml", "s0.xml", &[]);
    let s = placement(dir, "s1.xml");
    assert!(
        s.contains("vm-A\t(ocf:heartbeat:VirtualDomain):\t Started host1"),
        "{s}"
    );
    assert!(
        s.contains("vm-B\t(ocf:heartbeat:VirtualDomain):\t Started host2"),
        "{s}"
    );
    assert!(
        s.contains("Clone Set: nvlog-A [nvlog-A-rsc] (promotable):\n      * Promoted: [ host1 ]"),
        "{s}"
    );

    // host1 fails: fenced, A restarts on host2 once its log side is promoted there.
    let t = simulate(dir, "s2.xml", "s1.xml", &["--node-fail", "host1"]);
    assert!(t.contains("Fence (reboot) host1"), "{t}");
    assert!(
        t.contains("Promote    nvlog-A-rsc:1   ( Unpromoted -> Promoted host2 )"),
        "{t}"
    );
    let s = placement(dir, "s2.xml");
    assert!(
        s.contains("vm-A\t(ocf:heartbeat:VirtualDomain):\t Started host2"),
        "{s}"
    );

    // host1 returns: its nvlog instances start (to receive); nothing moves back.
    simulate(dir, "s3.xml", "s2.xml", &["--node-up", "host1"]);
    let t = simulate(dir, "s4.xml", "s3.xml", &[]);
    assert!(!t.contains("vm-A"), "{t}");
    assert!(
        placement(dir, "s4.xml").contains("vm-A\t(ocf:heartbeat:VirtualDomain):\t Started host2")
    );

    // Its copy resynchronised, the agent on host1 makes it promotable again; the operator
    // moves A home, then clears the move; A stays home.
    let s4 = std::fs::read_to_string(dir.join("s4.xml")).unwrap();
    std::fs::write(dir.join("s5.xml"), with_promotion(&s4, "1", &both)).unwrap();
    crm_resource(
        dir,
        "s5.xml",
        &["--move", "--resource", "vm-A", "--node", "host1"],
    );
    let t = simulate(dir, "s6.xml", "s5.xml", &[]);
    assert!(t.contains("Move       vm-A"), "{t}");
    assert!(t.contains("Demote     nvlog-A-rsc:1"), "{t}");
    crm_resource(dir, "s6.xml", &["--clear", "--resource", "vm-A"]);
    let t = simulate(dir, "s7.xml", "s6.xml", &[]);
    assert!(!t.contains("vm-A"), "{t}");
    let s = placement(dir, "s7.xml");
    assert!(
        s.contains("vm-A\t(ocf:heartbeat:VirtualDomain):\t Started host1"),
        "{s}"
    );
    assert!(
        s.contains("Clone Set: nvlog-A [nvlog-A-rsc] (promotable):\n      * Promoted: [ host1 ]"),
        "{s}"
    );
}

/// The node `id`'s promotion scores put back (a node that left lost its transient ones).
fn with_promotion(cib: &str, id: &str, promotion: &[(&str, u32)]) -> String {
    let at = cib
        .find(&format!("<node_state id=\"{id}\""))
        .expect("node_state");
    let end = at + cib[at..].find('>').unwrap() + 1;
    let pairs: String = promotion
        .iter()
        .map(|(rsc, v)| {
            format!("<nvpair id=\"p-{id}-{rsc}\" name=\"master-{rsc}\" value=\"{v}\"/>")
        })
        .collect();
    let attrs = format!(
        "<transient_attributes id=\"{id}\"><instance_attributes id=\"p-{id}\">{pairs}\
         </instance_attributes></transient_attributes>"
    );
    assert!(
        !cib[end..].starts_with("<transient_attributes"),
        "already there"
    );
    format!("{}{attrs}{}", &cib[..end], &cib[end..])
}

fn crm_resource(dir: &Path, file: &str, args: &[&str]) {
    let o = run(Command::new(tool("crm_resource"))
        .current_dir(dir)
        .env("CIB_file", dir.join(file))
        .args(args));
    assert!(o.status.success(), "{}", show(&o));
}

#[test]
fn load_sh_replaces_the_configuration_of_a_newer_cib() {
    tool("cibadmin");
    tool("crm_verify");
    let d = tempdir().unwrap();
    let (_o, out) = config(&test_cluster(d.path()), "tcg").unwrap();
    // A running cluster's CIB: epoch ahead of ours, its own properties, both hosts online.
    let live = d.path().join("live.xml");
    let running = online(
        "<cib validate-with=\"pacemaker-3.9\" epoch=\"7\" num_updates=\"3\" admin_epoch=\"0\">\
         <configuration><crm_config><cluster_property_set id=\"cib-bootstrap-options\">\
         <nvpair id=\"cib-bootstrap-options-dc-version\" name=\"dc-version\" value=\"2.1.5\"/>\
         </cluster_property_set></crm_config><nodes/><resources/><constraints/>\
         </configuration><status/></cib>",
        &[],
    );
    std::fs::write(&live, running).unwrap();
    let o = run(Command::new("sh")
        .arg(out.join(LOAD_SH))
        .env("CIB_file", &live)
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        ));
    assert!(o.status.success(), "{}", show(&o));
    let loaded = std::fs::read_to_string(&live).unwrap();
    for want in [
        "id=\"vm-A\"",
        "id=\"nvlog-B\"",
        "fence_tandem_test_netns",
        "epoch=\"8\"",
    ] {
        assert!(loaded.contains(want), "{want}\n{loaded}");
    }

    // With fence_ipmilan and no parameters, it refuses the placeholders.
    let d2 = tempdir().unwrap();
    let file = test_cluster(d2.path());
    let text: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("fence = ") && !l.starts_with("agent = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    let (_o2, out2) = config(&file, "tcg").unwrap();
    let o = run(Command::new("sh")
        .arg(out2.join(LOAD_SH))
        .env("CIB_file", &live));
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("CHANGE-ME"),
        "{}",
        show(&o)
    );
}

#[test]
fn corosync_accepts_the_conf_on_each_host() {
    let corosync = tool("corosync");
    let unshare = tool("unshare");
    let ip = tool("ip");
    let d = tempdir().unwrap();
    let (_o, out) = config(&test_cluster(d.path()), "tcg").unwrap();
    let conf = std::fs::read_to_string(out.join(COROSYNC_CONF)).unwrap();
    assert!(conf.contains("keyfile: /etc/corosync/authkey"), "{conf}");
    // corosync -t: the file where corosync reads it, the authkey where the file says, and
    // this host's interconnect address up (corosync finds itself in the nodelist by it).
    let check = |conf: &Path, addr: &str| {
        let script = format!(
            "set -e; mount -t tmpfs tandem-test /etc/corosync; cp {conf} /etc/corosync/corosync.conf; \
             cp {key} /etc/corosync/authkey; {ip} link set lo up; {ip} addr add {addr}/32 dev lo; \
             exec {corosync} -t",
            conf = conf.display(),
            key = out.join(AUTHKEY).display(),
            ip = ip.display(),
            corosync = corosync.display(),
        );
        run(Command::new(&unshare)
            .args(["--user", "--map-root-user", "--mount", "--net", "sh", "-c"])
            .arg(script))
    };
    for addr in ["10.10.0.1", "10.10.0.2"] {
        let o = check(&out.join(COROSYNC_CONF), addr);
        assert!(o.status.success(), "{addr}: {}", show(&o));
    }
    // The check is real: a bad hash is refused.
    let bad = d.path().join("bad.conf");
    std::fs::write(
        &bad,
        conf.replace("crypto_hash: sha256", "crypto_hash: sha3"),
    )
    .unwrap();
    let o = check(&bad, "10.10.0.1");
    assert!(!o.status.success(), "{}", show(&o));
}

#[test]
fn virt_xml_validate_accepts_the_domains() {
    let validate = tool("virt-xml-validate");
    tool("xmllint");
    for accel in ["kvm", "tcg"] {
        let (_d, out) = config(&example("cluster.toml"), accel).unwrap();
        for g in ["A", "B"] {
            let file = out.join(format!("libvirt/{g}.xml"));
            let text = std::fs::read_to_string(&file).unwrap();
            let ty = if accel == "kvm" { "kvm" } else { "qemu" };
            assert!(text.contains(&format!("<domain type='{ty}'")), "{text}");
            assert!(
                text.contains(&format!("<shmem name='tandem-nvlog-{g}'>")),
                "{text}"
            );
            let o = run(Command::new(&validate).arg(&file).arg("domain"));
            assert!(o.status.success(), "{g} ({accel}): {}", show(&o));
        }
    }
}
